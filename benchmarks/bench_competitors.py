"""fastims vs the other ways of getting the same camera frames onto disk, in one run.

Every case writes the same bytes: 64 frames of 2048 x 2048 uint16 from the session's
``camera_bank`` (512 MiB), and ends with fsync of every file it wrote. Cases:

* ``test_plain_write``: one sequential file write — the physical limit of the disk;
* ``test_memory_copy``: ``np.copyto`` of the frames into a warm preallocated buffer — the
  limit of memory bandwidth;
* ``test_h5py``: h5py writing the stack chunked (16, 256, 256), 16-frame slab by slab,
  through the HDF5 filter pipeline: uncompressed, gzip 1 and 2, hdf5plugin's LZ4 with and
  without HDF5's shuffle;
* ``test_npy2bdv_append_plane``: npy2bdv's virtual stack filled plane by plane with its xy
  pyramid (1, 2, 2), (1, 4, 4);
* ``test_npy2bdv_append_view``: npy2bdv's whole-stack ``append_view`` with subsampling
  (1, 1, 1), (2, 2, 2), (4, 4, 4);
* ``test_pybdv_make_bdv``: pybdv's ``make_bdv`` with mean downscaling by [2, 2, 2] twice
  (``n_threads=2``: the cores fastims may use too);
* ``test_fastims_ims``: :class:`fastims.ImsWriter` (full Imaris pyramid and histograms) for
  every codec x 1 and 2 workers x with and without the final fsync;
* ``test_fastims_bdv``: :class:`fastims.BdvWriter` (BDV's proposed xyz pyramid), none, gzip 1
  and shuffle+LZ4, 1 and 2 workers, with and without the final fsync.

Cases marked ``fsync False`` stop the clock when ``close()`` returns (what an acquisition loop
waits for; uncompressed and LZ4 chunks are already on disk then, written with direct I/O);
``vs plain`` always compares with the fsync'd plain write.

``extra_info``: ``MB/s`` of input (64 frames / median seconds), ``ratio`` (input bytes / bytes
of the data file, pyramid included where one is written), ``vs plain`` (MB/s / MB/s of
``test_plain_write`` in the same run, when it ran first), ``peak RSS +MiB`` (growth of this
process's resident memory over its value before the case, sampled every 5 ms — cheap and
approximate: memory the allocator keeps from an earlier case is not seen again) and
``deflate_ratio`` of the bank (conftest).

Run with ``python -m pytest benchmarks/bench_competitors.py --benchmark-only`` (~3-4 min on a
2-core VM).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

NFRAMES = 64
SHAPE = (NFRAMES, 2048, 2048)
H5_CHUNKS = (16, 256, 256)
INPUT_BYTES = NFRAMES * 2048 * 2048 * 2

# MB/s of test_plain_write of this run, for the "vs plain" figure of later cases
_PLAIN: dict[str, float] = {}


class _PeakRss:
    """Peak growth of this process's resident set while the block runs, in MiB (Linux only)."""

    _PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._peak = 0

    @classmethod
    def _rss(cls) -> int | None:
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * cls._PAGE
        except (OSError, ValueError, IndexError):
            return None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._rss()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __enter__(self) -> _PeakRss:
        self._base = self._rss()
        if self._base is not None:
            self._peak = self._base
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._base is None:
            return
        self._stop.set()
        self._thread.join()
        self.peak_mib = round((max(self._peak, self._rss() or 0) - self._base) / (1 << 20))


@pytest.fixture(scope="module")
def stack(camera_bank: np.ndarray) -> np.ndarray:
    """The 64 frames as one warm (Z, Y, X) array (for the whole-stack writers and slabs)."""
    out = np.empty(SHAPE, camera_bank.dtype)
    for z in range(NFRAMES):
        out[z] = camera_bank[z % len(camera_bank)]
    return out


