"""Shared benchmark fixtures: a warm synthetic camera bank and an MB/s reporter.

Run with ``python -m pytest benchmarks --benchmark-only``. Figures go to RESULTS.md.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import pytest

FRAME = (2048, 2048)
NBANK = 64


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"]


@pytest.fixture(scope="session")
def camera_bank() -> np.ndarray:
    """64 distinct realistic 2048x2048 uint16 frames (blobs, shot noise, dark offset), warm.

    As many as the deepest chunks of a 256-frame stack hold (32 planes) and more: a chunk
    never sees the same frame twice, which would flatter the codecs.
    """
    from fastims.synthetic import SyntheticCamera

    cam = SyntheticCamera(FRAME, depth=NBANK * 8, dtype="uint16", seed=7)
    bank = np.stack([cam.frame(8 * i) for i in range(NBANK)])
    bank.sum()  # touch every page
    return bank


@pytest.fixture(scope="session", autouse=True)
def _warm_kernels() -> None:
    import fastims

    fastims.warmup()


def _report(benchmark, nbytes: int, **extra) -> None:
    """Record input MB/s from the median round, plus any extra figures."""
    if benchmark.stats is None:  # --benchmark-disable: the code ran once, nothing was timed
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["MB/s"] = round(nbytes / 1e6 / median, 1)
    benchmark.extra_info.update(extra)


def fsync(*paths) -> None:
    """fsync every file in `paths` (what a run wrote must be on disk before it counts)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def plain_write(path, frames: np.ndarray, n: int) -> None:
    """The physical limit: write `n` frames sequentially to one file, then fsync."""
    with open(path, "wb") as f:
        for i in range(n):
            f.write(frames[i % len(frames)])
        f.flush()
        os.fsync(f.fileno())


@pytest.fixture
def io_helpers():
    """``(fsync, plain_write)`` shared by the end-to-end benchmarks."""
    return fsync, plain_write


@pytest.fixture
def report():
    """``report(benchmark, input_bytes, **extra)`` stores MB/s of input in extra_info."""
    return _report


def _deflate_ratio(data: np.ndarray, *, level: int = 1) -> float:
    """Raw bytes / zlib(`level`) bytes of `data`, streamed in 4 MiB pieces."""
    import zlib

    raw = memoryview(np.ascontiguousarray(data)).cast("B")
    enc = zlib.compressobj(level)
    size = 0
    step = 4 << 20
    for start in range(0, len(raw), step):
        size += len(enc.compress(raw[start:start + step]))
    size += len(enc.flush())
    return raw.nbytes / max(1, size)


@pytest.fixture(scope="session")
def deflate_ratio(camera_bank) -> float:
    """How compressible the benchmark frames are: zlib level 1 ratio of the bank's raw bytes.

    A generic yardstick that does not depend on any codec under test, so that results on
    other data can be compared (real camera data of a sparse sample deflates better).
    """
    return round(_deflate_ratio(camera_bank, level=1), 3)


@pytest.fixture(autouse=True)
def _record_deflate_ratio(request: pytest.FixtureRequest) -> None:
    """Put the bank's ``deflate_ratio`` into the extra_info of every benchmark that uses the bank."""
    names = request.fixturenames
    if "benchmark" in names and "camera_bank" in names:
        request.getfixturevalue("benchmark").extra_info["deflate_ratio"] = request.getfixturevalue("deflate_ratio")
