"""ImsWriter: round trips, ImarisWriter equivalence, attribute encodings, errors."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import warnings

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
    with pytest.raises(WriterStateError, match=r"t=0 c=0: plane\(s\) z=\[1\] written twice"):
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
    with pytest.raises(ValueError, match="must not contain a NUL"):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 2, 1, 8, 8), dtype="uint16", channel_names=["a", "GFP\0junk"])
    with pytest.raises(ValueError, match="must not contain a NUL"):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 1, 1, 8, 8), dtype="uint16", description="exp\0eriment")
    # Imaris keeps only the extents (float32, 9 decimals): a voxel size lost in them is refused
    with pytest.raises(ValueError, match="z=1e-10 m vanishes"):
        fastims.ImsWriter(tmp_path / "x.ims", shape=(1, 1, 3, 8, 8), dtype="uint16", voxel_size=(1e-10, 1, 1), unit="m")
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


# -- audit: float32 limits, time zones, colour ranges, bool options --------------------------

FLT_MAX = float(np.finfo(np.float32).max)


def _floats_text(attr) -> list[float]:
    return [float(v) for v in _text(attr).split()]


@pytest.mark.parametrize(
    "data",
    [
        np.full((4, 16, 16), FLT_MAX, np.float32),
        np.random.default_rng(0).random((4, 16, 16), dtype=np.float32) * np.float32(3.4e38),
        (np.random.default_rng(0).random((4, 16, 16), dtype=np.float32) * 2 - 1) * np.float32(3e38),
        np.full((4, 16, 16), -FLT_MAX, np.float32),
    ],
    ids=["flt_max", "uniform_3.4e38", "uniform_pm3e38", "minus_flt_max"],
)
def test_float32_near_flt_max_writes_finite_ranges_and_thumbnail(tmp_path, data):
    path = tmp_path / "big.ims"
    fastims.write_ims(path, data)
    with h5py.File(path, "r") as f:
        g = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        for name in ("HistogramMin", "HistogramMax", "HistogramMin1024", "HistogramMax1024"):
            assert np.isfinite(np.float32(_floats_text(g.attrs[name])[0])), name
        hmin, hmax = (_floats_text(g.attrs[n])[0] for n in ("HistogramMin", "HistogramMax"))
        assert hmin <= float(data.min()) and float(data.max()) <= hmax and hmin < hmax
        assert g["Histogram"][...].sum() == data.size
        lo, hi = _floats_text(f["DataSetInfo/Channel 0"].attrs["ColorRange"])
        assert np.isfinite(np.float32([lo, hi])).all() and lo < hi
        assert f["Thumbnail/Data"].shape == (256, 1024)
        np.testing.assert_array_equal(_level(f, 0), data)


def test_timepoints_with_utc_offsets_are_written_in_real_time_order(tmp_path):
    utc, minus2 = dt.timezone.utc, dt.timezone(dt.timedelta(hours=-2))
    times = [dt.datetime(2024, 3, 31, 1, 0, tzinfo=utc),  # 01:00 UTC
             dt.datetime(2024, 3, 31, 0, 30, tzinfo=minus2),  # 02:30 UTC: later, smaller wall clock
             dt.datetime(2024, 3, 31, 6, 0, 0, 250999, tzinfo=dt.timezone(dt.timedelta(hours=3)))]
    path = tmp_path / "tz.ims"
    fastims.write_ims(path, np.zeros((3, 1, 2, 8, 8), np.uint8), timepoints=times)
    with h5py.File(path, "r") as f:
        info = f["DataSetInfo/TimeInfo"]
        stamps = [_text(info.attrs[f"TimePoint{t + 1}"]) for t in range(3)]
        assert _text(f["DataSetInfo/Image"].attrs["RecordingDate"]) == stamps[0]
    # wall-clock time at the first time point's offset (UTC here), truncated to the millisecond
    assert stamps == ["2024-03-31 01:00:00.000", "2024-03-31 02:30:00.000", "2024-03-31 03:00:00.250"]


def test_timepoints_across_a_daylight_saving_change(tmp_path):
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        ny = zoneinfo.ZoneInfo("America/New_York")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    # 2024-11-03 01:30 EDT, then 01:10 EST (the repeated hour, fold=1): 40 minutes later,
    # but with one tzinfo Python compares them by wall clock and calls them decreasing
    times = [dt.datetime(2024, 11, 3, 1, 30, tzinfo=ny), dt.datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=ny)]
    assert times[1].timestamp() - times[0].timestamp() == 40 * 60
    path = tmp_path / "dst.ims"
    fastims.write_ims(path, np.zeros((2, 1, 1, 8, 8), np.uint8), timepoints=times)
    with h5py.File(path, "r") as f:
        info = f["DataSetInfo/TimeInfo"]
        stamps = [_text(info.attrs[f"TimePoint{t + 1}"]) for t in range(2)]
    assert stamps == ["2024-11-03 01:30:00.000", "2024-11-03 02:10:00.000"]  # at UTC-4 throughout
    # and the reverse (wall clock up, real time down) is refused
    with pytest.raises(ValueError, match="strictly increasing"):
        fastims.write_ims(tmp_path / "rev.ims", np.zeros((2, 1, 1, 8, 8), np.uint8), timepoints=times[::-1],
                          overwrite=True)


def test_timepoints_mixing_naive_and_aware_raise_valueerror(tmp_path):
    path = tmp_path / "mix.ims"
    times = [dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2024, 1, 2)]
    for order in (times, times[::-1]):
        with pytest.raises(ValueError, match="naive and time-zone aware"):
            fastims.write_ims(path, np.zeros((2, 1, 1, 8, 8), np.uint8), timepoints=order)
    assert not path.exists()


def test_timepoints_within_one_millisecond_raise(tmp_path):
    t0 = dt.datetime(2024, 5, 6, 7, 8, 9, 123000)
    data = np.zeros((2, 1, 1, 8, 8), np.uint8)
    # strictly increasing, but both are written as "...09.123": Imaris needs increasing text
    for second in (t0 + dt.timedelta(microseconds=999),
                   (t0 + dt.timedelta(microseconds=500)).replace(tzinfo=dt.timezone.utc)):
        first = t0 if second.tzinfo is None else t0.replace(tzinfo=dt.timezone.utc)
        with pytest.raises(ValueError, match="same millisecond"):
            fastims.write_ims(tmp_path / "ms.ims", data, timepoints=[first, second])
    # under a millisecond apart but in different milliseconds: fine, truncated
    path = tmp_path / "ok.ims"
    fastims.write_ims(path, data, timepoints=[t0 + dt.timedelta(microseconds=900),
                                              t0 + dt.timedelta(microseconds=1100)])
    with h5py.File(path, "r") as f:
        info = f["DataSetInfo/TimeInfo"]
        assert [_text(info.attrs[f"TimePoint{t}"]) for t in (1, 2)] == [
            "2024-05-06 07:08:09.123", "2024-05-06 07:08:09.124"]


def _expected_series_range(data: np.ndarray) -> str:
    """ImarisWriter's rule for T > 1, from per-time-point bincounts (spec section 3)."""
    from fastims.ims.color import (
        auto_color_range,
        format_color_range,
        merge_time_histograms,
    )

    hists = []
    for vol in data:
        if vol.dtype == np.uint8:
            hists.append((np.bincount(vol.ravel(), minlength=256), 0.0, 255.0))
        else:
            counts = np.bincount(vol.ravel(), minlength=65536)
            top = max(int(np.flatnonzero(counts)[-1]), 256)
            hists.append((counts[: top + 1], 0.0, float(top)))
    return format_color_range(*auto_color_range(*merge_time_histograms(hists)))


