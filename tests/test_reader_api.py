"""The unified reader surface: fastims.open, slicing, get_image_data, dask/xarray,
pickling and file-handle hygiene, for both formats."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastims
from fastims import FormatError
from fastims.ims.attrs import write_attr_str

SHAPE = (2, 3, 7, 11, 13)  # T, C, Z, Y, X


def _write_ims(path: Path, data: np.ndarray, chunks: tuple[int, int, int]) -> None:
    """A padded two-level Imaris file (level 1 = 2x decimation of Y and X)."""
    with h5py.File(path, "w") as f:
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        f.attrs.create("NumberOfDataSets", np.array([1], dtype=np.uint32))
        levels = [data, data[:, :, :, ::2, ::2]]
        for r, lv in enumerate(levels):
            for t in range(lv.shape[0]):
                for c in range(lv.shape[1]):
                    g = f.create_group(f"DataSet/ResolutionLevel {r}/TimePoint {t}/Channel {c}")
                    vol = lv[t, c]
                    ch = tuple(min(a, b) for a, b in zip(chunks, vol.shape))
                    padded = np.zeros(tuple(-(-n // k) * k for n, k in zip(vol.shape, ch)), vol.dtype)
                    padded[: vol.shape[0], : vol.shape[1], : vol.shape[2]] = vol
                    g.create_dataset("Data", data=padded, chunks=ch, compression="gzip")
                    for a, n in zip("ZYX", vol.shape):
                        write_attr_str(g, f"ImageSize{a}", str(n))
        img = f.create_group("DataSetInfo/Image")
        for i, (n, v) in enumerate(zip(data.shape[:1:-1], (0.25, 0.5, 2.0))):
            write_attr_str(img, f"ExtMin{i}", "0")
            write_attr_str(img, f"ExtMax{i}", f"{n * v:.9f}")
        write_attr_str(img, "Unit", "um")
        for c in range(data.shape[1]):
            write_attr_str(f.create_group(f"DataSetInfo/Channel {c}"), "Name", f"ch{c}")


def _write_bdv(path: Path, data: np.ndarray, chunks: tuple[int, int, int]) -> None:
    """Legacy-int16 BDV (.h5 + .xml) with the same content as ``_write_ims``."""
    with h5py.File(path.with_suffix(".h5"), "w") as f:
        for s in range(data.shape[1]):
            f[f"s{s:02d}/resolutions"] = np.array([[1, 1, 1], [2, 2, 1]], dtype=np.float64)
            f[f"s{s:02d}/subdivisions"] = np.array([chunks[::-1]] * 2, dtype=np.int32)
            for t in range(data.shape[0]):
                for lvl, vol in enumerate((data[t, s], data[t, s, :, ::2, ::2])):
                    f.create_dataset(f"t{t:05d}/s{s:02d}/{lvl}/cells", data=vol.view(np.int16),
                                     chunks=tuple(min(a, b) for a, b in zip(chunks, vol.shape)))
    setups = "".join(
        f"<ViewSetup><id>{s}</id><name>ch{s}</name><voxelSize><unit>um</unit>"
        f"<size>0.25 0.5 2.0</size></voxelSize><attributes><channel>{s}</channel></attributes></ViewSetup>"
        for s in range(data.shape[1])
    )
    path.with_suffix(".xml").write_text(
        f"""<SpimData version="0.2"><BasePath type="relative">.</BasePath><SequenceDescription>
        <ImageLoader format="bdv.hdf5"><hdf5 type="relative">{path.with_suffix('.h5').name}</hdf5></ImageLoader>
        <ViewSetups>{setups}</ViewSetups>
        <Timepoints type="range"><first>0</first><last>{data.shape[0] - 1}</last></Timepoints>
        </SequenceDescription><ViewRegistrations/></SpimData>"""
    )


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 65535, size=SHAPE, dtype=np.uint16)


@pytest.fixture(scope="module", params=["ims", "bdv-xml", "bdv-h5"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: np.ndarray) -> Path:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "ims":
        path = tmp / "d.ims"
        _write_ims(path, data, (4, 8, 8))
        return path
    _write_bdv(tmp / "d.xml", data, (4, 8, 8))
    return tmp / ("d.xml" if request.param == "bdv-xml" else "d.h5")


def _open_files() -> int:
    return len(h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE))


# ---------------------------------------------------------------------------


def test_open_dispatch(dataset: Path) -> None:
    with fastims.open(dataset) as r:
        expected = fastims.ImsReader if dataset.suffix == ".ims" else fastims.BdvReader
        assert type(r) is expected
        assert r.dims == "TCZYX"


def test_common_surface(dataset: Path, data: np.ndarray) -> None:
    with fastims.open(dataset) as r:
        assert r.shape == SHAPE
        assert r.ndim == 5
        assert r.dtype == np.uint16
        assert r.levels == 2
        assert r.level_shapes == [SHAPE, (2, 3, 7, 6, 7)]
        assert r.chunks == [(4, 8, 8), (4, 6, 7)]
        # an HDF5 file alone has no voxel size: unit voxels
        assert r.voxel_size == ((1.0, 1.0, 1.0) if dataset.suffix == ".h5" else pytest.approx((2.0, 0.5, 0.25)))
        assert r.unit == (None if dataset.suffix == ".h5" else "um")
        assert len(r.channel_names) == 3
        assert len(r.timepoints) == 2
        assert isinstance(r.metadata, dict)
        np.testing.assert_array_equal(r[:], data)
        np.testing.assert_array_equal(r.level(1)[:], data[:, :, :, ::2, ::2])
        assert r.level(1).shape == (2, 3, 7, 6, 7)
        assert r.level(1).dtype == np.uint16
        np.testing.assert_array_equal(np.asarray(r.level(0)), data)
        np.testing.assert_array_equal(r.asarray(level=1, t=1, c=2), data[1, 2, :, ::2, ::2])
        assert len(r.scenes) == 1 and r.scene == 0
        r.set_scene(0)
        r.set_scene(r.scenes[0])
        with pytest.raises(IndexError):
            r.set_scene(1)
        with pytest.raises(KeyError):
            r.set_scene("nope")
        assert "shape=(2, 3, 7, 11, 13)" in repr(r)


KEYS = [
    (),
    (0,),
    (1, 2),
    (-1, -1, -1, -1, -1),
    (Ellipsis, 3),
    (0, Ellipsis, slice(2, 5)),
    (slice(None), [2, 0], 3),
    (slice(None, None, -1), 1, slice(6, 0, -2), slice(None, None, 3), 5),
    (np.int64(1), np.int32(0), slice(0, 0)),
    (slice(1, 2), slice(0, 3, 2), slice(1, 6, 4), slice(-3, None), slice(None, 2)),
    ([1, 0, 1], 0, 0, 0),
]


@pytest.mark.parametrize("key", KEYS, ids=[str(k) for k in KEYS])
def test_slicing_matches_numpy(dataset: Path, data: np.ndarray, key: tuple) -> None:
    with fastims.open(dataset) as r:
        got = r[key]
        want = data[key]
        assert got.shape == want.shape
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _slices(n: int) -> st.SearchStrategy:
    idx = st.integers(-n - 2, n + 2) | st.none()
    step = st.sampled_from([None, 1, 2, 3, -1, -2])
    return st.builds(slice, idx, idx, step) | st.integers(-n, n - 1)


@settings(max_examples=40, deadline=None)
@given(
    st.tuples(_slices(SHAPE[0]), _slices(SHAPE[1]), _slices(SHAPE[2]), _slices(SHAPE[3]), _slices(SHAPE[4]))
)
def test_slicing_property(tmp_path_factory: pytest.TempPathFactory, key: tuple) -> None:
    tmp = tmp_path_factory.getbasetemp() / "prop"
    path = tmp / "d.ims"
    values = np.arange(np.prod(SHAPE), dtype=np.uint32).reshape(SHAPE).astype(np.uint16)
    if not path.exists():
        tmp.mkdir(exist_ok=True)
        _write_ims(path, values, (3, 4, 5))
    with fastims.open(path) as r:
        np.testing.assert_array_equal(r[key], values[key])


def test_bad_keys(dataset: Path) -> None:
    with fastims.open(dataset) as r:
        with pytest.raises(IndexError, match="too many"):
            r[0, 0, 0, 0, 0, 0]
        with pytest.raises(IndexError, match="single ellipsis"):
            r[..., 0, ...]
        with pytest.raises(IndexError, match="Z index"):
            r[0, 0, [1, 2]]
        with pytest.raises(IndexError, match="out of bounds for axis C"):
            r[0, 3]
        with pytest.raises(IndexError):
            r["a"]


def test_out_parameter(dataset: Path, data: np.ndarray) -> None:
    with fastims.open(dataset) as r:
        out = np.zeros(SHAPE[2:], np.uint16)
        assert r.asarray(t=1, c=1, out=out) is out
        np.testing.assert_array_equal(out, data[1, 1])
        with pytest.raises(ValueError, match="shape"):
            r.asarray(out=np.zeros((1, 2, 3), np.uint16))
        with pytest.raises(ValueError, match="dtype"):
            r.asarray(out=np.zeros(SHAPE[2:], np.int32))
        with pytest.raises(ValueError, match="C-contiguous"):
            r.asarray(out=np.zeros(SHAPE[2:][::-1], np.uint16).T)
        with pytest.raises(TypeError):
            r.asarray(out=[0])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("order", "kw", "index", "axes"),
    [
        ("CZYX", {"T": 1}, (1,), None),
        ("ZYX", {"C": 2, "T": 1}, (1, 2), None),
        ("YX", {"Z": 3}, (0, 0, 3), None),
        ("TCZYX", {}, (), None),
        (None, {}, (), None),
        ("XYZ", {}, (0, 0), (2, 1, 0)),
        ("ZCYX", {"T": 0, "C": [2, 0]}, (0, [2, 0]), (1, 0, 2, 3)),
        ("CZYX", {"C": 1}, (0, slice(1, 2)), None),
        ("tczyx", {"Z": slice(1, 3)}, (slice(None), slice(None), slice(1, 3)), None),
        ("ZYX", {"Z": [5, 1, 5], "X": range(12, 2, -3)}, (0, 0, [5, 1, 5], slice(None), slice(12, 2, -3)), None),
        ("TYX", {"T": range(1, -1, -1), "Y": -1}, ([1, 0], 0, 0, slice(-1, None)), None),
    ],
)
def test_get_image_data(dataset: Path, data: np.ndarray, order, kw, index, axes) -> None:
    with fastims.open(dataset) as r:
        got = r.get_image_data(order, **kw)
        want = data[index]
        if axes is not None:
            want = np.transpose(want, axes)
        np.testing.assert_array_equal(got, want)
        small = r.get_image_data("ZYX", level=1, C=1)
        np.testing.assert_array_equal(small, data[0, 1, :, ::2, ::2])


def test_get_image_data_errors(dataset: Path) -> None:
    with fastims.open(dataset) as r:
        with pytest.raises(ValueError, match="at most once"):
            r.get_image_data("ZZYX")
        with pytest.raises(ValueError, match="at most once"):
            r.get_image_data("QYX")
        with pytest.raises(ValueError, match="single int"):
            r.get_image_data("ZYX", T=slice(0, 2))
        with pytest.raises(TypeError, match="unexpected"):
            r.get_image_data("ZYX", S=0)
        with pytest.raises(IndexError):
            r.get_image_data("ZYX", C=9)


def test_pickle_reopens(dataset: Path, data: np.ndarray) -> None:
    with fastims.open(dataset) as r:
        blob = pickle.dumps(r)
        view_blob = pickle.dumps(r.level(1))
    clone = pickle.loads(blob)
    try:
        assert type(clone) is type(r)
        np.testing.assert_array_equal(clone[1, 2], data[1, 2])
    finally:
        clone.close()
    view = pickle.loads(view_blob)
    try:
        np.testing.assert_array_equal(view[0, 0], data[0, 0, :, ::2, ::2])
    finally:
        view.reader.close()


def test_pickle_keeps_scene(tmp_path: Path, data: np.ndarray) -> None:
    path = tmp_path / "m.ims"
    _write_ims(path, data, (4, 8, 8))
    with h5py.File(path, "a") as f:
        f.copy(f["DataSet"], f, name="DataSet1")
        f.attrs.create("NumberOfDataSets", np.array([2], dtype=np.uint32))
        del f["DataSet1/ResolutionLevel 1"]
    with fastims.open(path, scene=1) as r:
        assert r.levels == 1
        clone = pickle.loads(pickle.dumps(r))
    with clone:
        assert clone.scene == 1 and clone.levels == 1


def test_handles_closed(dataset: Path, tmp_path: Path) -> None:
    before = _open_files()
    with fastims.open(dataset) as r:
        r[:]
        assert _open_files() > before
    assert _open_files() == before
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.asarray()
    with pytest.raises(ValueError, match="closed"):
        r.shape
    r.close()  # idempotent
    assert "closed" in repr(r)
    # the file can be reopened for writing and deleted
    files = [dataset] if dataset.suffix != ".xml" else [dataset.with_suffix(".h5")]
    for p in files:
        with h5py.File(p, "a"):
            pass


def test_handles_closed_after_error(tmp_path: Path, data: np.ndarray) -> None:
    path = tmp_path / "e.ims"
    _write_ims(path, data, (4, 8, 8))
    before = _open_files()
    with pytest.raises(IndexError):
        with fastims.open(path) as r:
            r.asarray(level=7)
    assert _open_files() == before
    # a failing constructor closes what it opened
    with h5py.File(path, "a") as f:
        del f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
    with pytest.raises(FormatError):
        fastims.open(path)
    assert _open_files() == before
    path.unlink()
    assert not path.exists()


def test_handles_closed_with_external_links(fixtures_dir: Path) -> None:
    before = _open_files()
    with fastims.open(fixtures_dir / "ims" / "linked" / "image-header.ims") as r:
        r.asarray()
        assert _open_files() == before + 2  # header and the linked per-(c, t) file
    assert _open_files() == before


def test_one_shot_readers(tmp_path: Path, data: np.ndarray) -> None:
    ims = tmp_path / "d.ims"
    _write_ims(ims, data, (4, 8, 8))
    _write_bdv(tmp_path / "b.xml", data, (4, 8, 8))
    for fn, path in ((fastims.read_ims, ims), (fastims.read_bdv, tmp_path / "b.xml")):
        np.testing.assert_array_equal(fn(path), data)
        np.testing.assert_array_equal(fn(path, t=1), data[1])
        np.testing.assert_array_equal(fn(path, c=2), data[:, 2])
        np.testing.assert_array_equal(fn(path, t=1, c=0), data[1, 0])
        np.testing.assert_array_equal(fn(path, level=1, t=0), data[0, :, :, ::2, ::2])
        with pytest.raises(IndexError):
            fn(path, t=5)
        with pytest.raises(IndexError):
            fn(path, level=2)
    np.testing.assert_array_equal(fastims.read_bdv(tmp_path / "b.xml", channel=2, t=0), data[0, 2])


def test_negative_t_c_keywords(dataset: Path, data: np.ndarray) -> None:
    # keyword t= / c= follow Python's negative indexing, as r[-1] does
    with fastims.open(dataset) as r:
        np.testing.assert_array_equal(r.asarray(t=-1, c=-2), data[1, 1])
        np.testing.assert_array_equal(r.asarray(t=-2, c=-3), data[0, 0])
        np.testing.assert_array_equal(r.level(1).asarray(t=-1, c=-1), data[1, 2, :, ::2, ::2])
        np.testing.assert_array_equal(r.get_image_data("ZYX", T=-1, C=-1), data[-1, -1])
        for kw in ({"t": -3}, {"t": 2}, {"c": -4}, {"c": 3}):
            with pytest.raises(IndexError, match=r"out of range: valid [tc] are 0\.\.\d \(or -\d\.\.-1"):
                r.asarray(**kw)


def test_negative_t_c_in_one_shot_readers(tmp_path: Path, data: np.ndarray) -> None:
    ims = tmp_path / "d.ims"
    _write_ims(ims, data, (4, 8, 8))
    _write_bdv(tmp_path / "b.xml", data, (4, 8, 8))
    for fn, path in ((fastims.read_ims, ims), (fastims.read_bdv, tmp_path / "b.xml")):
        np.testing.assert_array_equal(fn(path, t=-1), data[1])
        np.testing.assert_array_equal(fn(path, c=-1), data[:, 2])
        np.testing.assert_array_equal(fn(path, t=-2, c=-3), data[0, 0])
        np.testing.assert_array_equal(fn(path, level=1, t=-1), data[1, :, :, ::2, ::2])
        with pytest.raises(IndexError, match="t=-3 is out of range"):
            fn(path, t=-3)
        with pytest.raises(IndexError, match="c=-4 is out of range"):
            fn(path, t=0, c=-4)
        with pytest.raises(TypeError):
            fn(path, t=True)


def test_open_rejects_unknown(tmp_path: Path) -> None:
    txt = tmp_path / "a.tif"
    txt.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(FormatError):
        fastims.open(txt)
    with pytest.raises(FileNotFoundError):
        fastims.open(tmp_path / "missing.xml")
    with pytest.raises(FormatError):
        fastims.open(tmp_path)  # a directory


def test_open_h5_sniffs_imaris(tmp_path: Path, data: np.ndarray) -> None:
    path = tmp_path / "renamed.h5"
    _write_ims(path, data, (4, 8, 8))
    with fastims.open(path) as r:
        assert isinstance(r, fastims.ImsReader)


def test_import_is_light() -> None:
    code = (
        "import sys, fastims; fastims.open; "
        "bad = [m for m in ('h5py', 'hdf5plugin', 'numba', 'dask', 'xarray') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------------------
# optional extras
# ---------------------------------------------------------------------------


def test_dask(dataset: Path, data: np.ndarray) -> None:
    da = pytest.importorskip("dask.array")
    with fastims.open(dataset) as r:
        arr = r.to_dask()
        assert arr.shape == SHAPE
        assert arr.dtype == np.uint16
        assert arr.chunksize == (1, 1, 4, 8, 8)
        np.testing.assert_array_equal(arr.compute(scheduler="threads"), data)
        np.testing.assert_array_equal(arr[1, 2, 3].compute(), data[1, 2, 3])
        low = r.level(1).to_dask()
        assert low.chunksize == (1, 1, 4, 6, 7)
        np.testing.assert_array_equal(low.compute(), data[:, :, :, ::2, ::2])
        assert r.to_dask().name == arr.name  # deterministic task names
        # the graph pickles (reader reopened by path), as for distributed workers
        clone = pickle.loads(pickle.dumps(arr))
        np.testing.assert_array_equal(clone.sum(axis=(0, 1)).compute(), data.sum(axis=(0, 1)))
        assert isinstance(arr, da.Array)


def test_xarray(dataset: Path, data: np.ndarray) -> None:
    pytest.importorskip("xarray")
    with fastims.open(dataset) as r:
        xa = r.to_xarray()
        assert xa.dims == ("T", "C", "Z", "Y", "X")
        assert list(xa.coords["C"].values) == r.channel_names
        np.testing.assert_array_equal(xa.values, data)
        dz, dy, dx = r.voxel_size
        np.testing.assert_allclose(np.diff(xa.coords["X"].values), dx)
        if dataset.suffix == ".ims":
            assert xa.coords["X"].values[0] == pytest.approx(dx / 2)  # voxel centres
        else:
            assert xa.coords["X"].values[0] == 0.0
        low = r.to_xarray(level=1)
        np.testing.assert_allclose(np.diff(low.coords["Y"].values), r.level(1).voxel_size[1])
        assert r.level(1).voxel_size[1] == pytest.approx(2 * dy if dataset.suffix != ".ims" else 11 * dy / 6)
        assert low.attrs["unit"] == r.unit


def test_dask_missing_message(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    monkeypatch.setitem(sys.modules, "xarray", None)
    with fastims.open(dataset) as r:
        with pytest.raises(ImportError, match="pip install"):
            r.to_dask()
        with pytest.raises(ImportError, match="xarray"):
            r.to_xarray()
