"""BdvEditor: in-place crops, transforms, added views and metadata, on our files and BDV's."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

import fastims
from fastims import BdvEditor, BdvWriter, FormatError, WriterStateError, downsample, write_bdv
from fastims.bdv.layout import loopback_sources
from fastims.bdv.spimdata import parse_spimdata

npy2bdv = pytest.importorskip("npy2bdv")
pybdv_meta = pytest.importorskip("pybdv.metadata")


def read_npy2bdv(xml, level=0, **keys):
    ed = npy2bdv.BdvEditor(str(xml), mode="r")
    try:
        return ed.read_view(ilevel=level, **keys)
    finally:
        ed.finalize()


def read_h5(xml, level=0, time=0, setup=0):
    """A level as BDV reads it: int16 without dataType is unsigned 16-bit."""
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        data = f[f"t{time:05d}/s{setup:02d}/{level}/cells"][()]
        if "dataType" not in f[f"s{setup:02d}"].attrs and data.dtype == np.int16:
            data = data.view(np.uint16)
    return data


def pyramid(stack, factors):
    levels = [stack]
    for src, rel in loopback_sources(factors)[1:]:
        levels.append(downsample(levels[src], rel, rule="bdv"))
    return levels


@pytest.fixture
def dataset(tmp_path, rng):
    """A 2-time-point, 2-channel gzip dataset with a 3-level pyramid, and its arrays."""
    factors = [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    stacks = {(t, c): rng.integers(0, 65535, (18, 50, 41), dtype=np.uint16) for t in range(2) for c in range(2)}
    xml = tmp_path / "d.xml"
    with BdvWriter(xml, ntimepoints=2, nchannels=2, factors=factors, compression="gzip", shuffle=True) as w:
        for (t, c), s in stacks.items():
            w.write_view(s, time=t, channel=c, voxel_size=(2.0, 0.5, 0.5))
    return xml, stacks, factors


def test_crop_in_place_every_time_point_and_level(dataset):
    xml, stacks, factors = dataset
    h5 = xml.with_suffix(".h5")
    with h5py.File(h5, "r") as f:
        chunks_before = [f[f"t00000/s01/{li}/cells"].chunks for li in range(3)]
    original = xml.read_text()
    with BdvEditor(xml) as ed:
        new = ed.crop_view(((3, -5), (10, 40), (1, None)), channel=1)
        assert new == (17, 30, 33)
    for t in range(2):
        want = pyramid(stacks[(t, 1)][1:, 10:40, 3:-5], factors)
        for li in range(3):
            np.testing.assert_array_equal(read_npy2bdv(xml, level=li, time=t, channel=1), want[li])
        np.testing.assert_array_equal(read_npy2bdv(xml, time=t, channel=0), stacks[(t, 0)])  # untouched
    with h5py.File(h5, "r") as f:
        # rewritten in place: same datasets, same chunks, no leftovers
        assert [f[f"t00000/s01/{li}/cells"].chunks for li in range(3)] == chunks_before
        assert "cells~new" not in f["t00000/s01/0"]
        np.testing.assert_array_equal(f["s01/subdivisions"][()], [c[::-1] for c in chunks_before])
    sd = parse_spimdata(xml)
    assert sd.setups[1].size == (17, 30, 33) and sd.setups[0].size == (18, 50, 41)
    # the crop offset keeps the cropped voxels at their world position
    origin = sd.model(0, 1) @ [0, 0, 0, 1]
    np.testing.assert_allclose(origin, [3.0, 10.0, 4.0])  # (x, y, z*4): calibration z = 2 / 0.5
    assert pybdv_meta.get_size(str(xml), 1) == (17, 30, 33)
    assert (xml.parent / "d.xml~1").read_text() == original


def _copy_fixture(fixtures_dir, tmp_path, name):
    src = fixtures_dir / "bdv" / name
    for suffix in (".xml", ".h5"):
        shutil.copy(src.with_suffix(suffix), tmp_path / (src.name + suffix))
    return tmp_path / (src.name + ".xml")


def test_crop_real_bdv_files(fixtures_dir, tmp_path):
    # mri-stack: legacy int16, scale-offset + deflate (not reproducible: datasets are replaced)
    xml = _copy_fixture(fixtures_dir, tmp_path, "mri-stack/mri-stack")
    before = read_h5(xml)
    with BdvEditor(xml) as ed:
        # the fixture's only setup is channel 1: views are named by their attribute ids
        ed.crop_view(((20, 150), (30, -30), (2, 20)), channel=1)
        np.testing.assert_array_equal(ed.read_view(channel=1), before[2:20, 30:-30, 20:150])
    np.testing.assert_array_equal(read_h5(xml), before[2:20, 30:-30, 20:150])
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        ds = f["t00000/s00/0/cells"]
        assert ds.dtype == np.int16 and ds.compression == "gzip" and ds.scaleoffset is None
        assert "cells~new" not in f["t00000/s00/0"]
    # example: typed uint16 (dataType attribute), 2 levels
    xml = _copy_fixture(fixtures_dir, tmp_path, "pybdv/example")
    before = read_h5(xml)
    with BdvEditor(xml, backup=False) as ed:
        ed.crop_view(((100, 400), None, None), keep_position=False, channel=1)
    cropped = before[:, :, 100:400]
    np.testing.assert_array_equal(read_h5(xml), cropped)
    np.testing.assert_array_equal(read_h5(xml, level=1), downsample(cropped, (2, 2, 2), rule="bdv"))
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        assert f["s00"].attrs["dataType"] == b"uint16" and f["t00000/s00/0/cells"].dtype == np.uint16
        np.testing.assert_array_equal(f["s00/subdivisions"][()], [f[f"t00000/s00/{i}/cells"].chunks[::-1] for i in range(2)])
    assert parse_spimdata(xml).setups[0].size == (6, 512, 300)
    assert not (tmp_path / "example.xml~1").exists()


def test_crop_partitioned_dataset(tmp_path, rng):
    xml = tmp_path / "p.xml"
    stacks = [rng.integers(0, 65535, (6, 20, 20), dtype=np.uint16) for _ in range(2)]
    with BdvWriter(xml, ntimepoints=2, partitions="timepoint", factors=[(1, 1, 1), (1, 2, 2)]) as w:
        for t, s in enumerate(stacks):
            w.write_view(s, time=t)
    with BdvEditor(tmp_path / "p.h5") as ed:  # opened through the .h5
        ed.crop_view((None, (5, 15), None))
    for t, s in enumerate(stacks):
        np.testing.assert_array_equal(read_npy2bdv(xml, time=t), s[:, 5:15])
        np.testing.assert_array_equal(read_npy2bdv(xml, time=t, level=1), downsample(s[:, 5:15], (1, 2, 2), rule="bdv"))
    with h5py.File(tmp_path / "p-01-00.h5", "r") as f:
        assert f["t00001/s00/0/cells"].shape == (6, 10, 20)


def test_affines(dataset):
    xml, _, _ = dataset
    m = np.array([[1.0, 0.1, 0, 5], [0, 1, 0, -2], [0, 0, 1, 0.5]])
    with BdvEditor(xml) as ed:
        ed.append_affine(m, "registration", channel=1, time=1)
        ed.append_affine(np.diag([2.0, 2.0, 2.0, 1.0]), "scale", time=None, channel=1)
        np.testing.assert_array_equal(ed.read_affine(channel=1, time=1), np.diag([2.0, 2.0, 2.0, 1.0])[:3])
        np.testing.assert_array_equal(ed.read_affine(channel=1, time=1, index=1), m)
        np.testing.assert_array_equal(ed.read_affine(channel=1, time=1, name="registration"), m)
        assert [n for n, _ in ed.transforms(channel=1, time=1)] == ["scale", "registration", "calibration"]
        assert [n for n, _ in ed.transforms(channel=1, time=0)] == ["scale", "calibration"]
        assert [n for n, _ in ed.transforms(channel=0, time=1)] == ["calibration"]
        with pytest.raises(KeyError, match="no transform named"):
            ed.read_affine(name="nope")
        with pytest.raises(ValueError, match="12 row-packed"):
            ed.append_affine(np.eye(2), "bad")
    sd = parse_spimdata(xml)
    cal = np.diag([1.0, 1.0, 4.0])
    want = np.diag([2.0, 2.0, 2.0, 1.0]) @ np.vstack([m, [0, 0, 0, 1]]) @ np.vstack([np.hstack([cal, np.zeros((3, 1))]), [0, 0, 0, 1]])
    np.testing.assert_allclose(sd.model(1, 1), want[:3])
    assert len(pybdv_meta.get_affine(str(xml), 1, timepoint=1)) == 3


def test_add_channel_and_time_point_later(dataset, rng):
    xml, stacks, factors = dataset
    extra = rng.integers(0, 65535, (7, 30, 22), dtype=np.uint16)
    later = rng.integers(0, 65535, (18, 50, 41), dtype=np.uint16)
    with BdvEditor(xml) as ed:
        ed.add_view(channel=2, shape=extra.shape, dtype="uint16", voxel_size=(1.0, 0.5, 0.5))
        for z in range(extra.shape[0]):
            ed.write_plane(extra[z], z=z, channel=2)
        ed.write_view(later, time=2, channel=0)  # a new time point of an existing setup
        ed.set_attribute_labels("channel", {2: "GFP"})
        assert ed.setup_id(channel=2) == 2
    sd = parse_spimdata(xml)
    assert sorted(sd.setups) == [0, 1, 2]
    assert sd.setups[2].attributes["channel"] == 2 and sd.attribute_values["channel"][2].name == "GFP"
    assert sd.timepoints == [0, 1, 2]
    assert sd.missing_views == {(1, 2), (2, 1), (2, 2)}
    # the new time point copies the setup's registration; the new setup gets calibration
    np.testing.assert_allclose(sd.model(2, 0), sd.model(0, 0))
    np.testing.assert_allclose(np.diag(sd.model(0, 2)[:, :3]), [1.0, 1.0, 2.0])
    np.testing.assert_array_equal(read_npy2bdv(xml, channel=2), extra)
    np.testing.assert_array_equal(read_npy2bdv(xml, time=2), later)
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        assert f["t00000/s02/0/cells"].compression == "gzip"  # "auto": the file's codec
        assert f["t00002/s00/2/cells"].chunks == f["t00000/s00/2/cells"].chunks
        np.testing.assert_array_equal(f["t00002/s00/2/cells"][()].view(np.uint16), pyramid(later, factors)[2])


def test_add_view_to_typed_fixture(fixtures_dir, tmp_path, rng):
    xml = _copy_fixture(fixtures_dir, tmp_path, "pybdv/example")
    new = rng.integers(0, 65535, (6, 64, 64), dtype=np.uint16)
    with BdvEditor(xml) as ed:
        assert ed.dtype_mode == "typed"
        ed.write_view(new, channel=5, voxel_size=(1.0, 1.0, 1.0))
    sd = parse_spimdata(xml)
    sid = next(s for s, vs in sd.setups.items() if vs.attributes.get("channel") == 5)
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        assert f[f"s{sid:02d}"].attrs["dataType"] == b"uint16"
        np.testing.assert_array_equal(f[f"t00000/s{sid:02d}/0/cells"][()], new)


def test_metadata_backup_and_unknown_elements(dataset):
    xml, _, _ = dataset
    root = ET.parse(xml).getroot()
    ET.SubElement(root, "ViewInterestPoints").text = "kept"
    ET.ElementTree(root).write(xml)
    with BdvEditor(xml) as ed:
        ed.set_metadata(camera="Orca", microscope="mesoSPIM", user="lab", sample="brain")
        assert ed.metadata() == {"microscope": "mesoSPIM", "user": "lab", "sample": "brain"}
    text = xml.read_text()
    assert "<ViewInterestPoints>kept</ViewInterestPoints>" in text
    assert text.count("<name>Orca</name>") == 2 and "<sample>brain</sample>" in text
    assert "<sample>" not in (xml.parent / "d.xml~1").read_text()
    with BdvEditor(xml) as ed:
        ed.set_metadata(sample=None)
    assert "<sample>" not in xml.read_text()
    assert not list(xml.parent.glob(".d.xml.*.tmp"))


def test_editor_errors(dataset, rng):
    xml, stacks, _ = dataset
    with pytest.raises(FileNotFoundError):
        BdvEditor(xml.with_name("none.xml"))
    ed = BdvEditor(xml, allow_incomplete=False)
    with pytest.raises(KeyError, match="no view setup"):
        ed.crop_view((None, None, None), channel=7)
    with pytest.raises(ValueError, match="empty"):
        ed.crop_view(((10, 5), None, None))
    with pytest.raises(ValueError, match="3 \\(start, stop\\) pairs"):
        ed.crop_view(((0, 5), None))
    with pytest.raises(ValueError, match="already holds data"):
        ed.add_view(channel=1, shape=(18, 50, 41), dtype="uint16")
    with pytest.raises(ValueError, match="a setup has one shape"):
        ed.add_view(time=3, shape=(1, 50, 41), dtype="uint16", voxel_size=(2.0, 0.5, 0.5))
    for call in (lambda: ed.set_metadata(user="bob\x02"), lambda: ed.set_attribute_labels("channel", ["a\x0c"]),
                 lambda: ed.append_affine(np.eye(4), "shift\x1b")):
        with pytest.raises(ValueError, match="XML 1.0 cannot hold"):
            call()
    ed.add_view(channel=2, shape=(4, 8, 8), dtype="uint16")
    ed.write_plane(np.ones((8, 8), np.uint16), z=0, channel=2)
    with pytest.raises(WriterStateError, match=r"z=1-3 zero-filled"):
        ed.close()
    with pytest.raises(WriterStateError, match="closed"):
        ed.crop_view((None, None, None))
    np.testing.assert_array_equal(read_npy2bdv(xml, channel=2)[1:], 0)


def test_editor_on_npy2bdv_file(tmp_path, rng):
    stack = rng.integers(0, 65535, (8, 40, 32), dtype=np.uint16)
    path = str(tmp_path / "n.h5")
    w = npy2bdv.BdvWriter(path, subsamp=((1, 1, 1), (1, 2, 2)), blockdim=((4, 16, 16),), nchannels=1)
    w.append_view(stack, time=0, channel=0)
    w.write_xml()
    w.close()
    with BdvEditor(tmp_path / "n.xml") as ed:
        ed.crop_view(((2, 30), (4, 36), (1, 7)))
        np.testing.assert_array_equal(ed.read_view(), stack[1:7, 4:36, 2:30])
        np.testing.assert_array_equal(ed.read_view(level=1), downsample(stack[1:7, 4:36, 2:30], (1, 2, 2), rule="bdv"))
    np.testing.assert_array_equal(read_npy2bdv(tmp_path / "n.xml"), stack[1:7, 4:36, 2:30])


def test_write_bdv_then_edit_round_trip(tmp_path):
    stack = np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64)
    write_bdv(tmp_path / "r.xml", stack)
    with BdvEditor(tmp_path / "r.xml") as ed:
        ed.crop_view(((8, -8), (0, 32), None))
        assert ed.read_view().shape == (4, 32, 48)
        assert ed.timepoints == [0] and ed.setup_ids == [0]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_in_place_crop_across_many_chunks(tmp_path, rng, compression):
    # small chunks and offsets on every axis: each destination chunk overwrites source chunks
    # that must already have been read
    factors = [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    stacks = [rng.integers(0, 65535, (30, 45, 40), dtype=np.uint16) for _ in range(2)]
    xml = tmp_path / "c.xml"
    with BdvWriter(xml, ntimepoints=2, factors=factors, chunks=(4, 16, 16), compression=compression) as w:
        for t, s in enumerate(stacks):
            w.write_view(s, time=t)
    with BdvEditor(xml, max_workers=2, memory_limit=1 << 16) as ed:
        ed.crop_view(((7, 33), (3, 40), (5, 27)))
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        assert f["t00001/s00/0/cells"].chunks == (4, 16, 16)  # rewritten in place
    for t, s in enumerate(stacks):
        want = pyramid(s[5:27, 3:40, 7:33], factors)
        for li in range(3):
            np.testing.assert_array_equal(read_h5(xml, level=li, time=t), want[li])


def test_time_point_gap_gives_list_timepoints(tmp_path, rng):
    s = rng.integers(0, 65535, (2, 8, 8), dtype=np.uint16)
    write_bdv(tmp_path / "g.xml", s)
    with BdvEditor(tmp_path / "g.xml") as ed:
        ed.write_view(s[::-1], time=3)
        assert ed.timepoints == [0, 3]
    sd = parse_spimdata(tmp_path / "g.xml")
    assert sd.timepoints_type == "list" and sd.timepoints == [0, 3] and not sd.missing_views
    np.testing.assert_array_equal(read_h5(tmp_path / "g.xml", time=3), s[::-1])


def test_new_channel_in_bdv_file_names_only_the_file_attributes(fixtures_dir, tmp_path, rng):
    xml = _copy_fixture(fixtures_dir, tmp_path, "mri-stack/mri-stack")
    new = rng.integers(0, 65535, (27, 226, 186), dtype=np.uint16)
    with BdvEditor(xml) as ed:
        assert ed.dtype_mode == "legacy"
        ed.set_metadata(camera="cam")
        ed.write_view(new, channel=2, voxel_size=(10.0, 1.0, 1.0), unit="cm")
    sd = parse_spimdata(xml)
    assert sd.setups[1].attributes == {"channel": 2} and set(sd.attribute_values) == {"channel"}
    assert pybdv_meta.get_attributes(str(xml), 1)["channel"]["id"] == 2
    assert xml.read_text().count("<name>cam</name>") == 2
    np.testing.assert_array_equal(read_h5(xml, setup=1), new)
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        assert f["t00000/s01/0/cells"].dtype == np.int16 and "dataType" not in f["s01"].attrs


def test_crop_refused_while_adding_views_of_that_setup(dataset, rng):
    xml, _, _ = dataset
    with BdvEditor(xml, allow_incomplete=True) as ed:
        ed.add_view(time=2, shape=(18, 50, 41), dtype="uint16", voxel_size=(2.0, 0.5, 0.5))
        ed.write_plane(np.zeros((50, 41), np.uint16), z=0, time=2)
        with pytest.raises(WriterStateError, match="being added"):
            ed.crop_view(((0, 10), None, None))
        ed.crop_view(((0, 10), None, None), channel=1)  # another setup is fine
        with pytest.warns(UserWarning, match="z=1-17 zero-filled"):
            ed.close()


def test_crop_of_a_damaged_view_changes_nothing(tmp_path):
    # a corrupt chunk in time point 1 failed the crop after time point 0 had been cropped
    data = {(t,): np.arange(16 * 64 * 64, dtype=np.uint16).reshape(16, 64, 64) + t for t in range(2)}
    write_bdv(tmp_path / "v.xml", data, compression="gzip")
    with h5py.File(tmp_path / "v.h5", "r") as f:
        info = f["t00001/s00/0/cells"].id.get_chunk_info(0)
    with open(tmp_path / "v.h5", "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * min(64, info.size))
    xml_before = (tmp_path / "v.xml").read_bytes()
    with BdvEditor(tmp_path / "v.xml") as ed:
        with pytest.raises(FormatError, match=r"t00001/s00/0/cells planes 0\.\. cannot be read .*nothing was cropped"):
            ed.crop_view(((0, 32), None, None))
    assert (tmp_path / "v.xml").read_bytes() == xml_before
    with h5py.File(tmp_path / "v.h5", "r") as f:
        np.testing.assert_array_equal(f["t00000/s00/0/cells"][()].view(np.uint16), data[(0,)])


def test_crop_through_a_link_bdv_master_is_refused(tmp_path):
    # it cropped the tile's own .h5 and left the tile's XML describing the old size
    from fastims import link_bdv

    for i in range(2):
        write_bdv(tmp_path / f"b{i}.xml", np.full((4, 16, 16), i, np.uint16))
    link_bdv(tmp_path / "m.xml", [tmp_path / "b0.xml", tmp_path / "b1.xml"])
    before = (tmp_path / "b1.h5").read_bytes()
    with BdvEditor(tmp_path / "m.xml") as ed:
        with pytest.raises(ValueError, match="b1.h5, a BDV dataset of its own"):
            ed.crop_view(((0, 8), None, None), tile=1)
    assert (tmp_path / "b1.h5").read_bytes() == before


@pytest.mark.parametrize("maker", ["pybdv", "npy2bdv", "fastims"])
def test_added_channel_follows_the_file(tmp_path, maker):
    """A channel added to another tool's file gets that file's calibration and levels.

    New setups were calibrated to the smallest voxel (BigStitcher's way) whatever the file
    did (a channel added to a pybdv file, whose affines are physical, came out 2.5x too
    large), and got the default levels (one, for this size): the dataset read as one level.
    """
    arr = np.arange(16 * 64 * 72, dtype=np.uint16).reshape(16, 64, 72)
    xml, h5 = tmp_path / "d.xml", str(tmp_path / "d.h5")
    if maker == "pybdv":
        pybdv = pytest.importorskip("pybdv")
        for sid in range(2):
            pybdv.make_bdv(arr, h5, downscale_factors=[[2, 2, 2], [2, 2, 2]], resolution=[2.0, 0.4, 0.4],
                           unit="micrometer", setup_id=sid)
    elif maker == "npy2bdv":
        npy2bdv = pytest.importorskip("npy2bdv")
        w = npy2bdv.BdvWriter(h5, nchannels=2, subsamp=((1, 1, 1), (2, 2, 2), (4, 4, 4)), blockdim=((8, 32, 32),) * 3)
        for c in range(2):
            w.append_view(arr, time=0, channel=c, voxel_size_xyz=(0.4, 0.4, 2.0), voxel_units="micrometer")
        w.write_xml()
        w.close()
    else:
        write_bdv(xml, {(0, 0, c): arr for c in range(2)}, voxel_size=(2.0, 0.4, 0.4),
                  factors=[(1, 1, 1), (2, 2, 2), (4, 4, 4)])
    with BdvEditor(xml) as ed:
        ed.add_view(channel=2, shape=arr.shape, dtype="uint16", voxel_size=(2.0, 0.4, 0.4), unit="micrometer")
        ed.write(arr, channel=2)
    with fastims.open(xml) as r:
        assert r.levels == 3
        np.testing.assert_allclose(r.affine(0, 2), r.affine(0, 0))
        new, old = r.level(2).asarray(c=2), r.level(2).asarray(c=0)
        assert new.shape == old.shape
        if maker == "fastims":  # other tools downsample by rules of their own
            np.testing.assert_array_equal(new, old)

def test_exception_in_the_block_drops_views_being_added(tmp_path):
    # they were described in the XML (missing views) and their groups left in the .h5
    arr = np.arange(16 * 64 * 64, dtype=np.uint16).reshape(16, 64, 64)
    write_bdv(tmp_path / "v.xml", arr, compression="gzip")
    before = (tmp_path / "v.xml").read_bytes()
    with pytest.raises(ValueError, match=r"\(Z', 64, 64\)"):
        with BdvEditor(tmp_path / "v.xml") as ed:
            ed.add_view(channel=1, shape=arr.shape, dtype="uint16")
            ed.write_plane(arr[0], z=0, channel=1)
            ed.write_plane(np.zeros((64, 65), np.uint16), z=1, channel=1)
    assert (tmp_path / "v.xml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.h5", "v.xml"]
    with h5py.File(tmp_path / "v.h5", "r") as f:
        assert "s01" not in f and "s01" not in f["t00000"]
    # edits made before the exception are kept: the crop is in the .h5, so the XML follows it
    with pytest.raises(RuntimeError, match="later"):
        with BdvEditor(tmp_path / "v.xml") as ed:
            ed.crop_view(((0, 32), None, None))
            raise RuntimeError("later")
    with fastims.open(tmp_path / "v.xml") as r:
        np.testing.assert_array_equal(r.asarray(), arr[:, :, :32])


def test_channel_added_after_a_crop_keeps_the_pyramid(tmp_path, rng):
    """A setup added after crop_view matched the pre-crop size: one level, and so did the reader."""
    factors = [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
    arr = rng.integers(0, 4000, (16, 128, 128), dtype=np.uint16)
    xml = tmp_path / "c.xml"
    write_bdv(xml, arr, factors=factors)
    extra = rng.integers(0, 4000, (16, 64, 64), dtype=np.uint16)
    with BdvEditor(xml) as ed:
        shape = ed.crop_view(((0, 64), (0, 64), None))
        assert shape == (16, 64, 64)
        ed.add_view(channel=1, shape=shape, dtype="uint16")
        ed.write(extra, channel=1)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["s01/resolutions"][()].tolist() == f["s00/resolutions"][()].tolist()
        assert len(f["s01/resolutions"]) == 3
    with fastims.open(xml) as r:
        assert r.levels == 3
    for li, want in enumerate(pyramid(extra, factors)):
        np.testing.assert_array_equal(read_npy2bdv(xml, level=li, channel=1), want)
    assert pybdv_meta.get_size(str(xml), 0) == pybdv_meta.get_size(str(xml), 1) == (16, 64, 64)


def test_time_point_added_after_a_crop_has_the_cropped_size(dataset, rng):
    xml, _, factors = dataset
    later = rng.integers(0, 65535, (18, 50, 41), dtype=np.uint16)
    with BdvEditor(xml) as ed:
        ed.write_view(later, time=2)  # the setup's streaming description is made here
        ed.save()
        shape = ed.crop_view(((0, 20), (10, 40), None))
        cropped = rng.integers(0, 65535, shape, dtype=np.uint16)
        ed.write_view(cropped, time=3)  # planned from the cropped setup, not the old one
    np.testing.assert_array_equal(read_npy2bdv(xml, time=2), later[:, 10:40, :20])
    for li, want in enumerate(pyramid(cropped, factors)):
        np.testing.assert_array_equal(read_npy2bdv(xml, time=3, level=li), want)
    assert parse_spimdata(xml).setups[0].size == shape


def _zero_filled(xml):
    """(the HDF5 attributes, the XML records) naming zero-filled planes, by (time, setup)."""
    attrs = {}
    with h5py.File(xml.with_suffix(".h5"), "r") as f:
        for tname, tgrp in f.items():
            if not tname.startswith("t"):
                continue
            for sname, sgrp in tgrp.items():
                if "zeroFilledPlanes" in sgrp.attrs:
                    attrs[(int(tname[1:]), int(sname[1:]))] = sgrp.attrs["zeroFilledPlanes"].decode()
    block = ET.parse(xml).getroot().find("generatedBy/zeroFilledPlanes")
    records = {} if block is None else {
        (int(v.get("timepoint")), int(v.get("setup"))): v.get("z") for v in block.findall("view")
    }
    return attrs, records


def test_added_view_closed_incomplete_names_its_zero_filled_planes(tmp_path, rng):
    arr = rng.integers(0, 4000, (10, 32, 32), dtype=np.uint16)
    xml = tmp_path / "e.xml"
    write_bdv(xml, arr, factors=[(1, 1, 1), (2, 2, 2)])
    ed = BdvEditor(xml, allow_incomplete=True)
    ed.add_view(channel=1, shape=arr.shape, dtype="uint16")
    ed.write(arr[:4], channel=1)
    ed.write(arr[8:], z=8, channel=1)
    with pytest.warns(UserWarning, match="incomplete views"):
        ed.close()
    assert _zero_filled(xml) == ({(0, 1): "4-7"}, {(0, 1): "4-7"})
    with fastims.open(xml) as r:
        assert r.zero_filled == {(0, 1): [4, 5, 6, 7]}
        assert r.levels == 2
    np.testing.assert_array_equal(read_npy2bdv(xml, channel=1)[4:8], 0)
    assert pybdv_meta.get_setup_ids(str(xml)) == [0, 1]


def test_crop_moves_the_zero_filled_planes_with_the_data(tmp_path):
    xml = tmp_path / "z.xml"
    w = BdvWriter(xml, allow_incomplete=True, ntimepoints=2, factors=[(1, 1, 1), (2, 2, 2)])
    w.add_view(shape=(10, 16, 16), dtype="uint16")
    w.write(np.ones((3, 16, 16), np.uint16))
    w.write(np.ones((9, 16, 16), np.uint16), time=1)
    with pytest.warns(UserWarning, match="incomplete views"):
        w.close()
    assert _zero_filled(xml) == ({(0, 0): "3-9", (1, 0): "9"}, {(0, 0): "3-9", (1, 0): "9"})
    with BdvEditor(xml) as ed:
        ed.crop_view((None, None, (2, 6)))  # planes 2..5: zeros at 3, 4, 5 -> 1, 2, 3
    assert _zero_filled(xml) == ({(0, 0): "1-3"}, {(0, 0): "1-3"})
    with fastims.open(xml) as r:
        assert r.zero_filled == {(0, 0): [1, 2, 3]}
        view = r.asarray(t=0)
        assert view.shape == (4, 16, 16) and view[0].min() == 1 and view[1:].max() == 0
    with BdvEditor(xml) as ed:
        ed.crop_view((None, None, (0, 1)))  # only written planes remain: the records go
    assert _zero_filled(xml) == ({}, {})
    with fastims.open(xml) as r:
        assert r.zero_filled == {}
