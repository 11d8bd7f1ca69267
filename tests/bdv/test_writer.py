"""BdvWriter / write_bdv: files that npy2bdv, pybdv and fastims' own parser read back exactly."""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np
import pytest

import fastims
from fastims import BdvWriter, WriterStateError, downsample, write_bdv
from fastims.bdv.layout import loopback_sources
from fastims.bdv.spimdata import parse_spimdata
from fastims.bdv.writer import merge_partitions

npy2bdv = pytest.importorskip("npy2bdv")
pybdv_meta = pytest.importorskip("pybdv.metadata")
pybdv_util = pytest.importorskip("pybdv.util")


def camera_stack(rng, shape, dtype=np.uint16, high=65535):
    """Camera-like data whose bright voxels exceed 32767 (the int16 trap)."""
    if np.dtype(dtype).kind == "f":
        return (rng.random(shape, dtype=np.float32) * high).astype(dtype)
    return rng.integers(0, high, shape, dtype=dtype, endpoint=True)


def expected_pyramid(stack, factors):
    """The levels BDV computes: block means per BDV's loopback sources, from whole arrays."""
    levels = [stack]
    for src, rel in loopback_sources(factors)[1:]:
        levels.append(downsample(levels[src], rel, rule="bdv"))
    return levels


def read_npy2bdv(xml, level=0, **keys):
    ed = npy2bdv.BdvEditor(str(xml), mode="r")
    try:
        return ed.read_view(ilevel=level, **keys)
    finally:
        ed.finalize()


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------


