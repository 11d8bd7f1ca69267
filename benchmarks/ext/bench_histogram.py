"""Histogram kernels: MB/s of input on a 2048 x 2048 x 32 camera-like slab.

Run with ``python -m pytest benchmarks/ext/bench_histogram.py --benchmark-only``. Every
benchmark reports ``extra_info["MB/s"]`` (input bytes / 1e6 / median seconds);
``test_hist_u16_speedup`` also reports the speed-up of ``hist_u16`` over ``np.bincount``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fastims import _dispatch
from fastims._reference import histogram as ref
from fastims.histogram import GRID_BINS, Histogram, _grid_k

SHAPE = (32, 2048, 2048)


def _report(benchmark: Any, nbytes: int) -> None:
    benchmark.extra_info["MB/s"] = round(nbytes / 1e6 / benchmark.stats.stats.median, 1)


def _camera_slab(dtype: str, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Dark offset + background + blobs + shot noise, like a fluorescence camera stack.

    Most voxels sit in a narrow band of values (the worst case for naive histogram loops,
    whose increments then hit the same few bins back to back).
    """
    rng = np.random.default_rng(2024)
    nz, ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    signal = np.zeros((ny, nx), np.float32)
    for _ in range(40):
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        sigma, amp = rng.uniform(8, 60), rng.uniform(200, 3000)
        signal += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    bank = [rng.poisson(signal + 20.0).astype(np.float32) for _ in range(4)]
    out = np.empty(shape, dtype=dtype)
    for z in range(nz):
        plane = 100.0 + np.roll(bank[z % 4], 37 * z, axis=1) * (1.0 + 0.01 * z)
        if dtype == "uint8":
            plane = np.minimum(plane / 16.0, 255.0)
        elif dtype == "float32":
            plane = plane / 4096.0
        out[z] = plane
    return out


@pytest.fixture(scope="module")
def slab_u16() -> np.ndarray:
    return _camera_slab("uint16")


@pytest.fixture(scope="module")
def slab_u8() -> np.ndarray:
    return _camera_slab("uint8")


@pytest.fixture(scope="module")
def slab_f32() -> np.ndarray:
    return _camera_slab("float32", (16, 2048, 2048))


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    # compile (or load from numba's cache) before timing; only this file's kernels
    import fastims._ext._histogram_nb as nb

    for dt in ("uint32", "float32"):
        nb.warmup(np.dtype(dt))


def _bincount_u16(src: np.ndarray, counts: np.ndarray) -> None:
    counts += np.bincount(src, minlength=65536).astype(np.uint64)


U16_IMPLS: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
    "compiled": lambda s, c: _dispatch.kernel("hist_u16")(s, c),
    "bincount": _bincount_u16,
    "twin": ref.hist_u16,
}


@pytest.mark.parametrize("impl", list(U16_IMPLS))
def test_hist_u16(benchmark: Any, slab_u16: np.ndarray, impl: str) -> None:
    src = slab_u16.reshape(-1)
    counts = np.zeros(65536, np.uint64)
    fn = U16_IMPLS[impl]
    fn(src, counts)  # warm the pages and the code
    benchmark.pedantic(fn, args=(src, counts), rounds=5, iterations=1)
    _report(benchmark, src.nbytes)


def test_hist_u16_speedup(benchmark: Any, slab_u16: np.ndarray) -> None:
    """hist_u16 against np.bincount(x, minlength=65536) in the same run (target >= 3x)."""
    src = slab_u16.reshape(-1)
    counts = np.zeros(65536, np.uint64)
    kernel = _dispatch.kernel("hist_u16")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        np.bincount(src, minlength=65536)
        best = min(best, time.perf_counter() - t0)
    benchmark.pedantic(kernel, args=(src, counts), rounds=5, iterations=1)
    _report(benchmark, src.nbytes)
    benchmark.extra_info["bincount MB/s"] = round(src.nbytes / 1e6 / best, 1)
    benchmark.extra_info["speedup_vs_bincount"] = round(best / benchmark.stats.stats.min, 2)


@pytest.mark.parametrize("impl", ["compiled", "twin"])
def test_hist_u8(benchmark: Any, slab_u8: np.ndarray, impl: str) -> None:
    src = slab_u8.reshape(-1)
    counts = np.zeros(256, np.uint64)
    fn = _dispatch.kernel("hist_u8") if impl == "compiled" else ref.hist_u8
    fn(src, counts)
    benchmark.pedantic(fn, args=(src, counts), rounds=5, iterations=1)
    _report(benchmark, src.nbytes)


@pytest.mark.parametrize("impl", ["compiled", "twin"])
def test_float32_binned(benchmark: Any, slab_f32: np.ndarray, impl: str) -> None:
    """The two passes of a float32 update: minmax_finite, then hist_binned on its grid."""
    src = slab_f32.reshape(-1)
    mod: Any = ref
    if impl == "compiled":
        import fastims._ext._histogram_nb as mod
    vmin, vmax, *_ = ref.minmax_finite(src)
    k = _grid_k(src.dtype, vmin, vmax)  # the grid Histogram.update would use
    lo = math.floor(math.ldexp(vmin, -k))
    counts = np.zeros(GRID_BINS, np.uint64)

    def run() -> None:
        mod.minmax_finite(src)
        mod.hist_binned(src, counts, k, lo)

    run()
    benchmark.pedantic(run, rounds=3, iterations=1)
    _report(benchmark, src.nbytes)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_histogram_update(
    benchmark: Any, slab_u16: np.ndarray, slab_f32: np.ndarray, dtype: str
) -> None:
    """End to end: Histogram.update of the whole slab (validation + kernels + merge)."""
    data = slab_u16 if dtype == "uint16" else slab_f32
    h = Histogram(dtype)
    h.update(data)
    benchmark.pedantic(h.update, args=(data,), rounds=3, iterations=1)
    _report(benchmark, data.nbytes)
