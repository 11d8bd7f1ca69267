"""The staging file object that sends HDF5's large chunk writes to the disk with direct I/O."""

from __future__ import annotations

import errno
import os
import time

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
@pytest.mark.parametrize("eager", [None, THRESHOLD + 4096], ids=["full-runs", "eager-runs"])
def test_random_writes_and_reads_match_a_plain_file(tmp_path, seed, direct, eager):
    path = tmp_path / "f.bin"
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD, eager=eager)
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
    f = _direct_staging(path)
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


def _direct_staging(path) -> StagingFile:
    """A StagingFile with direct I/O (background runs need it), or the test is skipped."""
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD)
    if f.direct_fd < 0:
        f.close()
        pytest.skip("this file system refuses O_DIRECT: runs are written synchronously")
    return f


def _spy_run_writer(monkeypatch, calls: list, *, refuse: bool = False):
    """Replace the staging module's RunWriter by a subclass recording (offset, bytes) of each run.

    With `refuse`, the helper is never started on a run and wait() answers EINVAL, as a disk
    refusing a direct write's alignment would.
    """
    import fastims._staging as staging_mod

    base = staging_mod.RunWriter
    if base is None:
        pytest.skip("fastims._ext._io not built")

    class Spy(base):
        def submit(self, buffer, offset):
            calls.append((offset, len(buffer)))
            if refuse:
                self.refused = True
                return
            super().submit(buffer, offset)

        def wait(self):
            if getattr(self, "refused", False):
                self.refused = False
                raise OSError(errno.EINVAL, "Invalid argument")
            return super().wait()

    monkeypatch.setattr(staging_mod, "RunWriter", Spy)


def _chunks_and_metadata(f: StagingFile, rng: np.random.Generator) -> bytearray:
    """40 chunks of 20-30 KiB at page boundaries (several per run, many runs), then metadata
    inside an earlier run and a read of everything; returns the expected file content."""
    model = bytearray()
    for _ in range(40):
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
    return model


def test_full_runs_are_written_in_the_background_in_order(tmp_path, monkeypatch):
    """A run that the next chunk lies past goes to the helper thread while the next one fills."""
    path = tmp_path / "f.bin"
    calls: list = []
    _spy_run_writer(monkeypatch, calls)
    f = _direct_staging(path)
    model = _chunks_and_metadata(f, np.random.default_rng(7))
    f.close()
    assert path.read_bytes() == bytes(model)
    assert len(calls) >= 3  # several runs went to the helper
    assert [off for off, _ in calls] == sorted(off for off, _ in calls)  # in file order
    assert all(off % 4096 == 0 and n % 4096 == 0 for off, n in calls)  # whole pages
    assert f._io is None and f._inflight is None


def _idle_disk(f: StagingFile) -> None:
    """Wait (up to 10 s) until the run in flight, if any, is written."""
    for _ in range(10_000):
        if f._inflight is None or f._io.finished:
            return
        time.sleep(0.001)
    raise AssertionError("the helper never finished its run")


@pytest.mark.parametrize("eager", [None, THRESHOLD], ids=["default", "eager"])
def test_runs_go_to_an_idle_disk_once_they_hold_eager_bytes(tmp_path, monkeypatch, eager):
    """With the disk idle, a run of `eager` bytes is written at once instead of filling up."""
    path = tmp_path / "f.bin"
    calls: list = []
    _spy_run_writer(monkeypatch, calls)
    f = StagingFile(path, capacity=CAP, threshold=THRESHOLD, eager=eager)
    if f.direct_fd < 0:
        f.close()
        pytest.skip("this file system refuses O_DIRECT: runs are written synchronously")
    rng = np.random.default_rng(3)
    model = bytearray()
    try:
        for _ in range(12):
            pos = -(-len(model) // 4096) * 4096
            data = rng.integers(0, 256, int(rng.integers(THRESHOLD, 2 * THRESHOLD)), dtype=np.uint8)
            f.seek(pos)
            f.write(data)
            model.extend(bytes(pos - len(model)))
            model.extend(data.tobytes())
            _idle_disk(f)
    finally:
        f.close()
    assert path.read_bytes() == bytes(model)
    if eager is None:  # the default (4 MiB) exceeds this capacity: only full runs go early
        assert len(calls) < 12
    else:  # every chunk found the disk idle: one run each, in file order
        assert len(calls) == 12
        assert [off for off, _ in calls] == sorted(off for off, _ in calls)


def test_eager_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="eager"):
        StagingFile(tmp_path / "f.bin", eager=0)


def test_the_helper_reports_a_finished_run_without_waiting(tmp_path):
    import fastims._staging as staging_mod

    if staging_mod.RunWriter is None:
        pytest.skip("fastims._ext._io not built")
    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    io = staging_mod.RunWriter(fd)
    try:
        assert not io.finished  # nothing in flight
        buf = np.arange(8192, dtype=np.uint8)
        io.submit(buf, 4096)
        for _ in range(10_000):
            if io.finished:
                break
            time.sleep(0.001)
        assert io.finished and io.finished  # asking again does not lose the answer
        assert io.wait() == 8192  # returns at once, with the run's byte count
        assert not io.finished
        io.submit(buf[:100], 0)
        assert io.wait() == 100  # a plain wait still works after a finished one
    finally:
        io.close()
        os.close(fd)
    data = path.read_bytes()
    assert data[:100] == buf[:100].tobytes() and data[4096:] == buf.tobytes()