def _measure(benchmark: Any, report: Callable, run: Callable[[], None], *, files: list[Path],
             rounds: int = 3, **extra: Any) -> None:
    """Time `run` (files removed before each round), then report MB/s, ratio, RSS growth."""
    from fastims.engine import release_buffers

    def setup() -> None:
        for p in files:
            p.unlink(missing_ok=True)

    release_buffers()  # every case starts without fastims' warm buffer pool
    gc.collect()
    with _PeakRss() as rss:
        # one warm-up round: the page cache path and fastims' buffer pool hold their working
        # set (fresh pages fault in at ~0.5 GB/s on these VMs), for every tool alike
        benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:
        setup()
        return
    mbs = INPUT_BYTES / 1e6 / benchmark.stats.stats.median
    if files:
        extra["ratio"] = round(INPUT_BYTES / os.path.getsize(files[0]), 3)
    if "plain" in _PLAIN:
        extra["vs plain"] = round(mbs / _PLAIN["plain"], 3)
    if rss.peak_mib is not None:
        extra["peak RSS +MiB"] = rss.peak_mib
    report(benchmark, INPUT_BYTES, **extra)
    setup()  # hundreds of MB: do not leave them in pytest's kept temp folders


def test_plain_write(benchmark, camera_bank, tmp_path, report, io_helpers):
    _, plain_write = io_helpers
    path = tmp_path / "plain.raw"
    plain_write(path, camera_bank, NFRAMES)  # warm: first writes of a process hit fresh pages
    _measure(benchmark, report, lambda: plain_write(path, camera_bank, NFRAMES), files=[path], rounds=5)
    if benchmark.stats is not None:
        _PLAIN["plain"] = INPUT_BYTES / 1e6 / benchmark.stats.stats.median


def test_memory_copy(benchmark, camera_bank, report):
    buf = np.empty(SHAPE, camera_bank.dtype)
    buf.fill(0)  # warm pages: the copy alone is timed

    def run() -> None:
        for z in range(NFRAMES):
            np.copyto(buf[z], camera_bank[z % len(camera_bank)])

    _measure(benchmark, report, run, files=[], rounds=5)


def _h5py_options(codec: str) -> dict[str, Any]:
    if codec == "none":
        return {}
    if codec.startswith("gzip"):
        return {"compression": "gzip", "compression_opts": int(codec[4:])}
    hdf5plugin = pytest.importorskip("hdf5plugin")
    # shuffle+lz4: the same codec as fastims' recommended setting, through HDF5's pipeline
    return {**hdf5plugin.LZ4(), "shuffle": codec.startswith("shuffle")}


@pytest.mark.parametrize("codec", ["none", "gzip1", "gzip2", "lz4", "shuffle+lz4"])
def test_h5py(benchmark, stack, tmp_path, codec, report, io_helpers):
    fsync, _ = io_helpers
    import h5py

    opts = _h5py_options(codec)
    path = tmp_path / "h5py.h5"
    slab = H5_CHUNKS[0]

    def run() -> None:
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", shape=SHAPE, dtype=stack.dtype, chunks=H5_CHUNKS, **opts)
            for z in range(0, NFRAMES, slab):
                ds[z:z + slab] = stack[z:z + slab]
        fsync(path)

    _measure(benchmark, report, run, files=[path], rounds=3 if codec in ("none", "lz4", "shuffle+lz4") else 2,
             chunks=str(H5_CHUNKS))


def test_npy2bdv_append_plane(benchmark, camera_bank, tmp_path, report, io_helpers):
    fsync, _ = io_helpers
    npy2bdv = pytest.importorskip("npy2bdv")
    h5, xml = tmp_path / "npy2bdv.h5", tmp_path / "npy2bdv.xml"
    subsamp = ((1, 1, 1), (1, 2, 2), (1, 4, 4))

    def run() -> None:
        w = npy2bdv.BdvWriter(str(h5), subsamp=subsamp, blockdim=((1, 256, 256),) * len(subsamp))
        w.append_view(stack=None, virtual_stack_dim=SHAPE)
        for z in range(NFRAMES):
            w.append_plane(camera_bank[z % len(camera_bank)], z=z)
        w.write_xml()
        w.close()
        fsync(h5, xml)

    _measure(benchmark, report, run, files=[h5, xml], rounds=2, pyramid=str(subsamp[1:]))


