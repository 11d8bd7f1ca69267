"""The format-agnostic streaming engine shared by the Imaris and BDV writers.

Frames of one stream (a (t, c) of Imaris, a view of BDV) are copied into a chunk-deep *slab*
of level 0, held in bands of chunk rows. A complete slab fans out into one task per band on a
thread pool whose kernels release the GIL: the band's histogram update, its block-mean
downsampling into the slab of each level computed from it, and its chunk rows (gather +
zero-pad + shuffle + codec); then the band's memory is returned. A complete lower-level slab,
one band, fans out into a histogram task, a task per chunk row and its downsampling. Finished
chunks go to one writer thread, the only thread that calls HDF5 (h5py serialises every HDF5
call anyway), which stores them with ``write_direct_chunk``: no filter pipeline, no
partial-chunk rewrites, no re-reading.
The adapters open their files through :mod:`fastims._staging`, which gathers those chunks
into large page-aligned runs written with direct I/O (no page-cache copy, no writeback work
on the cores that compress). Uncompressed datasets are allocated up front by HDF5 on page
boundaries instead; the writer thread writes each gathered row of chunks at its address with
direct I/O (:class:`RawTarget`).

Memory: slab, chunk and row buffers come from a process-wide pool and are reused (fresh
pages cost ~8x more than warm ones on the VMs we target). Level-0 slabs are taken part by
part as frames arrive and given back band by band as they are encoded. The caller blocks in
``write`` while the bytes held by slabs, plus room kept for lower-level slabs, exceed
``memory_limit`` and work is in flight
(back-pressure); it never blocks when nothing is in flight, so an out-of-order stream cannot
deadlock. Encoded chunks and rows waiting for the writer thread have their own bound
(:attr:`Engine.IO_BYTES`): workers wait for the disk, and the caller waits for them.

The engine knows nothing about formats: adapters create the datasets (through
:meth:`Engine.call`, in the writer thread), describe the levels with :class:`LevelSpec` and
receive each finished stream's histograms through a callback.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import queue
import sys
import threading
from collections.abc import Callable, Container, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastims import _dispatch
from fastims._interrupts import hold_interrupts
from fastims.compression import Codec, lz4_bound
from fastims.errors import WriterStateError
from fastims.histogram import Histogram
from fastims.pyramid import downsampled_shape

__all__ = [
    "ALIGNED_FILE", "BufferPool", "DatasetRef", "Engine", "LevelSpec", "RawTarget", "Stream", "default_memory_limit",
    "open_direct", "open_raw_fds", "ranges_text", "release_buffers", "write_direct",
]

logger = logging.getLogger("fastims")

_MiB = 1 << 20


@dataclass(frozen=True)
class LevelSpec:
    """One resolution level of a stream.

    Parameters
    ----------
    shape : tuple of int
        True (Z, Y, X) size of the level.
    chunks : tuple of int
        (Z, Y, X) chunk shape; the level's slab is one chunk deep.
    source : int or None
        Index of the level this one is computed from (None for level 0).
    factors : tuple of int
        (fz, fy, fx) block-mean factors relative to `source`.
    """

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    source: int | None = None
    factors: tuple[int, int, int] = (1, 1, 1)


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def default_memory_limit() -> int:
    """Floor of the automatic budget: 512 MiB (ImarisWriter holds 330-520 MiB), or 1/8 of RAM.

    The same floor for shallow and deep stacks keeps memory flat in Z. Level-0 slabs are
    taken part by part, so it also holds a deep slab of ImarisWriter's layout for 2048 x 2048
    uint16 frames (32 planes, 256 MiB) being encoded while the next one fills, and ``write``
    does not stall a 100 fps camera. :meth:`Engine.open_stream` raises the automatic budget
    when the open streams need more.
    """
    return int(min(512 << 20, _ram_bytes() // 8))


class BufferPool:
    """Warm buffers kept for reuse, shared by every engine of the process.

    Writers allocate the same slab and chunk sizes again and again; handing back pages that
    were already touched avoids the page-fault cost of fresh memory (~8x slower than warm
    memory on the VMs we target, and a visible cost on acquisition PCs). Buffers are kept
    by byte size, so shapes of equal size (a level-1 slab and a level-2 slab, say) share
    them. The footprint -- idle plus handed-out bytes -- stays within `retain_bytes`: a miss
    first evicts idle buffers of other sizes, and a returned buffer is kept only if it fits.
    :func:`release_buffers` frees the idle ones.
    """

    def __init__(self, retain_bytes: int) -> None:
        self.retain_bytes = int(retain_bytes)
        self._lock = threading.Lock()
        # nbytes -> idle uint8 buffers of aligned_empty (whole mappings: page-aligned for
        # direct I/O, RawTarget.direct_fd; unmapped when freed)
        self._free: dict[int, list[np.ndarray]] = {}
        self._bytes = 0  # idle
        self._out = 0  # handed out, not given back yet
        self.misses = 0  # buffers allocated (fresh pages), for benchmarks and tests

    @property
    def idle_bytes(self) -> int:
        """Bytes held by idle buffers."""
        return self._bytes

    def take(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """An idle buffer viewed as `shape` and `dtype`, or a new one (never blocks).

        Best fit: an idle buffer of the same size, else the smallest one up to 1/8 larger (a
        warm page costs far less than a fresh one; a much larger buffer is kept for a request
        of its size: lending it would make the footprint grow with the mix of sizes).
        """
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        buf = None
        with self._lock:
            free = self._free.get(nbytes)
            if not free:
                larger = [size for size, bufs in self._free.items() if nbytes < size <= nbytes + (nbytes >> 3) and bufs]
                free = self._free[min(larger)] if larger else None
            if free:
                buf = free.pop()
                self._bytes -= buf.nbytes
            else:
                self.misses += 1
                self._evict(self._bytes + self._out + nbytes - self.retain_bytes)
            self._out += nbytes if buf is None else buf.nbytes
        if buf is None:
            buf = aligned_empty(nbytes)
        # a view, whose .base is the pooled buffer (give finds it there)
        return buf[:nbytes].view(dtype).reshape(shape)

    def try_take(self, shape: tuple, dtype: np.dtype) -> np.ndarray | None:
        """An idle buffer of exactly this size, or None -- also when another thread holds the pool.

        For callers that must not wait for a lock (code running inside h5py's lock, see
        :mod:`fastims._staging`) and that allocate their own buffer on None.
        """
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if not self._lock.acquire(blocking=False):
            return None
        try:
            free = self._free.get(nbytes)
            if not free:
                return None
            buf = free.pop()
            self._bytes -= nbytes
            self._out += nbytes
        finally:
            self._lock.release()
        return buf[:].view(dtype).reshape(shape)

    def preallocate(self, counts: Mapping[int, int], limit: int, headroom: int = 0) -> int:
        """Hold at least ``counts[nbytes]`` idle buffers of each size, their pages touched now.

        What is missing is allocated and written once per page, so the page faults are paid
        here instead of by the frames that would take these buffers; the pool keeps them
        (`retain_bytes` grows as needed, up to `limit`), with `headroom` bytes more for the
        sizes the plan leaves out. Returns the bytes allocated.
        """
        with self._lock:
            need = {size: n - len(self._free.get(size, ())) for size, n in counts.items()}
            need = {size: n for size, n in sorted(need.items()) if n > 0 and size > 0}
            total = sum(size * n for size, n in need.items())
            held = sum(size * len(self._free.get(size, ())) for size in counts)  # idle, of the plan's sizes
            self.retain_bytes = max(self.retain_bytes, min(self._out + held + total + headroom, limit))
            # idle buffers of other sizes (an earlier writer's layout) make room first, as a
            # miss in take does: the footprint stays within retain_bytes
            self._evict(self._bytes + self._out + total - self.retain_bytes, keep=counts)
            room = max(self.retain_bytes - self._bytes - self._out, 0)
        done = 0
        for size, n in need.items():
            for _ in range(n):
                if done + size > room:
                    return done
                buf = aligned_empty(size)
                buf[::_ALIGN] = 0  # one write per page faults it in
                with self._lock:
                    self._free.setdefault(size, []).append(buf)
                    self._bytes += size
                done += size
        return done

    def give(self, buf: np.ndarray) -> None:
        """Return a buffer from :meth:`take`; it is kept if the footprint stays within `retain_bytes`."""
        # take and try_take hand out views, whose .base NumPy points at the pooled buffer
        owner = buf.base if isinstance(buf.base, np.ndarray) else buf
        size = owner.nbytes
        with self._lock:
            self._out -= size
            if self._bytes + self._out + size <= self.retain_bytes:
                self._free.setdefault(size, []).append(owner)
                self._bytes += size

    def _evict(self, excess: int, keep: Container[int] = ()) -> None:
        """Free idle buffers, smallest sizes first, until `excess` bytes are gone (lock held).

        Sizes in `keep` are left alone.
        """
        for size in sorted(self._free):
            if size in keep:
                continue
            bufs = self._free[size]
            while bufs and excess > 0:
                bufs.pop()
                self._bytes -= size
                excess -= size
            if excess <= 0:
                break

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


_ALIGN = 4096


def aligned_empty(nbytes: int) -> np.ndarray:
    """`nbytes` of zeroed uint8 in an anonymous mapping of their own (page-aligned, as direct I/O needs).

    Not malloc: glibc serves blocks below its adaptive mmap threshold (up to 32 MiB) from its
    heap and keeps them resident after they are freed, so a buffer the pool evicts would stay
    in the resident set and peak memory would depend on the order of frees; a mapping goes
    back to the system when the array is freed. (Transparent huge pages were tried: faults
    of 2 MiB pages stalled the first frames of a BDV acquisition, p99 23-30 ms against 6.5.)
    """
    if os.name == "nt":  # pragma: no cover - Windows: anonymous mapping, no flags
        mapping = mmap.mmap(-1, max(nbytes, 1))
    else:
        mapping = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(mapping, dtype=np.uint8, count=nbytes)


#: buffers the pool keeps beyond an engine's budget (child slabs and rows for direct writes
#: are taken without waiting for the budget)
_POOL_HEADROOM = 128 << 20

_POOL = BufferPool(default_memory_limit() + _POOL_HEADROOM)


def release_buffers() -> int:
    """Free the idle buffers fastims keeps for its next writer; returns the bytes released."""
    freed = _POOL.idle_bytes
    _POOL.clear()
    return freed


class RawTarget:
    """Where the chunks of an unfiltered dataset go when HDF5 allocated them up front.

    The writer thread fills `fd` (a plain descriptor of the file), `direct_fd` (the same file
    opened with ``O_DIRECT``, or -1; see :func:`open_raw_fds`) and `addresses` (chunk origin
    -> file offset, from :func:`fastims.compression.chunk_addresses`) and sets `ready`.
    Workers then gather a whole row of chunks (contiguous in the file) into one page-aligned
    pooled buffer, and the writer thread writes it in place with ``os.pwrite`` (GIL
    released), no HDF5 call involved. With `direct_fd` the disk reads the buffer itself: no
    copy into the page cache, which costs as much CPU as computing the pyramid; without it,
    one buffered ``pwrite`` from a single thread (two threads writing one file spin on
    the file system's inode lock).
    """

    __slots__ = ("fd", "direct_fd", "addresses", "ready")

    #: positional writes exist here (not on Windows: there, uncompressed chunks go through
    #: ``write_direct_chunk`` like compressed ones)
    SUPPORTED = hasattr(os, "pwrite")

    def __init__(self) -> None:
        self.fd = -1
        self.direct_fd = -1
        self.addresses: dict[tuple[int, ...], int] = {}
        self.ready = threading.Event()

    def attach(self, fds: tuple[int, int], addresses: dict[tuple[int, ...], int], chunk_bytes: int) -> None:
        """Writer thread: take the descriptors and chunk offsets of a dataset just allocated.

        With direct I/O the file is also extended over the dataset's chunks with blocks
        reserved (``fallocate``): direct writes beyond the end of a file, or into holes,
        make the file system allocate under an exclusive lock, at about 60 % of the speed.
        """
        self.fd, self.direct_fd = fds
        self.addresses = addresses
        if self.direct_fd >= 0 and addresses:
            end = max(addresses.values()) + chunk_bytes
            size = os.fstat(self.fd).st_size
            if end > size:
                _fallocate(self.fd, size, end - size)


#: h5py.File options placing every allocation of 64 KiB or more on a 4 KiB boundary, so
#: uncompressed chunks can be written with direct I/O (and never share a page)
ALIGNED_FILE = {"alignment_threshold": 64 << 10, "alignment_interval": 4096}


def open_raw_fds(path: str | os.PathLike) -> tuple[int, int]:
    """``(fd, direct_fd)`` for in-place chunk writes to `path`; `direct_fd` is -1 without O_DIRECT.

    File systems without direct I/O (tmpfs, some network mounts) refuse the flag; the
    buffered descriptor then takes every write.
    """
    return os.open(path, os.O_WRONLY), open_direct(path)


def open_direct(path: str | os.PathLike) -> int:
    """A write-only ``O_DIRECT`` descriptor of an existing file, or -1 where the flag is refused."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return -1
    try:
        return os.open(path, os.O_WRONLY | direct)
    except OSError:  # tmpfs and some network file systems refuse the flag
        return -1


class DatasetRef:
    """A level's dataset as the engine sees it: filled in later by the writer thread.

    `id` is the h5py dataset id, set before the writer stores the first chunk (adapters post
    the creation job before any write, and the writer thread runs jobs in order). `raw`,
    when given, sends uncompressed chunks through :class:`RawTarget` instead.
    """

    __slots__ = ("id", "raw")

    def __init__(self, raw: RawTarget | None = None) -> None:
        self.id: Any = None
        self.raw = raw


class _Slab:
    """A chunk-deep slab of one level, held as `parts` of `g` planes, each cut into row bands.

    Level-0 parts are taken from the budget one at a time as frames arrive, so a deep slab
    (32 planes of 8 MiB) never needs its whole size up front: the next slab starts filling
    while the last one is still being encoded, and a camera is not stalled. A level-0 part is
    cut into bands of whole chunk rows (``parts[k][b]``), so a complete slab is processed band
    by band and each band's buffers go back to the budget as soon as its chunk rows are
    encoded, not when the whole slab is: a camera waits for one band, not for a slab (a
    32-plane slab of 2048 x 2048 uint16 is 256 MiB of a 512 MiB budget). Lower levels, written
    by the downsampling of their source, hold one part of the whole chunk depth in one band.
    Parts wholly beyond `depth` (the last slab of a stack) stay None and read as zeros.
    """

    __slots__ = ("index", "z0", "depth", "g", "rows", "nbands", "parts", "filled", "refs", "byte_parts")

    def __init__(self, index: int, z0: int, depth: int, g: int, nparts: int, rows: int, nbands: int) -> None:
        self.index = index
        self.z0 = z0
        self.depth = depth  # valid planes (the last slab may be shallower than a chunk)
        self.g = g
        self.rows = rows  # rows per band (the last band may be shorter)
        self.nbands = nbands
        # parts[k][b]: planes k*g .. of rows b*rows ..; None until taken, a band None once released
        self.parts: list[list[np.ndarray | None] | None] = [None] * nparts
        self.filled = 0
        self.refs = 0
        self.byte_parts: list[list[np.ndarray | None]] = []  # per band, set by freeze()

    def freeze(self) -> None:
        """The slab is complete: keep each band's parts as bytes, as the ``gather_row`` kernel takes them."""
        self.byte_parts = [[None if p is None else p[b].view(np.uint8) for p in self.parts]
                           for b in range(self.nbands)]

    def pieces(self, band: int = 0) -> list[tuple[int, np.ndarray]]:
        """``(first plane, valid planes of a part)`` of `band`, for every part holding data."""
        out = []
        for k, part in enumerate(self.parts):
            start = k * self.g
            if part is not None and start < self.depth:
                out.append((start, part[band][: min(self.g, self.depth - start)]))
        return out


class _Level:
    __slots__ = ("spec", "nslabs", "slabs", "done", "hist", "children", "dataset")

    def __init__(self, spec: LevelSpec, dataset: Any, dtype: np.dtype, histogram: bool) -> None:
        self.spec = spec
        self.nslabs = -(-spec.shape[0] // spec.chunks[0])
        self.slabs: dict[int, _Slab] = {}
        self.done = 0
        self.hist = Histogram(dtype) if histogram else None
        self.children: list[int] = []
        self.dataset = dataset


class Stream:
    """One (Z, Y, X) image and its pyramid, fed plane by plane; created by :meth:`Engine.open_stream`."""

    def __init__(
        self,
        engine: Engine,
        key: Hashable,
        *,
        dtype: np.dtype,
        levels: Sequence[LevelSpec],
        datasets: Sequence[Any],
        codec: Codec,
        rule: str,
        histograms: bool,
        on_done: Callable[[Stream], None] | None,
        observers: Mapping[int, Callable[[int, np.ndarray, int], None]] | None = None,
        on_level_done: Callable[[Stream, int], None] | None = None,
        label: str | None = None,
    ) -> None:
        self.engine = engine
        self.key = key
        self.label = label if label is not None else f"stream {key}"  # names it in errors
        self.dtype = np.dtype(dtype)
        self.codec = codec
        self.rule = rule
        self.on_done = on_done
        self.on_level_done = on_level_done
        self.observers = dict(observers or {})
        self.lock = threading.Lock()
        self.levels = [_Level(s, d, self.dtype, histograms) for s, d in zip(levels, datasets)]
        for i, lv in enumerate(self.levels):
            if lv.spec.source is not None:
                self.levels[lv.spec.source].children.append(i)
        self.part_depth, self.band_rows = _level0_parts(levels, self.dtype.itemsize, engine)
        # contributions that complete one plane of a level: every band of its source level
        self.units = [len(self.band_rows) if lv.spec.source == 0 else 1 for lv in self.levels]
        self.written = np.zeros(levels[0].shape[0], dtype=bool)
        self.finished = False
        self._downsample = _dispatch.kernel(f"downsample_{rule}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.levels[0].spec.shape

    @property
    def histograms(self) -> list[Histogram | None]:
        """Per-level histograms (final once the stream is finished)."""
        return [lv.hist for lv in self.levels]

    def missing_planes(self) -> np.ndarray:
        """Indices of level-0 planes not written yet."""
        return np.flatnonzero(~self.written)

    # -- slab bookkeeping (stream lock held) ------------------------------------------------

    def _slab(self, li: int, index: int) -> _Slab:
        """The slab `index` of level `li`; lower levels get their buffer at once."""
        lv = self.levels[li]
        slab = lv.slabs.get(index)
        if slab is None:
            cz = lv.spec.chunks[0]
            z0 = index * cz
            depth = min(cz, lv.spec.shape[0] - z0)
            if li == 0:
                g = self.part_depth
                slab = lv.slabs[index] = _Slab(index, z0, depth, g, cz // g, self.band_rows[0][1],
                                               len(self.band_rows))
            else:
                slab = lv.slabs[index] = _Slab(index, z0, depth, cz, 1, lv.spec.shape[1], 1)
                slab.parts[0] = [self.engine._acquire((cz, lv.spec.shape[1], lv.spec.shape[2]), self.dtype,
                                                      lower=True)]
        return slab


def _level0_parts(levels: Sequence[LevelSpec], itemsize: int, engine: Engine) -> tuple[int, list[tuple[int, int]]]:
    """Planes per level-0 part and the row bands ``(r0, r1)`` a part is cut into (see :class:`_Slab`).

    Bands of whole chunk rows when every child's y factor divides the chunk height (a y block
    never straddles two bands), a band of a part holding at least ``BAND_BYTES`` (fewer,
    larger kernel calls); otherwise one band of whole planes.
    """
    children = [spec for spec in levels[1:] if spec.source == 0]
    g = _part_depth(levels[0], [spec.factors[0] for spec in children], itemsize, engine.PART_BYTES)
    ny, cy = levels[0].shape[1], levels[0].chunks[1]
    row_bytes = g * cy * levels[0].shape[2] * itemsize
    step = cy * max(1, -(-engine.BAND_BYTES // row_bytes))
    banded = engine.BANDS and step < ny and all(cy % spec.factors[1] == 0 for spec in children)
    return g, [(r, min(r + step, ny)) for r in range(0, ny, step)] if banded else [(0, ny)]


def _copy_planes(dst: np.ndarray, src: np.ndarray) -> None:
    """Copy (n, rows, X) planes into a part of a slab, with streaming stores where possible.

    The workers read a slab only once it is complete, by when its first planes have left the
    cache anyway: a copy that does not pull the destination into the cache first (and evict
    what the workers use) is ~1.7x faster. `src` of another dtype or layout goes through NumPy.
    """
    if src.dtype != dst.dtype or not dst.flags.c_contiguous:
        np.copyto(dst, src)
        return
    copy = _dispatch.kernel("stream_copy")
    for out, plane in zip(dst, src):
        if plane.flags.c_contiguous:
            copy(out.reshape(-1).view(np.uint8), plane.reshape(-1).view(np.uint8))
        else:
            np.copyto(out, plane)


def _frame_room(codec: Codec, chunk_bytes: int) -> int | None:
    """Room before each chunk when the codec's chunks are framed where they are gathered
    (shuffled LZ4, :meth:`Engine._frame_group`); None when they go through scratch."""
    return codec.frame_room(chunk_bytes) if codec.shuffles else None


def _frame_stride(room: int, chunk_bytes: int) -> int:
    """Bytes per slot of a row framed in place: the room, then the chunk from a cache line."""
    return room + -(-chunk_bytes // 64) * 64


def _slab_bytes(spec: LevelSpec, dtype: np.dtype) -> int:
    return spec.chunks[0] * spec.shape[1] * spec.shape[2] * dtype.itemsize


def _part_depth(spec: LevelSpec, factors: Sequence[int], itemsize: int, target: int) -> int:
    """Planes per level-0 part: a divisor of the chunk depth, a multiple of every child's z
    factor (a z block never straddles two parts), and the least such holding `target` bytes."""
    cz = spec.chunks[0]
    step = math.lcm(1, *factors)
    plane = spec.shape[1] * spec.shape[2] * itemsize
    for g in range(step, cz + 1, step):
        if cz % g == 0 and g * plane >= target:
            return g
    return cz


class Engine:
    """Thread pool + single HDF5 writer thread + buffer pool, shared by a writer's streams.

    Parameters
    ----------
    max_workers : int, optional
        Encoding/downsampling threads (default: the number of CPUs).
    memory_limit : int, optional
        Bytes that slabs may hold before ``write`` blocks
        (default :func:`default_memory_limit`).
    memory_floor : int, optional
        A lower floor for the automatic budget, for adapters whose chunk layout does not
        change with the stack depth (with a smaller budget, a short stack reaches the same
        steady state as a long one, so peak memory is flat in Z from the first slabs).
    """

    def __init__(self, *, max_workers: int | None = None, memory_limit: int | None = None,
                 memory_floor: int | None = None) -> None:
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be a positive integer, got {max_workers!r}")
        if memory_limit is not None and (not isinstance(memory_limit, int) or memory_limit < 1):
            raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
        self.max_workers = max_workers or os.cpu_count() or 1
        self._auto_limit = memory_limit is None
        self.memory_limit = memory_limit or min(memory_floor or default_memory_limit(), default_memory_limit())
        self._streams: list[Stream] = []
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="fastims-worker")
        self._queue: queue.Queue = queue.Queue()
        # one lock, two conditions: payloads leaving the I/O queue wake only the workers
        # waiting for it (_io_cv), not the caller waiting for the memory budget (_cv)
        lock = threading.Lock()
        self._cv = threading.Condition(lock)
        self._io_cv = threading.Condition(lock)
        self._pending = 0  # tasks and writer items not finished yet
        self._mem = 0  # bytes held by slabs in use
        self._io_bytes = 0  # bytes of chunks and rows waiting for the writer thread
        self._reserve = 0  # budget kept for one lower-level slab per level of the open streams
        self._lower = 0  # bytes of lower-level slabs held now
        self._error: BaseException | None = None
        # per-thread scratch, by thread id. Not threading.local: on CPython 3.11 a garbage
        # collection run inside sys._current_frames() (which holds the interpreter's thread-list
        # lock; dask's profiler calls it every 10 ms) that frees a threading.local takes the
        # same lock again and the whole process hangs (seen in a dask worker).
        self._scratch_bufs: dict[int, dict[str, np.ndarray]] = {}
        self._closed = False
        self._aborted = False
        self._writeback_fd = -1
        self._unflushed = 0  # bytes written since the last writeback hint
        self._writer = threading.Thread(target=self._writer_loop, name="fastims-hdf5", daemon=True)
        self._writer.start()
        self._start_workers()

    def _start_workers(self) -> None:
        """Start every worker thread now, not at the submits of the first slab.

        The pool starts a thread inside ``submit`` when none is idle, and ``Thread.start``
        waits for it: in ``write`` that wait fell inside the step where a Ctrl-C is held, so
        the first slab of every stream delayed an interrupt until its planes were taken.
        """
        barrier = threading.Barrier(self.max_workers)

        def meet() -> None:
            try:
                barrier.wait(timeout=5)  # every task needs its own thread to get past this
            except threading.BrokenBarrierError:  # pragma: no cover - a starved machine
                pass

        for future in [self._pool.submit(meet) for _ in range(self.max_workers)]:
            future.result()

    # -- writeback ------------------------------------------------------------------------

    #: bytes written between two writeback hints
    WRITEBACK_BYTES = 32 << 20

    def set_writeback(self, fd: int) -> None:
        """Start the disk writing behind us every :attr:`WRITEBACK_BYTES` written to `fd`'s file.

        Without it the page cache holds everything until the final fsync or the kernel's
        dirty limits, so disk time adds to processing time instead of overlapping it and
        dirty memory grows with the acquisition.
        """
        self._writeback_fd = fd

    def _wrote(self, nbytes: int, fd: int = -1) -> None:
        with self._cv:
            self._unflushed += nbytes
            fd = fd if fd >= 0 else self._writeback_fd
            if self._unflushed < self.WRITEBACK_BYTES or fd < 0:
                return
            self._unflushed = 0
        # submitting the I/O costs CPU: let the writer thread do it, not a worker
        self._put(("call", _start_writeback, (fd,), {}, None))

    # -- error handling ----------------------------------------------------------------------

    @property
    def error(self) -> BaseException | None:
        """The first exception raised by a worker or the writer thread, if any."""
        return self._error

    def _fail(self, exc: BaseException, *, log: bool = True) -> None:
        with self._cv:
            if self._error is None:
                self._error = exc
                if log:
                    logger.error("fastims background task failed: %r", exc)
            self._cv.notify_all()
            self._io_cv.notify_all()

    @property
    def aborted(self) -> bool:
        """True once :meth:`abort` was called."""
        return self._aborted

    def abort(self, reason: BaseException) -> None:
        """Stop: queued tasks and chunk writes are skipped and `reason` becomes the error."""
        self._aborted = True
        self._fail(reason, log=False)

    def check(self) -> None:
        """Re-raise, in the caller's thread, the first error of a background task."""
        if self._error is not None:
            raise self._error

    # -- the writer thread -------------------------------------------------------------------

    def _writer_loop(self) -> None:
        held: Any = _NOTHING  # an item taken while collecting raw rows, run next
        while True:
            item, held = (self._queue.get() if held is _NOTHING else held), _NOTHING
            if item is None:
                return
            kind = item[0]
            if kind == "raw":
                batch = [item]
                try:
                    held = self._collect_raw(batch)
                    self._store_raw(batch)
                except BaseException as exc:
                    self._fail(exc)
                finally:
                    for _ in batch:
                        self._done_one()
                continue
            try:
                if kind == "chunks":
                    _, dataset, offsets, payloads, nbytes, pooled = item
                    try:
                        if self._error is None:
                            write = dataset.id.write_direct_chunk
                            for offset, payload in zip(offsets, payloads, strict=True):
                                write(offset, payload)
                            self._wrote(nbytes)
                    finally:
                        if pooled is not None:
                            self._give_io(pooled)
                        else:
                            self._io_done(nbytes)
                else:
                    _, fn, args, kwargs, fut = item
                    if fut is not None:
                        if fut.set_running_or_notify_cancel():
                            try:
                                fut.set_result(fn(*args, **kwargs))
                            except BaseException as exc:  # handed to the caller by call()
                                fut.set_exception(exc)
                    else:
                        fn(*args, **kwargs)
            except BaseException as exc:
                self._fail(exc)
            finally:
                self._done_one()

    #: most queued rows written by one batch of the writer thread
    RAW_BATCH = 16

    #: largest single write of adjacent rows: one direct write keeps the disk's queue full
    #: (on the VMs we target, 8 MiB writes reach ~1.3 GB/s, 64 MiB writes ~1.9 GB/s)
    RAW_WRITE_BYTES = 64 << 20

    def _collect_raw(self, batch: list[tuple]) -> Any:
        """Add the raw rows queued right behind ``batch[0]``; return the item that stopped it.

        When the disk is the bottleneck rows wait in the queue, and adjacent ones then merge
        into larger writes (:meth:`_store_raw`). The item returned (or ``_NOTHING``) runs next.
        """
        while len(batch) < self.RAW_BATCH:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return _NOTHING
            if nxt is None or nxt[0] != "raw":
                return nxt
            batch.append(nxt)
        return _NOTHING

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` in the writer thread (the only one that touches HDF5) and return its result."""
        fut: Future = Future()
        self._put(("call", fn, args, kwargs, fut))
        return fut.result()

    def post(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue `fn` for the writer thread without waiting; errors surface via :meth:`check`."""
        self._put(("call", fn, args, kwargs, None))

    def _put(self, item: tuple) -> None:
        if self._closed:
            raise WriterStateError("the engine is closed")
        self._counted(lambda: self._queue.put(item))

    def _counted(self, start: Callable[[], Any]) -> None:
        """Count one pending item and `start` it, as one step.

        A count without its item would make wait() and close() wait for ever: a Ctrl-C is
        held until both are done, and a failed start takes its count back.
        """
        with hold_interrupts():
            with self._cv:
                self._pending += 1
            try:
                start()
            except BaseException:
                self._done_one()
                raise

    def _done_one(self) -> None:
        with self._cv:
            self._pending -= 1
            # waiters only care about this count once it reaches zero (memory freed by a
            # task wakes them through _release)
            if not self._pending:
                self._cv.notify_all()

    # -- buffers -----------------------------------------------------------------------------

    def _wait_for_room(self, nbytes: int) -> None:
        """Back-pressure for the caller: wait while the budget is exceeded and work is in flight.

        Called without any stream lock held (workers take stream locks, then this condition).
        """

        def room() -> bool:
            if self._pending <= 0 or self._error is not None:
                return True
            # lower-level slabs are taken later without waiting: keep room for those not held.
            # Read again at every wake-up: a lower slab released meanwhile gives its room back
            # to the reserve, not to level 0 (the limit of the moment the wait began let a
            # fourth 4 MiB level-0 part into a 16 MiB budget, a 1 MiB level-1 slab having gone
            # back while the caller waited)
            limit = max(self.memory_limit - max(self._reserve - self._lower, 0), nbytes)
            return self._mem + nbytes <= limit

        self._wait_until(room)

    #: longest a held Ctrl-C waits in :meth:`_wait_until` before it is raised
    INTERRUPT_LATENCY = 0.05

    def _wait_until(self, done: Callable[[], bool]) -> None:
        """Wait on the condition until ``done()`` (called with the lock held) is true.

        Interruptible, but only between waits with the lock released: a Ctrl-C raised inside
        ``Condition.wait`` can leave the lock released or held by no one, and every thread
        then blocks on it for ever.
        """
        with hold_interrupts() as held:
            while True:
                with self._cv:
                    if done():
                        return
                    self._cv.wait(self.INTERRUPT_LATENCY if held.handlers else None)
                held.checkpoint()

    def _acquire(self, shape: tuple, dtype: np.dtype, *, lower: bool = False) -> np.ndarray:
        """A buffer from the process-wide pool (warm when possible); never blocks.

        `lower` marks a lower-level slab, whose room :meth:`_wait_for_room` keeps.
        """
        buf = _POOL.take(shape, dtype)
        with self._cv:
            self._mem += buf.nbytes
            if lower:
                self._lower += buf.nbytes
        return buf

    def _release(self, buf: np.ndarray, *, lower: bool = False) -> None:
        _POOL.give(buf)
        with self._cv:
            self._mem -= buf.nbytes
            if lower:
                self._lower -= buf.nbytes
            self._cv.notify_all()

    def _scratch(self, name: str, nbytes: int) -> np.ndarray:
        """The first `nbytes` of a per-thread reusable uint8 buffer (per worker thread, never shared).

        One buffer per name, replaced only by a larger one: the levels' different chunk
        shapes share it, so a thread's scratch does not grow with the number of levels.
        """
        store = self._scratch_bufs.setdefault(threading.get_ident(), {})
        buf = store.get(name)
        if buf is None or buf.shape[0] < nbytes:
            buf = store[name] = np.empty(nbytes, dtype=np.uint8)
        return buf[:nbytes]

    # -- tasks -------------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._counted(lambda: self._pool.submit(self._run, fn, args))

    def _run(self, fn: Callable[..., None], args: tuple) -> None:
        try:
            if self._error is None:
                fn(*args)
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._done_one()

    def wait(self) -> None:
        """Block until every queued task and chunk write has finished; re-raise task errors."""
        self.drain()
        self.check()

    def drain(self) -> None:
        """Wait for every queued task and chunk write, without raising their errors."""
        self._wait_until(lambda: self._pending <= 0)

    def close(self) -> None:
        """Wait for the work in flight, then stop the threads (errors are not raised here)."""
        if self._closed:
            return
        self.drain()
        self._closed = True
        self._queue.put(None)
        self._writer.join()
        self._pool.shutdown(wait=True)
        self._scratch_bufs.clear()  # the threads that used them are gone

    # -- streams -----------------------------------------------------------------------------

    def open_stream(
        self,
        key: Hashable,
        *,
        dtype: Any,
        levels: Sequence[LevelSpec],
        datasets: Sequence[Any],
        codec: Codec,
        rule: str,
        histograms: bool = True,
        on_done: Callable[[Stream], None] | None = None,
        observers: Mapping[int, Callable[[int, np.ndarray, int], None]] | None = None,
        on_level_done: Callable[[Stream, int], None] | None = None,
        label: str | None = None,
    ) -> Stream:
        """Describe one image and its pyramid.

        `datasets` holds one object per level whose ``.id`` is the h5py dataset id by the time
        the writer thread stores the level's first chunk (an h5py Dataset, or a holder filled
        by a job posted to the writer thread before the first write).

        `observers` maps a level index to ``fn(z0, planes, y0)``, called in worker threads with
        every complete slab of that level, as (n, rows, X) blocks of the unpadded planes
        ``z0 ..`` and rows ``y0 ..`` (level 0 comes in bands of chunk rows), while the stream is
        written, so a writer needs no read-back at close; `planes` is a view of a pooled
        buffer, valid only during the call.

        `on_level_done(stream, li)` is called in a worker thread once every slab of level `li`
        is done (its histogram is final, its chunks stored or queued), in no fixed level order;
        `on_done(stream)` once every level is (another worker may still be inside its
        `on_level_done` call then). Writers that store per-level results as levels finish keep
        them off the end of the stream, where nothing else would overlap them.

        `label` names the image in errors in the writer's terms (e.g. ``"t=0 c=1"``; default
        ``"stream {key}"``).
        """
        for li in observers or {}:
            if not 0 <= li < len(levels):
                raise ValueError(f"observer for level {li}, but there are {len(levels)} levels")
        if len(levels) != len(datasets) or not levels:
            raise ValueError("need one dataset per level and at least one level")
        for i, spec in enumerate(levels):
            if i == 0:
                if spec.source is not None:
                    raise ValueError("level 0 cannot have a source level")
                continue
            if spec.source is None or not 0 <= spec.source < i:
                raise ValueError(f"level {i} must be computed from an earlier level, got source {spec.source}")
            src = levels[spec.source]
            expect = downsampled_shape(src.shape, spec.factors, rule=rule)
            if tuple(spec.shape) != tuple(expect):
                raise ValueError(f"level {i} shape {spec.shape} != {rule} downsampling of {src.shape} by {spec.factors}: {expect}")
            fz = spec.factors[0]
            if src.chunks[0] % fz:
                raise ValueError(f"level {spec.source} chunk depth {src.chunks[0]} is not a multiple of the z factor {fz} of level {i}")
        stream = Stream(self, key, dtype=np.dtype(dtype), levels=levels, datasets=datasets, codec=codec,
                        rule=rule, histograms=histograms, on_done=on_done, observers=observers,
                        on_level_done=on_level_done, label=label)
        self._grow_limit(stream)
        return stream

    def _grow_limit(self, stream: Stream) -> None:
        """Size the budget and the buffer pool for the streams open together.

        Every open stream holds one slab per level while it is being filled. Channels written
        interleaved are open together: without raising an automatic budget to their slabs
        plus 64 MiB, their slabs alone could exhaust it and serialise the pipeline (a single
        stream stays within the floor, which keeps memory flat in Z). The pool retains the
        budget plus a fixed headroom for what is taken without waiting (child slabs, rows queued
        for direct writes): retaining less would free warm buffers the next slab needs
        again, and a headroom that grew with the slabs would make memory grow with Z.
        """
        with self._cv:
            self._streams = [s for s in self._streams if not s.finished] + [stream]
            top = sum(_slab_bytes(s.levels[0].spec, s.dtype) for s in self._streams)
            self._reserve = sum(_slab_bytes(lv.spec, s.dtype) for s in self._streams for lv in s.levels[1:])
            limit = self._budget(top + self._reserve)
            if limit > self.memory_limit:
                logger.debug("memory budget raised to %d MiB for %d open streams", limit >> 20, len(self._streams))
                self.memory_limit = limit
            retain = self.memory_limit + _POOL_HEADROOM
            _POOL.retain_bytes = max(_POOL.retain_bytes, min(retain, _ram_bytes() // 4))
            self._cv.notify_all()  # a larger budget or a smaller reserve may let a caller go on

    def _budget(self, slabs: int) -> int:
        """The budget for open streams whose slabs (one per level) take `slabs` bytes."""
        if self._auto_limit and slabs + (64 << 20) > self.memory_limit:
            return slabs + (64 << 20)
        return self.memory_limit

    def preallocate(self, levels: Sequence[LevelSpec], dtype: Any, codec: Codec) -> int:
        """Fault in, before the first frame, the pooled buffers one stream of this layout can hold.

        That is level-0 parts up to the budget (less the room kept for lower levels), two
        slabs per lower level (one filling while the last one is encoded) and the payloads the
        I/O queue holds. Frames then land on warm pages from the first one -- fresh pages
        fault in at ~0.5 GB/s on VMs that hand freed memory back to their host -- and peak
        memory does not depend on the stack's length or the machine's timing. The pool
        keeps the buffers for the process's next writer (see :func:`release_buffers`).
        Returns the bytes allocated (0 when the pool already holds them, or when the system
        refuses the memory: logged, and the frames then take what they can get).
        """
        try:
            return self._preallocate(levels, np.dtype(dtype), codec)
        except (MemoryError, OSError) as exc:
            logger.warning("could not preallocate the writer's buffers: %s", exc)
            return 0

    def _preallocate(self, levels: Sequence[LevelSpec], dtype: np.dtype, codec: Codec) -> int:
        """The plan of :meth:`preallocate`, handed to the pool."""
        itemsize = dtype.itemsize
        spec0 = levels[0]
        g, band_rows = _level0_parts(levels, itemsize, self)
        reserve = sum(_slab_bytes(spec, dtype) for spec in levels[1:])
        with self._cv:
            limit = self._budget(_slab_bytes(spec0, dtype) + reserve)
        cz, cy, cx = spec0.chunks
        nz, ny, nx = spec0.shape
        # parts holding data: whole slabs, then the last slab's valid planes
        nparts = nz // cz * (cz // g) + -(-(nz % cz) // g)
        part_bytes = g * ny * nx * itemsize
        held = min(nparts, max(1, (limit - reserve) // part_bytes))
        counts: dict[int, int] = {}

        def add(nbytes: int, n: int) -> None:
            counts[nbytes] = counts.get(nbytes, 0) + n

        for r0, r1 in band_rows:
            add(g * (r1 - r0) * nx * itemsize, held)
        # a lower level fills one slab while the last one is encoded; a lagging pipeline may
        # take a third, faulted in then and kept (counting it in would raise every peak by
        # more than the lag costs: 64 MiB of level 1 for a 2048 x 2048 stack)
        for spec in levels[1:]:
            add(_slab_bytes(spec, dtype), min(2, -(-spec.shape[0] // spec.chunks[0])))
        chunk_bytes = cz * cy * cx * itemsize
        row_chunks = -(-nx // cx)
        rows = -(-nz // cz) * -(-ny // cy)
        bound = codec.frame_bound(chunk_bytes)
        room = _frame_room(codec, chunk_bytes)
        if codec.compression is None:  # chunk rows gathered for the writer thread
            size = row_chunks * chunk_bytes
        elif room is not None:  # rows or groups framed in place (see _frame_group)
            size = self._group_chunks(row_chunks, chunk_bytes, True) * _frame_stride(room, chunk_bytes)
        elif bound is not None:  # groups of LZ4 frames (see _encode_group)
            size = self._group_chunks(row_chunks, chunk_bytes, False) * bound
        else:  # bytes objects, not pooled
            size = 0
        if size:  # the queue's bound, but no more than the level-0 parts (a small budget)
            add(size, min(rows, max(1, min(self.IO_BYTES, held * part_bytes) // size)))
        # the headroom keeps what the plan leaves out (lower levels' payloads, a third slab)
        # from evicting planned buffers: every eviction is a fresh mapping to fault in again
        return _POOL.preallocate(counts, _ram_bytes() // 4, _POOL_HEADROOM)

    def write(self, stream: Stream, z0: int, block: np.ndarray) -> None:
        """Copy planes ``block[i]`` to plane ``z0 + i`` of level 0; complete slabs start their tasks.

        The caller validates shape and dtype; this raises for planes written twice. An
        exception raised after some planes were stored (a Ctrl-C that came while they were
        handed over) carries a note naming them.
        """
        self.check()
        taken = [z0]  # planes below taken[0] are stored
        try:
            self._write(stream, z0, block, taken)
        except BaseException as exc:
            if taken[0] > z0:
                exc.add_note(f"{stream.label}: plane(s) z={ranges_text(range(z0, taken[0]))} were stored "
                             "before this exception; write only the others again")
            raise

    def _write(self, stream: Stream, z0: int, block: np.ndarray, taken: list[int]) -> None:
        n = block.shape[0]
        lv = stream.levels[0]
        cz = lv.spec.chunks[0]
        g = stream.part_depth
        nx = lv.spec.shape[2]
        part_bytes = g * lv.spec.shape[1] * nx * stream.dtype.itemsize
        # Signals (Ctrl-C) are held for the whole call and act only at safe points: in the
        # back-pressure wait and after the copy, where the planes are handed back and a retry
        # writes them. Anywhere else a KeyboardInterrupt could leave a lock taken, a slab
        # counted but never fanned out, or a task counted but never queued. One that comes
        # while planes are counted is raised when the call ends.
        with hold_interrupts() as held:
            z = z0
            while z < z0 + n:
                index = z // cz
                end = min((index + 1) * cz, z0 + n)
                reserved = False
                try:
                    with stream.lock:
                        if stream.written[z:end].any():
                            twice = (np.flatnonzero(stream.written[z:end]) + z).tolist()
                            raise WriterStateError(f"{stream.label}: plane(s) z={twice} written twice")
                        # reserve the planes now, so concurrent callers cannot both pass the check
                        stream.written[z:end] = True
                        reserved = True
                        slab = stream._slab(0, index)
                    # the planes are reserved for this caller and workers see a slab only once
                    # it is complete, so the copy runs without the lock (workers keep their
                    # bookkeeping)
                    p = z
                    while p < end:
                        k = (p - slab.z0) // g
                        pend = min(end, slab.z0 + (k + 1) * g)
                        part = slab.parts[k]
                        if part is None:
                            self._wait_for_room(part_bytes)  # back-pressure, part by part
                            self.check()
                            with stream.lock:  # another caller may have taken it meanwhile
                                part = slab.parts[k]
                                if part is None:
                                    part = slab.parts[k] = [self._acquire((g, r1 - r0, nx), stream.dtype)
                                                            for r0, r1 in stream.band_rows]
                        src = block[p - z0 : pend - z0]
                        for cell, (r0, r1) in zip(part, stream.band_rows):
                            _copy_planes(cell[p - slab.z0 - k * g : pend - slab.z0 - k * g], src[:, r0:r1])
                        p = pend
                    held.checkpoint()
                except BaseException:
                    # interrupted (Ctrl-C in the back-pressure wait or the copy, a failed copy):
                    # the planes were reserved but never counted, so hand them back; a retry
                    # writes them, and close() sees them missing instead of waiting for a slab
                    # that never completes
                    if reserved:
                        with stream.lock:
                            stream.written[z:end] = False
                    raise
                # a complete slab's tasks are fanned out by a worker: the caller only submits one
                self._add_planes(stream, 0, slab, end - z, in_worker=True)
                z = taken[0] = end

    def finish(self, stream: Stream, *, zero_fill: bool) -> list[int]:
        """Complete a stream whose planes may be missing: zero-fill them if `zero_fill`.

        Returns the missing level-0 plane indices (nothing is filled when `zero_fill` is false
        and planes are missing).
        """
        missing = stream.missing_planes().tolist()
        if missing and zero_fill:
            zeros = None
            for z in missing:
                if zeros is None:
                    zeros = np.zeros((1, *stream.shape[1:]), dtype=stream.dtype)
                self.write(stream, z, zeros)
        return missing

    def _add_planes(self, stream: Stream, li: int, slab: _Slab, n: int, *, in_worker: bool = False) -> None:
        """Count `n` planes (of one band of the source) written into `slab`; once complete it
        leaves the open slabs and fans out (in a worker task when `in_worker`)."""
        with stream.lock:
            slab.filled += n
            complete = slab.filled == slab.depth * stream.units[li]
            if complete:
                del stream.levels[li].slabs[slab.index]
        if complete:
            if in_worker:
                self._submit(self._complete, stream, li, slab)
            else:
                self._complete(stream, li, slab)

    def _complete(self, stream: Stream, li: int, slab: _Slab) -> None:
        """Fan out the tasks of a full slab: histogram, chunk rows, downsampling into children."""
        lv = stream.levels[li]
        spec = lv.spec
        _, cy, cx = spec.chunks
        nrows = -(-spec.shape[1] // cy)
        slab.freeze()
        if slab.nbands > 1:  # one task per band of chunk rows; see _task_band
            slab.refs = slab.nbands
            for b in range(slab.nbands):
                self._submit(self._task_band, stream, li, slab, b)
            return
        jobs: list[tuple[Callable[..., None], tuple]] = []
        if lv.hist is not None:
            jobs.append((self._task_histogram, (stream, li, slab)))
        if li in stream.observers:
            jobs.append((self._task_observe, (stream, li, slab)))
        for iy in range(nrows):
            jobs.append((self._task_chunks, (stream, li, slab, iy)))
        for ci in lv.children:
            jobs.append((self._task_downsample, (stream, li, slab, ci)))
        slab.refs = len(jobs)
        for fn, args in jobs:
            self._submit(fn, *args)

    def _unref(self, stream: Stream, li: int, slab: _Slab) -> None:
        with stream.lock:
            slab.refs -= 1
            if slab.refs:
                return
            lv = stream.levels[li]
            lv.done += 1
            level_done = lv.done == lv.nslabs
            finished = all(level.done == level.nslabs for level in stream.levels)
            if finished:
                stream.finished = True
        for b in range(slab.nbands):
            self._release_band(slab, li, b)
        if level_done and stream.on_level_done is not None:
            stream.on_level_done(stream, li)
        if finished and stream.on_done is not None:
            stream.on_done(stream)

    def _task_histogram(self, stream: Stream, li: int, slab: _Slab) -> None:
        try:
            hist = stream.levels[li].hist
            for _, piece in slab.pieces():
                hist.update(piece)
        finally:
            self._unref(stream, li, slab)

    def _task_observe(self, stream: Stream, li: int, slab: _Slab) -> None:
        try:
            observe = stream.observers[li]
            for start, piece in slab.pieces():
                if self._error is not None:
                    return
                observe(slab.z0 + start, piece, 0)
        finally:
            self._unref(stream, li, slab)

    def _task_band(self, stream: Stream, li: int, slab: _Slab, b: int) -> None:
        """All that band `b` of a complete slab feeds, then its buffers go back at once.

        Histogram, observers and downsampling into the children part by part (a part's band
        is still warm in the cache), then the band's chunk rows; returning the memory band by
        band lets the camera fill the next slab while this one is encoded, instead of waiting
        for its last row.
        """
        try:
            lv = stream.levels[li]
            observe = stream.observers.get(li)
            y0 = b * slab.rows
            for start, piece in slab.pieces(b):
                if self._error is not None:
                    return
                if lv.hist is not None:
                    lv.hist.update(piece)
                if observe is not None:
                    observe(slab.z0 + start, piece, y0)
                for ci in lv.children:
                    self._downsample_piece(stream, slab.z0 + start, piece, ci, y0)
            cy = lv.spec.chunks[1]
            for iy in range(y0 // cy, -(-min(y0 + slab.rows, lv.spec.shape[1]) // cy)):
                self._encode_row(stream, li, slab, iy)
        finally:
            self._release_band(slab, li, b)
            self._unref(stream, li, slab)

    def _release_band(self, slab: _Slab, li: int, b: int) -> None:
        for part in slab.parts:
            if part is not None and part[b] is not None:
                cell, part[b] = part[b], None
                self._release(cell, lower=li > 0)

    def _task_chunks(self, stream: Stream, li: int, slab: _Slab, iy: int) -> None:
        try:
            self._encode_row(stream, li, slab, iy)
        finally:
            self._unref(stream, li, slab)

    def _encode_row(self, stream: Stream, li: int, slab: _Slab, iy: int) -> None:
        """Encode the chunk row `iy` of a complete slab and queue it for the writer thread.

        One kernel call gathers a run of chunks (the whole row when uncompressed); LZ4 runs are
        shuffled and framed by one more (GIL released), so the Python work per chunk is small.
        """
        if self._error is not None:
            return
        lv = stream.levels[li]
        cz, cy, cx = lv.spec.chunks
        itemsize = stream.dtype.itemsize
        n = -(-lv.spec.shape[2] // cx)
        shape = (n, cz, cy, cx * itemsize)  # the row's chunks, as bytes
        chunk_bytes = cz * cy * cx * itemsize
        codec = stream.codec
        # resolved to .id by the writer thread, which may create the dataset lazily
        dataset = lv.dataset
        # the row's band and its first row within it (bands hold whole chunk rows)
        band = iy * cy // slab.rows
        parts, y0 = slab.byte_parts[band], iy * cy - band * slab.rows
        raw = getattr(dataset, "raw", None) if codec.compression is None else None
        if raw is not None:
            self._write_raw_row(raw, slab, parts, y0, shape, iy * cy, cx)
            return
        if codec.compression is None:
            # the chunks themselves are the payloads: the row lives until they are stored
            row = self._gathered_io(slab, parts, shape, y0)
            offsets = [(slab.z0, iy * cy, ix * cx) for ix in range(n)]
            self._put(("chunks", dataset, offsets, list(row), row.nbytes, row))
            return
        # a shuffled codec's chunks are shuffled as they are gathered: one pass over the bytes
        shuffle = itemsize if codec.shuffles else 1
        room = _frame_room(codec, chunk_bytes)
        k = self._group_chunks(n, chunk_bytes, room is not None)
        gather = _dispatch.kernel("gather_row")
        if room is None:
            group = self._scratch("group", k * chunk_bytes).reshape(k, cz, cy, cx * itemsize)
        for i0 in range(0, n, k):
            if self._error is not None:
                return
            m = min(k, n - i0)
            offsets = [(slab.z0, iy * cy, ix * cx) for ix in range(i0, i0 + m)]
            x0 = i0 * cx * itemsize
            if room is not None:
                self._frame_group(dataset, offsets, parts, slab, y0, x0, (cz, cy, cx * itemsize), shuffle, room, codec)
            else:
                gather(parts, slab.g, slab.depth, y0, x0, group[:m], shuffle)
                self._encode_group(dataset, offsets, group[:m].reshape(-1), chunk_bytes, codec)

    #: bytes of chunks gathered and encoded by one step of a compressed chunk row
    GROUP_BYTES = 4 << 20
    #: chunk rows up to this size that are framed in place are gathered whole
    ROW_BYTES = 16 << 20

    def _group_chunks(self, n: int, chunk_bytes: int, in_place: bool) -> int:
        """Chunks per step of a compressed row of `n` chunks.

        Runs of a fixed size through per-thread scratch (memory stays flat in Z); a row framed
        in place (in a pooled buffer the writer hands back) is gathered whole when it is at most
        :attr:`ROW_BYTES`: ``gather_row`` then reads the slab once, in order, instead of 256
        bytes from each page per chunk (its thread CPU in a 256-frame 2048 x 2048 uint16
        shuffle+LZ4 stack: 2.6-2.8 s against 4.1-5.4 s in runs of 4 chunks).
        """
        if in_place and n * chunk_bytes <= self.ROW_BYTES:
            return n
        return max(1, min(n, self.GROUP_BYTES // chunk_bytes))

    def _encode_group(self, dataset: Any, offsets: list[tuple], data: np.ndarray, chunk_bytes: int,
                      codec: Codec) -> None:
        """Compress consecutive gathered chunks (`data`, bytes, already shuffled if the codec
        shuffles) and queue them for the writer thread."""
        m = len(offsets)
        bound = codec.frame_bound(chunk_bytes)
        if bound is not None:
            # encoded straight into a pooled buffer the writer thread hands back
            out = self._take_io((m * bound,), np.uint8)
            try:
                sizes = np.empty(m, np.int64)
                codec.encode_chunks_into(data, chunk_bytes, out, bound, sizes, shuffled=True)
            except BaseException:
                self._give_io(out)
                raise
            payloads = [out[i * bound : i * bound + size] for i, size in enumerate(sizes.tolist())]
            self._put(("chunks", dataset, offsets, payloads, int(sizes.sum()), out))
            return
        payloads = [codec.compress(data[i * chunk_bytes : (i + 1) * chunk_bytes]) for i in range(m)]
        nbytes = sum(len(p) for p in payloads)
        self._reserve_io(nbytes)  # new bytes objects, counted here
        self._put(("chunks", dataset, offsets, payloads, nbytes, None))

    def _frame_group(self, dataset: Any, offsets: list[tuple], parts: list, slab: _Slab, y0: int, x0: int,
                     chunk: tuple[int, int, int], shuffle: int, room: int, codec: Codec) -> None:
        """Gather consecutive chunks (shuffled) straight into the slots of a pooled buffer, frame
        each where it lies (:meth:`Codec.encode_chunks_in_place`) and queue them for the writer.

        A shuffled camera chunk's noise planes, half its bytes, are then written once, by the
        gather, instead of gathered into scratch and copied into the frame.
        """
        m = len(offsets)
        chunk_bytes = math.prod(chunk)
        stride = _frame_stride(room, chunk_bytes)
        out = self._take_io((m * stride,), np.uint8)
        try:
            # slot i's chunk at out[i * stride + room:]; as_strided: the slots lie apart
            slots = np.lib.stride_tricks.as_strided(
                out[room:], shape=(m, *chunk), strides=(stride, chunk[1] * chunk[2], chunk[2], 1), writeable=True)
            _dispatch.kernel("gather_row")(parts, slab.g, slab.depth, y0, x0, slots, shuffle)
            sizes = np.empty(m, np.int64)
            starts = np.empty(m, np.int64)
            codec.encode_chunks_in_place(out, room, chunk_bytes, stride, sizes, starts,
                                         scratch=self._scratch("lz4", lz4_bound(chunk_bytes)))
        except BaseException:
            self._give_io(out)
            raise
        payloads = [out[i * stride + a : i * stride + a + b] for i, (a, b) in enumerate(zip(starts.tolist(),
                                                                                          sizes.tolist()))]
        self._put(("chunks", dataset, offsets, payloads, int(sizes.sum()), out))

    def _gathered_io(self, slab: _Slab, parts: list, shape: tuple, y0: int) -> np.ndarray:
        """A pooled I/O buffer of `shape` holding the chunk row at row `y0` of `parts` (see _take_io)."""
        row = self._take_io(shape, np.uint8)
        try:
            _dispatch.kernel("gather_row")(parts, slab.g, slab.depth, y0, 0, row)
        except BaseException:
            self._give_io(row)
            raise
        return row

    def _write_raw_row(self, raw: RawTarget, slab: _Slab, parts: list, y0: int, shape: tuple, level_y0: int,
                       cx: int) -> None:
        """Gather the chunk row at row `y0` of `parts` (`level_y0` of the level) for the writer.

        The dataset is unfiltered and allocated up front: HDF5 allocates its chunks one after
        the other in row-major order,
        so a row is normally one contiguous range of the file: one large write, issued by
        the writer thread (:meth:`_store_raw`) while the workers go on computing.
        """
        while not raw.ready.wait(0.1):  # the writer thread is creating the dataset
            if self._error is not None:
                return
        addresses = [raw.addresses[(slab.z0, level_y0, ix * cx)] for ix in range(shape[0])]
        self._put(("raw", raw, self._gathered_io(slab, parts, shape, y0), addresses))

    def _store_raw(self, batch: list[tuple]) -> None:
        """Writer thread: write gathered rows at their file offsets, then recycle their buffers.

        Chunks of the batch that are adjacent in the same file become one vectored write.
        """
        try:
            if self._error is not None:
                return
            pieces = []  # (raw, file offset, chunk bytes)
            for _, raw, row, addresses in batch:
                pieces += [(raw, address, chunk) for address, chunk in zip(addresses, row, strict=True)]
            pieces.sort(key=lambda p: (id(p[0]), p[1]))
            group = [pieces[0]]
            size = pieces[0][2].nbytes
            for piece in pieces[1:]:
                last = group[-1]
                if (piece[0] is last[0] and piece[1] == last[1] + last[2].nbytes
                        and size + piece[2].nbytes <= self.RAW_WRITE_BYTES and len(group) < _IOV_MAX):
                    group.append(piece)
                    size += piece[2].nbytes
                    continue
                self._pwrite(group[0][0], [p[2] for p in group], group[0][1])
                group, size = [piece], piece[2].nbytes
            self._pwrite(group[0][0], [p[2] for p in group], group[0][1])
        finally:
            for _, _, row, _ in batch:
                self._give_io(row)

    #: smallest level-0 part of a slab taken from the budget at once (see :class:`_Slab`)
    PART_BYTES = 32 << 20

    #: cut level-0 parts into bands of chunk rows, released one by one (see :class:`_Slab`)
    BANDS = True

    #: least bytes of a level-0 part's band (whole chunk rows)
    BAND_BYTES = 8 << 20

    #: bytes of chunks and rows that may wait for the writer thread before workers wait
    IO_BYTES = 64 << 20

    def _reserve_io(self, nbytes: int) -> None:
        """Wait while :attr:`IO_BYTES` of payloads are queued for the writer thread, then count these.

        Payloads have their own small bound instead of the memory budget: they are copies of
        a slab that is still held, so counting them in the budget would stall the camera
        while a deep slab (256 MiB) and its encoded chunks coexist for a moment; and the
        bound keeps what waits for the disk independent of the slab size.
        """
        with self._io_cv:
            while self._io_bytes and self._io_bytes + nbytes > self.IO_BYTES and self._error is None:
                self._io_cv.wait()
            self._io_bytes += nbytes

    def _io_done(self, nbytes: int) -> None:
        with self._io_cv:
            self._io_bytes -= nbytes
            self._io_cv.notify_all()

    def _take_io(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A pooled buffer for a payload of the writer thread (see :meth:`_reserve_io`)."""
        self._reserve_io(math.prod(shape) * np.dtype(dtype).itemsize)
        return _POOL.take(shape, dtype)

    def _give_io(self, buf: np.ndarray) -> None:
        _POOL.give(buf)
        self._io_done(buf.nbytes)

    def _pwrite(self, raw: RawTarget, buffers: list[np.ndarray], offset: int) -> None:
        """Write `buffers` one after the other at `offset`: direct I/O when aligned, else buffered."""
        nbytes = sum(b.nbytes for b in buffers)
        if raw.direct_fd >= 0 and offset % _ALIGN == 0 and all(
                b.nbytes % _ALIGN == 0 and b.ctypes.data % _ALIGN == 0 for b in buffers):
            if write_direct(raw.direct_fd, buffers, offset):
                return
            raw.direct_fd = -1  # alignment stricter than a page: the page cache takes every write
        _pwrite_all(raw.fd, buffers, offset)
        self._wrote(nbytes, raw.fd)

    def _task_downsample(self, stream: Stream, li: int, slab: _Slab, ci: int) -> None:
        try:
            for start, piece in slab.pieces():  # parts hold whole z blocks (_part_depth)
                if self._error is not None:
                    return
                self._downsample_piece(stream, slab.z0 + start, piece, ci)
        finally:
            self._unref(stream, li, slab)

    def _downsample_piece(self, stream: Stream, z0: int, src: np.ndarray, ci: int, y0: int = 0) -> None:
        """Block-mean planes ``z0 .. z0 + len(src)`` (rows ``y0 ..``) of a level into its child `ci`."""
        child = stream.levels[ci]
        fz, fy, fx = child.spec.factors
        zc, yc = child.spec.shape[:2]
        ccz = child.spec.chunks[0]
        whole = src.shape[1] == stream.levels[child.spec.source].spec.shape[1]
        y1 = y0 + src.shape[1]  # a band ends on a multiple of fy, except the last one
        r0, r1 = y0 // fy, min(yc, y1 // fy if stream.rule == "imaris" else -(-y1 // fy))
        # child planes these planes produce: whole groups of fz planes (floor rule drops a
        # trailing partial group; the bdv rule keeps it, replicating its last plane)
        k0 = z0 // fz
        end = z0 + src.shape[0]
        k1 = min(zc, end // fz if stream.rule == "imaris" else -(-end // fz))
        k = k0
        while k < k1:
            index = k // ccz
            kend = min(k1, (index + 1) * ccz)
            with stream.lock:
                cslab = stream._slab(ci, index)
            s0 = k * fz - z0
            s1 = min(kend * fz, end) - z0
            out = cslab.parts[0][0]
            if whole:
                stream._downsample(src[s0:s1], out[k - cslab.z0 : kend - cslab.z0], fz, fy, fx)
            else:  # a band of a child plane is contiguous, several planes of it are not
                for kk in range(k, kend):
                    a, e = kk * fz - z0, min((kk + 1) * fz, end) - z0
                    stream._downsample(src[a:e], out[kk - cslab.z0 : kk - cslab.z0 + 1, r0:r1], fz, fy, fx)
            self._add_planes(stream, ci, cslab, kend - k)
            k = kend


def ranges_text(indices: Sequence[int]) -> str:
    """Compact text of sorted plane indices, e.g. ``[0, 1, 2, 3, 7] -> "0-3,7"``."""
    parts: list[str] = []
    it = iter(indices)
    start = prev = next(it, None)
    if start is None:
        return ""
    for i in it:
        if i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        start = prev = i
    parts.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ",".join(parts)


def _linux_libc(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """libc function `name` (returning int) through ctypes, or None off Linux or if absent."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    fn.argtypes = [getattr(ctypes, t) for t in argtypes]
    fn.restype = ctypes.c_int
    return fn


# sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE = 2): start writeback, do not wait
_SYNC_FILE_RANGE = _linux_libc("sync_file_range", "c_int", "c_int64", "c_int64", "c_uint")
# fallocate(fd, 0, offset, len): not glibc's posix_fallocate, which falls back to writing
# zeros where the file system cannot reserve blocks
_FALLOCATE = _linux_libc("fallocate", "c_int", "c_int", "c_int64", "c_int64")


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages, without waiting.

    The pages stay cached (unlike ``POSIX_FADV_DONTNEED``, whose freed pages a VM may hand
    back to its host and then fault in again slowly).
    """
    if _SYNC_FILE_RANGE is not None and _SYNC_FILE_RANGE(fd, 0, 0, 2) != 0:  # pragma: no cover - a hint only
        logger.debug("sync_file_range failed")


def _fallocate(fd: int, offset: int, length: int) -> None:
    """Reserve blocks for a file range if the file system can; a hint only (errors ignored)."""
    if _FALLOCATE is not None and _FALLOCATE(fd, 0, offset, length) != 0:  # pragma: no cover - e.g. EOPNOTSUPP
        logger.debug("fallocate failed; direct writes will allocate blocks as they go")


def write_direct(fd: int, buffers: list[Any], offset: int) -> bool:
    """Write `buffers` at `offset` through an ``O_DIRECT`` descriptor; False if the disk refuses.

    A refusal (EINVAL: alignment stricter than a page) is logged; callers then write through
    the page cache from there on. Other errors (a full disk) are raised.
    """
    try:
        _pwrite_all(fd, buffers, offset)
    except OSError as exc:
        if not direct_refused(exc):
            raise
        return False
    return True


def direct_refused(exc: OSError) -> bool:
    """True (and logged) if `exc` is the disk refusing a direct write's alignment (EINVAL)."""
    if exc.errno != errno.EINVAL:
        return False
    logger.debug("direct I/O refused (%s); writing through the page cache", exc)
    return True


def _pwrite_all(fd: int, buffers: list[Any], offset: int) -> None:
    """Write `buffers` back to back at `offset` until every byte is written (GIL released).

    Several buffers go out in one ``pwritev`` where it exists (one large request instead of
    several smaller synchronous ones); a short write continues from where it stopped.
    """
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        if len(views) > 1 and _PWRITEV is not None:
            n = _PWRITEV(fd, views, offset)
        else:
            n = os.pwrite(fd, views[0], offset)
        if n <= 0:  # pragma: no cover - a full disk raises ENOSPC instead
            raise OSError(errno.EIO, "pwrite wrote nothing")
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


_NOTHING = object()
_PWRITEV = getattr(os, "pwritev", None)
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") and "SC_IOV_MAX" in os.sysconf_names else 16, 1024)
