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


def _copy_frames(fn: Any, bank: np.ndarray, slabs: list[np.ndarray]) -> None:
    """Every frame of `bank` into the next plane of a ring of slabs, as ``write_plane`` does."""
    k = 0
    for slab in slabs:
        for plane in slab:
            fn(plane.reshape(-1).view(np.uint8), bank[k % len(bank)].reshape(-1).view(np.uint8))
            k += 1


def _copy_chunks(fn: Any, chunk: np.ndarray, stages: list[np.ndarray]) -> None:
    """A ~530 KB compressed chunk into page-aligned places of 16 MiB staged runs, as HDF5's
    writes reach :class:`fastims._staging.StagingFile`."""
    step = -(-chunk.size // 4096) * 4096
    for stage in stages:
        for o in range(0, stage.size - step + 1, step):
            fn(stage[o : o + chunk.size], chunk)


@pytest.mark.parametrize("impl", list(KERNELS))
@pytest.mark.parametrize("case", ["frames into slabs", "chunks into staged runs"])
def test_stream_copy(benchmark, case, impl):
    """Streaming stores against NumPy's copy: 64 distinct 2048 x 2048 uint16 frames into a ring
    of three 8-plane slabs (the slabs of a 64-frame .ims stack), or chunks into three staged
    runs; destinations warm (reused), sources distinct, as in the writers."""
    rng = np.random.default_rng(11)
    fn = KERNELS[impl].stream_copy
    if case == "frames into slabs":
        src = rng.integers(0, 4096, (64, 2048, 2048), dtype=np.uint16)
        dst = [np.zeros((8, 2048, 2048), np.uint16) for _ in range(3)]
        run, nbytes = _copy_frames, sum(d.nbytes for d in dst)
    else:
        src = rng.integers(0, 256, 530_000, dtype=np.uint8)
        dst = [np.zeros(16 << 20, np.uint8) for _ in range(3)]
        run, nbytes = _copy_chunks, 3 * ((16 << 20) // (-(-src.size // 4096) * 4096)) * src.size
    run(fn, src, dst)  # warm
    benchmark.group = f"stream_copy {case}"
    benchmark.pedantic(run, args=(fn, src, dst), rounds=7, iterations=1)
    _report(benchmark, nbytes)