def test_legacy_uint16_streamed_plane_by_plane_with_xyz_pyramid(tmp_path, rng):
    factors = [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    shape = (21, 70, 93)  # odd sizes: ceil levels with edge replication
    stacks = {}
    xml = tmp_path / "acq.xml"
    with BdvWriter(xml, ntimepoints=2, nchannels=2, factors=factors, max_workers=2) as w:
        for c in range(2):
            w.add_view(channel=c, shape=shape, dtype="uint16", voxel_size=(2.0, 0.5, 0.5))
        for t in range(2):
            for c in range(2):
                stacks[(t, c)] = camera_stack(rng, shape)
        # interleave views plane by plane, as a camera with two channels would
        for z in range(shape[0]):
            for t in range(2):
                for c in range(2):
                    w.write_plane(stacks[(t, c)][z], z=z, time=t, channel=c)
    with h5py.File(tmp_path / "acq.h5", "r") as f:
        assert "dataType" not in f["s00"].attrs  # legacy: int16 bits, no attribute
        ds = f["t00001/s01/0/cells"]
        assert ds.dtype == np.int16 and ds.maxshape == (None, None, None)
        np.testing.assert_array_equal(ds[()].view(np.uint16), stacks[(1, 1)])
        assert f["s00/resolutions"].dtype == np.float64 and f["s00/subdivisions"].dtype == np.int32
        np.testing.assert_array_equal(f["s00/resolutions"][()], [f[::-1] for f in factors])
        chunks = [f[f"t00000/s00/{li}/cells"].chunks for li in range(4)]
        np.testing.assert_array_equal(f["s00/subdivisions"][()], [c[::-1] for c in chunks])
        assert f.id.get_create_plist().get_version()[0] == 0  # superblock 0, as jhdf5 writes
    for (t, c), stack in stacks.items():
        want = expected_pyramid(stack, factors)
        for li in range(4):
            got = read_npy2bdv(xml, level=li, time=t, channel=c)
            assert got.dtype == np.uint16
            np.testing.assert_array_equal(got, want[li], err_msg=f"t={t} c={c} level={li}")
    # an independent check of one level: level 2 is the direct (4, 4, 2) mean of full resolution
    np.testing.assert_array_equal(
        read_npy2bdv(xml, level=2), downsample(stacks[(0, 0)], (2, 4, 4), rule="bdv")
    )
    assert stacks[(0, 0)].max() > 32767


def test_pybdv_reads_data_and_metadata(tmp_path, rng):
    stack = camera_stack(rng, (9, 40, 30))
    xml = tmp_path / "p.xml"
    write_bdv(xml, {(0, 0, 0, 1): stack, (0, 0, 0, 0): stack[:, :20]}, ntiles=2, voxel_size=(3.0, 0.5, 0.5),
              factors=[(1, 1, 1), (2, 2, 2)], unit="nm")
    h5 = tmp_path / "p.h5"
    assert sorted(pybdv_meta.get_setup_ids(str(xml))) == [0, 1]
    assert pybdv_meta.get_size(str(xml), 1) == (9, 40, 30)
    assert pybdv_meta.get_size(str(xml), 0) == (9, 20, 30)
    assert pybdv_meta.get_resolution(str(xml), 1) == [3.0, 0.5, 0.5]
    assert pybdv_meta.get_unit(str(xml), 1) == "nm"
    assert pybdv_meta.get_bdv_format(str(xml)) == "bdv.hdf5"
    assert pybdv_meta.get_data_path(str(xml)) == "p.h5"
    assert pybdv_meta.get_time_range(str(xml)) == (0, 0)
    assert pybdv_meta.get_attributes(str(xml), 1)["tile"]["id"] == 1
    assert list(pybdv_meta.get_affine(str(xml), 1).values())[0] == [1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 6.0, 0]
    assert pybdv_util.get_scale_factors(str(h5), 1) == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    assert pybdv_util.get_number_of_scales(str(h5), 0, 1) == 2
    with pybdv_util.open_file(str(h5), "r") as f:
        np.testing.assert_array_equal(f[pybdv_util.get_key(True, 0, 1, 0)][()].view(np.uint16), stack)
        np.testing.assert_array_equal(
            f[pybdv_util.get_key(True, 0, 1, 1)][()].view(np.uint16), downsample(stack, (2, 2, 2), rule="bdv")
        )


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32"])
def test_typed_mode_stores_real_dtype_and_attribute(tmp_path, rng, dtype):
    high = {"uint8": 255, "uint16": 65535, "uint32": 2**32 - 1, "float32": 1e6}[dtype]
    stack = camera_stack(rng, (6, 33, 45), dtype, high)
    xml = tmp_path / "t.xml"
    factors = [(1, 1, 1), (2, 2, 2)]
    write_bdv(xml, stack, dtype_mode="typed", factors=factors)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        attr = f["s00"].attrs.get_id("dataType")
        tid = attr.get_type()
        # BDV's own writer: scalar, fixed-length, null-padded ASCII
        assert isinstance(tid, h5py.h5t.TypeStringID) and not tid.is_variable_str()
        assert tid.get_strpad() == h5py.h5t.STR_NULLPAD and tid.get_cset() == h5py.h5t.CSET_ASCII
        assert f["s00"].attrs["dataType"] == dtype.encode()
        assert f["t00000/s00/0/cells"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(f["t00000/s00/0/cells"][()], stack)
        np.testing.assert_array_equal(f["t00000/s00/1/cells"][()], downsample(stack, (2, 2, 2), rule="bdv"))
    if dtype in ("uint8", "uint16", "float32"):  # the dtypes npy2bdv's editor knows
        np.testing.assert_array_equal(read_npy2bdv(xml), stack)


@pytest.mark.parametrize(("compression", "shuffle"), [("gzip", False), ("gzip", True)])
def test_gzip_chunks_decode_with_hdf5(tmp_path, rng, compression, shuffle):
    stack = camera_stack(rng, (10, 64, 80), high=4000)
    write_bdv(tmp_path / "g.h5", stack, compression=compression, shuffle=shuffle, compression_level=3)
    with h5py.File(tmp_path / "g.h5", "r") as f:
        ds = f["t00000/s00/0/cells"]
        assert ds.compression == "gzip" and ds.compression_opts == 3 and ds.shuffle == shuffle
        np.testing.assert_array_equal(ds[()].view(np.uint16), stack)
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "g.xml"), stack)


def test_shuffle_without_compression_is_ignored(tmp_path, rng):
    # it used to fail at close ("only unfiltered datasets can be allocated up front") and
    # leave an .h5 without its .xml
    stack = camera_stack(rng, (6, 40, 50), high=4000)
    with BdvWriter(tmp_path / "s.xml", compression=None, shuffle=True) as w:
        w.add_view(shape=stack.shape, dtype="uint16")
        for z in range(stack.shape[0]):
            w.write_plane(stack[z], z=z)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        ds = f["t00000/s00/0/cells"]
        assert ds.compression is None and not ds.shuffle
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "s.xml"), stack)


def test_byte_swapped_input(tmp_path, rng):
    stack = camera_stack(rng, (6, 40, 50), high=4000)
    write_bdv(tmp_path / "be.xml", stack.astype(">u2"))
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "be.xml"), stack)
    floats = stack.astype(np.float32) / 7
    with BdvWriter(tmp_path / "f.xml", dtype_mode="typed") as w:
        w.add_view(shape=floats.shape, dtype=">f4")
        for z in range(floats.shape[0]):
            w.write_plane(floats[z].astype(">f4") if z % 2 else floats[z], z=z)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        ds = f["t00000/s00/0/cells"]
        assert ds.dtype == np.dtype("<f4")
        np.testing.assert_array_equal(ds[()], floats)


