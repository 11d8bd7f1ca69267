"""fastims.convert.convert and ``fastims convert``: .ims <-> BDV with regenerated pyramids."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastims
from fastims import BdvWriter, downsample, write_bdv, write_ims
from fastims.cli import main
import fastims.convert as convert_module
from fastims.convert import SLAB_PLANES, _slab_depth, convert

MRI = "bdv/mri-stack/mri-stack.xml"
U16 = "ims/imariswriter/u16_z33_y130_x260_shufflegzip2.ims"

SHAPE = (37, 45, 51)  # odd sizes: truncating (Imaris) and ceil (BDV) levels differ
VOXEL = (2.0, 0.5, 0.25)
NAMES = ["GFP", "mCherry"]
TIMES = [dt.datetime(2024, 5, 6, 7, 8, 9, 123000), dt.datetime(2024, 5, 6, 7, 9, 10, 456000)]


@pytest.fixture
def data(rng):
    """2 time points x 2 channels of uint16 with values above 32767 (the legacy int16 trap)."""
    return rng.integers(0, 65535, (2, 2, *SHAPE), dtype=np.uint16, endpoint=True)


@pytest.fixture
def ims_src(tmp_path, data):
    path = tmp_path / "src.ims"
    write_ims(path, data, voxel_size=VOXEL, channel_names=NAMES, timepoints=TIMES,
              channel_colors=[(0, 1, 0), (1, 0, 1)], color_ranges=[(10, 60000), (0, 4000)],
              name="sample", description="two channels", origin=(5.0, -3.0, 2.5))
    return path


def levels_of(path):
    with fastims.open(path) as r:
        return [r.level(i)[:] for i in range(r.levels)]


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ---------------------------------------------------------------------------------------
# round trips and pyramids
# ---------------------------------------------------------------------------------------


def test_ims_to_bdv_to_ims_round_trip(tmp_path, data, ims_src):
    xml = convert(ims_src, tmp_path / "mid.xml")
    assert xml == tmp_path / "mid.xml" and (tmp_path / "mid.h5").is_file()
    back = convert(xml, tmp_path / "back.ims")
    for path in (xml, back):
        with fastims.open(path) as r:
            assert r.shape == data.shape and r.dtype == np.uint16
            np.testing.assert_array_equal(r[:], data)
            np.testing.assert_allclose(r.voxel_size, VOXEL)
            assert r.unit == "um"
            assert r.channel_names == NAMES
    # uint16 -> legacy int16 storage, no dataType attribute (every Fiji reads it)
    with h5py.File(tmp_path / "mid.h5", "r") as f:
        assert f["t00000/s00/0/cells"].dtype == np.int16
        assert "dataType" not in f["s00"].attrs
    # nothing but the outputs is left behind
    assert listing(tmp_path) == ["back.ims", "mid.h5", "mid.xml", "src.ims"]


def test_each_target_regenerates_its_own_pyramid(tmp_path, rng):
    # big enough in Y and X for a second level in both formats
    data = rng.integers(0, 65535, (1, 2, 11, 301, 263), dtype=np.uint16, endpoint=True)
    write_ims(tmp_path / "src.ims", data, voxel_size=VOXEL, compression="lz4")
    with fastims.open(tmp_path / "src.ims") as r:  # the source's pyramid is not copied
        r_levels = r.levels
    bdv = convert(tmp_path / "src.ims", tmp_path / "c.xml", max_workers=2)
    ims = convert(bdv, tmp_path / "c.ims", max_workers=2)
    write_bdv(tmp_path / "fresh.xml", {(0, 0, c): data[0, c] for c in range(2)}, voxel_size=VOXEL)
    write_ims(tmp_path / "fresh.ims", data, voxel_size=VOXEL)
    for converted, fresh in ((bdv, tmp_path / "fresh.xml"), (ims, tmp_path / "fresh.ims")):
        got, want = levels_of(converted), levels_of(fresh)
        assert len(got) == len(want) > 1
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    # independently of the writers: level 1 is the target rule's block mean of level 0
    with fastims.open(ims) as r:
        assert r.levels == r_levels
        ims_level1 = r.level_shapes[1]
        factors = tuple(a // b for a, b in zip(r.level_shapes[0][2:], r.level_shapes[1][2:]))
        np.testing.assert_array_equal(r.level(1)[0, 1], downsample(data[0, 1], factors, rule="imaris"))
    with h5py.File(tmp_path / "c.h5", "r") as f:
        x, y, z = (int(v) for v in f["s01/resolutions"][1])
    with fastims.open(bdv) as r:
        assert (z, y, x) != (1, 1, 1)
        np.testing.assert_array_equal(r.level(1)[0, 1], downsample(data[0, 1], (z, y, x), rule="bdv"))
        # the two rules differ on odd sizes: the BDV level is ceil-sized
        assert r.level_shapes[1] != ims_level1


def test_ims_to_ims_carries_imaris_metadata(tmp_path, ims_src):
    out = convert(ims_src, tmp_path / "copy.ims", compression="lz4", shuffle=True)
    with fastims.open(ims_src) as a, fastims.open(out) as b:
        np.testing.assert_array_equal(a[:], b[:])
        assert b.timepoints == TIMES
        assert b.channel_colors == a.channel_colors == [(0.0, 1.0, 0.0), (1.0, 0.0, 1.0)]
        np.testing.assert_allclose(b._axis_origin(0), a._axis_origin(0))
        info_a, info_b = a.metadata["DataSetInfo"], b.metadata["DataSetInfo"]
        for key in ("Name", "Description"):
            assert info_b["Image"][key] == info_a["Image"][key]
        ranges = [[float(v) for v in info_b[f"Channel {c}"]["ColorRange"].split()] for c in range(2)]
        assert ranges == [[10.0, 60000.0], [0.0, 4000.0]]
    with h5py.File(out, "r") as f:  # re-encoded with the requested codec
        plist = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"].id.get_create_plist()
        assert 32004 in {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}


def test_imaris_origin_becomes_a_bdv_translation_and_comes_back(tmp_path, ims_src):
    bdv = convert(ims_src, tmp_path / "o.xml")
    with fastims.open(bdv) as r:
        affine = r.affine(0, 0)
        smallest = min(VOXEL)
        # (x, y, z) scale voxel / smallest, translation ExtMin / smallest
        np.testing.assert_allclose(np.diag(affine[:, :3]), [v / smallest for v in VOXEL[::-1]])
        np.testing.assert_allclose(affine[:, 3], np.array([2.5, -3.0, 5.0]) / smallest)
    back = convert(bdv, tmp_path / "o.ims")
    with fastims.open(ims_src) as a, fastims.open(back) as b:
        np.testing.assert_allclose(b._axis_origin(0), a._axis_origin(0))


def test_float32_and_uint8_choose_typed_bdv(tmp_path, rng):
    vol = rng.random((9, 20, 17), dtype=np.float32) * 1000
    write_ims(tmp_path / "f.ims", vol, voxel_size=(1.0, 0.3, 0.3))
    out = convert(tmp_path / "f.ims", tmp_path / "f.h5", compression=None)
    assert out == tmp_path / "f.xml"
    with fastims.open(out) as r:
        assert r.dtype == np.float32
        np.testing.assert_array_equal(r[0, 0], vol)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["s00"].attrs["dataType"] in (b"float32", "float32")
    small = rng.integers(0, 255, (5, 16, 16), dtype=np.uint8)
    write_bdv(tmp_path / "b.xml", small, dtype_mode="typed")
    back = convert(tmp_path / "b.xml", tmp_path / "b.ims")
    with fastims.open(back) as r:
        assert r.dtype == np.uint8
        np.testing.assert_array_equal(r[0, 0], small)
    with pytest.raises(TypeError, match="dtype_mode='typed'"):
        convert(tmp_path / "f.ims", tmp_path / "legacy.xml", dtype_mode="legacy")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------------------
# BDV specifics
# ---------------------------------------------------------------------------------------


def test_bdv_to_bdv_keeps_setups_attributes_and_affines(tmp_path, rng):
    src = tmp_path / "tiles.xml"
    rot = np.array([[0.0, -1.0, 0.0, 4.0], [1.0, 0.0, 0.0, -2.0], [0.0, 0.0, 1.0, 7.5]])
    stacks = {}
    with BdvWriter(src, ntimepoints=2, nchannels=2, ntiles=2) as w:
        w.set_attribute_labels("channel", ["488nm", "561nm"])
        w.set_attribute_labels("tile", ["left", "right"])
        for c in range(2):
            for tile in range(2):
                shape = (6, 30, 25) if tile == 0 else (7, 28, 33)
                for t in range(2):
                    w.add_view(time=t, channel=c, tile=tile, shape=shape, dtype="uint16",
                               voxel_size=(3.0, 0.7, 0.7), tile_location=(0.0, 0.0, 20.0 * tile),
                               affine=rot if (t, c, tile) == (1, 1, 1) else None)
                    stacks[(t, c, tile)] = rng.integers(0, 65535, shape, dtype=np.uint16)
                    w.write(stacks[(t, c, tile)], time=t, channel=c, tile=tile)
    out = convert(src, tmp_path / "copy.xml", compression=None)
    with fastims.open(src) as a, fastims.open(out) as b:
        assert b.setup_ids == a.setup_ids
        assert [s.attributes for s in b.setups] == [s.attributes for s in a.setups]
        labels = {k: {i: v.name for i, v in b.attribute_values[k].items()} for k in ("channel", "tile")}
        assert labels == {"channel": {0: "488nm", 1: "561nm"}, "tile": {0: "left", 1: "right"}}
        for (t, c, tile), stack in stacks.items():
            sid = a.select_setup(channel=c, tile=tile)
            np.testing.assert_array_equal(b.asarray(t=t, setup=sid), stack)
            np.testing.assert_allclose(b.affine(t, sid), a.affine(t, sid), rtol=1e-12, atol=1e-12)
        assert not np.allclose(b.affine(1, 3), b.affine(0, 3))  # the rotation survived
    # setups of different sizes cannot share one .ims image: the error names them
    differ = r"setups 0, 2: \(Z, Y, X\) \(6, 30, 25\).*setups 1, 3: \(Z, Y, X\) \(7, 28, 33\)"
    with pytest.raises(ValueError, match=differ):
        convert(src, tmp_path / "tiles.ims")
    assert not (tmp_path / "tiles.ims").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_missing_views(tmp_path, rng):
    src = tmp_path / "gap.xml"
    vol = rng.integers(0, 65535, (5, 12, 14), dtype=np.uint16)
    with BdvWriter(src, ntimepoints=2, nchannels=2) as w:
        for c in range(2):
            w.add_view(channel=c, shape=vol.shape, dtype="uint16")
            w.write(vol + c, channel=c)
        w.write(vol + 2, time=1, channel=0)  # (time 1, setup 1) never written: a missing view
    with fastims.open(src) as r:
        assert r.missing_views == [(1, 1)]
    out = convert(src, tmp_path / "gap2.xml")
    with fastims.open(out) as r:
        assert r.missing_views == [(1, 1)]
        np.testing.assert_array_equal(r.asarray(t=1, c=0), vol + 2)
    with pytest.warns(UserWarning, match="zero volumes.*t=1 c=1"):
        ims = convert(src, tmp_path / "gap.ims")
    with fastims.open(ims) as r:
        np.testing.assert_array_equal(r[1, 1], 0)
        np.testing.assert_array_equal(r[1, 0], vol + 2)


# ---------------------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------------------


def test_mri_stack_legacy_int16(fixtures_dir, tmp_path):
    src = fixtures_dir / MRI
    ims = convert(src, tmp_path / "mri.ims")
    bdv = convert(src, tmp_path / "mri.xml")
    with fastims.open(src) as a, fastims.open(ims) as b, fastims.open(bdv) as c:
        ref = a[:]
        assert ref.dtype == np.uint16
        np.testing.assert_array_equal(b[:], ref)
        np.testing.assert_array_equal(c[:], ref)
        # Imaris has no cm: 1 x 1 x 10 cm becomes 10 x 10 x 100 mm
        assert b.unit == "mm"
        np.testing.assert_allclose(b.voxel_size, (100.0, 10.0, 10.0))
        assert c.unit == "cm" and c.voxel_size == a.voxel_size == (10.0, 1.0, 1.0)
        np.testing.assert_allclose(c.affine(0, 0), a.affine(0, 0))
        assert b.channel_names == c.channel_names == ["mri-stack"]
        assert b.levels > 1  # the Imaris pyramid was built


def test_imariswriter_file(fixtures_dir, tmp_path):
    src = fixtures_dir / U16
    bdv = convert(src, tmp_path / "u.xml")
    ims = convert(bdv, tmp_path / "u.ims", compression=None)
    with fastims.open(src) as a:
        ref = a[:]
        np.testing.assert_array_equal(ref[0, 0], np.load(src.with_suffix(".npy")))
        for path in (bdv, ims):
            with fastims.open(path) as b:
                np.testing.assert_array_equal(b[:], ref)
                np.testing.assert_allclose(b.voxel_size, a.voxel_size)
                assert b.channel_names == a.channel_names


# ---------------------------------------------------------------------------------------
# streaming, bounded memory, progress
# ---------------------------------------------------------------------------------------


def test_slab_depth_rule():
    assert _slab_depth(100, 1000, 4, 1 << 30) == 32
    assert _slab_depth(100, 1000, 12, 1 << 30) == 24  # whole chunks
    assert _slab_depth(100, 1000, 64, 1 << 30) == 64  # never thinner than a chunk
    assert _slab_depth(10, 1000, 64, 1 << 30) == 10
    assert _slab_depth(100, 1000, None, 1 << 30) == SLAB_PLANES
    assert _slab_depth(100, 1000, 4, 9000) == 8  # memory cap, rounded to chunks
    assert _slab_depth(100, 1000, 4, 10) == 4


@pytest.mark.parametrize("path", ["direct", "hdf5"])
@pytest.mark.parametrize("target", ["out.ims", "out.xml"])
def test_reads_never_exceed_one_slab(tmp_path, rng, monkeypatch, target, path):
    nz = 100
    vol = rng.integers(0, 65535, (nz, 40, 36), dtype=np.uint16)
    src = tmp_path / "deep.h5"  # a BDV .h5 alone, with thin chunks
    write_bdv(src, vol, chunks=(4, 16, 16), compression="gzip")
    plane = 40 * 36 * 2
    memory_limit = 4 * 8 * plane  # read slab budget (a quarter of it): 8 planes, two chunks
    depth = _slab_depth(nz, plane, 4, memory_limit // 4)
    assert depth == 8
    requests: list[tuple[int, int]] = []  # (first plane, end plane) of every read
    if path == "hdf5":  # HDF5's pipeline for every read (as for filters fastims does not decode)
        monkeypatch.setattr(convert_module, "_direct_codec", lambda ds, dtype: None)
        original = h5py.Dataset.read_direct

        def spy(self, dest, source_sel=None, dest_sel=None):
            if Path(self.file.filename) == src and "/0/" in self.name:
                assert source_sel is not None, "a whole-dataset read"
                requests.append((source_sel[0].start, source_sel[0].stop))
                assert dest.nbytes <= depth * plane
            return original(self, dest, source_sel, dest_sel)

        monkeypatch.setattr(h5py.Dataset, "read_direct", spy)
    else:  # raw chunks decoded by fastims
        original_chunk = convert_module._Pump._chunk

        def spy_chunk(self, vol, ds, codec, offset, z0, block):
            assert block.nbytes <= depth * plane
            requests.append((offset[0], offset[0] + ds.chunks[0]))
            return original_chunk(self, vol, ds, codec, offset, z0, block)

        monkeypatch.setattr(convert_module._Pump, "_chunk", spy_chunk)
    seen = []
    out = convert(src, tmp_path / target, memory_limit=memory_limit, max_workers=2,
                  progress=lambda done, total: seen.append((done, total)))
    monkeypatch.undo()
    # every read lies inside one slab, slabs are read in order, every plane once
    slabs = [a // depth for a, _ in requests]
    assert all(a // depth == (b - 1) // depth for a, b in requests)
    assert slabs == sorted(slabs)
    planes = np.zeros(nz, int)
    for a, b in requests:
        planes[a:b] += 1
    # HDF5 reads whole slabs; direct reads are the 3 x 3 chunks of each 4-plane chunk layer
    assert set(planes.tolist()) == ({1} if path == "hdf5" else {9})
    assert seen[0] == (0, vol.nbytes) and seen[-1] == (vol.nbytes, vol.nbytes)
    assert len(seen) == nz // depth + 1 + (nz % depth > 0)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    with fastims.open(out) as r:
        np.testing.assert_array_equal(r[0, 0], vol)


def test_direct_chunk_fallbacks(tmp_path, rng, monkeypatch):
    """Unallocated chunks and chunks stored with a filter skipped are read by HDF5."""
    vol = rng.integers(0, 65535, (10, 20, 30), dtype=np.uint16)
    src = tmp_path / "raw.h5"
    with h5py.File(src, "w") as f:
        f.create_group("s00")
        ds = f.create_dataset("t00000/s00/0/cells", shape=vol.shape, dtype=np.uint16, chunks=(4, 8, 8),
                              compression="gzip", shuffle=True)
        ds[0:4] = vol[0:4]  # planes 4..7 are never written: fill value 0
        ds[8:10] = vol[8:10]
        # a chunk whose deflate was skipped (filter mask bit 1): shuffled bytes, not compressed
        raw = np.ascontiguousarray(vol[8:12, 8:16, 8:16])
        padded = np.zeros((4, 8, 8), np.uint16)
        padded[: raw.shape[0]] = raw
        shuffled = padded.view(np.uint8).reshape(-1, 2).T.copy()
        ds.id.write_direct_chunk((8, 8, 8), shuffled.tobytes(), filter_mask=0b10)
    expect = vol.copy()
    expect[4:8] = 0
    with fastims.open(src) as r:
        np.testing.assert_array_equal(r[0, 0], expect)  # HDF5's own answer
    from fastims.reader import BaseReader

    original = BaseReader._read_into
    fallbacks = []

    def spy(self, level, t, c, source_sel, out, dest_sel):
        fallbacks.append(tuple(s.start for s in source_sel))
        return original(self, level, t, c, source_sel, out, dest_sel)

    monkeypatch.setattr(BaseReader, "_read_into", spy)
    out = convert(src, tmp_path / "raw.ims", compression=None)
    monkeypatch.undo()
    # the 3 x 4 unallocated chunks of planes 4..7 and the chunk without deflate
    assert sorted(fallbacks) == sorted([(4, y, x) for y in (0, 8, 16) for x in (0, 8, 16, 24)] + [(8, 8, 8)])
    with fastims.open(out) as r:
        np.testing.assert_array_equal(r[0, 0], expect)


# ---------------------------------------------------------------------------------------
# failures leave nothing that looks complete
# ---------------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def fail_after_first_slab(done, total):
    if done:
        raise Boom("disk on fire")


@pytest.mark.parametrize("target", ["out.ims", "out.xml", "out.h5"])
def test_failure_removes_temporary_files(tmp_path, ims_src, target, caplog):
    before = listing(tmp_path)
    with caplog.at_level("DEBUG", logger="fastims"), pytest.raises(Boom):
        convert(ims_src, tmp_path / target, progress=fail_after_first_slab)
    assert listing(tmp_path) == before
    # the writer was abandoned, not completed (no zero-filling, no warnings on stderr)
    assert not [r for r in caplog.records if r.levelno >= 30], caplog.text
    assert "closed aborted" in caplog.text


def test_failure_keeps_the_existing_output(tmp_path, ims_src, rng):
    old = rng.integers(0, 255, (3, 8, 8), dtype=np.uint8)
    write_bdv(tmp_path / "old.xml", old, dtype_mode="typed")
    stamp = {p: p.read_bytes() for p in (tmp_path / "old.xml", tmp_path / "old.h5")}
    with pytest.raises(Boom):
        convert(ims_src, tmp_path / "old.xml", overwrite=True, progress=fail_after_first_slab)
    assert {p: p.read_bytes() for p in stamp} == stamp
    assert listing(tmp_path) == ["old.h5", "old.xml", "src.ims"]
    # and with overwrite a conversion onto the source itself works
    out = convert(ims_src, ims_src, overwrite=True, compression=None)
    assert listing(tmp_path) == ["old.h5", "old.xml", "src.ims"]
    with fastims.open(out) as r:
        assert r.channel_names == NAMES and r.shape[:2] == (2, 2)


def test_argument_errors(tmp_path, ims_src):
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "nope.ims", tmp_path / "x.xml")
    (tmp_path / "taken.h5").write_bytes(b"")
    with pytest.raises(FileExistsError, match="taken.h5"):
        convert(ims_src, tmp_path / "taken.xml")
    with pytest.raises(ValueError, match="output format"):
        convert(ims_src, tmp_path / "x.tif")
    with pytest.raises(ValueError, match="BDV outputs only"):
        convert(ims_src, tmp_path / "x.ims", dtype_mode="typed")
    with pytest.raises(ValueError, match="compression"):
        convert(ims_src, tmp_path / "x.ims", compression="zstd")
    with pytest.raises(ValueError, match="max_workers"):
        convert(ims_src, tmp_path / "x.ims", max_workers=0)
    with pytest.raises(FileNotFoundError, match="output folder"):
        convert(ims_src, tmp_path / "no" / "x.ims")
    (tmp_path / "bad.ims").write_text("not hdf5")
    with pytest.raises(fastims.FormatError):
        convert(tmp_path / "bad.ims", tmp_path / "x.xml")
    # signed int16 has no home: .ims stores unsigned types, BDV's legacy int16 reads as uint16
    np.save(tmp_path / "signed.npy", np.array([-30, -1, 0, 1, 300], np.int16).reshape(1, 1, 5))
    for target, mode in (("x.ims", None), ("x.xml", None), ("x.xml", "legacy")):
        with pytest.raises(TypeError, match="convert the values first") as info:
            convert(tmp_path / "signed.npy", tmp_path / target, dtype_mode=mode)
        assert "which stores int16" not in str(info.value)
    assert listing(tmp_path) == ["bad.ims", "signed.npy", "src.ims", "taken.h5"]


def test_callable_at_package_level(tmp_path):
    # fastims.convert is the module (a submodule import binds it on the package) and calls convert()
    np.save(tmp_path / "a.npy", np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8))
    code = ("import sys, fastims; fastims.convert(sys.argv[1], sys.argv[2]); "
            "import fastims.convert as c; c.convert(sys.argv[1], sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.npy"), str(tmp_path / "a.ims"),
                    str(tmp_path / "a.xml")], check=True)
    fastims.convert(tmp_path / "a.npy", tmp_path / "b.ims")
    for name in ("a.ims", "a.xml", "b.ims"):
        with fastims.open(tmp_path / name) as r:
            np.testing.assert_array_equal(r.asarray(), np.load(tmp_path / "a.npy"))


def test_non_ascii_channel_name_to_imaris_warns(tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.integers(0, 900, (4, 16, 16), dtype=np.uint16))
    with pytest.raises(ValueError, match="unit must name a length unit"):
        convert(tmp_path / "a.npy", tmp_path / "a.ims", unit=" ")
    with pytest.warns(UserWarning, match="not ASCII"):
        convert(tmp_path / "a.npy", tmp_path / "a.ims", channel_names=["GFP é"])
    with fastims.open(tmp_path / "a.ims") as r:
        assert r.channel_names == ["GFP ?"]


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def test_cli_convert(tmp_path, ims_src, capsys, data):
    out = tmp_path / "cli.xml"
    assert main(["convert", str(ims_src), str(out), "--no-progress", "--compression", "gzip",
                 "--level", "1", "--shuffle", "--workers", "2", "--memory-limit", "64MiB"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "MB/s" in line and "cli.xml" in line
    with fastims.open(out) as r:
        np.testing.assert_array_equal(r[:], data)
    # existing output without --overwrite, missing input, unreadable input: exit 1, stderr
    assert main(["convert", str(ims_src), str(out), "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.ims"), str(tmp_path / "m.xml")]) == 1
    assert "missing.ims" in capsys.readouterr().err
    (tmp_path / "junk.ims").write_bytes(b"\0" * 64)
    assert main(["convert", str(tmp_path / "junk.ims"), str(tmp_path / "j.xml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastims: error:") and "HDF5" in err
    assert main(["convert", str(ims_src), str(out), "--overwrite", "--no-progress", "--compression", "none"]) == 0
    assert listing(tmp_path) == ["cli.h5", "cli.xml", "junk.ims", "src.ims"]
    with pytest.raises(SystemExit):
        main(["convert", str(ims_src), str(out), "--memory-limit", "lots"])
    assert "2GB" in capsys.readouterr().err


def test_cli_memory_limit_units():
    from fastims.cli import _byte_size

    assert _byte_size("2GB") == 2_000_000_000
    assert _byte_size("512MiB") == 512 << 20
    assert _byte_size("1.5g") == 1_500_000_000
    assert _byte_size("1000000") == 1_000_000


def test_setup_without_any_data(tmp_path, rng):
    src = tmp_path / "half.xml"
    vol = rng.integers(0, 65535, (4, 10, 12), dtype=np.uint16)
    with pytest.warns(UserWarning, match="incomplete views"):
        with BdvWriter(src, nchannels=2, allow_incomplete=True) as w:
            for c in range(2):
                w.add_view(channel=c, shape=vol.shape, dtype="uint16", name=f"ch{c}")
            w.write(vol, channel=0)  # setup 1 is declared but never written
    with pytest.raises(ValueError, match=r"no data for setup 1 \(ch1\)"):
        convert(src, tmp_path / "half.ims")
    with pytest.warns(UserWarning, match=r"left out: setup 1 \(ch1\)"):
        out = convert(src, tmp_path / "half2.xml")
    with fastims.open(out) as r:
        assert r.channel_names == ["ch0"]
        np.testing.assert_array_equal(r[0, 0], vol)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------------------
# BDV inputs whose data lie outside the XML's folder
# ---------------------------------------------------------------------------------------


@pytest.fixture
def external_bdv(tmp_path, rng):
    """data/d.xml + d.h5, and xml/abs.xml, xml/rel.xml naming data/d.h5 absolutely / as ../data/d.h5."""
    vol = rng.integers(0, 65535, (3, 16, 20), dtype=np.uint16, endpoint=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "xml").mkdir()
    write_bdv(tmp_path / "data" / "d.xml", vol, voxel_size=VOXEL)
    text = (tmp_path / "data" / "d.xml").read_text()
    assert '<hdf5 type="relative">d.h5</hdf5>' in text
    h5 = tmp_path / "data" / "d.h5"
    (tmp_path / "xml" / "abs.xml").write_text(
        text.replace('<hdf5 type="relative">d.h5</hdf5>', f'<hdf5 type="absolute">{h5}</hdf5>'))
    (tmp_path / "xml" / "rel.xml").write_text(
        text.replace('<hdf5 type="relative">d.h5</hdf5>', '<hdf5 type="relative">../data/d.h5</hdf5>'))
    return vol, [tmp_path / "xml" / "abs.xml", tmp_path / "xml" / "rel.xml"]


def test_convert_follows_external_paths_when_allowed(tmp_path, external_bdv):
    vol, xmls = external_bdv
    for i, xml in enumerate(xmls):
        # refused by default, in convert's words
        with pytest.raises(fastims.FormatError, match=r"outside the dataset folder.*pass "
                           r"allow_external_paths=True to convert\(\)"):
            convert(xml, tmp_path / f"no{i}.ims")
        for target in (f"out{i}.ims", f"out{i}.xml"):
            out = convert(xml, tmp_path / target, allow_external_paths=True)
            with fastims.open(out) as r:
                np.testing.assert_array_equal(r[0, 0], vol)
                np.testing.assert_allclose(r.voxel_size, VOXEL)
    assert not list(tmp_path.glob("no*")) and not list(tmp_path.glob(".*"))
    # the option belongs to .ims / BDV inputs, one file at a time
    np.save(tmp_path / "a.npy", vol)
    with pytest.raises(ValueError, match="allow_external_paths applies to .ims and BDV inputs"):
        convert(tmp_path / "a.npy", tmp_path / "a.ims", allow_external_paths=True)
    with pytest.raises(TypeError, match="allow_external_paths must be a bool"):
        convert(xmls[0], tmp_path / "b.ims", allow_external_paths="yes")
    # a tile pattern: every tile is checked, then converted, with the option
    for c, xml in enumerate(xmls):
        xml.rename(xml.with_name(f"ch_{c}.xml"))
    pattern = str(tmp_path / "xml" / "ch_{ch}.xml")
    with pytest.raises(fastims.FormatError, match=r"pass allow_external_paths=True to convert\(\)"):
        convert(pattern, tmp_path / "p.xml")
    out = convert(pattern, tmp_path / "p.xml", allow_external_paths=True)
    with fastims.open(out) as r:
        assert r.shape[1] == 2
        for c in range(2):
            np.testing.assert_array_equal(r.asarray(c=c), vol)


def test_cli_convert_allow_external_paths(tmp_path, external_bdv, capsys):
    vol, xmls = external_bdv
    assert main(["convert", str(xmls[1]), str(tmp_path / "c.ims"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "outside the dataset folder" in err and "use --allow-external-paths to follow it" in err
    assert "allow_external_paths" not in err
    assert main(["convert", str(xmls[1]), str(tmp_path / "c.ims"), "--no-progress", "--allow-external-paths"]) == 0
    with fastims.open(tmp_path / "c.ims") as r:
        np.testing.assert_array_equal(r[0, 0], vol)


# ---------------------------------------------------------------------------------------
# channel names from BDV channel attributes; time-point ids
# ---------------------------------------------------------------------------------------


def test_bdv_channel_labels_become_ims_channel_names(tmp_path, rng):
    vols = rng.integers(0, 65535, (2, 4, 12, 10), dtype=np.uint16, endpoint=True)
    with BdvWriter(tmp_path / "c.xml", nchannels=2) as w:  # setups keep automatic names
        w.set_attribute_labels("channel", NAMES)
        for c in range(2):
            w.write_view(vols[c], channel=c)
    ims = convert(tmp_path / "c.xml", tmp_path / "c.ims")
    with fastims.open(ims) as r:
        assert r.channel_names == NAMES
        np.testing.assert_array_equal(r[0], vols)
    # BDV -> BDV keeps the labels; .ims -> BDV -> .ims keeps the names
    bdv = convert(tmp_path / "c.xml", tmp_path / "d.xml")
    mid = convert(ims, tmp_path / "mid.xml")
    back = convert(mid, tmp_path / "back.ims")
    for path in (bdv, mid, back):
        with fastims.open(path) as r:
            assert r.channel_names == NAMES
            np.testing.assert_array_equal(r[0], vols)
    with fastims.open(mid) as r:
        assert {i: v.name for i, v in r.attribute_values["channel"].items()} == dict(enumerate(NAMES))


def test_bdv_channels_named_by_their_ids_stay_unnamed(tmp_path, fixtures_dir):
    # mri-stack's channel has id 1 and name "1"; renumbered to id 0 it must not become a
    # channel named "1" (which would hide the setup's name)
    out = convert(fixtures_dir / MRI, tmp_path / "m.xml")
    with fastims.open(out) as r:
        assert {i: v.name for i, v in r.attribute_values["channel"].items()} == {0: "0"}
        assert r.channel_names == ["mri-stack"]


def _renumber_timepoints(xml: Path, ids: list[int]) -> None:
    """Give the time points of a fastims-written BDV dataset the ids `ids` (XML and HDF5)."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(xml)
    root = tree.getroot()
    seq = root.find("SequenceDescription")
    old = seq.find("Timepoints")
    new = ET.Element("Timepoints", type="list")
    for t in ids:
        ET.SubElement(ET.SubElement(new, "Timepoint"), "id").text = str(t)
    seq.insert(list(seq).index(old), new)
    seq.remove(old)
    for reg in root.iter("ViewRegistration"):
        reg.set("timepoint", str(ids[int(reg.get("timepoint"))]))
    tree.write(xml)
    with h5py.File(xml.with_suffix(".h5"), "a") as f:
        for t in reversed(range(len(ids))):
            f.move(f"t{t:05d}", f"t{ids[t]:05d}")


