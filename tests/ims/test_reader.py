"""ImsReader: real fixtures, every layout variant seen in the wild, and bad input."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastims
from fastims import FormatError, UnsupportedFormatError
from fastims.ims.attrs import write_attr_str
from fastims.ims.reader import ImsReader, read_ims

# ---------------------------------------------------------------------------
# synthetic file builder
# ---------------------------------------------------------------------------


def attr_nullterm(obj: h5py.HLObject, name: str, text: str) -> None:
    write_attr_str(obj, name, text)


def attr_nullterm_nul(obj: h5py.HLObject, name: str, text: str) -> None:
    write_attr_str(obj, name, text + "\0")  # trailing NUL element, as in Minimal_IMS_File


def attr_nullpad(obj: h5py.HLObject, name: str, text: str) -> None:
    obj.attrs[name] = np.frombuffer(text.encode(), dtype="S1")  # h5py's S1 arrays: NULLPAD


def attr_vlen(obj: h5py.HLObject, name: str, text: str) -> None:
    obj.attrs[name] = text  # variable-length UTF-8 scalar


def attr_fixed_scalar(obj: h5py.HLObject, name: str, text: str) -> None:
    obj.attrs[name] = np.bytes_(text.encode())


ATTR_STYLES: dict[str, Callable[[h5py.HLObject, str, str], None]] = {
    "nullterm": attr_nullterm,
    "nullterm_nul": attr_nullterm_nul,
    "nullpad": attr_nullpad,
    "vlen": attr_vlen,
    "fixed_scalar": attr_fixed_scalar,
}


def pyramid(data: np.ndarray, nlevels: int) -> list[np.ndarray]:
    """Level arrays (T, C, Z, Y, X) by 2x decimation (values only need to be distinct)."""
    levels = [data]
    for _ in range(nlevels - 1):
        prev = levels[-1]
        step_z = 2 if prev.shape[2] > 1 else 1
        levels.append(np.ascontiguousarray(prev[:, :, ::step_z, ::2, ::2]))
    return levels


def write_ims(
    path: Path,
    levels: list[np.ndarray],
    *,
    chunks: tuple[int, int, int] | None = None,
    pad: bool = True,
    attr: Callable[[h5py.HLObject, str, str], None] = attr_nullterm,
    dataset_name: str = "DataSet",
    info_name: str = "DataSetInfo",
    f: h5py.File | None = None,
    number_of_datasets: object = "u32",
    extent: tuple[tuple[float, float], ...] = ((0.0, 10.0), (0.0, 20.0), (0.0, 30.0)),
    ext_format: str = "{:.9f}",
    unit: str | None = "um",
    timeinfo_key: str | None = "DatasetTimePoints",
    times: list[str] | None = None,
    channel_names: list[str] | None = None,
    colors: list[str] | None = None,
    color_tables: list[str] | None = None,
    compression: dict | None = None,
    dtype: np.dtype | str | None = None,
    image_block_size: bool = False,
    image_size_attrs: bool = True,
    root: str = "",
) -> None:
    """Write an Imaris-layout file.  ``extent`` is ((xmin, xmax), (ymin, ymax), (zmin, zmax))."""
    own = f is None
    if own:
        f = h5py.File(path, "w")
    try:
        base = f.require_group(root) if root else f
        if not root or root == "/":
            pass
        if own:
            attr(f, "ImarisDataSet", "ImarisDataSet")
            attr(f, "ImarisVersion", "5.5.0")
            attr(f, "DataSetDirectoryName", "DataSet")
            attr(f, "DataSetInfoDirectoryName", "DataSetInfo")
            attr(f, "ThumbnailDirectoryName", "Thumbnail")
            if number_of_datasets == "u32":
                f.attrs.create("NumberOfDataSets", np.array([1], dtype=np.uint32))
            elif number_of_datasets is not None:
                attr(f, "NumberOfDataSets", str(number_of_datasets))
        nt, nc = levels[0].shape[:2]
        for r, lv in enumerate(levels):
            for t in range(nt):
                for c in range(nc):
                    g = base.require_group(f"{dataset_name}/ResolutionLevel {r}/TimePoint {t}/Channel {c}")
                    vol = lv[t, c]
                    ch = tuple(min(a, b) for a, b in zip(chunks or vol.shape, vol.shape))
                    if pad:
                        padded_shape = tuple(-(-n // k) * k for n, k in zip(vol.shape, ch))
                        store = np.zeros(padded_shape, dtype=dtype or vol.dtype)
                        store[: vol.shape[0], : vol.shape[1], : vol.shape[2]] = vol
                    else:
                        store = vol.astype(dtype or vol.dtype)
                    g.create_dataset("Data", data=store, chunks=ch, **(compression or {}))
                    if image_size_attrs:
                        for axis, n in zip("ZYX", vol.shape):
                            attr(g, f"ImageSize{axis}", str(n))
                    if image_block_size:
                        for axis, n in zip("ZYX", ch):
                            attr(g, f"ImageBlockSize{axis}", str(n))
                    attr(g, "HistogramMin", "0.000")
                    attr(g, "HistogramMax", "255.000")
                    g.create_dataset("Histogram", data=np.zeros(256, dtype=np.uint64))
        info = base.require_group(info_name)
        image = info.require_group("Image")
        z, y, x = levels[0].shape[2:]
        attr(image, "X", str(x))
        attr(image, "Y", str(y))
        attr(image, "Z", str(z))
        for i, (lo, hi) in enumerate(extent):
            attr(image, f"ExtMin{i}", ext_format.format(lo))
            attr(image, f"ExtMax{i}", ext_format.format(hi))
        if unit is not None:
            attr(image, "Unit", unit)
        for c in range(nc):
            cg = info.require_group(f"Channel {c}")
            if channel_names:
                attr(cg, "Name", channel_names[c])
            if colors:
                attr(cg, "ColorMode", "BaseColor")
                attr(cg, "Color", colors[c])
            if color_tables:
                attr(cg, "ColorMode", "TableColor")
                attr(cg, "ColorTable", color_tables[c])
        if timeinfo_key is not None:
            ti = info.require_group("TimeInfo")
            attr(ti, timeinfo_key, str(nt))
            attr(ti, "FileTimePoints", str(nt))
            for t, text in enumerate(times or []):
                attr(ti, f"TimePoint{t + 1}", text)
    finally:
        if own:
            f.close()


@pytest.fixture
def stack(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(1, 60000, size=(2, 3, 9, 21, 35), dtype=np.uint16)


# ---------------------------------------------------------------------------
# real files
# ---------------------------------------------------------------------------


def _h5_data(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[key][()]


def test_minimal_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "ims" / "Minimal_IMS_File.ims"
    raw = _h5_data(path, "DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data")
    with fastims.open(path) as r:
        assert isinstance(r, ImsReader)
        assert r.shape == (1, 1, 1, 128, 128)
        assert r.dtype == np.uint16
        assert r.levels == 1
        assert r.chunks == [(1, 128, 128)]
        np.testing.assert_array_equal(r.asarray(), raw)
        # ExtMin0/1 "3.00000000\0", ExtMax "10.000000000", ExtMax2 "0.100000000\0"
        assert r.voxel_size == pytest.approx((0.1, 7 / 128, 7 / 128))
        assert r.unit == "um"
        assert r.channel_names == ["Channel 0"]
        assert r.channel_colors == [None]
        assert r.timepoints == [None]
        assert r.metadata["root"]["NumberOfDataSets"] == "1"
        assert r.metadata["DataSetInfo"]["Image"]["ExtMin0"] == "3.00000000"


def test_imariswriter_fixture_padded_two_levels(fixtures_dir: Path) -> None:
    path = fixtures_dir / "ims" / "imariswriter" / "u16_z33_y130_x260_shufflegzip2.ims"
    expected = np.load(path.with_suffix(".npy"))
    raw1 = _h5_data(path, "DataSet/ResolutionLevel 1/TimePoint 0/Channel 0/Data")
    with ImsReader(path) as r:
        assert r.shape == (1, 1, 33, 130, 260)
        assert r.level_shapes == [(1, 1, 33, 130, 260), (1, 1, 16, 65, 130)]
        assert r.chunks == [(32, 128, 128), (16, 128, 128)]
        np.testing.assert_array_equal(r.asarray(), expected)
        np.testing.assert_array_equal(r.asarray(level=1), raw1[:16, :65, :130])
        np.testing.assert_array_equal(r[0, 0, 30:, 120:, 250:], expected[30:, 120:, 250:])
        np.testing.assert_array_equal(r.level(1)[0, 0, -1], raw1[15, :65, :130])
        assert r.voxel_size == pytest.approx((1.0, 1.0, 1.0))
        assert r.level(1).voxel_size == pytest.approx((33 / 16, 2.0, 2.0))
        assert r.channel_names == ["Channel 0"]
        assert r.channel_colors == [(1.0, 0.0, 0.0)]
        assert r.timepoints == [datetime.datetime(2021, 3, 4, 5, 6, 7, 890000)]
        assert r.metadata["DataSetInfo"]["ImarisDataSet"]["Creator"] == "iw_write"


def test_bigdataprocessor_linked_fixture(fixtures_dir: Path) -> None:
    path = fixtures_dir / "ims" / "linked" / "image-header.ims"
    raw = _h5_data(path.parent / "image--C00--T00000.h5", "ResolutionLevel 0/Data")
    with ImsReader(path) as r:
        assert r.shape == (1, 1, 30, 100, 100)
        assert r.chunks == [(30, 64, 64)]
        np.testing.assert_array_equal(r.asarray(), raw)
        np.testing.assert_array_equal(r[0, 0, 3, 10:20], raw[3, 10:20])
        assert r.channel_names == ["channel_0"]
        assert r.channel_colors == [(1.0, 1.0, 1.0)]
        assert r.voxel_size == pytest.approx((1.0, 1.0, 1.0))
        # DataSetTimePoints spelling (BigDataProcessor)
        assert r.timepoints == [datetime.datetime(2000, 1, 1)]
        # NumberOfDataSets written as the string "1"
        assert r.scenes == ["DataSet"]


# ---------------------------------------------------------------------------
# synthetic variants
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("block_attrs", [False, True], ids=["noblock", "ImageBlockSize"])
def test_padded_and_unpadded(tmp_path: Path, stack: np.ndarray, pad: bool, block_attrs: bool) -> None:
    path = tmp_path / "a.ims"
    levels = pyramid(stack, 3)
    write_ims(path, levels, chunks=(4, 8, 16), pad=pad, image_block_size=block_attrs)
    with ImsReader(path) as r:
        assert r.shape == stack.shape
        assert r.levels == 3
        assert r.level_shapes == [lv.shape for lv in levels]
        for i, lv in enumerate(levels):
            np.testing.assert_array_equal(r.level(i)[:], lv)
            np.testing.assert_array_equal(r.asarray(level=i, t=1, c=2), lv[1, 2])
        np.testing.assert_array_equal(r[1, 2, 8, 20, 34], stack[1, 2, 8, 20, 34])


@pytest.mark.parametrize("style", sorted(ATTR_STYLES))
@pytest.mark.parametrize("fmt", ["{:.9f}", "{:.3f}", "{:g}", "{:e}", "{}"])
def test_attribute_encodings_and_float_formats(
    tmp_path: Path, rng: np.random.Generator, style: str, fmt: str
) -> None:
    data = rng.integers(0, 255, size=(1, 2, 4, 6, 8), dtype=np.uint8)
    path = tmp_path / "a.ims"
    write_ims(
        path,
        [data],
        attr=ATTR_STYLES[style],
        number_of_datasets=1 if style != "nullterm" else "u32",
        extent=((-1.5, 2.5), (0.0, 3.0), (10.0, 12.0)),
        ext_format=fmt,
        channel_names=["GFP", "RFP"],
        colors=["0.000 1.000 0.000", "1 0 0"],
        times=["2024-05-06 07:08:09.123", "2024-05-06 07:08:10"],
    )
    with ImsReader(path) as r:
        assert r.shape == data.shape
        np.testing.assert_array_equal(r[:], data)
        assert r.voxel_size == pytest.approx((2 / 4, 3 / 6, 4 / 8))
        assert r.channel_names == ["GFP", "RFP"]
        assert r.channel_colors == [(0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]
        assert r.timepoints == [datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)]
        assert r.unit == "um"


@pytest.mark.parametrize("key", ["DatasetTimePoints", "DataSetTimePoints", None])
def test_timeinfo_spellings(tmp_path: Path, rng: np.random.Generator, key: str | None) -> None:
    data = rng.integers(0, 255, size=(3, 1, 2, 4, 4), dtype=np.uint8)
    path = tmp_path / "t.ims"
    times = ["2020-01-01 00:00:00.000", "2020-01-01 00:00:01.500", "2020-01-01 00:00:03"]
    write_ims(path, [data], timeinfo_key=key, times=times if key else None)
    with ImsReader(path) as r:
        if key is None:
            assert r.timepoints == [None, None, None]
        else:
            assert r.timepoints == [
                datetime.datetime(2020, 1, 1),
                datetime.datetime(2020, 1, 1, 0, 0, 1, 500000),
                datetime.datetime(2020, 1, 1, 0, 0, 3),
            ]


def test_colortable_and_default_names(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 255, size=(1, 2, 1, 4, 4), dtype=np.uint8)
    path = tmp_path / "c.ims"
    table = " ".join(f"{i / 255:.3f} 0.000 {1 - i / 255:.3f}" for i in range(256)) + " "
    table255 = "0 0 0 128 64 255 "
    write_ims(path, [data], color_tables=[table, table255])
    with ImsReader(path) as r:
        assert r.channel_names == ["Channel 0", "Channel 1"]
        assert r.channel_colors[0] == pytest.approx((1.0, 0.0, 0.0))
        assert r.channel_colors[1] == pytest.approx((128 / 255, 64 / 255, 1.0))
        assert r.metadata["DataSetInfo"]["Channel 0"]["ColorTable"].startswith("0.000 0.000 1.000")


def test_colortable_as_dataset(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 255, size=(1, 1, 1, 4, 4), dtype=np.uint8)
    path = tmp_path / "c.ims"
    write_ims(path, [data])
    table = ("0.100 0.200 0.300 " * 400).strip()  # > 1024 chars: ImarisWriter writes a dataset
    with h5py.File(path, "a") as f:
        cg = f["DataSetInfo/Channel 0"]
        write_attr_str(cg, "ColorMode", "TableColor")
        write_attr_str(cg, "ColorTable", table, long_to_dataset=True)
        assert isinstance(cg["ColorTable"], h5py.Dataset)
    with ImsReader(path) as r:
        assert r.channel_colors == [pytest.approx((0.1, 0.2, 0.3))]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_dtypes_and_big_endian(tmp_path: Path, rng: np.random.Generator, dtype: str, byteorder: str) -> None:
    native = np.dtype(dtype)
    if native.kind == "f":
        data = rng.standard_normal((1, 1, 5, 7, 9)).astype(native)
    else:
        data = rng.integers(0, np.iinfo(native).max, size=(1, 1, 5, 7, 9), dtype=native)
    path = tmp_path / "d.ims"
    write_ims(path, [data], chunks=(2, 4, 4), dtype=native.newbyteorder(byteorder))
    with h5py.File(path, "r") as f:
        assert f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"].dtype.byteorder in (
            byteorder, "|", "="
        )
    with ImsReader(path) as r:
        assert r.dtype == native and r.dtype.isnative
        out = r.asarray()
        assert out.dtype.isnative
        np.testing.assert_array_equal(out, data[0, 0])
        buf = np.zeros_like(data[0, 0])
        assert r.asarray(out=buf) is buf
        np.testing.assert_array_equal(buf, data[0, 0])
        np.testing.assert_array_equal(r[0, 0, 1:4, ::-2, 3], data[0, 0, 1:4, ::-2, 3])


@pytest.mark.parametrize(
    "compression",
    [
        {"compression": "gzip", "compression_opts": 2},
        {"compression": "gzip", "compression_opts": 6, "shuffle": True},
        "lz4",
        "shuffle+lz4",
    ],
    ids=["gzip", "shuffle+gzip", "lz4", "shuffle+lz4"],
)
def test_compression(tmp_path: Path, stack: np.ndarray, compression: object) -> None:
    hdf5plugin = pytest.importorskip("hdf5plugin")
    if compression == "lz4":
        compression = dict(hdf5plugin.LZ4())
    elif compression == "shuffle+lz4":
        compression = {**dict(hdf5plugin.LZ4()), "shuffle": True}
    path = tmp_path / "z.ims"
    write_ims(path, pyramid(stack, 2), chunks=(4, 16, 16), compression=compression)  # type: ignore[arg-type]
    with ImsReader(path) as r:
        np.testing.assert_array_equal(r[:], stack)


def test_2d_file(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 4000, size=(1, 2, 1, 50, 70), dtype=np.uint16)
    path = tmp_path / "flat.ims"
    # one slice: the extent still has a thickness (outer-face convention)
    write_ims(path, pyramid(data, 2), chunks=(1, 32, 64), extent=((0, 7), (0, 5), (0, 0.4)))
    with ImsReader(path) as r:
        assert r.shape == (1, 2, 1, 50, 70)
        assert r.level_shapes[1] == (1, 2, 1, 25, 35)
        assert r.voxel_size == pytest.approx((0.4, 0.1, 0.1))
        np.testing.assert_array_equal(r[0, :, 0], data[0, :, 0])


def test_sizes_fall_back_to_dataset_info_then_shape(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 255, size=(1, 1, 5, 7, 9), dtype=np.uint8)
    path = tmp_path / "s.ims"
    # no ImageSize*: level 0 from DataSetInfo/Image X/Y/Z (padded data is still cropped)
    write_ims(path, pyramid(data, 2), chunks=(4, 4, 4), image_size_attrs=False)
    with ImsReader(path) as r:
        assert r.shape == (1, 1, 5, 7, 9)
        np.testing.assert_array_equal(r.asarray(), data[0, 0])
        assert r.level_shapes[1] == (1, 1, 3, 4, 8)  # padded shape: nothing tells the true size


def test_no_extents_gives_unit_voxels(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 255, size=(1, 1, 2, 3, 4), dtype=np.uint8)
    path = tmp_path / "n.ims"
    write_ims(path, [data], unit=None)
    with h5py.File(path, "a") as f:
        for k in list(f["DataSetInfo/Image"].attrs):
            if k.startswith("Ext"):
                del f["DataSetInfo/Image"].attrs[k]
    with ImsReader(path) as r:
        assert r.voxel_size == (1.0, 1.0, 1.0)
        assert r.unit == "um"


def test_soft_linked_root_groups(tmp_path: Path, stack: np.ndarray) -> None:
    """Newer Imaris: /DataSet etc. are soft links into /Workflows/InitialImages."""
    path = tmp_path / "soft.ims"
    with h5py.File(path, "w") as f:
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        write_attr_str(f, "DataSetDirectoryName", "DataSet")
        write_attr_str(f, "DataSetInfoDirectoryName", "DataSetInfo")
        f.attrs.create("NumberOfDataSets", np.array([1], dtype=np.uint32))
        write_ims(path, pyramid(stack, 2), f=f, chunks=(4, 8, 8), root="Workflows/InitialImages",
                  channel_names=["a", "b", "c"])
        f["DataSet"] = h5py.SoftLink("/Workflows/InitialImages/DataSet")
        f["DataSetInfo"] = h5py.SoftLink("/Workflows/InitialImages/DataSetInfo")
        # a relative soft link one level down, too
        lvl = f["Workflows/InitialImages/DataSet"]
        lvl.move("ResolutionLevel 1", "Level1Storage")
        lvl["ResolutionLevel 1"] = h5py.SoftLink("Level1Storage")
    with ImsReader(path) as r:
        assert r.shape == stack.shape
        np.testing.assert_array_equal(r[:], stack)
        np.testing.assert_array_equal(r.level(1)[:], pyramid(stack, 2)[1])
        assert r.channel_names == ["a", "b", "c"]


def _write_tiles(tmp: Path, tiles: list[np.ndarray]) -> Path:
    """imaris-linker layout: master DataSet{i} -> external links into tile files."""
    for i, tile in enumerate(tiles):
        write_ims(tmp / f"tile_{i}.ims", pyramid(tile, 2), chunks=(4, 8, 8),
                  channel_names=[f"tile{i}"])
    master = tmp / "master.ims"
    with h5py.File(master, "w") as f:
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        write_attr_str(f, "DataSetDirectoryName", "DataSet")
        write_attr_str(f, "DataSetInfoDirectoryName", "DataSetInfo")
        f.attrs.create("NumberOfDataSets", np.array([len(tiles)], dtype=np.uint32))
        for i in range(len(tiles)):
            suffix = str(i) if i else ""
            for r in range(2):
                g = f.require_group(f"DataSet{suffix}/ResolutionLevel {r}/TimePoint 0")
                g["Channel 0"] = h5py.ExternalLink(
                    f"./tile_{i}.ims", f"/DataSet/ResolutionLevel {r}/TimePoint 0/Channel 0"
                )
            with h5py.File(tmp / f"tile_{i}.ims", "r") as t:
                t.copy(t["DataSetInfo"], f, name=f"DataSetInfo{suffix}")
    return master


def test_multi_dataset_scenes_with_linked_tiles(tmp_path: Path, rng: np.random.Generator) -> None:
    tiles = [rng.integers(0, 1000, size=(1, 1, 6, 10, 12 + 2 * i), dtype=np.uint16) for i in range(3)]
    master = _write_tiles(tmp_path, tiles)
    with ImsReader(master) as r:
        assert r.scenes == ["DataSet", "DataSet1", "DataSet2"]
        for i, tile in enumerate(tiles):
            r.set_scene(i)
            assert r.scene == i
            assert r.shape == tile.shape
            assert r.channel_names == [f"tile{i}"]
            np.testing.assert_array_equal(r.asarray(), tile[0, 0])
            np.testing.assert_array_equal(r.level(1)[0, 0], pyramid(tile, 2)[1][0, 0])
        r.set_scene("DataSet1")
        assert r.scene == 1
        with pytest.raises(KeyError, match="DataSet7"):
            r.set_scene("DataSet7")
        with pytest.raises(IndexError, match="0..2"):
            r.set_scene(3)
    with ImsReader(master, scene=2) as r:
        np.testing.assert_array_equal(r.asarray(), tiles[2][0, 0])
    np.testing.assert_array_equal(read_ims(master, scene=1, t=0, c=0), tiles[1][0, 0])


def test_scenes_without_number_of_datasets(tmp_path: Path, rng: np.random.Generator) -> None:
    a = rng.integers(0, 255, size=(1, 1, 2, 4, 4), dtype=np.uint8)
    b = rng.integers(0, 255, size=(1, 1, 3, 4, 4), dtype=np.uint8)
    path = tmp_path / "m.ims"
    with h5py.File(path, "w") as f:
        write_ims(path, [a], f=f, dataset_name="DataSet")
        write_ims(path, [b], f=f, dataset_name="DataSet1", info_name="DataSetInfo1")
    with ImsReader(path) as r:
        assert r.scenes == ["DataSet", "DataSet1"]
        r.set_scene(1)
        np.testing.assert_array_equal(r.asarray(), b[0, 0])


def test_external_link_outside_folder_needs_permission(tmp_path: Path, stack: np.ndarray) -> None:
    outside = tmp_path / "elsewhere"
    inside = tmp_path / "dataset"
    outside.mkdir()
    inside.mkdir()
    write_ims(outside / "tile.ims", [stack], chunks=(4, 8, 8))
    master = inside / "master.ims"
    with h5py.File(master, "w") as f:
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        f["DataSet"] = h5py.ExternalLink("../elsewhere/tile.ims", "/DataSet")
    with pytest.raises(FormatError, match="outside the dataset folder"):
        ImsReader(master)
    with ImsReader(master, allow_external_paths=True) as r:
        np.testing.assert_array_equal(r[:], stack)
    # absolute link target
    with h5py.File(master, "a") as f:
        del f["DataSet"]
        f["DataSet"] = h5py.ExternalLink(str(outside / "tile.ims"), "/DataSet")
    with pytest.raises(FormatError, match="allow_external_paths"):
        ImsReader(master)
    with ImsReader(master, allow_external_paths=True) as r:
        np.testing.assert_array_equal(r[:], stack)


def test_external_link_is_not_resolved_through_cwd(
    tmp_path: Path, stack: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A linked file missing next to the master is an error even if the CWD has one."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "cwd").mkdir()
    write_ims(tmp_path / "cwd" / "tile.ims", [stack], chunks=(4, 8, 8))
    master = tmp_path / "ds" / "master.ims"
    with h5py.File(master, "w") as f:
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        f["DataSet"] = h5py.ExternalLink("tile.ims", "/DataSet")
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(FileNotFoundError, match="tile.ims"):
        ImsReader(master)


def test_soft_link_loop(tmp_path: Path) -> None:
    path = tmp_path / "loop.ims"
    with h5py.File(path, "w") as f:
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        f["DataSet"] = h5py.SoftLink("/Other")
        f["Other"] = h5py.SoftLink("/DataSet")
    with pytest.raises(FormatError, match="link chain"):
        ImsReader(path)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_missing_linked_file(tmp_path: Path, rng: np.random.Generator) -> None:
    tiles = [rng.integers(0, 1000, size=(1, 1, 6, 10, 12), dtype=np.uint16) for _ in range(2)]
    master = _write_tiles(tmp_path, tiles)
    os.remove(tmp_path / "tile_1.ims")
    with ImsReader(master) as r:  # scene 0 is fine
        np.testing.assert_array_equal(r.asarray(), tiles[0][0, 0])
        with pytest.raises(FileNotFoundError, match="tile_1.ims"):
            r.set_scene(1)
            r.asarray()


def test_scene_linked_to_missing_file(tmp_path: Path, rng: np.random.Generator) -> None:
    a = rng.integers(0, 255, size=(1, 1, 2, 4, 4), dtype=np.uint8)
    path = tmp_path / "m.ims"
    with h5py.File(path, "w") as f:
        write_ims(path, [a], f=f)
        f.attrs.create("NumberOfDataSets", np.array([2], dtype=np.uint32))
        f["DataSet1"] = h5py.ExternalLink("gone.ims", "/DataSet")
    with ImsReader(path) as r:
        assert r.scenes == ["DataSet", "DataSet1"]
        np.testing.assert_array_equal(r.asarray(), a[0, 0])
        with pytest.raises(FileNotFoundError, match="gone.ims"):
            r.set_scene(1)
        assert r.scene == 0  # a failed switch keeps the working scene
        np.testing.assert_array_equal(r.asarray(), a[0, 0])


def test_missing_linked_file_of_data(tmp_path: Path, fixtures_dir: Path) -> None:
    src = fixtures_dir / "ims" / "linked" / "image-header.ims"
    dst = tmp_path / "image-header.ims"
    dst.write_bytes(src.read_bytes())
    with pytest.raises(FileNotFoundError) as info:
        ImsReader(dst)
    assert "image--C00--T00000.h5" in str(info.value)


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "fake.ims"
    path.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(FormatError, match="not an HDF5 file"):
        ImsReader(path)
    with pytest.raises(FormatError):
        fastims.open(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.ims"
    path.write_bytes(b"")
    with pytest.raises(FormatError):
        ImsReader(path)


def test_truncated_file(tmp_path: Path, stack: np.ndarray) -> None:
    path = tmp_path / "t.ims"
    write_ims(path, [stack], chunks=(4, 8, 8), compression={"compression": "gzip"})
    blob = path.read_bytes()
    cut = tmp_path / "cut.ims"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(FormatError):
        with ImsReader(cut) as r:
            r[:]


def test_corrupted_chunk(tmp_path: Path, stack: np.ndarray) -> None:
    path = tmp_path / "c.ims"
    write_ims(path, [stack], chunks=(9, 21, 35), compression={"compression": "gzip"})
    with h5py.File(path, "r") as f:
        ds = f["DataSet/ResolutionLevel 0/TimePoint 1/Channel 2/Data"]
        offset = ds.id.get_chunk_info(0).byte_offset
    blob = bytearray(path.read_bytes())
    blob[offset + 2 : offset + 200] = b"\xff" * 198
    path.write_bytes(bytes(blob))
    with ImsReader(path) as r:
        np.testing.assert_array_equal(r.asarray(t=0, c=0), stack[0, 0])  # other chunks fine
        with pytest.raises(FormatError, match="corrupted"):
            r.asarray(t=1, c=2)


def test_not_imaris(tmp_path: Path) -> None:
    path = tmp_path / "other.ims"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FormatError, match="not an Imaris file"):
        ImsReader(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ImsReader(tmp_path / "nope.ims")
    with pytest.raises(FileNotFoundError):
        fastims.open(tmp_path / "nope.ims")


def test_out_of_range_indices(tmp_path: Path, stack: np.ndarray) -> None:
    path = tmp_path / "r.ims"
    write_ims(path, pyramid(stack, 2), chunks=(4, 8, 8))
    with ImsReader(path) as r:
        with pytest.raises(IndexError, match=r"2 levels \(0..1\)"):
            r.asarray(level=2)
        with pytest.raises(IndexError, match=r"0..1"):
            r.asarray(t=2)
        with pytest.raises(IndexError, match=r"0..2"):
            r.asarray(c=3)
        with pytest.raises(IndexError, match="axis T"):
            r[5]
        with pytest.raises(IndexError, match="axis Z"):
            r[0, 0, 9]
        with pytest.raises(IndexError):
            r.level(-1)
        with pytest.raises(TypeError):
            r.asarray(level=1.0)  # type: ignore[arg-type]


def test_missing_volume_is_a_key_error(tmp_path: Path, stack: np.ndarray) -> None:
    path = tmp_path / "m.ims"
    write_ims(path, [stack], chunks=(4, 8, 8))
    with h5py.File(path, "a") as f:
        del f["DataSet/ResolutionLevel 0/TimePoint 1/Channel 1/Data"]  # never acquired
    with ImsReader(path) as r:
        np.testing.assert_array_equal(r.asarray(t=1, c=0), stack[1, 0])
        with pytest.raises(KeyError, match="time point 1, channel 1"):
            r.asarray(t=1, c=1)
        with pytest.raises(KeyError):
            r[:]


def test_data_smaller_than_image_size(tmp_path: Path, stack: np.ndarray) -> None:
    path = tmp_path / "s.ims"
    write_ims(path, [stack], chunks=(4, 8, 8), pad=False)
    with h5py.File(path, "a") as f:
        write_attr_str(f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"], "ImageSizeX", "99")
    with pytest.raises(FormatError, match="smaller than its ImageSize"):
        ImsReader(path)


def test_lz4_without_plugin_is_unsupported(tmp_path: Path, stack: np.ndarray) -> None:
    """A dataset whose filter is unknown to HDF5 raises UnsupportedFormatError naming it."""
    path = tmp_path / "u.ims"
    write_ims(path, [stack], chunks=(4, 8, 8))
    with h5py.File(path, "a") as f:
        g = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        del g["Data"]
        # filter id 32999 is registered nowhere; optional flag lets HDF5 create it
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4, 8, 8))
        dcpl.set_filter(32999, h5py.h5z.FLAG_OPTIONAL, (1,))
        space = h5py.h5s.create_simple(stack.shape[2:])
        h5py.h5d.create(g.id, b"Data", h5py.h5t.NATIVE_UINT16, space, dcpl=dcpl)
        ds = g["Data"]
        # write raw (unfiltered) chunks and mark the filter as applied
        for z in range(0, 9, 4):
            for y in range(0, 21, 8):
                for x in range(0, 35, 8):
                    ds.id.write_direct_chunk((z, y, x), np.zeros((4, 8, 8), np.uint16).tobytes(), 0)
    with ImsReader(path) as r:
        with pytest.raises(UnsupportedFormatError, match="32999"):
            r.asarray()
