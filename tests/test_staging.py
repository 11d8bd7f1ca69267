"""The staging file object that sends HDF5's large chunk writes to the disk with direct I/O."""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np
import pytest

from fastims import engine
from fastims._staging import StagingFile, close_h5, create_h5, h5_path

CAP = 64 << 10
THRESHOLD = 8 << 10


def _direct_supported(path) -> bool:
    f = StagingFile(path)
    try:
        return f.direct_fd >= 0
    finally:
        f.close()


def _random_ops(f: StagingFile, model: bytearray, rng: np.random.Generator, n_ops: int) -> None:
    """Writes as HDF5 makes them (large aligned ones at the end, small metadata anywhere), reads, seeks."""
    for _ in range(n_ops):
        kind = rng.integers(0, 10)
        if kind < 5:  # a chunk: large, page-aligned, at or past the end
            pos = -(-len(model) // 4096) * 4096 + int(rng.integers(0, 3)) * 4096
            n = int(rng.integers(THRESHOLD, CAP // 2))
        elif kind < 8:  # metadata: small, anywhere up to the end
            pos = int(rng.integers(0, len(model) + 1))
            n = int(rng.integers(1, 3000))
        elif kind < 9 and model:  # read back
            pos = int(rng.integers(0, len(model)))
            n = int(rng.integers(1, 50_000))
            f.seek(pos)
            want = bytes(model[pos : pos + n])
            assert f.read(n) == want
            continue
        else:
            f.flush()
            continue
        data = rng.integers(0, 256, n, dtype=np.uint8)
        f.seek(pos)
        assert f.write(data) == n
        if pos > len(model):
            model.extend(bytes(pos - len(model)))
        model[pos : pos + n] = data.tobytes()
        assert f.tell() == pos + n
        assert f.seek(0, os.SEEK_END) == len(model)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_random_writes_and_reads_match_a_plain_file(tmp_path, seed, direct):
    path = tmp_path / "f.bin"
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD)
    if not direct and f.direct_fd >= 0:
        os.close(f.direct_fd)
        f.direct_fd = -1
    model = bytearray()
    try:
        _random_ops(f, model, np.random.default_rng(seed), 300)
    finally:
        f.close()
    assert path.read_bytes() == bytes(model)
    if direct and _direct_supported(tmp_path / "probe"):
        assert f.direct_bytes > 0


def test_bytes_written_by_another_descriptor_inside_a_staged_window_survive(tmp_path):
    """In-place chunk writes (RawTarget) may land in an alignment gap of a staged run."""
    path = tmp_path / "f.bin"
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD)
    first = np.full(THRESHOLD + 100, 1, np.uint8)
    second = np.full(THRESHOLD, 2, np.uint8)
    f.write(first)  # staged at 0
    gap_start = first.nbytes
    gap_end = -(-gap_start // 4096) * 4096
    other = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(other, b"\x07" * (gap_end - gap_start), gap_start)
    finally:
        os.close(other)
    f.seek(gap_end)
    f.write(second)  # the same staged run, past the gap
    f.close()
    data = np.fromfile(path, np.uint8)
    assert data.size == gap_end + second.nbytes
    assert (data[:gap_start] == 1).all()
    assert (data[gap_start:gap_end] == 7).all()
    assert (data[gap_end:] == 2).all()


def test_a_refused_direct_write_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD)
    if f.direct_fd < 0:
        f.close()
        pytest.skip("this file system refuses O_DIRECT")
    real = engine._pwrite_all

    def refuse(fd, view, offset):
        if fd == f.direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, view, offset)

    monkeypatch.setattr(engine, "_pwrite_all", refuse)
    data = np.arange(3 * THRESHOLD, dtype=np.uint8)
    f.write(data)
    f.close()
    assert f.direct_bytes == 0
    assert path.read_bytes() == data.tobytes()


