"""End-to-end .ims streaming: 2048x2048 uint16 frames with the full pyramid and histograms.

Every case is measured in the same run as a plain sequential write of the same bytes
(fsync'd), the physical limit of the disk. Input MB/s are reported in extra_info.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

NFRAMES = 64


def test_plain_write(benchmark, camera_bank, tmp_path, report, io_helpers):
    _, plain_write = io_helpers
    path = tmp_path / "plain.raw"
    benchmark.pedantic(lambda: plain_write(path, camera_bank, NFRAMES), setup=lambda: path.unlink(missing_ok=True),
                       rounds=5, iterations=1)
    report(benchmark, NFRAMES * camera_bank[0].nbytes)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    "codec", [(None, False, 2), ("lz4", True, 2), ("lz4", False, 2), ("gzip", True, 2), ("gzip", False, 1)],
    ids=["raw", "shuffle+lz4", "lz4", "shuffle+gzip2", "gzip1"],
)
def test_ims_stream(benchmark, camera_bank, tmp_path, codec, workers, report, io_helpers):
    fsync, _ = io_helpers
    import fastims

    compression, shuffle, level = codec
    path = tmp_path / "bench.ims"

    def run():
        with fastims.ImsWriter(path, shape=(1, 1, NFRAMES, 2048, 2048), dtype="uint16", compression=compression,
                               compression_level=level, shuffle=shuffle, max_workers=workers, overwrite=True) as w:
            for z in range(NFRAMES):
                w.write_plane(camera_bank[z % len(camera_bank)], z=z)
        fsync(path)

    benchmark.pedantic(run, setup=lambda: path.unlink(missing_ok=True), rounds=3, iterations=1, warmup_rounds=1)
    nbytes = NFRAMES * camera_bank[0].nbytes
    report(benchmark, nbytes, ratio=round(nbytes / os.path.getsize(path), 3))


_RSS_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, fastims
    from fastims.synthetic import SyntheticCamera
    n, path = int(sys.argv[1]), sys.argv[2]
    cam = SyntheticCamera((2048, 2048), depth=64, dtype="uint16", seed=1)
    bank = [cam.frame(4 * i) for i in range(16)]
    with fastims.ImsWriter(path, shape=(1, 1, n, 2048, 2048), dtype="uint16", compression="lz4",
                           shuffle=True, overwrite=True) as w:
        for z in range(n):
            w.write_plane(bank[z % 16], z=z)
    # VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss across fork + exec
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(int(hwm.split()[1]) // 1024)
    """
)


def test_peak_rss_flat_in_z(benchmark, tmp_path):
    """Peak RSS of 512 frames stays within 64 MiB of 128 frames (fresh processes)."""
    def peak(n: int) -> int:
        out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(n), str(tmp_path / f"r{n}.ims")],
                             check=True, capture_output=True, text=True)
        return int(out.stdout.split()[-1])

    result = {}

    def run():
        result["128"] = peak(128)
        result["512"] = peak(512)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"peak RSS MiB 128 frames": result["128"], "peak RSS MiB 512 frames": result["512"]})
    assert result["512"] <= result["128"] + 64, result
