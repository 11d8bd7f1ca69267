"""Reading throughput of :class:`fastims.ImsReader` / :class:`fastims.BdvReader` vs h5py.

Each file holds one camera-like uint16 volume (``fastims.synthetic.camera_stack``).  For
every layout the benchmarks time

* ``test_h5py_level``: h5py reading the same (cropped) region straight into a warm buffer,
  ``ds.read_direct(out, np.s_[:Z, :Y, :X])`` — the ceiling;
* ``test_fastims_level``: ``reader.asarray(out=buf)`` (whole level, no allocation);
* ``test_fastims_getitem``: ``reader[0, 0]`` (allocating, through the slicing path);
* ``test_plane``: one Z plane of a level whose chunks are 32 planes deep.

``extra_info["MB/s"]`` is logical bytes read / 1e6 / median seconds.  ``test_fastims_level``
also reports ``"vs h5py"``: fastims throughput / h5py throughput measured by alternating
the two reads (robust to load on a shared machine; the target is >= 0.80).

Why only the needed chunks are read: slicing hands HDF5 one hyperslab per ``(t, c)``
volume, and HDF5 reads and decompresses exactly the chunks that intersect it.  For the
plane benchmark (chunks 32 x 128 x 128 on a 64-plane level) a plane touches 1 of the 2
chunk layers, so it costs about half a level read; ``extra_info["plane/level time"]``
shows that ratio.

Run with ``python -m pytest benchmarks/bench_read.py --benchmark-only``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import fastims
from fastims.synthetic import camera_stack

SHAPE = (32, 1000, 1000)  # Z, Y, X: not a multiple of the chunk -> Imaris pads to 1024
CHUNK = (32, 128, 128)  # ImarisWriter's usual deep-stack uint16 chunk


def _report(benchmark: Any, nbytes: int, **extra: Any) -> None:
    benchmark.extra_info["MB/s"] = round(nbytes / 1e6 / benchmark.stats.stats.median, 1)
    benchmark.extra_info.update(extra)


def _compression(kind: str) -> dict[str, Any]:
    if kind == "none":
        return {}
    if kind == "shuffle+gzip2":
        return {"compression": "gzip", "compression_opts": 2, "shuffle": True}
    if kind == "lz4":
        import hdf5plugin

        return dict(hdf5plugin.LZ4())
    if kind == "scaleoffset+gzip6":  # what BDV's own exporter writes
        return {"scaleoffset": 0, "compression": "gzip", "compression_opts": 6}
    raise ValueError(kind)


def _write_ims(path: Path, vol: np.ndarray, compression: dict[str, Any]) -> str:
    from fastims.ims.attrs import write_attr_str

    key = "DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"
    padded = tuple(-(-n // c) * c for n, c in zip(vol.shape, CHUNK))
    with h5py.File(path, "w") as f:
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        f.attrs.create("NumberOfDataSets", np.array([1], dtype=np.uint32))
        ds = f.create_dataset(key, shape=padded, dtype=vol.dtype, chunks=CHUNK, **compression)
        ds[: vol.shape[0], : vol.shape[1], : vol.shape[2]] = vol
        for axis, n in zip("ZYX", vol.shape):
            write_attr_str(ds.parent, f"ImageSize{axis}", str(n))
    return key


def _write_bdv(path: Path, vol: np.ndarray, compression: dict[str, Any]) -> str:
    key = "t00000/s00/0/cells"
    with h5py.File(path, "w") as f:
        f["s00/resolutions"] = np.ones((1, 3))
        f["s00/subdivisions"] = np.array([CHUNK[::-1]], dtype=np.int32)
        # legacy layout: uint16 values stored as int16 bits, no dataType attribute
        f.create_dataset(key, data=vol.view(np.int16), chunks=CHUNK, **compression)
    return key


LAYOUTS = [
    ("ims", "none"),
    ("ims", "shuffle+gzip2"),
    ("ims", "lz4"),
    ("bdv", "none"),
    ("bdv", "scaleoffset+gzip6"),
]
IDS = [f"{fmt}-{comp}" for fmt, comp in LAYOUTS]


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return camera_stack(SHAPE, "uint16", seed=3)


@pytest.fixture(scope="module", params=LAYOUTS, ids=IDS)
def layout(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, volume: np.ndarray
) -> tuple[Path, str]:
    fmt, comp = request.param
    tmp = tmp_path_factory.mktemp(f"{fmt}-{comp}")
    path = tmp / ("d.ims" if fmt == "ims" else "d.h5")
    writer = _write_ims if fmt == "ims" else _write_bdv
    key = writer(path, volume, _compression(comp))
    return path, key


def _h5py_reader(path: Path, key: str):
    f = h5py.File(path, "r")
    ds = f[key]
    sel = np.s_[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    store_dtype = ds.dtype
    return f, ds, sel, store_dtype


def test_h5py_level(benchmark: Any, layout, volume: np.ndarray) -> None:
    path, key = layout
    f, ds, sel, store_dtype = _h5py_reader(path, key)
    try:
        out = np.empty(SHAPE, dtype=store_dtype)
        ds.read_direct(out, sel)  # warm the buffer and the page cache
        benchmark(ds.read_direct, out, sel)
        np.testing.assert_array_equal(out.view(np.uint16), volume)
        _report(benchmark, volume.nbytes)
    finally:
        f.close()


def test_fastims_level(benchmark: Any, layout, volume: np.ndarray) -> None:
    path, key = layout
    f, ds, sel, store_dtype = _h5py_reader(path, key)
    with fastims.open(path) as r:
        out = np.empty(SHAPE, dtype=r.dtype)
        raw = np.empty(SHAPE, dtype=store_dtype)
        r.asarray(out=out)
        ds.read_direct(raw, sel)
        # alternate the two reads: the ratio is robust to the machine's load
        t_fast = t_h5 = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            r.asarray(out=out)
            t1 = time.perf_counter()
            ds.read_direct(raw, sel)
            t2 = time.perf_counter()
            t_fast += t1 - t0
            t_h5 += t2 - t1
        f.close()
        benchmark(r.asarray, out=out)
        np.testing.assert_array_equal(out, volume)
        _report(benchmark, volume.nbytes, **{"vs h5py": round(t_h5 / t_fast, 3)})


def test_fastims_getitem(benchmark: Any, layout, volume: np.ndarray) -> None:
    path, _ = layout
    with fastims.open(path) as r:
        result = benchmark(r.__getitem__, (0, 0))
        np.testing.assert_array_equal(result, volume)
        _report(benchmark, volume.nbytes)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    vol = camera_stack((64, 1000, 1000), "uint16", seed=4)
    path = tmp_path_factory.mktemp("deep") / "deep.ims"
    _write_ims(path, vol, _compression("shuffle+gzip2"))
    return path, vol


def test_plane(benchmark: Any, deep: tuple[Path, np.ndarray]) -> None:
    path, vol = deep
    with fastims.open(path) as r:
        level = np.empty(r.shape[2:], dtype=r.dtype)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r.asarray(out=level)
            times.append(time.perf_counter() - t0)
        t_level = sorted(times)[1]
        plane = benchmark(r.__getitem__, (0, 0, 40))
        np.testing.assert_array_equal(plane, vol[40])
        _report(
            benchmark,
            plane.nbytes,
            **{"plane/level time": round(benchmark.stats.stats.median / t_level, 3)},
        )
