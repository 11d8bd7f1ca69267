"""ImsWriter: round trips, ImarisWriter equivalence, attribute encodings, errors."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap

import h5py
import hdf5plugin  # noqa: F401  (registers the LZ4 filter for reading)
import numpy as np
import pytest

import fastims
from fastims import _dispatch
from fastims.compression import lz4_compress_address
from fastims.engine import Engine
from fastims.errors import WriterStateError
from fastims.histogram import Histogram
from fastims.ims.layout import imaris_levels
from fastims.synthetic import camera_stack

FIXTURE = "ims/imariswriter/u16_z33_y130_x260_shufflegzip2"


def _text(attr) -> str:
    return b"".join(np.atleast_1d(attr)).decode().rstrip("\0")


def _level(f: h5py.File, r: int, t: int = 0, c: int = 0) -> np.ndarray:
    g = f[f"DataSet/ResolutionLevel {r}/TimePoint {t}/Channel {c}"]
    z, y, x = (int(_text(g.attrs[f"ImageSize{a}"])) for a in "ZYX")
    return g["Data"][:z, :y, :x]


def _reference_pyramid(stack: np.ndarray) -> list[np.ndarray]:
    levels = imaris_levels(stack.shape, stack.dtype)
    out = [stack]
    ds = _dispatch.reference("downsample_imaris")
    for lv in levels[1:]:
        dst = np.empty(lv.shape, stack.dtype)
        ds(np.ascontiguousarray(out[-1]), dst, *lv.factors)
        out.append(dst)
    return out


def _check_string_attrs(obj) -> None:
    for name in obj.attrs:
        aid = h5py.h5a.open(obj.id, name.encode())
        tid = aid.get_type()
        if name == "NumberOfDataSets":
            assert tid.get_class() == h5py.h5t.INTEGER and tid.get_size() == 4
            assert aid.shape == (1,)
            continue
        assert tid.get_class() == h5py.h5t.STRING, name
        assert tid.get_size() == 1 and tid.get_strpad() == h5py.h5t.STR_NULLTERM, name
        assert tid.get_cset() == h5py.h5t.CSET_ASCII and len(aid.shape) == 1, name


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize(
    "compression,shuffle", [(None, False), ("gzip", False), ("gzip", True), ("lz4", False), ("lz4", True)]
)
def test_round_trip_levels_and_histograms(tmp_path, dtype, compression, shuffle):
    stack = camera_stack((2, 37, 75, 133), dtype, seed=3)  # (C, Z, Y, X), odd sizes
    path = tmp_path / "a.ims"
    fastims.write_ims(path, stack, compression=compression, shuffle=shuffle, voxel_size=(2.0, 0.5, 0.25))
    layout = imaris_levels(stack.shape[1:], stack.dtype)
    with h5py.File(path, "r") as f:
        for c in range(2):
            expected = _reference_pyramid(stack[c])
            assert len(f["DataSet"]) == len(layout)
            for r, lv in enumerate(layout):
                g = f[f"DataSet/ResolutionLevel {r}/TimePoint 0/Channel {c}"]
                data = g["Data"]
                assert data.chunks == lv.chunks
                assert data.shape == lv.padded_shape
                got = data[...]
                z, y, x = lv.shape
                np.testing.assert_array_equal(got[:z, :y, :x], expected[r])
                # padding is zeros
                assert not got[z:].any() and not got[:, y:].any() and not got[:, :, x:].any()
                h = Histogram(stack.dtype)
                h.update(expected[r])
                ih = h.imaris()
                np.testing.assert_array_equal(g["Histogram"][...], ih.hist256)
                assert _text(g.attrs["HistogramMax"]) == f"{ih.hmax:.3f}"
                if ih.hist1024 is not None:
                    np.testing.assert_array_equal(g["Histogram1024"][...], ih.hist1024)
                if compression == "gzip":
                    assert data.compression == "gzip"
                assert data.shuffle == (shuffle and dtype == "uint16")


@pytest.mark.parametrize("whole_rows", [True, False])
def test_shuffled_lz4_noise_planes_are_literals_any_reader_decodes(tmp_path, monkeypatch, whole_rows):
    """Full-size shuffled LZ4 chunks start with the low-byte plane as plain literals (see
    ``lz4_frame``); HDF5's LZ4 filter (hdf5plugin) reads every level back exactly, padded
    edge chunks included -- whether a row's chunks are gathered whole (the slab read row by
    row) or one at a time (chunk by chunk)."""
    if not whole_rows:
        monkeypatch.setattr(Engine, "ROW_BYTES", 0)
        monkeypatch.setattr(Engine, "GROUP_BYTES", 1)
    groups: list[int] = []  # chunks gathered and framed per step
    frame_group = Engine._frame_group

    def spy(self, dataset, offsets, *args):
        groups.append(len(offsets))
        return frame_group(self, dataset, offsets, *args)

    monkeypatch.setattr(Engine, "_frame_group", spy)
    stack = camera_stack((20, 300, 520), "uint16", seed=8)  # level 0 in 8 x 256 x 256 chunks
    path = tmp_path / "a.ims"
    with fastims.ImsWriter(path, shape=(1, 1, *stack.shape), dtype=stack.dtype, compression="lz4",
                           shuffle=True) as w:
        for z in range(stack.shape[0]):
            w.write_plane(stack[z], z=z)
    if lz4_compress_address():  # without liblz4 the chunks go through scratch
        assert max(groups) == (3 if whole_rows else 1)  # level 0's rows: 3 chunks (the last padded)
    expected = _reference_pyramid(stack)
    address = lz4_compress_address()
    lz4_frame = _dispatch.kernel("lz4_frame")
    differ = 0
    with h5py.File(path, "r") as f:
        for r, want in enumerate(expected):
            data = f[f"DataSet/ResolutionLevel {r}/TimePoint 0/Channel 0/Data"]
            z, y, x = want.shape
            np.testing.assert_array_equal(data[:z, :y, :x], want)
        level0 = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
        for i in range(level0.id.get_num_chunks() if address else 0):
            offset = level0.id.get_chunk_info(i).chunk_offset
            frame = level0.id.read_direct_chunk(offset)[1]
            chunk = level0[tuple(slice(o, o + c) for o, c in zip(offset, level0.chunks, strict=True))]
            shuffled = np.empty(chunk.nbytes, np.uint8)
            _dispatch.kernel("shuffle")(chunk.reshape(-1).view(np.uint8), 2, shuffled)
            out = np.empty(2 * chunk.nbytes, np.uint8)
            frames = [out[: lz4_frame(shuffled, out, address, 2, planes)].tobytes() for planes in (2, 1)]
            assert frame == frames[0]  # the stream's frame is the kernel's with literal planes
            differ += frames[0] != frames[1]
    assert differ >= 2 or not address  # at least the interior chunks took literal planes


def test_time_series_channels_interleaved_vs_channel_major(tmp_path):
    data = camera_stack((2, 9, 40, 50), "uint16", seed=5)
    data = np.stack([data, data[:, ::-1]])  # (T, C, Z, Y, X)
    a, b = tmp_path / "a.ims", tmp_path / "b.ims"
    times = [dt.datetime(2024, 1, 2, 3, 4, 5, 6000), dt.datetime(2024, 1, 2, 3, 4, 6)]
    with fastims.ImsWriter(a, shape=data.shape, dtype=data.dtype, timepoints=times, compression="lz4") as w:
        for t in range(2):
            for z in range(9):
                for c in range(2):
                    w.write_plane(data[t, c, z], t=t, c=c, z=z)
    fastims.write_ims(b, data, timepoints=times, compression="lz4")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for t in range(2):
            for c in range(2):
                for r in range(len(fa["DataSet"])):
                    np.testing.assert_array_equal(_level(fa, r, t, c), _level(fb, r, t, c))
                np.testing.assert_array_equal(_level(fa, 0, t, c), data[t, c])
        info = fa["DataSetInfo/TimeInfo"]
        assert _text(info.attrs["DatasetTimePoints"]) == "2"
        assert _text(info.attrs["TimePoint1"]) == "2024-01-02 03:04:05.006"
        assert _text(fa["DataSetInfo/Image"].attrs["RecordingDate"]) == "2024-01-02 03:04:05.006"
        assert {f"Channel {c}" for c in range(2)} <= set(fa["DataSetInfo"])


def test_2d_image(tmp_path):
    img = camera_stack((1, 300, 517), "uint16", seed=1)
    path = tmp_path / "2d.ims"
    fastims.write_ims(path, img)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(_level(f, 0), img)
        assert f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"].chunks[0] == 1


def test_matches_imariswriter_fixture(tmp_path, fixtures_dir):
    """Writing ImarisWriter's input with shuffle + gzip 2 reproduces its file."""
    src = fixtures_dir / f"{FIXTURE}.ims"
    stack = np.load(fixtures_dir / f"{FIXTURE}.npy")
    path = tmp_path / "ours.ims"
    with h5py.File(src, "r") as ref:
        date = _text(ref["DataSetInfo/Image"].attrs["RecordingDate"])
    when = dt.datetime.strptime(date, "%Y-%m-%d %H:%M:%S.%f")
    fastims.write_ims(path, stack, compression="gzip", compression_level=2, shuffle=True,
                      timepoints=[when], channel_colors=[(1.0, 0.0, 0.0)])
    with h5py.File(src, "r") as ref, h5py.File(path, "r") as ours:
        for r in range(2):
            key = f"DataSet/ResolutionLevel {r}/TimePoint 0/Channel 0"
            gr, go = ref[key], ours[key]
            assert go["Data"].shape == gr["Data"].shape
            assert go["Data"].chunks == gr["Data"].chunks
            assert go["Data"].compression == gr["Data"].compression == "gzip"
            assert go["Data"].compression_opts == gr["Data"].compression_opts
            assert go["Data"].shuffle and gr["Data"].shuffle
            np.testing.assert_array_equal(go["Data"][...], gr["Data"][...])
            for name in ("Histogram", "Histogram1024"):
                np.testing.assert_array_equal(go[name][...], gr[name][...])
            for name, value in gr.attrs.items():
                assert _text(go.attrs[name]) == _text(value), (key, name)
            _check_string_attrs(go)
        for name in ref.attrs:
            assert name in ours.attrs
        np.testing.assert_array_equal(ours.attrs["NumberOfDataSets"], ref.attrs["NumberOfDataSets"])
        _check_string_attrs(ours)
        for group in ("Image", "Channel 0", "TimeInfo", "ImarisDataSet", "Log"):
            go, gr = ours[f"DataSetInfo/{group}"], ref[f"DataSetInfo/{group}"]
            _check_string_attrs(go)
            for name, value in gr.attrs.items():
                if group == "ImarisDataSet" and name in ("Creator", "Version"):
                    continue
                assert _text(go.attrs[name]) == _text(value), (group, name)
        np.testing.assert_array_equal(ours["Thumbnail/Data"][...], ref["Thumbnail/Data"][...])