def _exact_merge_range(data: np.ndarray) -> str:
    """The rule before the fix: the exactly merged level-0 histogram of all time points."""
    from fastims.ims.color import auto_color_range, format_color_range

    h = Histogram(data.dtype)
    h.update(data)
    ims = h.imaris()
    if ims.hist1024 is None:
        return format_color_range(*auto_color_range(ims.hist256, ims.hmin, ims.hmax))
    return format_color_range(*auto_color_range(ims.hist1024, ims.hmin1024, ims.hmax1024))


@pytest.mark.parametrize(("dtype", "top"), [("uint16", 300), ("uint16", 900), ("uint8", 250)])
def test_time_series_color_range_merges_time_points_as_imariswriter(tmp_path, dtype, top):
    rng = np.random.default_rng(3)
    data = np.stack([rng.poisson(top * 0.3 + 40 * t, (8, 32, 32)).clip(0, top).astype(dtype)
                     for t in range(3)])
    path = tmp_path / "series.ims"
    with fastims.ImsWriter(path, shape=(3, 2, *data.shape[1:]), dtype=dtype) as w:
        for t in (2, 0, 1):  # time points finish in any order
            w.write(data[t], t=t, c=0)
            w.write(data[t] // 2, t=t, c=1)
    with h5py.File(path, "r") as f:
        got = [_text(f[f"DataSetInfo/Channel {c}"].attrs["ColorRange"]) for c in range(2)]
    assert got == [_expected_series_range(data), _expected_series_range(data // 2)]
    assert got[0] != _exact_merge_range(data)  # the two rules differ on this data


def test_time_series_color_range_refreshed_by_flush(tmp_path):
    # before close only the time points whose level 0 is final count: one time point is
    # used as when T == 1 (its max + 1 bins resampled to 1024), not merged
    from fastims.histogram import resample_histogram
    from fastims.ims.color import auto_color_range, format_color_range

    rng = np.random.default_rng(4)
    data = np.stack([rng.poisson(2000, (4, 32, 32)), rng.poisson(150, (4, 32, 32))]).astype(np.uint16)
    path = tmp_path / "flush.ims"
    with fastims.ImsWriter(path, shape=(2, 1, 4, 32, 32), dtype="uint16") as w:
        w.write(data[0], t=0)
        w.flush()
        with h5py.File(path, "r", locking=False) as f:
            early = _text(f["DataSetInfo/Channel 0"].attrs["ColorRange"])
        w.write(data[1], t=1)
    counts = np.bincount(data[0].ravel(), minlength=65536)
    top = int(np.flatnonzero(counts)[-1])
    assert top + 1 > 1024
    assert early == format_color_range(*auto_color_range(resample_histogram(counts[: top + 1], 1024), 0.0, top))
    with h5py.File(path, "r") as f:
        final = _text(f["DataSetInfo/Channel 0"].attrs["ColorRange"])
    assert final == _expected_series_range(data) != early
    assert final != _exact_merge_range(data)  # the two rules differ on this data


@pytest.mark.parametrize(
    "data",
    [
        0.2 + np.random.default_rng(0).random((8, 64, 64), dtype=np.float32) * np.float32(0.5),
        np.random.default_rng(0).random((8, 64, 64), dtype=np.float32) * np.float32(0.5),
        np.full((8, 64, 64), 3.5, np.float32),
        np.zeros((8, 64, 64), np.float32),
    ],
    ids=["0.2-0.7", "0-0.5", "const_3.5", "zeros"],
)
def test_automatic_color_range_is_valid_and_used_by_the_thumbnail(tmp_path, data):
    from fastims.ims.color import auto_color_range, format_color_range
    from fastims.ims.thumbnail import make_thumbnail

    path = tmp_path / "f.ims"
    fastims.write_ims(path, data)
    h = Histogram("float32")
    h.update(data)
    ims = h.imaris()
    crange = auto_color_range(ims.hist1024, ims.hmin1024, ims.hmax1024)
    with h5py.File(path, "r") as f:
        text = _text(f["DataSetInfo/Channel 0"].attrs["ColorRange"])
        lo, hi = (float(v) for v in text.split())
        assert lo < hi, text
        assert text == format_color_range(*crange)
        want = make_thumbnail([_level(f, 0)], colors=[(1.0, 0.0, 0.0)], color_ranges=[crange],
                              extent_yx=data.shape[1:])
        np.testing.assert_array_equal(f["Thumbnail/Data"][...], want)
    if data.max() > data.min():  # a ramp, not a two-level picture
        assert len(np.unique(want.reshape(-1, 4)[:, 0])) > 10


@pytest.mark.parametrize("option", ["overwrite", "shuffle", "allow_incomplete"])
@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None, 1.0, [True]])
def test_boolean_options_require_bools(tmp_path, option, value):
    path = tmp_path / "b.ims"
    with pytest.raises(TypeError, match=f"{option} must be True or False"):
        fastims.ImsWriter(path, shape=(1, 1, 1, 8, 8), dtype="uint8", **{option: value})
    with pytest.raises(TypeError, match=option):
        fastims.write_ims(path, np.zeros((1, 8, 8), np.uint8), **{option: value})
    assert not path.exists()


def test_overwrite_no_keeps_the_file(tmp_path):
    path = tmp_path / "keep.ims"
    fastims.write_ims(path, np.full((2, 8, 8), 7, np.uint8))
    before = path.read_bytes()
    with pytest.raises(TypeError, match="overwrite"):
        fastims.write_ims(path, np.ones((2, 8, 8), np.uint8), overwrite="no")
    assert path.read_bytes() == before
    # real bools, numpy's included, still work
    fastims.write_ims(path, np.ones((2, 8, 8), np.uint8), overwrite=np.True_, shuffle=np.False_,
                      allow_incomplete=False)
    assert fastims.read_ims(path).max() == 1


def test_voxel_size_blurred_by_the_extents_warns(tmp_path):
    """A small voxel far from the origin loses digits in float32 extents: said, and what is stored."""
    data = np.zeros((3, 4, 5), np.uint16)
    with pytest.warns(UserWarning, match=r"voxel_size y=0.1 um is stored as 0.09375"):
        fastims.write_ims(tmp_path / "far.ims", data, voxel_size=(1.0, 0.1, 0.1), origin=(0, 1e6, 0))
    with fastims.ImsReader(tmp_path / "far.ims") as r:
        assert r.voxel_size[1] == pytest.approx(0.09375)  # what the warning announced
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # near the origin: silent
        fastims.write_ims(tmp_path / "near.ims", data, voxel_size=(2.0, 0.1, 0.1), origin=(0, 1e3, -2e3))
    with fastims.ImsReader(tmp_path / "near.ims") as r:
        assert r.voxel_size == pytest.approx((2.0, 0.1, 0.1), rel=1e-3)