@pytest.mark.parametrize(
    ("data", "options", "exc"),
    [
        (np.zeros((8, 8), np.uint16), {}, ValueError),  # not (Z, Y, X)
        (np.zeros((2, 8, 8), np.uint8), {}, TypeError),  # legacy mode stores 16-bit data only
        (np.zeros((2, 8, 8), np.uint16), {"bogus": 1}, TypeError),
        ({(0, 0, 0, 3): np.zeros((2, 8, 8), np.uint16)}, {"ntiles": 2}, IndexError),
        # a setup has one shape: time point 1's third plane is out of range
        ({(0,): np.zeros((2, 8, 8), np.uint16), (1,): np.zeros((3, 8, 8), np.uint16)}, {}, IndexError),
        ({(0,): np.zeros((2, 8, 8), np.uint16), (1,): np.zeros((3, 8, 8), np.uint16)},
         {"partitions": "timepoint"}, IndexError),
        (np.zeros((2, 8, 8), np.uint16), {"name": "cam\x01A"}, ValueError),  # no XML parser reads it
    ],
)
def test_write_bdv_that_fails_leaves_no_files(tmp_path, data, options, exc):
    with pytest.raises(exc):
        write_bdv(tmp_path / "w.xml", data, **options)
    assert sorted(os.listdir(tmp_path)) == []  # a retry must not meet FileExistsError
    write_bdv(tmp_path / "w.xml", np.ones((2, 8, 8), np.uint16))


def test_lz4_only_with_a_warning(tmp_path, rng):
    stack = camera_stack(rng, (4, 16, 16))
    with pytest.warns(UserWarning, match="not readable by Fiji"):
        write_bdv(tmp_path / "l.h5", stack, compression="lz4")
    import hdf5plugin  # noqa: F401  (registers the LZ4 filter for reading)

    with h5py.File(tmp_path / "l.h5", "r") as f:
        np.testing.assert_array_equal(f["t00000/s00/0/cells"][()].view(np.uint16), stack)