def test_pages_a_run_left_partly_unwritten_are_read_back_in_the_background(tmp_path, monkeypatch):
    """HDF5 later writes metadata into a run's holes: their pages are asked into the page cache."""
    path = tmp_path / "f.bin"
    f = _direct_staging(path)
    advised: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def spy(fd, offset, length, advice):
        if fd == f.fd and advice == os.POSIX_FADV_WILLNEED:
            advised.append((offset, offset + length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    f.write(np.ones(THRESHOLD + 100, np.uint8))  # bytes 0 .. 8292
    f.seek(2 * THRESHOLD)  # the next chunk of the run leaves a gap: 8292 .. 16384
    f.write(np.ones(THRESHOLD + 50, np.uint8))  # 16384 .. 24626: its last page is partly written
    f.close()
    assert f.direct_bytes == 7 * 4096
    assert all(a % 4096 == 0 and b % 4096 == 0 for a, b in advised)
    covered = lambda x: any(a <= x < b for a, b in advised)
    for x in (8292, 12288, 16383, 24626, 28671):
        assert covered(x), (x, advised)  # the gap's pages and the last page
    for x in (0, 8191, 16384, 24575):
        assert not covered(x), (x, advised)  # pages the run wrote whole are not read back


def test_a_direct_write_the_helper_reports_refused_is_redone_through_the_page_cache(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    calls: list = []
    _spy_run_writer(monkeypatch, calls, refuse=True)
    f = _direct_staging(path)
    model = _chunks_and_metadata(f, np.random.default_rng(8))
    f.close()
    assert len(calls) == 1  # refused once: direct I/O is off from there on
    assert path.read_bytes() == bytes(model)


def test_an_error_of_a_background_write_reaches_the_caller(tmp_path, monkeypatch):
    """The helper's pwrite error (here EBADF: a read-only descriptor) is raised at the next sync point."""
    import fastims._staging as staging_mod

    if staging_mod.RunWriter is None:
        pytest.skip("fastims._ext._io not built")
    path = tmp_path / "f.bin"
    path.write_bytes(b"")
    readonly = os.open(path, os.O_RDONLY)
    real = staging_mod.RunWriter
    monkeypatch.setattr(staging_mod, "RunWriter", lambda fd: real(readonly))
    f = _direct_staging(path)  # its helper, started with it, writes through `readonly`
    chunk = np.ones(THRESHOLD * 5, np.uint8)
    try:
        with pytest.raises(OSError) as info:
            for k in range(8):  # the first run fails in the background, the next sync point raises
                f.seek(k * chunk.nbytes)
                f.write(chunk)
            f.flush()
        assert info.value.errno == errno.EBADF
        monkeypatch.undo()
        f.close()
    finally:
        os.close(readonly)


def test_callbacks_never_wait_for_locks_a_garbage_collecting_thread_may_hold(tmp_path):
    """HDF5 calls the staging object inside h5py's lock; a thread that frees an h5py object from a
    reference cycle (the collector runs in any thread) waits for that lock while holding its own
    -- ThreadPoolExecutor's process-wide lock in submit(), the buffer pool's lock. Chunk writes
    must go on while other threads hold those (they deadlocked a benchmark run before)."""
    import concurrent.futures.thread as cft
    import threading

    path = tmp_path / "locks.h5"
    f = create_h5(path, libver=("v108", "v108"), alignment_threshold=64 << 10, alignment_interval=4096)
    ds = f.create_dataset("d", shape=(64, 256, 256), dtype="u2", chunks=(4, 256, 256))
    rng = np.random.default_rng(5)
    chunks = [rng.integers(0, 65535, (4, 256, 256), dtype=np.uint16) for _ in range(16)]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i, c in enumerate(chunks):
                ds.id.write_direct_chunk((4 * i, 0, 0), c.tobytes())
            f.flush()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    f._fastims_staging.capacity = 1 << 20  # a run per two 512 KiB chunks: many handoffs to the helper
    t = threading.Thread(target=write)
    with cft._global_shutdown_lock, engine._POOL._lock:
        t.start()
        t.join(30)
        hung = t.is_alive()
    t.join()
    close_h5(f)
    assert not hung, "a staging callback waited for a lock another thread held"
    assert not errors, errors
    with h5py.File(path, "r") as g:
        d = g["d"][...]
    for i, c in enumerate(chunks):
        np.testing.assert_array_equal(d[4 * i : 4 * i + 4], c)


def test_no_thread_is_started_inside_an_hdf5_callback(tmp_path, monkeypatch):
    """Thread.start waits for the new thread, whose first Python steps may collect garbage and
    so wait for h5py's lock, held by the callback: the helper starts with the file instead
    (starting it at the first background run hung a test run)."""
    import threading

    if not _direct_supported(tmp_path / "probe.bin"):
        pytest.skip("no O_DIRECT on this file system: no background runs")
    path = tmp_path / "start.h5"
    f = create_h5(path, libver=("v108", "v108"), alignment_threshold=64 << 10, alignment_interval=4096)
    staging = f._fastims_staging
    assert staging._io is not None  # running before HDF5 calls anything
    staging.capacity = 1 << 20  # a run per two 512 KiB chunks: many handoffs to the helper
    started: list[str] = []
    start = threading.Thread.start

    def spy(self):
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", spy)
    ds = f.create_dataset("d", shape=(64, 256, 256), dtype="u2", chunks=(4, 256, 256))
    chunks = [np.full((4, 256, 256), i, np.uint16) for i in range(16)]
    for i, c in enumerate(chunks):
        ds.id.write_direct_chunk((4 * i, 0, 0), c.tobytes())
    close_h5(f)
    assert started == []
    assert staging.direct_bytes >= 6 << 20  # the chunks did go through background runs
    with h5py.File(path, "r") as g:
        np.testing.assert_array_equal(g["d"][::4, 0, 0], np.arange(16))


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