@pytest.mark.parametrize(("dtype", "shape"), [("uint16", (2, 2, 9, 600, 530)), ("float32", (1, 2, 5, 70, 90))])
def test_thumbnail_built_while_streaming_equals_one_from_the_file(tmp_path, dtype, shape):
    """The writer projects the thumbnail level as it streams (time point 0, every channel, any
    plane order): the result equals ImarisWriter's rule applied to the level read back."""
    from fastims.ims.thumbnail import make_thumbnail, thumbnail_level

    nt, nc, nz = shape[:3]
    data = np.stack([camera_stack(shape[1:], "uint16", seed=8 + t) for t in range(nt)]).astype(dtype)
    if dtype == "float32":
        data[0, 1, 2, 5, 5] = np.nan
    path = tmp_path / "t.ims"
    colors = [(1.0, 0.0, 1.0), (0.0, 1.0, 0.0)]
    ranges = [(120.0, 900.0), (100.0, 2000.0)]
    with fastims.ImsWriter(path, shape=shape, dtype=dtype, channel_colors=colors, color_ranges=ranges,
                           voxel_size=(2, 0.5, 0.7)) as w:
        order = [(t, z, c) for t in range(nt) for z in range(nz) for c in range(nc)]
        for i in np.random.default_rng(2).permutation(len(order)):
            t, z, c = order[i]
            w.write_plane(data[t, c, z], t=t, c=c, z=z)
    r = thumbnail_level(w.level_shapes)
    assert (r > 0) == (dtype == "uint16")  # 600 x 530: sampled from level 1
    with h5py.File(path, "r") as f:
        want = make_thumbnail([_level(f, r, 0, c) for c in range(nc)], colors=colors, color_ranges=ranges,
                              extent_yx=(shape[3] * 0.5, shape[4] * 0.7))
        np.testing.assert_array_equal(f["Thumbnail/Data"][...], want)
        assert np.count_nonzero(want) > want.size // 4  # a picture, not black