def test_full_runs_are_written_in_the_background_in_order(tmp_path, monkeypatch):
    """A run that the next chunk lies past goes to a helper thread while the next one fills."""
    import threading

    import fastims._staging as staging_mod

    path = tmp_path / "f.bin"
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD)
    threads: list[str] = []
    real = staging_mod.StagingFile._write_run

    def spy(self, *args):
        threads.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(staging_mod.StagingFile, "_write_run", spy)
    rng = np.random.default_rng(7)
    model = bytearray()
    for _ in range(40):  # chunks of 20-30 KiB at page boundaries: several per run, many runs
        pos = -(-len(model) // 4096) * 4096
        data = rng.integers(0, 256, int(rng.integers(20_000, 30_000)), dtype=np.uint8)
        f.seek(pos)
        f.write(data)
        model.extend(bytes(pos - len(model)))
        model.extend(data.tobytes())
    f.seek(100)  # metadata inside an earlier run: waits for the run in flight
    f.write(b"meta")
    model[100:104] = b"meta"
    f.seek(0)
    assert f.read(len(model)) == bytes(model)  # reads see every run
    f.close()
    assert path.read_bytes() == bytes(model)
    assert any(name.startswith("fastims-staging") for name in threads)  # some in the background
    assert f._io is None and f._inflight is None


def test_an_error_of_a_background_write_reaches_the_caller(tmp_path, monkeypatch):
    import fastims._staging as staging_mod

    path = tmp_path / "f.bin"
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD)

    def fail(self, *args):
        raise OSError(errno.EIO, "disk gone")

    monkeypatch.setattr(staging_mod.StagingFile, "_write_run", fail)
    chunk = np.ones(THRESHOLD * 5, np.uint8)
    with pytest.raises(OSError, match="disk gone"):
        for k in range(8):  # the first run fails in the background, the next sync point raises
            f.seek(k * chunk.nbytes)
            f.write(chunk)
        f.flush()
    monkeypatch.undo()
    f.close()


def test_truncate_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="multiple of 4096"):
        StagingFile(tmp_path / "x", capacity=1000)
    f = StagingFile(tmp_path / "f.bin", capacity=CAP, threshold=THRESHOLD)
    f.write(np.ones(2 * THRESHOLD, np.uint8))
    assert f.truncate(THRESHOLD) == THRESHOLD
    assert f.seek(0, os.SEEK_END) == THRESHOLD
    with pytest.raises(ValueError):
        f.seek(-1)
    with pytest.raises(ValueError):
        f.seek(0, 7)
    f.close()
    f.close()  # idempotent
    assert f.closed
    assert (tmp_path / "f.bin").stat().st_size == THRESHOLD


def test_hdf5_file_through_the_staging_object_reads_back_with_plain_h5py(tmp_path):
    path = tmp_path / "chunks.h5"
    rng = np.random.default_rng(3)
    f = create_h5(path, libver=("v108", "v108"), alignment_threshold=64 << 10, alignment_interval=4096)
    try:
        assert h5_path(f) == str(path)
        ds = f.create_dataset("d", shape=(8, 512, 512), dtype="u2", chunks=(4, 256, 256))
        chunks = {}
        for z in (0, 4):
            for y in (0, 256):
                for x in (0, 256):
                    c = rng.integers(0, 65535, (4, 256, 256), dtype=np.uint16)
                    chunks[(z, y, x)] = c
                    ds.id.write_direct_chunk((z, y, x), c.tobytes())
        f.attrs["note"] = "metadata after the chunks"
        staging = f._fastims_staging
    finally:
        close_h5(f)
    assert staging.closed
    if staging.direct_fd != -1 or _direct_supported(tmp_path / "probe"):
        assert staging.direct_bytes >= sum(c.nbytes for c in chunks.values())
    with h5py.File(path, "r") as g:
        assert g.attrs["note"] == "metadata after the chunks"
        d = g["d"][...]
    for (z, y, x), c in chunks.items():
        np.testing.assert_array_equal(d[z : z + 4, y : y + 256, x : x + 256], c)
    with h5py.File(tmp_path / "plain.h5", "w") as g:
        assert h5_path(g) == str(tmp_path / "plain.h5")