def test_npy2bdv_append_view(benchmark, stack, tmp_path, report, io_helpers):
    fsync, _ = io_helpers
    npy2bdv = pytest.importorskip("npy2bdv")
    h5, xml = tmp_path / "npy2bdv.h5", tmp_path / "npy2bdv.xml"
    subsamp = ((1, 1, 1), (2, 2, 2), (4, 4, 4))

    def run() -> None:
        w = npy2bdv.BdvWriter(str(h5), subsamp=subsamp, blockdim=((4, 256, 256),) * len(subsamp))
        w.append_view(stack)
        w.write_xml()
        w.close()
        fsync(h5, xml)

    _measure(benchmark, report, run, files=[h5, xml], rounds=2, pyramid=str(subsamp[1:]))


def test_pybdv_make_bdv(benchmark, stack, tmp_path, report, io_helpers):
    fsync, _ = io_helpers
    pybdv = pytest.importorskip("pybdv")
    h5, xml = tmp_path / "pybdv.h5", tmp_path / "pybdv.xml"

    def run() -> None:
        pybdv.make_bdv(stack, str(h5), downscale_factors=[[2, 2, 2], [2, 2, 2]], downscale_mode="mean",
                       n_threads=2)
        fsync(h5, xml)

    _measure(benchmark, report, run, files=[h5, xml], rounds=2, pyramid="[[2,2,2],[2,2,2]] relative")


_IMS_CODECS = {
    "raw": (None, 2, False),
    "gzip1": ("gzip", 1, False),
    "gzip2": ("gzip", 2, False),
    "shuffle+gzip2": ("gzip", 2, True),
    "lz4": ("lz4", 2, False),
    "shuffle+lz4": ("lz4", 2, True),
}


_SYNC = pytest.mark.parametrize("sync", [True, False], ids=["fsync", "no-fsync"])


@_SYNC
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("codec", list(_IMS_CODECS))
def test_fastims_ims(benchmark, camera_bank, tmp_path, codec, workers, sync, report, io_helpers):
    fsync, _ = io_helpers
    import fastims

    compression, level, shuffle = _IMS_CODECS[codec]
    path = tmp_path / "fastims.ims"

    def run() -> None:
        with fastims.ImsWriter(path, shape=(1, 1, *SHAPE), dtype="uint16", compression=compression,
                               compression_level=level, shuffle=shuffle, max_workers=workers) as w:
            for z in range(NFRAMES):
                w.write_plane(camera_bank[z % len(camera_bank)], z=z)
        if sync:
            fsync(path)

    _measure(benchmark, report, run, files=[path], fsync=sync)


_BDV_CODECS = {"raw": (None, 1, False), "gzip1": ("gzip", 1, False), "shuffle+lz4": ("lz4", 1, True)}


@_SYNC
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("codec", list(_BDV_CODECS))
def test_fastims_bdv(benchmark, camera_bank, tmp_path, codec, workers, sync, report, io_helpers):
    import warnings

    fsync, _ = io_helpers
    import fastims

    compression, level, shuffle = _BDV_CODECS[codec]
    xml, h5 = tmp_path / "fastims.xml", tmp_path / "fastims.h5"
    factors: dict[str, str] = {}

    def run() -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "LZ4 ", UserWarning)  # Fiji cannot read LZ4; measured all the same
            w = fastims.BdvWriter(xml, compression=compression, compression_level=level, shuffle=shuffle,
                                  max_workers=workers)
        with w:
            w.add_view(shape=SHAPE, dtype="uint16")
            for z in range(NFRAMES):
                w.write_plane(camera_bank[z % len(camera_bank)], z=z)
            factors["pyramid"] = str([lv.factors for lv in w.levels()][1:])
        if sync:
            fsync(h5, xml)

    _measure(benchmark, report, run, files=[h5, xml], fsync=sync)
    benchmark.extra_info.update(factors)