def test_structure_matches_minimal_fixture(tmp_path, fixtures_dir):
    with h5py.File(fixtures_dir / "ims/Minimal_IMS_File.ims", "r") as ref:
        img = ref["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"][...]
        names: list[str] = []
        ref.visit(names.append)
        ref_attrs = {n: set(ref[n].attrs) for n in names} | {"/": set(ref.attrs)}
    path = tmp_path / "m.ims"
    fastims.write_ims(path, img)
    with h5py.File(path, "r") as f:
        for name, attrs in ref_attrs.items():
            assert name in f or name == "/", name
            obj = f if name == "/" else f[name]
            assert attrs <= set(obj.attrs), (name, attrs - set(obj.attrs))
        g = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        assert g["Histogram1024"].shape == (257,) and _text(g.attrs["HistogramMax"]) == "256.000"
        np.testing.assert_array_equal(g["Data"][...], img)


def test_read_by_imaris_ims_file_reader(tmp_path):
    reader = pytest.importorskip("imaris_ims_file_reader.ims")
    data = camera_stack((2, 20, 64, 90), "uint16", seed=9)
    path = tmp_path / "r.ims"
    fastims.write_ims(path, data, compression="lz4", shuffle=True)
    ims = reader.ims(str(path))
    try:
        assert ims.shape[-3:] == (20, 64, 90)
        np.testing.assert_array_equal(np.asarray(ims[0, 1, :, :, :]), data[1])
        assert ims.ResolutionLevels == len(imaris_levels((20, 64, 90), np.uint16))
    finally:
        if hasattr(ims, "close"):
            ims.close()