def test_blocks_in_any_order_and_z_pyramid(tmp_path, rng):
    stack = camera_stack(rng, (37, 24, 20))
    factors = [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    with BdvWriter(tmp_path / "o.xml", factors=factors, chunks=(4, 16, 16), memory_limit=1 << 16) as w:
        w.add_view(shape=stack.shape, dtype="uint16")
        for z0, z1 in [(30, 37), (0, 3), (12, 30), (3, 12)]:
            w.write(stack[z0:z1], z=z0)
    want = expected_pyramid(stack, factors)
    for li in range(3):
        np.testing.assert_array_equal(read_npy2bdv(tmp_path / "o.xml", level=li), want[li])


def test_views_differ_in_size_voxel_unit_exposure_and_xml_content(tmp_path, rng):
    xml = tmp_path / "m.xml"
    a = camera_stack(rng, (5, 20, 30))
    b = camera_stack(rng, (3, 10, 12))
    w = BdvWriter(xml, ntimepoints=3, nilluminations=2, ntiles=2, allow_incomplete=True)
    with pytest.warns(UserWarning, match="time=1 setup=3: never written"), w:
        w.set_attribute_labels("illumination", ["left", "right"])
        w.set_attribute_labels("tile", ["t0", "t1"])
        w.set_metadata(camera="Orca", microscope="meso", microscope_version="1.2", user="ana", objective="10x",
                       stage="ASI")
        w.set_metadata(stage=None)  # None removes a key, as BdvEditor.set_metadata does
        w.add_view(illumination=0, tile=0, shape=a.shape, dtype="uint16", voxel_size=(2.0, 0.5, 0.5),
                   unit="um", exposure_time=0.02, tile_location=(0.0, 0.0, 10.0))
        w.add_view(illumination=1, tile=1, shape=b.shape, dtype="uint16", voxel_size=(400.0, 250.0, 250.0),
                   unit="nm", exposure_time=20, exposure_unit="ms", tile_location=(0.0, 5.0, 0.0),
                   affine=np.eye(4) * [1, 1, 1, 1] + np.diag([1.0, 0, 0, 0]), affine_name="flip")
        w.write_view(a, illumination=0, tile=0)
        w.write_view(a, time=2, illumination=0, tile=0)  # a later time point of a declared setup
        w.write_view(b, illumination=1, tile=1)
        w.add_view(time=1, illumination=1, tile=1, shape=b.shape, dtype="uint16",
                   voxel_size=(400.0, 250.0, 250.0), unit="nm")  # declared, never written
    assert w.setup_id(illumination=1, tile=1) == 3
    sd = parse_spimdata(xml)
    assert sorted(sd.setups) == [0, 3]
    assert sd.setups[0].size == (5, 20, 30) and sd.setups[3].size == (3, 10, 12)
    assert sd.setups[3].voxel_size == (400.0, 250.0, 250.0) and sd.setups[3].unit == "nm"
    assert sd.setups[3].attributes == {"illumination": 1, "channel": 0, "tile": 1, "angle": 0}
    assert {k: sorted(v) for k, v in sd.attribute_values.items()} == {
        "illumination": [0, 1], "channel": [0], "tile": [0, 1], "angle": [0]
    }
    assert sd.attribute_values["illumination"][1].name == "right"
    assert sd.attribute_values["tile"][0].extra["location"] == "10.0 0.0 0.0"
    assert sd.timepoints == [0, 1, 2] and sd.timepoints_type == "range"
    assert sd.missing_views == {(1, 0), (1, 3), (2, 3)}
    # BigStitcher calibration: voxel size / smallest voxel over all views (250 nm)
    cal0 = dict((tr.name, tr.affine) for tr in sd.registrations[(0, 0)])
    np.testing.assert_allclose(np.diag(cal0["calibration"][:, :3]), [2.0, 2.0, 8.0])
    np.testing.assert_allclose(cal0["Translation"][:, 3], [40.0, 0.0, 0.0])  # 10 um / 0.25 um
    names3 = [tr.name for tr in sd.registrations[(0, 3)]]
    assert names3 == ["flip", "Translation", "calibration"]
    np.testing.assert_allclose(sd.registrations[(0, 3)][0].affine[0, 0], 2.0)
    np.testing.assert_allclose(np.diag(sd.registrations[(0, 3)][2].affine[:, :3]), [1.0, 1.0, 1.6])
    text = xml.read_text()
    assert "<exposureTime>20.0</exposureTime>" in text and "<exposureUnits>ms</exposureUnits>" in text
    assert "<name>Orca</name>" in text and "<objective>10x</objective>" in text and "<user>ana</user>" in text
    assert "stage" not in text and "None" not in text
    np.testing.assert_array_equal(read_npy2bdv(xml, time=2), a)
    np.testing.assert_array_equal(read_npy2bdv(xml, illumination=1, tile=1), b)


def test_write_bdv_mapping_and_timepoints(tmp_path, rng):
    views = {(0, 0, 0): camera_stack(rng, (2, 8, 8)), (1, 0, 1): camera_stack(rng, (2, 8, 8))}
    write_bdv(tmp_path / "w.xml", views)
    sd = parse_spimdata(tmp_path / "w.xml")
    assert sd.timepoints == [0, 1] and sorted(sd.setups) == [0, 1]
    assert sd.missing_views == {(1, 0), (0, 1)}
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "w.xml", time=1, channel=1), views[(1, 0, 1)])
    # dict keys (which cannot key a mapping) come as (dict, array) pairs
    write_bdv(tmp_path / "d.h5", [({"tile": 1}, views[(0, 0, 0)]), ({"time": 1}, views[(1, 0, 1)])])
    sd = parse_spimdata(tmp_path / "d.xml")
    assert sd.setups[1].attributes["tile"] == 1 and sd.timepoints == [0, 1]
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "d.xml", tile=1), views[(0, 0, 0)])
    with pytest.raises(ValueError, match="unknown view keys"):
        write_bdv(tmp_path / "f.h5", [({"chanel": 1}, views[(0, 0, 0)])])
    with pytest.raises(ValueError, match="time, illumination"):
        write_bdv(tmp_path / "f.h5", {(0,) * 6: views[(0, 0, 0)]})
    with pytest.raises(TypeError, match="from data"):
        write_bdv(tmp_path / "f.h5", views[(0, 0, 0)], shape=(2, 8, 8))
    # a misspelt option is named in write_bdv's terms, with the option meant
    with pytest.raises(TypeError, match=r"write_bdv\(\) got an unexpected keyword argument 'overwite'; "
                                        r"did you mean 'overwrite'\?"):
        write_bdv(tmp_path / "f.h5", views[(0, 0, 0)], overwite=True)
    with pytest.raises(TypeError, match="'voxelsize'; did you mean 'voxel_size'"):
        write_bdv(tmp_path / "f.h5", views[(0, 0, 0)], voxelsize=(1, 1, 1))
    assert not (tmp_path / "f.h5").exists()