def test_bdv_to_bdv_renumbers_timepoint_ids(tmp_path, rng):
    vols = rng.integers(0, 65535, (3, 4, 12, 10), dtype=np.uint16, endpoint=True)
    src = tmp_path / "p.xml"
    write_bdv(src, {(t,): vols[t] for t in range(3)}, voxel_size=VOXEL)
    _renumber_timepoints(src, [3, 5, 7])
    with fastims.open(src) as r:
        assert r.timepoint_ids == [3, 5, 7]
        np.testing.assert_array_equal(r[:, 0], vols)
        affine = r.affine(2, 0)
    # documented: the time points keep their order, their ids become 0..T-1
    assert "renumbered" in convert.__doc__ and "0..T-1" in convert.__doc__
    out = convert(src, tmp_path / "q.xml")
    with fastims.open(out) as r:
        assert r.timepoint_ids == [0, 1, 2]
        np.testing.assert_array_equal(r[:, 0], vols)
        np.testing.assert_allclose(r.affine(2, 0), affine)


# ---------------------------------------------------------------------------------------
# warnings point at the caller of convert
# ---------------------------------------------------------------------------------------


def test_writer_warnings_point_at_the_caller(tmp_path, ims_src):
    with pytest.warns(UserWarning, match="LZ4 .* not readable by Fiji") as caught:
        convert(ims_src, tmp_path / "a.xml", compression="lz4")
    assert [Path(w.filename) for w in caught] == [Path(__file__)]
    # through the callable module fastims.convert as well
    with pytest.warns(UserWarning, match="LZ4") as caught:
        convert_module(ims_src, tmp_path / "b.xml", compression="lz4")
    assert [Path(w.filename) for w in caught] == [Path(__file__)]
    with fastims.open(tmp_path / "b.xml") as r:
        assert r.shape[:2] == (2, 2)


@pytest.mark.filterwarnings("error")
def test_writer_warning_as_error_aborts_the_writer(tmp_path, ims_src, monkeypatch):
    from fastims.bdv.writer import BdvWriter as Writer

    aborted = []
    original = Writer.abort

    def abort(self):
        aborted.append(self)
        return original(self)

    monkeypatch.setattr(Writer, "abort", abort)
    # the re-issued warning raises once the writer is open: it must not stay open
    with pytest.raises(UserWarning, match="LZ4"):
        convert(ims_src, tmp_path / "a.xml", compression="lz4")
    assert len(aborted) == 1
    assert listing(tmp_path) == ["src.ims"]
