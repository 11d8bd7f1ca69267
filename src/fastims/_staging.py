"""HDF5 files whose compressed chunks reach the disk with direct I/O.

HDF5 writes each chunk given to ``write_direct_chunk`` with its own buffered ``pwrite``:
the kernel copies it into the page cache, and ext4 later allocates blocks and submits the
writeback -- CPU on the cores that compress the next chunks (on a 2-core VM, ~30 % of the
wall time of a shuffle+LZ4 stack), plus fresh page-cache pages, which are slow to fault in
on VMs that return free memory to their host. :class:`StagingFile` is the file object h5py's
``fileobj`` driver writes through instead: a run of large writes at increasing, page-aligned
offsets (HDF5 places chunks of >= 64 KiB on 4 KiB boundaries at the end of the file, see
:data:`fastims.engine.ALIGNED_FILE`) is gathered in one page-aligned staging buffer and
written with ``O_DIRECT`` when the buffer fills (or holds ``eager`` bytes while the disk is
idle) or the file is flushed, read or closed. Such a run is written by a helper thread while
the next one fills a fresh buffer, so the HDF5 writer thread does not wait for the disk (it
was busy ~87 % of a deep shuffle+LZ4 stack's time, a third of it in these writes, and the
encoding workers waited for it). Every other write goes through the page cache as before,
after the run in flight is on disk; the pages a run left partly unwritten are read back into
the cache in the background, so HDF5's later metadata writes there do not wait for the disk.

Correctness rests on three rules. Until the staging buffer is written it is the file's content
for its window: writes landing in the window go into the buffer, and a write partly
overlapping it first writes the buffer out. Bytes of the window nobody wrote through this
object (alignment gaps, the tail of the last page) are read from the file just before the
direct write, so data other descriptors wrote there (in-place chunk writes, see
:class:`fastims.engine.RawTarget`) survive. A run starts only beyond the end of every byte
written through this object, and reads write the buffer out first. While a run is written in
the background this object only fills memory: any other file operation (a write that is not
staged, a read, flush, truncate, close) first waits for it, and runs reach the file in order;
its holes are read when it ends, so other descriptors must not write into an ended run's window
until the object is flushed (in-place chunks never lie there: HDF5 allocates them first).

The methods run inside h5py's global lock (HDF5 calls them), so they never wait for anything a
thread collecting garbage might hold: freeing an h5py object from a reference cycle takes that
lock, and the collector runs in whichever thread allocates. The background write is
:class:`fastims._ext._io.RunWriter`, whose thread never takes the GIL once started (a Python
helper thread, or ``ThreadPoolExecutor.submit`` with its process-wide lock, deadlocked the
writer that way; so did starting the RunWriter inside a callback, hence it starts with the file),
and staging buffers come from the pool only when its lock is free at once
(:meth:`fastims.engine.BufferPool.try_take`); they go back at :meth:`StagingFile.close`, which
h5py does not call.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fastims import _dispatch

# the writers' warm buffers: staging buffers are taken from and given back to them
from fastims.engine import (
    _ALIGN,
    _POOL,
    _pwrite_all,
    aligned_empty,
    direct_refused,
    open_direct,
    write_direct,
)

try:
    from fastims._ext._io import RunWriter
except ImportError:  # pragma: no cover - the extension is built with the package
    RunWriter = None

__all__ = ["StagingFile", "close_h5", "create_h5", "h5_path"]


_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)


def _pages(nbytes: int) -> int:
    """`nbytes` rounded up to whole pages (direct I/O writes whole pages)."""
    return -(-nbytes // _ALIGN) * _ALIGN


class StagingFile:
    """A writable, readable file object for h5py's ``fileobj`` driver (one thread at a time).

    Parameters
    ----------
    path : str or os.PathLike
        File to create (truncated if it exists).
    capacity : int, optional
        Bytes of the staging buffer (a multiple of 4 KiB): the size of one direct write.
    threshold : int, optional
        Smallest write that starts a staged run (HDF5's alignment threshold for chunks).
    eager : int, optional
        A run holding this many bytes goes to the disk as soon as the disk is idle, before the
        buffer fills (default :attr:`EAGER`).
    """

    #: bytes of one direct write (8-64 MiB writes run at the disk's rate on the VMs we target)
    CAPACITY = 16 << 20
    #: a staged run this large is written as soon as the disk is idle: the disk then keeps
    #: pace with the encoders, and what is left for the end of a stream (written while
    #: nothing else runs) is one short run instead of up to two full ones
    EAGER = 4 << 20

    def __init__(self, path: str | os.PathLike, *, capacity: int = CAPACITY, threshold: int = 64 << 10,
                 eager: int | None = None) -> None:
        if capacity <= 0 or capacity % _ALIGN:
            raise ValueError(f"capacity must be a positive multiple of {_ALIGN}, got {capacity}")
        if eager is not None and eager <= 0:
            raise ValueError(f"eager must be positive, got {eager}")
        self.path = os.fspath(path)
        self.capacity = int(capacity)
        self.threshold = int(threshold)
        self.eager = int(eager) if eager is not None else self.EAGER
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.direct_fd = open_direct(self.path)
        self.direct_bytes = 0  # written with O_DIRECT, for tests and benchmarks
        self._pos = 0
        self._size = 0  # end of the data written so far (staged bytes included)
        self._stage: np.ndarray | None = None
        self._start = -1  # file offset of the staged run, -1 when none
        self._used = 0  # end of the staged bytes in the window
        self._holes: list[list[int]] = []  # [a, b) below _used never written through this object
        # a full run is written by a helper thread while the next one fills (at most one in flight)
        # started here, not at the first run: starting a thread inside an HDF5 callback
        # waits for it, and a collection in its first Python steps can wait for h5py's lock
        self._io: Any = None
        if self.direct_fd >= 0 and RunWriter is not None:
            try:
                self._io = RunWriter(self.direct_fd)
            except BaseException:
                self._close_fds()
                raise
        self._inflight: tuple | None = None  # (stage, start, used, holes, eof) of that run
        self._spare: list[np.ndarray] = []  # staging buffers not in use
        self._pooled: list[np.ndarray] = []  # those taken from the pool, given back at close

    # -- the file-object protocol h5py calls -------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        pos = self._pos
        if self._start >= 0:
            start = self._start
            # a large gap would be read back from the disk at the flush: end the run instead
            if start <= pos and pos + n <= start + self.capacity and pos - start - self._used <= self.threshold:
                self._stage_write(pos - start, view)
                self._advance(pos + n)
                self._maybe_start_run()
                return n
            if pos + n > start:  # overlaps the window, or lies beyond it: the run ends here
                # a write past the run's last page touches nothing it writes: write it meanwhile
                self._write_stage(background=pos >= start + _pages(self._used))
        if (self.direct_fd >= 0 and self.threshold <= n <= self.capacity and pos % _ALIGN == 0
                and pos >= self._size):
            if self._stage is None:
                self._stage = self._take_stage()
            self._start, self._used = pos, 0
            self._stage_write(0, view)
            self._advance(pos + n)
            self._maybe_start_run()
            return n
        self._wait_io()
        _pwrite_all(self.fd, [view], pos)
        self._advance(pos + n)
        return n

    def readinto(self, buffer: Any) -> int:
        self._write_stage()  # the page cache and the disk hold everything from here on
        done = self._pread(memoryview(buffer).cast("B"), self._pos)
        self._pos += done
        return done

    def read(self, size: int = -1) -> bytes:
        size = max(self._size - self._pos, 0) if size is None or size < 0 else size
        buf = bytearray(size)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def truncate(self, size: int | None = None) -> int:
        self._write_stage()
        self._wait_io()
        size = self._pos if size is None else int(size)
        os.ftruncate(self.fd, size)
        self._size = size
        return size

    def flush(self) -> None:
        """Write the staged run (HDF5 flushes its file through this)."""
        self._write_stage()

    def close(self) -> None:
        """Write the staged run and close the descriptors (h5py leaves this to its caller)."""
        if self.fd < 0:
            return
        try:
            self._write_stage()
        finally:
            try:
                self._wait_io()
            finally:
                if self._io is not None:
                    self._io.close()
                    self._io = None
            self._stage = None
            self._spare = []
            for buf in self._pooled:
                _POOL.give(buf)
            self._pooled = []
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.direct_fd = -1

    # -- internals ---------------------------------------------------------------------------

    def _take_stage(self) -> np.ndarray:
        """A page-aligned staging buffer: a spare one, a warm one from the pool, or a new one."""
        if self._spare:
            return self._spare.pop()
        buf = _POOL.try_take((self.capacity,), np.uint8)  # never waits (module docstring)
        if buf is not None:
            self._pooled.append(buf)
            return buf
        return aligned_empty(self.capacity)

    def _maybe_start_run(self) -> None:
        """Hand the staged run to the disk early when the disk is idle and the run holds `eager` bytes."""
        if self._used < self.eager or self.direct_fd < 0 or self._io is None:
            return
        if self._inflight is None or self._io.finished:
            self._write_stage(background=True)

    def _advance(self, end: int) -> None:
        self._pos = end
        self._size = max(self._size, end)

    def _stage_write(self, offset: int, view: memoryview) -> None:
        stage = self._stage
        assert stage is not None
        end = offset + len(view)
        if self._holes:  # bytes written now are no longer holes
            holes = []
            for a, b in self._holes:
                if b <= offset or a >= end:
                    holes.append([a, b])
                    continue
                if a < offset:
                    holes.append([a, offset])
                if b > end:
                    holes.append([end, b])
            self._holes = holes
        if offset > self._used:  # e.g. the alignment gap between two chunks
            self._holes.append([self._used, offset])
        # streaming stores: these bytes go to the disk by DMA and are not read here again
        _dispatch.kernel("stream_copy")(stage[offset:end], view)
        self._used = max(self._used, end)

    def _write_stage(self, *, background: bool = False) -> None:
        """Write the staged run at its offset with direct I/O (buffered if the disk refuses it).

        With `background`, a helper thread writes it while the caller fills a new staging
        buffer (the caller then issues no file operation until :meth:`_wait_io`); otherwise
        the run is on disk when this returns.
        """
        self._wait_io()  # runs reach the file in order, one at a time
        start, used = self._start, self._used
        if start < 0:
            return
        holes, self._holes = self._holes, []
        self._start, self._used = -1, 0
        stage, self._stage = self._stage, None
        assert stage is not None
        if self.direct_fd >= 0:
            # the window's bytes nobody wrote through this object, read now (before a
            # background write), so what other descriptors wrote there until now survives
            padded = _pages(used)
            for a, b in [*holes, [used, padded]]:
                self._fill_from_file(stage[a:b], start + a)
        if not background or self.direct_fd < 0 or self._io is None:
            try:
                self._write_run(stage, start, used, holes)
            finally:
                self._spare.append(stage)
            return
        padded = _pages(used)
        # nothing else touches the file until the run ends (see _wait_io): its size now is the
        # size the direct write must not be mistaken for
        self._inflight = (stage, start, used, holes, os.fstat(self.fd).st_size)
        self._io.submit(stage[:padded], start)

    def _wait_io(self) -> None:
        """Wait for the run being written in the background (GIL released); re-raise its error.

        A direct write the disk refuses (EINVAL) is redone through the page cache here.
        """
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        stage, start, used, holes, eof = inflight
        try:
            try:
                self._io.wait()
            except OSError as exc:
                if not direct_refused(exc):
                    raise
                self.direct_fd = -1
                self._write_run(stage, start, used, holes)
                return
            self._direct_done(start, used, eof, holes)
        finally:
            self._spare.append(stage)

    def _direct_done(self, start: int, used: int, eof: int, holes: list[list[int]]) -> None:
        """Account a run written with direct I/O; cut the page's tail that is not part of the file.

        The pages of its holes are read back into the page cache in the background: HDF5 later
        writes metadata it placed there (chunk index nodes, allocated between chunks), and a
        write of part of a page the cache does not hold waits for the disk to read it first
        (~0.15 ms each, dozens of them in the final flush).
        """
        padded = _pages(used)
        self.direct_bytes += padded
        if start + padded > max(eof, start + used):
            os.ftruncate(self.fd, max(eof, start + used))
        if _WILLNEED is not None:
            for a, b in [*holes, [used, padded]]:
                if b > a:
                    a0 = (start + a) // _ALIGN * _ALIGN
                    os.posix_fadvise(self.fd, a0, start + _pages(b) - a0, _WILLNEED)

    def _write_run(self, stage: np.ndarray, start: int, used: int, holes: list[list[int]]) -> None:
        """Write a detached run whose holes are filled (see :meth:`_write_stage`), in this thread."""
        if self.direct_fd >= 0:
            padded = _pages(used)
            eof = os.fstat(self.fd).st_size
            if write_direct(self.direct_fd, [memoryview(stage[:padded])], start):
                self._direct_done(start, used, eof, holes)
                return
            self.direct_fd = -1
        # buffered: skip the holes, whose bytes belong to whoever wrote them
        pos = 0
        for a, b in [*sorted(holes), (used, used)]:
            if a > pos:
                _pwrite_all(self.fd, [memoryview(stage[pos:a])], start + pos)
            pos = b

    def _fill_from_file(self, out: np.ndarray, offset: int) -> None:
        """Read the file's bytes at `offset` into `out`; zeros beyond its end."""
        out[self._pread(memoryview(out).cast("B"), offset):] = 0

    def _pread(self, view: memoryview, offset: int) -> int:
        """Read into `view` from `offset` until it is full or the file ends; the bytes read."""
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                break
            done += got
        return done


def create_h5(path: str | os.PathLike, **kwargs: Any) -> Any:
    """A new h5py file at `path` written through a :class:`StagingFile` (`kwargs` go to h5py.File)."""
    import h5py

    staging = StagingFile(path)
    try:
        f = h5py.File(staging, "w", **kwargs)
    except BaseException:
        staging.close()
        raise
    f._fastims_staging = staging
    return f


def close_h5(f: Any) -> None:
    """Close an h5py file from :func:`create_h5` (or any h5py file), then its staging file."""
    staging = getattr(f, "_fastims_staging", None)
    try:
        f.close()
    finally:
        if staging is not None:
            staging.close()


def h5_path(f: Any) -> str:
    """The path of an h5py file, also for files from :func:`create_h5` (whose name h5py does not know)."""
    staging = getattr(f, "_fastims_staging", None)
    return staging.path if staging is not None else f.filename
