"""Block-mean downsampling kernels (``fastims._ext._downsample``) vs their NumPy twins.

Input: one 2048 x 2048 x 32 uint16 slab (256 MiB), the slab a camera stack is streamed in.
Cases: Imaris 2x2x2 and 1x2x2 (ImarisWriter's pyramid steps), BDV 1x4x4 and 2x8x8 (typical
BigDataViewer levels 3 and 4 computed from full resolution). ``out`` is preallocated and
warmed, so page faults stay out of the timings. ``extra_info["MB/s"]`` is input bytes / 1e6 /
median seconds; each case is its own group, so the table's relative column is the
kernel / twin speed ratio (the target is >= 5x for Imaris 2x2x2).

Run with ``python -m pytest benchmarks/ext/bench_downsample.py --benchmark-only``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fastims._reference import downsample as ref

ext = pytest.importorskip("fastims._ext._downsample", reason="compiled _downsample not built")

SLAB = (32, 2048, 2048)
CASES = [
    ("imaris", (2, 2, 2)),
    ("imaris", (1, 2, 2)),
    ("bdv", (1, 4, 4)),
    ("bdv", (2, 8, 8)),
]


def _report_mbps(benchmark: Any, nbytes: int) -> None:
    benchmark.extra_info["MB/s"] = round(nbytes / 1e6 / benchmark.stats.stats.median, 1)


@pytest.fixture(scope="module")
def slab() -> np.ndarray:
    # camera-like values; the integer fast paths do not depend on the values anyway
    rng = np.random.default_rng(7)
    return rng.integers(90, 4000, size=SLAB, dtype=np.uint16, endpoint=True)


def _out_shape(rule: str, factors: tuple[int, int, int]) -> tuple[int, ...]:
    if rule == "imaris":
        return tuple(n // f for n, f in zip(SLAB, factors, strict=True))
    return tuple(-(-n // f) for n, f in zip(SLAB, factors, strict=True))


@pytest.mark.parametrize("impl", ["kernel", "twin"])
@pytest.mark.parametrize(
    ("rule", "factors"), CASES, ids=[f"{r}-{'x'.join(map(str, f))}" for r, f in CASES]
)
def test_downsample(benchmark, slab, impl, rule, factors):
    fn = getattr(ext if impl == "kernel" else ref, f"downsample_{rule}")
    out = np.empty(_out_shape(rule, factors), slab.dtype)
    fn(slab, out, *factors)  # warm: touches every page of out once
    benchmark.group = f"downsample {rule} {'x'.join(map(str, factors))} uint16"
    if impl == "twin":
        # the twin takes ~0.3 s per call: a few rounds are enough for a median
        benchmark.pedantic(fn, args=(slab, out, *factors), rounds=3, iterations=1)
    else:
        benchmark(fn, slab, out, *factors)
    _report_mbps(benchmark, slab.nbytes)