def test_partitions_per_timepoint_are_linked_from_the_master(tmp_path, rng):
    xml = tmp_path / "part.xml"
    stacks = {(t, c): camera_stack(rng, (4, 12, 10)) for t in range(3) for c in range(2)}
    with BdvWriter(xml, ntimepoints=3, nchannels=2, partitions="timepoint", factors=[(1, 1, 1), (2, 2, 2)]) as w:
        for (t, c), s in stacks.items():
            w.write_view(s, time=t, channel=c)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["part-00-00.h5", "part-01-00.h5", "part-02-00.h5", "part.h5", "part.xml"]
    with h5py.File(tmp_path / "part.h5", "r") as f:
        link = f.get("t00002/s01/1/cells", getlink=True)
        assert isinstance(link, h5py.ExternalLink) and link.filename == "part-02-00.h5"
        assert "s01/resolutions" in f
    with h5py.File(tmp_path / "part-01-00.h5", "r") as f:
        assert "t00001/s00/0/cells" in f and "t00000/s00/0/cells" not in f and "s00/subdivisions" in f
    sd = parse_spimdata(xml)
    parts = sd.image_loader.partitions
    assert [p.path.name for p in parts] == ["part-00-00.h5", "part-01-00.h5", "part-02-00.h5"]
    assert [p.timepoints for p in parts] == [(0,), (1,), (2,)] and parts[0].setups == (0, 1)
    for (t, c), s in stacks.items():
        np.testing.assert_array_equal(read_npy2bdv(xml, time=t, channel=c), s)
        np.testing.assert_array_equal(read_npy2bdv(xml, level=1, time=t, channel=c),
                                      downsample(s, (2, 2, 2), rule="bdv"))


def test_merge_partitions_of_independent_writers(tmp_path, rng):
    stacks = [camera_stack(rng, (3, 10, 12)) for _ in range(2)]
    parts = []
    for c in range(2):  # e.g. one process per channel
        part = tmp_path / f"run-ch{c}.xml"
        with BdvWriter(part, nchannels=2, ntimepoints=2) as w:
            w.set_metadata(microscope="meso")
            w.write_view(stacks[c], time=c, channel=c, voxel_size=(1.0, 0.5, 0.5))
        parts.append(part)
    master = merge_partitions(tmp_path / "run.xml", parts)
    sd = parse_spimdata(master)
    assert sorted(sd.setups) == [0, 1]
    assert sd.missing_views == {(1, 0), (0, 1)}
    assert [p.path.name for p in sd.image_loader.partitions] == ["run-ch0.h5", "run-ch1.h5"]
    np.testing.assert_array_equal(read_npy2bdv(master, time=1, channel=1), stacks[1])
    np.testing.assert_array_equal(read_npy2bdv(master, time=0, channel=0), stacks[0])
    assert "<name>meso</name>" in master.read_text()
    with pytest.raises(ValueError, match="is in"):
        merge_partitions(tmp_path / "dup.xml", [parts[0], parts[0]])
    with pytest.raises(FileExistsError):
        merge_partitions(tmp_path / "run.xml", parts)


# ---------------------------------------------------------------------------------------
# incomplete views, errors
# ---------------------------------------------------------------------------------------


def test_missing_planes_raise_at_close_but_the_file_is_complete(tmp_path, rng):
    stack = camera_stack(rng, (6, 16, 16))
    w = BdvWriter(tmp_path / "i.xml", nchannels=2, factors=[(1, 1, 1), (2, 2, 2)])
    w.add_view(shape=stack.shape, dtype="uint16")
    w.add_view(channel=1, shape=stack.shape, dtype="uint16")
    for z in (0, 1, 4):
        w.write_plane(stack[z], z=z)
    with pytest.raises(WriterStateError, match=r"setup=0: z=2-3,5 zero-filled.*setup=1: never written"):
        w.close()
    got = read_npy2bdv(tmp_path / "i.xml")
    want = stack.copy()
    want[[2, 3, 5]] = 0
    np.testing.assert_array_equal(got, want)
    assert parse_spimdata(tmp_path / "i.xml").missing_views == {(0, 1)}
    with pytest.raises(WriterStateError, match="closed"):
        w.write_plane(stack[2], z=2)