def test_memory_limit_and_one_worker(tmp_path):
    data = camera_stack((40, 128, 128), "uint16", seed=2)
    path = tmp_path / "m.ims"
    fastims.write_ims(path, data, memory_limit=1, max_workers=1, compression="gzip")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(_level(f, 0), data)


def test_uint32_warns(tmp_path):
    with pytest.warns(UserWarning, match="Imaris cannot open"):
        fastims.write_ims(tmp_path / "u32.ims", np.arange(4 * 8 * 8, dtype=np.uint32).reshape(4, 8, 8))


def test_float_nan_kept_in_data_out_of_histogram(tmp_path):
    data = camera_stack((6, 30, 30), "float32", seed=4)
    data[2, 5, 5] = np.nan
    path = tmp_path / "nan.ims"
    fastims.write_ims(path, data)
    with h5py.File(path, "r") as f:
        got = _level(f, 0)
        assert np.isnan(got[2, 5, 5])
        g = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        assert g["Histogram"][...].sum() == data.size - 1


# -- bad input -----------------------------------------------------------------------------


def test_errors(tmp_path):
    path = tmp_path / "e.ims"
    w = fastims.ImsWriter(path, shape=(1, 2, 4, 8, 8), dtype="uint16", allow_incomplete=True)
    with pytest.raises(ValueError, match="block"):
        w.write_plane(np.zeros((8, 9), np.uint16), z=0)
    with pytest.raises(TypeError, match="uint16"):
        w.write_plane(np.zeros((8, 8), np.float32), z=0)
    with pytest.raises(IndexError, match="0..3"):
        w.write_plane(np.zeros((8, 8), np.uint16), z=4)
    with pytest.raises(IndexError, match="c=2"):
        w.write_plane(np.zeros((8, 8), np.uint16), c=2, z=0)
    for z in (None, "1", 1.0, True):  # None used to fail while its message was built
        with pytest.raises(TypeError, match=f"integer plane index, got {z!r}"):
            w.write_plane(np.zeros((8, 8), np.uint16), z=z)
    w.write_plane(np.ones((8, 8), np.uint16), z=1)
    with pytest.raises(WriterStateError, match="twice"):
        w.write_plane(np.ones((8, 8), np.uint16), z=1)
    with pytest.warns(UserWarning, match="zero-filled"):
        w.close()
    with pytest.raises(WriterStateError, match="closed"):
        w.write_plane(np.ones((8, 8), np.uint16), z=2)
    with pytest.raises(FileExistsError):
        fastims.ImsWriter(path, shape=(1, 1, 1, 8, 8), dtype="uint16")
    with h5py.File(path, "r") as f:
        got = _level(f, 0)
        assert got[1].all() and not got[0].any() and not got[2:].any()
        assert "incomplete" in _text(f["DataSetInfo/Log"].attrs["Entry0"])
    with pytest.raises(TypeError):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 1, 1, 8, 8), dtype="int16")
    with pytest.raises(ValueError):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 1, 0, 8, 8), dtype="uint16")
    with pytest.raises(ValueError):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 1, 1, 8, 8), dtype="uint16", compression="zstd")
    with pytest.raises(TypeError, match="one entry per channel"):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 3, 1, 8, 8), dtype="uint16", channel_names="GFP")
    with pytest.raises(ValueError, match="min 100 above max 0"):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 1, 1, 8, 8), dtype="uint16", color_ranges=[(100, 0)])
    assert not (tmp_path / "x.ims").exists()


