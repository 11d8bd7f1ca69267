"""Chunk kernels: gather+pad and HDF5 byte shuffle, compiled kernel vs NumPy twin.

Run with ``python -m pytest benchmarks/ext/bench_chunks.py --benchmark-only``. Every benchmark
reports ``extra_info["MB/s"]`` of input (source bytes / 1e6 / median seconds). Output buffers
are allocated once and reused, as the writers do, so timings measure warm memory.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from fastims._reference import chunks as ref

ext = pytest.importorskip("fastims._ext._chunks", reason="compiled _chunks not built")

KERNELS = {"ext": ext, "ref": ref}
SLAB = (32, 2048, 2048)


def _report(benchmark: Any, nbytes: int) -> None:
    benchmark.extra_info["MB/s"] = round(nbytes / 1e6 / benchmark.stats.stats.median, 1)


@pytest.fixture(scope="module")
def slab() -> np.ndarray:
    """2048 x 2048 x 32 uint16 (content is irrelevant to a copy)."""
    return np.random.default_rng(7).integers(0, 4096, SLAB, dtype=np.uint16)


@pytest.fixture(scope="module")
def edge_slab() -> np.ndarray:
    """A slab whose Y/X are not multiples of the chunk: every last chunk is padded."""
    return np.random.default_rng(8).integers(0, 4096, (30, 2000, 2000), dtype=np.uint16)


def _cut_all(fn: Any, src: np.ndarray, out: np.ndarray) -> None:
    ranges = [range(0, s, c) for s, c in zip(src.shape, out.shape, strict=True)]
    for z0, y0, x0 in itertools.product(*ranges):
        fn(src, z0, y0, x0, out)


@pytest.mark.parametrize("impl", list(KERNELS))
@pytest.mark.parametrize(
    "chunk", [(32, 128, 128), (8, 256, 256)], ids=lambda c: "x".join(map(str, c))
)
def test_gather(benchmark, slab, chunk, impl):
    out = np.empty(chunk, slab.dtype)
    fn = KERNELS[impl].gather_chunk
    _cut_all(fn, slab, out)  # warm the output buffer and caches
    benchmark.group = f"gather {'x'.join(map(str, chunk))}"
    benchmark.pedantic(_cut_all, args=(fn, slab, out), rounds=5, iterations=1)
    _report(benchmark, slab.nbytes)


@pytest.mark.parametrize("impl", list(KERNELS))
def test_gather_padded_edges(benchmark, edge_slab, impl):
    out = np.empty((8, 256, 256), edge_slab.dtype)
    fn = KERNELS[impl].gather_chunk
    _cut_all(fn, edge_slab, out)
    benchmark.group = "gather 8x256x256, padded edges"
    benchmark.pedantic(_cut_all, args=(fn, edge_slab, out), rounds=5, iterations=1)
    _report(benchmark, edge_slab.nbytes)


@pytest.mark.parametrize("impl", list(KERNELS))
@pytest.mark.parametrize("direction", ["shuffle", "unshuffle"])
@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("nbytes", [2**20, 2**24], ids=["1MiB", "16MiB"])
def test_shuffle(benchmark, nbytes, itemsize, direction, impl):
    src = np.random.default_rng(9).integers(0, 256, nbytes, dtype=np.uint8)
    out = np.empty_like(src)
    fn = getattr(KERNELS[impl], direction)
    fn(src, itemsize, out)
    benchmark.group = f"{direction} itemsize {itemsize}, {nbytes >> 20} MiB"
    benchmark(fn, src, itemsize, out)
    _report(benchmark, nbytes)