def test_allow_incomplete_warns(tmp_path):
    with pytest.warns(UserWarning, match="incomplete views"):
        with BdvWriter(tmp_path / "w.h5", allow_incomplete=True) as w:
            w.add_view(shape=(2, 8, 8), dtype="uint16")
            w.write_plane(np.ones((8, 8), np.uint16), z=1)


def test_exception_in_with_block_still_finishes_the_file(tmp_path):
    with pytest.raises(RuntimeError, match="camera died"):
        with BdvWriter(tmp_path / "x.xml") as w:
            w.add_view(shape=(2, 8, 8), dtype="uint16")
            w.write_plane(np.ones((8, 8), np.uint16), z=0)
            raise RuntimeError("camera died")
    assert read_npy2bdv(tmp_path / "x.xml")[0].min() == 1


def _zero_filled_records(xml):
    """The XML's ``<generatedBy><zeroFilledPlanes>`` entries: (timepoint, setup) -> ranges."""
    import xml.etree.ElementTree as ET

    block = ET.parse(xml).getroot().find("generatedBy/zeroFilledPlanes")
    if block is None:
        return {}
    return {(int(v.get("timepoint")), int(v.get("setup"))): v.get("z") for v in block.findall("view")}


def test_exception_in_with_block_names_the_zero_filled_planes(tmp_path):
    # the file looked complete: planes zero, MissingViews empty, only a log line said otherwise
    xml = tmp_path / "x.xml"
    with pytest.raises(RuntimeError, match="camera died"), BdvWriter(xml, factors=[(1, 1, 1), (2, 2, 2)]) as w:
        w.add_view(shape=(10, 16, 16), dtype="uint16")
        for z in range(3):
            w.write_plane(np.full((16, 16), 1000 + z, np.uint16), z=z)
        raise RuntimeError("camera died")
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert f["t00000/s00"].attrs["zeroFilledPlanes"] == b"3-9"  # what h5dump shows
        assert "zeroFilledPlanes" not in f["s00"].attrs  # BDV's setup group stays as BDV writes it
    assert _zero_filled_records(xml) == {(0, 0): "3-9"}
    with fastims.open(xml) as r:
        assert r.zero_filled == {(0, 0): [3, 4, 5, 6, 7, 8, 9]}
        assert r.levels == 2
    # BDV's Python readers still read the file as before
    got = read_npy2bdv(xml)
    np.testing.assert_array_equal(got[:3], np.full((3, 16, 16), [[[1000]], [[1001]], [[1002]]]))
    np.testing.assert_array_equal(got[3:], 0)
    assert pybdv_meta.get_size(str(xml), 0) == (10, 16, 16)
    assert pybdv_meta.get_setup_ids(str(xml)) == [0]
    assert npy2bdv.BdvEditor(str(xml), mode="r").get_attribute_count()[0] == 1
    assert parse_spimdata(xml).missing_views == set()


def test_complete_dataset_names_no_zero_filled_planes(tmp_path):
    xml = tmp_path / "c.xml"
    write_bdv(xml, np.ones((4, 8, 8), np.uint16))
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert "zeroFilledPlanes" not in f["t00000/s00"].attrs
    assert "zeroFilled" not in xml.read_text()
    with fastims.open(xml) as r:
        assert r.zero_filled == {}


def test_zero_filled_planes_of_partitions_and_merged_parts(tmp_path, rng):
    xml = tmp_path / "p.xml"
    stack = camera_stack(rng, (6, 16, 16))
    w = BdvWriter(xml, ntimepoints=2, partitions="timepoint", allow_incomplete=True)
    w.write_view(stack)
    w.write(stack[:2], time=1)
    w.write(stack[5:], z=5, time=1)
    with pytest.warns(UserWarning, match="incomplete views"):
        w.close()
    with h5py.File(tmp_path / "p-01-00.h5", "r") as part, h5py.File(tmp_path / "p.h5", "r") as master:
        assert part["t00001/s00"].attrs["zeroFilledPlanes"] == b"2-4"
        assert master["t00001/s00"].attrs["zeroFilledPlanes"] == b"2-4"
    with h5py.File(tmp_path / "p-00-00.h5", "r") as complete:
        assert "zeroFilledPlanes" not in complete["t00000/s00"].attrs
    assert _zero_filled_records(xml) == {(1, 0): "2-4"}
    with fastims.open(xml) as r:
        assert r.zero_filled == {(1, 0): [2, 3, 4]}
    # independent writers merged under one master: the master names the part's gaps
    parts = []
    for c in range(2):
        part = tmp_path / f"run-ch{c}.xml"
        with warnings.catch_warnings(), BdvWriter(part, nchannels=2, allow_incomplete=True) as w:
            warnings.simplefilter("ignore", UserWarning)
            w.add_view(channel=c, shape=stack.shape, dtype="uint16")
            w.write(stack[: 6 - c], channel=c)
        parts.append(part)
    master = merge_partitions(tmp_path / "run.xml", parts)
    assert _zero_filled_records(master) == {(0, 1): "5"}
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f["t00000/s01"].attrs["zeroFilledPlanes"] == b"5"
    with fastims.open(master) as r:
        assert r.zero_filled == {(0, 1): [5]}
    np.testing.assert_array_equal(read_npy2bdv(master, channel=1)[5], 0)