def test_automatic_time_stamps_strictly_increasing(tmp_path):
    # time points written within one millisecond, and out of order, still get increasing stamps
    data = np.ones((6, 1, 1, 8, 8), np.uint16)
    with fastims.ImsWriter(tmp_path / "t.ims", shape=data.shape, dtype="uint16", compression=None) as w:
        for t in (2, 0, 1, 3, 4, 5):
            w.write(data[t, 0], t=t)
    with h5py.File(tmp_path / "t.ims", "r") as f:
        stamps = [dt.datetime.strptime(_text(f["DataSetInfo/TimeInfo"].attrs[f"TimePoint{t + 1}"]),
                                       "%Y-%m-%d %H:%M:%S.%f") for t in range(6)]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), stamps
    assert stamps[-1] - stamps[0] < dt.timedelta(seconds=60)


def test_byte_swapped_input(tmp_path):
    # stored in native order; big-endian input used to fail at close and leave a broken file
    data = camera_stack((2, 5, 40, 50), "uint16", seed=3)
    fastims.write_ims(tmp_path / "be.ims", data.astype(">u2"), compression="lz4", shuffle=True)
    with fastims.ImsWriter(tmp_path / "mixed.ims", shape=(1, 2, 5, 40, 50), dtype=">u2") as w:
        for c in range(2):
            for z in range(5):
                w.write_plane(data[c, z] if z % 2 else data[c, z].astype(">u2"), c=c, z=z)
    for name in ("be.ims", "mixed.ims"):
        with h5py.File(tmp_path / name, "r") as f:
            assert _level(f, 0).dtype == np.dtype("<u2") and "Thumbnail" in f
        with fastims.open(tmp_path / name) as r:
            for c in range(2):
                np.testing.assert_array_equal(r.asarray(c=c), data[c])
    with pytest.raises(TypeError, match="dtype must be one of"):
        fastims.write_ims(tmp_path / "x.ims", data.astype(">i2"))
    assert not (tmp_path / "x.ims").exists()


def test_missing_planes_raise_and_name_them(tmp_path):
    path = tmp_path / "m.ims"
    w = fastims.ImsWriter(path, shape=(1, 1, 10, 8, 8), dtype="uint8")
    for z in (0, 1, 2, 7):
        w.write_plane(np.full((8, 8), 9, np.uint8), z=z)
    with pytest.raises(WriterStateError, match=r"z=3-6,8-9"):
        w.close()
    with h5py.File(path, "r") as f:  # the file is complete and consistent, zero-filled
        got = _level(f, 0)
        assert (got[[0, 1, 2, 7]] == 9).all() and not got[3:7].any()


@pytest.mark.parametrize("compression", ["gzip", "lz4"])
def test_worker_error_reraised(tmp_path, monkeypatch, compression):
    path = tmp_path / "w.ims"
    w = fastims.ImsWriter(path, shape=(1, 1, 64, 32, 32), dtype="uint16", compression=compression)

    def boom(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    # gzip chunks go through compress(), LZ4 rows through encode_chunks_into() when liblz4 is found
    monkeypatch.setattr(type(w.codec), "compress", boom)
    monkeypatch.setattr(type(w.codec), "encode_chunks_into", boom)
    with pytest.raises(RuntimeError, match="encoder exploded"):
        for z in range(64):
            w.write_plane(np.zeros((32, 32), np.uint16), z=z)
        w.close()
    w._close(raising=False)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_survives_a_crash_after_flush(tmp_path, compression):
    path = tmp_path / "crash.ims"
    code = textwrap.dedent(
        f"""
        import os, numpy as np, fastims
        w = fastims.ImsWriter({str(path)!r}, shape=(2, 1, 16, 64, 64), dtype="uint16",
                              compression={compression!r})
        for z in range(16):  # time point 0 complete, time point 1 never comes
            w.write_plane(np.full((64, 64), 7, np.uint16), t=0, z=z)
        w.flush()
        os._exit(0)  # the acquisition dies: no close()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with h5py.File(path, "r") as f:
        assert _text(f.attrs["ImarisVersion"]) == "5.5.0"
        assert _text(f["DataSetInfo/Image"].attrs["Z"]) == "16"
        assert (_level(f, 0, t=0) == 7).all()
        g = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        assert g["Histogram"][...].sum() == 16 * 64 * 64


def test_handles_closed(tmp_path):
    path = tmp_path / "h.ims"
    fastims.write_ims(path, np.zeros((2, 8, 8), np.uint16))
    with h5py.File(path, "w"):  # would fail if a handle were still open
        pass
    os.remove(path)