def test_unclosed_writer_finished_at_exit_names_the_zero_filled_planes(tmp_path):
    import subprocess
    import sys

    xml = tmp_path / "b.xml"
    child = (
        "import numpy as np, fastims\n"
        f"w = fastims.BdvWriter({str(xml)!r})\n"
        "w.add_view(shape=(8, 32, 32), dtype='uint16')\n"
        "for z in range(3): w.write_plane(np.full((32, 32), 500, np.uint16), z=z)\n"
    )
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "z=3-7 zero-filled" in r.stderr  # the log line, as before
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert f["t00000/s00"].attrs["zeroFilledPlanes"] == b"3-7"
    assert _zero_filled_records(xml) == {(0, 0): "3-7"}
    with fastims.open(xml) as rd:
        assert rd.zero_filled == {(0, 0): [3, 4, 5, 6, 7]}
    np.testing.assert_array_equal(read_npy2bdv(xml)[3:], 0)


def test_worker_errors_are_raised_in_the_caller(tmp_path, monkeypatch, rng):
    from fastims.compression import Codec

    def broken(self, data):
        raise OSError("disk full")

    monkeypatch.setattr(Codec, "compress", broken)
    w = BdvWriter(tmp_path / "e.xml", compression="gzip", factors=[(1, 1, 1)], chunks=(1, 8, 8))
    w.add_view(shape=(64, 8, 8), dtype="uint16")
    with pytest.raises(OSError, match="disk full"):
        for z in range(64):
            w.write_plane(np.ones((8, 8), np.uint16), z=z)
        w.close()
    if not w.closed:
        with pytest.raises(OSError, match="disk full"):
            w.close()
    assert w.closed


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"dtype_mode": "fancy"}, ValueError, "dtype_mode"),
        ({"compression": "zstd"}, ValueError, "compression"),
        ({"compression": "gzip", "compression_level": 12}, ValueError, "level"),
        ({"nchannels": 0}, ValueError, "nchannels"),
        ({"factors": [(1, 1, 1), (2, 2, 2)], "chunks": (3, 64, 64)}, ValueError, "multiple of the z factor 2"),
        ({"partitions": "angle"}, ValueError, "partitions"),
    ],
)
def test_bad_writer_options(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BdvWriter(tmp_path / "b.xml", **kwargs)
    assert not (tmp_path / "b.h5").exists()


def test_bad_calls(tmp_path, rng):
    (tmp_path / "exists.h5").write_bytes(b"")
    with pytest.raises(FileExistsError):
        BdvWriter(tmp_path / "exists.xml")
    with pytest.raises(ValueError, match=".xml or .h5"):
        BdvWriter(tmp_path / "x.tif")
    with BdvWriter(tmp_path / "exists.xml", overwrite=True, nchannels=2, allow_incomplete=True) as w:
        with pytest.raises(TypeError, match="dtype_mode='typed'"):
            w.add_view(shape=(2, 8, 8), dtype="float32")
        w.add_view(shape=(2, 8, 8), dtype="uint16")
        with pytest.raises(ValueError, match="already declared"):
            w.add_view(shape=(2, 8, 8), dtype="uint16")
        with pytest.raises(IndexError, match="channel=2"):
            w.add_view(channel=2, shape=(2, 8, 8), dtype="uint16")
        with pytest.raises(KeyError, match="add_view"):
            w.write_plane(np.zeros((8, 8), np.uint16), z=0, channel=1)
        with pytest.raises(ValueError, match=r"\(Z', 8, 8\)"):
            w.write_plane(np.zeros((8, 9), np.uint16), z=0)
        with pytest.raises(TypeError, match="convert it explicitly"):
            w.write_plane(np.zeros((8, 8), np.float32), z=0)
        with pytest.raises(IndexError, match="out of range"):
            w.write_plane(np.zeros((8, 8), np.uint16), z=2)
        for z in (None, "1", 1.0, True):
            with pytest.raises(TypeError, match=f"integer plane index, got {z!r}"):
                w.write_plane(np.zeros((8, 8), np.uint16), z=z)
        with pytest.raises(IndexError, match="time"):
            w.write_plane(np.zeros((8, 8), np.uint16), z=0, time=1)
        w.write_plane(np.zeros((8, 8), np.uint16), z=0)
        with pytest.raises(WriterStateError, match=r"timepoint 0 setup 0: plane\(s\) z=\[0\] written twice"):
            w.write_plane(np.zeros((8, 8), np.uint16), z=0)
        with pytest.raises(ValueError, match="labels"):
            w.set_attribute_labels("channel", ["only one"])
        with pytest.raises(ValueError, match="XML element name"):
            w.set_metadata(**{"bad key": "x"})
        # control characters XML 1.0 cannot hold (not even escaped) are refused when given
        with pytest.raises(ValueError, match=r"channel label 'GFP\\x0b' has '\\x0b'"):
            w.set_attribute_labels("channel", ["GFP\x0b", "RFP"])
        with pytest.raises(ValueError, match="metadata user"):
            w.set_metadata(user="bob\x00", microscope="ok")
        with pytest.raises(ValueError, match="camera"):
            w.set_metadata(camera="cam\x1f")
        with pytest.raises(ValueError, match="unit"):
            w.add_view(channel=1, shape=(2, 8, 8), dtype="uint16", unit="\x07m")
        with pytest.raises(ValueError, match="already declared"):
            w.write_view(np.zeros((2, 8, 8), np.uint16), unit="nm")
        w.write_plane(np.zeros((8, 8), np.uint16), z=1)
        w.flush()  # the view is complete and stored
        with pytest.raises(WriterStateError, match="written twice"):
            w.write_plane(np.zeros((8, 8), np.uint16), z=1)


def test_a_setup_has_one_shape_dtype_and_voxel_size(tmp_path):
    w = BdvWriter(tmp_path / "two.xml", ntimepoints=2, allow_incomplete=True)
    w.add_view(shape=(2, 8, 8), dtype="uint16", voxel_size=(2, 1, 1))
    for other in ({"shape": (3, 8, 8)}, {"voxel_size": (1, 1, 1)}, {"unit": "nm"}):
        options = {"shape": (2, 8, 8), "dtype": "uint16", "voxel_size": (2, 1, 1), **other}
        with pytest.raises(ValueError, match="a setup has one shape"):
            w.add_view(time=1, **options)
    w.add_view(time=1, shape=(2, 8, 8), dtype="uint16", voxel_size=(2, 1, 1))
    with pytest.warns(UserWarning, match="never written"):
        w.close()


def test_legacy_int16_input_and_uint16_overflow_round_trip(tmp_path):
    values = np.array([0, 1, 32767, 32768, 40000, 65535], dtype=np.uint16)
    stack = np.broadcast_to(values, (2, 6, 6)).copy()
    write_bdv(tmp_path / "u.xml", stack, factors=[(1, 1, 1), (1, 2, 2)])
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "u.xml"), stack)
    # int16 input is taken as the stored bit pattern (BDV shows it as unsigned)
    write_bdv(tmp_path / "s.xml", stack.view(np.int16), factors=[(1, 1, 1), (1, 2, 2)])
    with h5py.File(tmp_path / "s.h5", "r") as a, h5py.File(tmp_path / "u.h5", "r") as b:
        for li in range(2):
            path = f"t00000/s00/{li}/cells"
            np.testing.assert_array_equal(a[path][()], b[path][()])


def test_flush_writes_a_readable_snapshot(tmp_path, rng):
    stack = camera_stack(rng, (4, 16, 16))
    with BdvWriter(tmp_path / "f.xml", chunks=(2, 16, 16), factors=[(1, 1, 1)]) as w:
        w.add_view(shape=stack.shape, dtype="uint16")
        w.write(stack[:2], z=0)
        w.flush()
        assert (tmp_path / "f.xml").exists()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert os.path.getsize(tmp_path / "f.h5") > 0
        w.write(stack[2:], z=2)
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "f.xml"), stack)
