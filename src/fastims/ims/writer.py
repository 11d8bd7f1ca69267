"""Imaris (.ims) writer: the Imaris adapter on the streaming engine.

The adapter only knows group paths, attributes and metadata (format notes:
``shared/spec/imaris.md``, from ImarisWriter's sources and the Imaris 5.5 file format PDF).
Levels and chunk shapes follow ImarisWriter's layout rules (:mod:`fastims.ims.layout`), each
level is the truncating 2x block mean of the level above (``rule="imaris"``), histograms and
attributes are ImarisWriter's encodings. Unlike ImarisWriter, the root attributes and
``DataSetInfo`` are written when the file opens and refreshed by :meth:`ImsWriter.flush`, so a
file whose acquisition dies still opens.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastims._interrupts import hold_interrupts
from fastims._lifecycle import EngineWriter
from fastims._staging import close_h5, create_h5
from fastims._validate import (
    check_bool,
    check_index,
    check_planes,
    floats,
    int_shape,
    native,
    to_dtype,
)
from fastims._version import __version__
from fastims.compression import Codec, chunk_addresses
from fastims.engine import (
    ALIGNED_FILE,
    DatasetRef,
    Engine,
    LevelSpec,
    RawTarget,
    Stream,
    open_raw_fds,
    ranges_text,
)
from fastims.errors import WriterStateError
from fastims.histogram import Histogram, ImarisHistogram, resample_histogram
from fastims.ims.attrs import (
    format_datetime,
    format_extent,
    format_float,
    write_attr_str,
    write_attr_u32,
)
from fastims.ims.color import (
    DEFAULT_COLORS,
    auto_color_range,
    format_color,
    merge_time_histograms,
    time_point_histogram,
)
from fastims.ims.layout import imaris_levels
from fastims.ims.thumbnail import Projection, make_thumbnail, thumbnail_level

__all__ = ["ImsWriter", "write_ims"]

logger = logging.getLogger("fastims")

_DTYPES = ("uint8", "uint16", "uint32", "float32")
_UNITS = ("m", "mm", "um", "nm")


def _level_path(r: int, t: int, c: int) -> str:
    return f"DataSet/ResolutionLevel {r}/TimePoint {t}/Channel {c}"


class ImsWriter(EngineWriter):
    """Stream frames into an Imaris 5.5 (.ims) file with its pyramid, histograms and metadata.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    shape : tuple of int
        (T, C, Z, Y, X).
    dtype : str or numpy.dtype
        uint8, uint16 or float32 (uint32 is written with a warning: Imaris cannot open it).
    voxel_size : tuple of float
        (z, y, x) voxel size in `unit`.
    unit : str
        "m", "mm", "um" or "nm".
    compression : {None, "gzip", "lz4"}
        Codec of every chunk (encoded in parallel, declared on the datasets).
    compression_level : int
        gzip level 1-9 (default 2, as Imaris); see :class:`fastims.compression.Codec` for
        how levels map to the deflate encoder.
    shuffle : bool
        Byte-shuffle before the codec (applied to 2- and 4-byte integers only, as ImarisWriter).
    channel_names, channel_colors, color_ranges : sequence, optional
        Per channel: a name, an (r, g, b) colour in 0-1, a (min, max) display range
        (default: automatic from the level-0 histograms, as ImarisWriter: time point 0's when
        T == 1, else all time points merged on 65536 bins; made a valid range where
        ImarisWriter's is not, see :func:`fastims.ims.color.auto_color_range`).
    timepoints : sequence of datetime.datetime, optional
        Acquisition time of each time point, strictly increasing (default: when its first
        frame was written). Either all naive or all time-zone aware; aware ones are written
        as wall-clock time at the UTC offset of the first, so the text increases with real
        time. They are written to the millisecond (truncated), so two time points within
        the same millisecond raise ValueError.
    max_workers : int, optional
        Encoding threads (default: number of CPUs).
    memory_limit : int, optional
        Bytes of slabs (images being assembled and encoded) before `write_plane` blocks
        (back-pressure). Default: 512 MiB (1/8 of RAM if less), raised to hold one slab per
        level of the images written together; the flat default keeps peak memory independent
        of the stack depth. The writer faults in the buffers this budget allows one image
        (plus two slabs per lower level and the queue of encoded chunks) when it opens, so
        no frame pays for fresh pages and the peak does not depend on the timing; they stay
        in a process-wide pool for the next writer (:func:`fastims.engine.release_buffers`).
    overwrite : bool
        Replace an existing file; otherwise an existing `path` raises FileExistsError.
    allow_incomplete : bool
        At close, zero-fill planes never written (with a warning) instead of raising.
    name, description : str, optional
        ``DataSetInfo/Image`` Name and Description.
    origin : tuple of float
        (z, y, x) position of the outer corner of the first voxel (``ExtMin``). Imaris keeps
        the voxel size only through these extents (float32, 9 decimals): a size lost in them
        raises ValueError, one off by more than :data:`EXTENT_TOLERANCE` warns.

    Raises
    ------
    TypeError
        For a boolean option (`shuffle`, `overwrite`, `allow_incomplete`) that is not a
        bool or ``numpy.bool_`` (``overwrite="no"`` would otherwise be true).

    Notes
    -----
    A writer the program never closes is finished at interpreter exit as :meth:`close`
    would (with a warning): frames already handed over are stored, missing planes are
    zero-filled and named in ``DataSetInfo/Log``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.ims")
    >>> with ImsWriter(path, shape=(1, 1, 4, 32, 32), dtype="uint16") as w:
    ...     for z in range(4):
    ...         w.write_plane(np.full((32, 32), z, np.uint16), z=z)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        shape: Sequence[int],
        dtype: Any,
        voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
        unit: str = "um",
        compression: str | None = "gzip",
        compression_level: int = 2,
        shuffle: bool = False,
        channel_names: Sequence[str] | None = None,
        channel_colors: Sequence[Sequence[float]] | None = None,
        color_ranges: Sequence[Sequence[float]] | None = None,
        timepoints: Sequence[_dt.datetime] | None = None,
        max_workers: int | None = None,
        memory_limit: int | None = None,
        overwrite: bool = False,
        allow_incomplete: bool = False,
        name: str | None = None,
        description: str | None = None,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> None:
        # first: a non-bool overwrite must fail before anything touches the path
        shuffle = check_bool("shuffle", shuffle)
        overwrite = check_bool("overwrite", overwrite)
        self.allow_incomplete = check_bool("allow_incomplete", allow_incomplete)
        self.path = Path(os.fspath(path))
        self.shape = int_shape(shape, "TCZYX")
        nt, nc, nz, ny, nx = self.shape
        self.dtype = native(np.dtype(dtype))
        if self.dtype.name not in _DTYPES:
            raise TypeError(f"dtype must be one of {_DTYPES}, got {self.dtype}")
        if self.dtype.name == "uint32":
            warnings.warn("uint32 .ims files are written, but Imaris cannot open them", UserWarning, stacklevel=2)
        self.voxel_size = floats("voxel_size", voxel_size, 3, positive=True)
        self.origin = floats("origin", origin, 3, positive=False)
        if unit not in _UNITS:
            raise ValueError(f"unit must be one of {_UNITS}, got {unit!r}")
        self.unit = unit
        _check_extents(self.voxel_size, self.origin, (nz, ny, nx), unit)
        self.codec = Codec.create(compression, level=compression_level, shuffle=shuffle, dtype=self.dtype)
        self.channel_names = _per_channel("channel_names", channel_names, nc, [f"Channel {c}" for c in range(nc)])
        for n in self.channel_names:
            _ascii("channel name", n)
        colors = _per_channel("channel_colors", channel_colors, nc,
                              [DEFAULT_COLORS[c % len(DEFAULT_COLORS)] for c in range(nc)])
        self.channel_colors = [floats("channel colour", col, 3, positive=False) for col in colors]
        for col in self.channel_colors:
            if not all(0.0 <= v <= 1.0 for v in col):
                raise ValueError(f"channel colours are (r, g, b) in 0..1, got {col}")
        self._fixed_ranges = None
        if color_ranges is not None:
            ranges = _per_channel("color_ranges", color_ranges, nc, None)
            self._fixed_ranges = [floats("color range", r, 2, positive=False) for r in ranges]
            for lo, hi in self._fixed_ranges:
                if lo > hi:
                    raise ValueError(f"a color range is (min, max), got min {lo:g} above max {hi:g}")
        self._times: list[_dt.datetime | None] = [None] * nt
        if timepoints is not None:
            self._times = list(_timepoints(timepoints, nt))
        self.name = _ascii("name", name if name is not None else "(name not specified)")
        self.description = _ascii("description", description if description is not None else "(description not specified)")
        self.levels = imaris_levels((nz, ny, nx), self.dtype, ntimepoints=nt)
        self._specs = [
            LevelSpec(lv.shape, lv.chunks, None if r == 0 else r - 1, tuple(lv.factors))
            for r, lv in enumerate(self.levels)
        ]
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory")

        self._lock = threading.Lock()
        self._streams: dict[tuple[int, int], Stream] = {}
        # final level-0 histogram of each time point, per channel: the automatic colour range
        # merges them (the streams keep them anyway, so this holds references, not copies)
        self._level0_hist: list[dict[int, Histogram]] = [{} for _ in range(nc)]
        # the thumbnail's projections of time point 0, built as its level streams by
        self._thumb_level = thumbnail_level([lv.shape for lv in self.levels])
        self._thumb = [Projection(self.levels[self._thumb_level].shape, self.dtype) for _ in range(nc)]
        self._thumbnail: np.ndarray | None = None
        self._level0_done = 0  # streams whose level 0 is final (their channel's colour range needs all)
        self._thumbs_done = 0  # channels whose thumbnail level (time point 0) is projected
        # c -> (time points merged, range): the metadata and the thumbnail ask for the same one
        self._range_cache: dict[int, tuple[tuple[int, ...], tuple[float, float]]] = {}
        self._closed = False
        self._file: Any = None
        self._raw_fd = self._direct_fd = -1
        self._engine = Engine(max_workers=max_workers, memory_limit=memory_limit)
        try:
            self._engine.call(self._open_file)
            # the buffers a stream holds are faulted in now, not by the first frames
            self._engine.preallocate(self._specs, self.dtype, self.codec)
        except BaseException:
            # nobody holds this writer: close what it opened and remove the file it began
            try:
                self._engine.call(self._discard_file)
            finally:
                self._engine.close()
            raise
        # registered for the interpreter-exit hook only once complete
        self._opened()

    # -- public API ----------------------------------------------------------------------

    @property
    def level_shapes(self) -> list[tuple[int, int, int]]:
        """(Z, Y, X) of every resolution level."""
        return [lv.shape for lv in self.levels]

    @property
    def chunks(self) -> list[tuple[int, int, int]]:
        """(Z, Y, X) chunk shape of every resolution level."""
        return [lv.chunks for lv in self.levels]

    def write_plane(self, frame: np.ndarray, *, t: int = 0, c: int = 0, z: int) -> None:
        """Write one (Y, X) frame as plane `z` of time point `t`, channel `c`.

        Blocks (back-pressure) while the in-flight budget is exhausted.
        """
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"write_plane takes a (Y, X) frame, got shape {frame.shape}")
        self.write(frame[None], t=t, c=c, z=z)

    def write(self, block: np.ndarray, *, t: int = 0, c: int = 0, z: int = 0) -> None:
        """Write a (Z', Y, X) slab as planes ``z .. z + Z' - 1`` of time point `t`, channel `c`."""
        self._check_open()
        block = np.asarray(block)
        nt, nc, nz, ny, nx = self.shape
        if block.ndim != 3 or block.shape[1:] != (ny, nx):
            raise ValueError(f"expected a (Z', {ny}, {nx}) block, got shape {block.shape}")
        converted = to_dtype(block, self.dtype)
        if converted is None:
            raise TypeError(f"expected {self.dtype} data, got {block.dtype} (convert it explicitly)")
        block = converted
        check_index("t", t, nt)
        check_index("c", c, nc)
        check_planes(z, block.shape[0], nz)
        if block.shape[0] == 0:
            return
        stream = self._stream(int(t), int(c))
        self._engine.write(stream, int(z), block)

    def flush(self) -> None:
        """Wait for every complete slab to be stored, refresh metadata and flush the file."""
        self._check_open()
        self._engine.wait()
        self._engine.call(self._write_metadata, final=False)
        self._engine.call(self._file.flush)

    def close(self) -> None:
        """Finish the pyramid, histograms, metadata and thumbnail, and close the file.

        Raises
        ------
        WriterStateError
            When planes were never written (unless ``allow_incomplete=True``). The file is
            still completed, with those planes zero-filled, and its log names them.
        """
        self._close(raising=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<ImsWriter {str(self.path)!r} shape={self.shape} dtype={self.dtype} {self.codec.compression} ({state})>"

    # -- internals (caller thread) -------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise WriterStateError(f"{self.path} is closed")
        self._engine.check()

    def _stream(self, t: int, c: int) -> Stream:
        stream = self._streams.get((t, c))
        if stream is not None:
            return stream
        # held: a Ctrl-C inside would leave the lock taken, or the datasets' job posted for a
        # stream never recorded (posted again at the next call)
        with hold_interrupts(), self._lock:
            stream = self._streams.get((t, c))
            if stream is None:
                if self._times[t] is None:
                    self._times[t] = _dt.datetime.now()
                raw = self.codec.compression is None and RawTarget.SUPPORTED
                refs = [DatasetRef(RawTarget() if raw else None) for _ in self.levels]
                stream = self._engine.open_stream(
                    (t, c), dtype=self.dtype, levels=self._specs, datasets=refs, codec=self.codec,
                    rule="imaris", histograms=True, on_level_done=self._level_done,
                    observers={self._thumb_level: self._thumb[c].add} if t == 0 else None,
                    label=f"{self.path.name} t={t} c={c}",
                )
                # FIFO: the writer creates the datasets before it stores any of their chunks,
                # which only exist once this call has returned
                self._engine.post(self._create_datasets, t, c, refs)
                self._streams[(t, c)] = stream
        return stream

    def _level_done(self, stream: Stream, r: int) -> None:
        # a worker thread: level r of (t, c) is final. Its histograms are stored now, and the
        # thumbnail is built as soon as it can be, so the end of the stream waits for neither
        t, c = stream.key
        hist = stream.histograms[r]
        # rebinned here, so the writer thread only stores them
        self._engine.post(self._write_histogram, t, c, r, hist.imaris())
        with self._lock:
            if r == 0:
                self._level0_hist[c][t] = hist
                self._level0_done += 1
            if r == self._thumb_level and t == 0:
                self._thumbs_done += 1
            all_level0 = self._level0_done == self.shape[0] * self.shape[1]
            ranges_final = r == 0 and all_level0  # this call completed the last level 0
            # the last call that counts (a level 0, or a thumbnail level of time point 0) finds
            # every colour range final and every channel projected: it alone builds the thumbnail
            counted = r == 0 or (r == self._thumb_level and t == 0)
            ready = counted and all_level0 and self._thumbs_done == self.shape[1]
        if ranges_final:  # computed (and cached) now, while the lower levels are still encoded
            for ch in range(self.shape[1]):
                self._color_range(ch)
        if ready:
            self._thumbnail = self._make_thumbnail()
            self._engine.post(self._write_thumbnail)

    @property
    def _label(self) -> Path:
        return self.path

    def _finish(self) -> BaseException | None:
        error: BaseException | None = None
        nt, nc = self.shape[:2]
        missing: dict[tuple[int, int], list[int]] = {}
        if self._engine.error is None:
            for t in range(nt):
                for c in range(nc):
                    stream = self._stream(t, c)
                    gaps = stream.missing_planes().tolist()
                    if gaps:
                        missing[(t, c)] = gaps
                        self._engine.finish(stream, zero_fill=True)
        self._engine.wait()
        self._missing = missing
        self._engine.call(self._write_metadata, final=True)
        if missing:
            text = "; ".join(f"t={t} c={c} z={ranges_text(g)}" for (t, c), g in missing.items())
            if self.allow_incomplete:
                warnings.warn(f"{self.path}: planes never written were zero-filled: {text}", UserWarning, stacklevel=4)
            else:
                error = WriterStateError(f"{self.path}: planes never written (zero-filled in the file): {text}")
        return error

    # -- writer thread: HDF5 only here ---------------------------------------------------

    def _open_file(self) -> None:
        # replace rather than truncate: ext4 flushes a truncated-and-rewritten file on close
        # (auto_da_alloc), which would stall close() for as long as the disk takes
        self.path.unlink(missing_ok=True)
        # libver v108 = ImarisWriter's HDF5 1.8 format (superblock v2)
        # compressed chunks reach the disk with direct I/O through a staging buffer (_staging)
        self._file = f = create_h5(self.path, libver=("v108", "v108"), **ALIGNED_FILE)
        # uncompressed chunks are written in place through these descriptors (RawTarget);
        # the buffered one also carries the hints that start writeback while we stream
        self._raw_fd, self._direct_fd = open_raw_fds(self.path)
        self._engine.set_writeback(self._raw_fd)
        write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
        write_attr_str(f, "ImarisVersion", "5.5.0")
        write_attr_str(f, "DataSetDirectoryName", "DataSet")
        write_attr_str(f, "DataSetInfoDirectoryName", "DataSetInfo")
        write_attr_str(f, "ThumbnailDirectoryName", "Thumbnail")
        write_attr_u32(f, "NumberOfDataSets", 1)
        f.create_group("DataSet")
        f.create_group("DataSetInfo")
        self._missing = {}
        self._write_metadata(final=False)
        f.flush()

    def _close_files(self) -> None:
        for fd in (self._raw_fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)
        self._raw_fd = self._direct_fd = -1
        if self._file is not None:
            close_h5(self._file)

    def _discard_file(self) -> None:
        """Close and delete a file whose writer failed to open (writer thread)."""
        created = self._file is not None
        try:
            self._close_files()
        finally:
            if created:
                self.path.unlink(missing_ok=True)

    def _create_datasets(self, t: int, c: int, refs: list[DatasetRef]) -> None:
        try:
            for r, (lv, ref) in enumerate(zip(self.levels, refs)):
                group = self._file.require_group(_level_path(r, t, c))
                write_attr_str(group, "ImageSizeX", str(lv.shape[2]))
                write_attr_str(group, "ImageSizeY", str(lv.shape[1]))
                write_attr_str(group, "ImageSizeZ", str(lv.shape[0]))
                ds = self.codec.create_dataset(group, "Data", shape=lv.padded_shape, dtype=self.dtype,
                                               chunks=lv.chunks, allocate=ref.raw is not None)
                ref.id = ds.id
                if ref.raw is not None:
                    ref.raw.attach((self._raw_fd, self._direct_fd), chunk_addresses(ds),
                                   int(np.prod(lv.chunks)) * self.dtype.itemsize)
        finally:
            for ref in refs:  # also on failure: workers then see the engine's error
                if ref.raw is not None:
                    ref.raw.ready.set()

    def _write_histogram(self, t: int, c: int, r: int, h: ImarisHistogram) -> None:
        group = self._file[_level_path(r, t, c)]
        for name in ("Histogram", "Histogram1024"):
            if name in group:
                del group[name]
        group.create_dataset("Histogram", data=np.asarray(h.hist256, dtype=np.uint64))
        write_attr_str(group, "HistogramMin", format_float(h.hmin))
        write_attr_str(group, "HistogramMax", format_float(h.hmax))
        if h.hist1024 is not None:
            group.create_dataset("Histogram1024", data=np.asarray(h.hist1024, dtype=np.uint64))
            write_attr_str(group, "HistogramMin1024", format_float(h.hmin1024))
            write_attr_str(group, "HistogramMax1024", format_float(h.hmax1024))

    def _color_range(self, c: int) -> tuple[float, float]:
        """ColorRange of channel `c`: given, or ImarisWriter's automatic one.

        Before close (a flush) only the time points whose level 0 is final are used.
        """
        if self._fixed_ranges is not None:
            return self._fixed_ranges[c]
        with self._lock:
            hists = dict(self._level0_hist[c])
        if sum(h.count for h in hists.values()) == 0:
            if self.dtype.kind == "f":
                return (0.0, 1.0)
            return (0.0, float(min(np.iinfo(self.dtype).max, 65535)))
        key = tuple(sorted(hists))
        cached = self._range_cache.get(c)
        if cached is not None and cached[0] == key:
            return cached[1]
        if self.shape[0] == 1:  # ImarisWriter: time point 0's Histogram1024 (or 256 bins for uint8)
            h = hists[0].imaris()
            if h.hist1024 is not None:
                result = auto_color_range(h.hist1024, h.hmin1024, h.hmax1024)
            else:
                result = auto_color_range(h.hist256, h.hmin, h.hmax)
        else:  # spec §3: every time point merged on 65536 bins, then reduced to 1024
            merged, lo, hi = merge_time_histograms([time_point_histogram(hists[t]) for t in key])
            if merged.size > 1024:  # one time point final yet (a flush): it is not merged
                merged = resample_histogram(merged, 1024)
            result = auto_color_range(merged, lo, hi)
        self._range_cache[c] = (key, result)
        return result

    def _stamps(self) -> list[str]:
        """Time stamps strictly increasing at the millisecond they are written with.

        Imaris needs them so; automatic stamps (a time point's first frame) of consecutive
        time points can fall within one millisecond, or arrive out of order.
        """
        out, prev = [], None
        for x in self._times:
            if x is None:
                out.append("")
                continue
            x = x.replace(microsecond=x.microsecond // 1000 * 1000)
            if prev is not None and x <= prev:
                x = prev + _dt.timedelta(milliseconds=1)
            out.append(format_datetime(x))
            prev = x
        return out

    def _write_metadata(self, *, final: bool) -> None:
        f = self._file
        nt, nc, nz, ny, nx = self.shape
        info = f.require_group("DataSetInfo")
        image = info.require_group("Image")
        dz, dy, dx = self.voxel_size
        oz, oy, ox = self.origin
        for axis, (o, d, n) in enumerate(((ox, dx, nx), (oy, dy, ny), (oz, dz, nz))):
            write_attr_str(image, f"ExtMin{axis}", format_extent(o))
            write_attr_str(image, f"ExtMax{axis}", format_extent(o + d * n))
        write_attr_str(image, "X", str(nx))
        write_attr_str(image, "Y", str(ny))
        write_attr_str(image, "Z", str(nz))
        write_attr_str(image, "Unit", self.unit)
        write_attr_str(image, "Name", self.name)
        write_attr_str(image, "Description", self.description)
        times = self._stamps()
        write_attr_str(image, "RecordingDate", times[0])
        for axis in "XYZ":
            write_attr_str(image, f"ResampleDimension{axis}", "true")
        for c in range(nc):
            ch = info.require_group(f"Channel {c}")
            write_attr_str(ch, "Name", self.channel_names[c])
            write_attr_str(ch, "Description", "(description not specified)")
            write_attr_str(ch, "ColorMode", "BaseColor")
            write_attr_str(ch, "Color", format_color(self.channel_colors[c]))
            lo, hi = self._color_range(c)
            write_attr_str(ch, "ColorRange", f"{format_float(lo)} {format_float(hi)}")
            write_attr_str(ch, "ColorOpacity", format_float(1.0))
            write_attr_str(ch, "GammaCorrection", format_float(1.0))
        tinfo = info.require_group("TimeInfo")
        write_attr_str(tinfo, "DatasetTimePoints", str(nt))
        write_attr_str(tinfo, "FileTimePoints", str(nt))
        for t, text in enumerate(times):
            write_attr_str(tinfo, f"TimePoint{t + 1}", text)
        ids = info.require_group("ImarisDataSet")
        write_attr_str(ids, "Creator", "fastims")
        write_attr_str(ids, "NumberOfImages", "1")
        write_attr_str(ids, "Version", __version__)
        log = info.require_group("Log")
        entries = [f"incomplete: t={t} c={c} z={ranges_text(g)} zero-filled" for (t, c), g in self._missing.items()]
        write_attr_str(log, "Entries", str(len(entries)))
        for i, entry in enumerate(entries):
            write_attr_str(log, f"Entry{i}", entry)
        if final and self._thumbnail is None:  # built and queued once every level was done
            raise RuntimeError(f"{self.path}: the thumbnail was not built")
        f.flush()

    def _make_thumbnail(self) -> np.ndarray:
        nc = self.shape[1]
        return make_thumbnail(
            self._thumb,
            colors=self.channel_colors,
            color_ranges=[self._color_range(c) for c in range(nc)],
            gammas=[1.0] * nc,
            voxel_size_yx=(self.voxel_size[1], self.voxel_size[2]),
            # level-0 physical extent: the aspect must not follow a level that halved only X or Y
            extent_yx=(self.shape[3] * self.voxel_size[1], self.shape[4] * self.voxel_size[2]),
        )

    def _write_thumbnail(self) -> None:
        group = self._file.require_group("Thumbnail")
        if "Data" in group:
            del group["Data"]
        group.create_dataset("Data", data=self._thumbnail)


def write_ims(path: str | os.PathLike, data: np.ndarray, **options: Any) -> None:
    """Write a (Z, Y, X), (C, Z, Y, X) or (T, C, Z, Y, X) array to an .ims file.

    Parameters
    ----------
    path : str or os.PathLike
        Output file.
    data : numpy.ndarray
        The image; its dtype is the file's dtype.
    **options
        Keyword options of :class:`ImsWriter` (except `shape` and `dtype`).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "b.ims")
    >>> write_ims(path, np.zeros((3, 16, 16), np.uint8), compression="lz4")
    """
    data = np.asarray(data)
    if data.ndim == 3:
        data = data[None, None]
    elif data.ndim == 4:
        data = data[None]
    elif data.ndim != 5:
        raise ValueError(f"data must be (Z, Y, X), (C, Z, Y, X) or (T, C, Z, Y, X), got shape {data.shape}")
    for key in ("shape", "dtype"):
        if key in options:
            raise TypeError(f"write_ims takes {key} from the data; do not pass {key}=")
    with ImsWriter(path, shape=data.shape, dtype=data.dtype, **options) as w:
        for t in range(data.shape[0]):
            for c in range(data.shape[1]):
                w.write(data[t, c], t=t, c=c, z=0)


# -- validation helpers ----------------------------------------------------------------------


def _per_channel(name: str, values: Sequence | None, nc: int, default: list | None) -> list:
    if values is None:
        return list(default) if default is not None else []
    if isinstance(values, (str, bytes)):  # list("GFP") would name three channels
        raise TypeError(f"{name} takes one entry per channel, got the string {values!r}")
    values = list(values)
    if len(values) != nc:
        raise ValueError(f"{name} needs one entry per channel ({nc}), got {len(values)}")
    return values


def _timepoints(values: Sequence[_dt.datetime], nt: int) -> list[_dt.datetime]:
    """Validate `values` and bring aware ones to the first one's UTC offset (see ImsWriter)."""
    times = list(values)
    if len(times) != nt or not all(isinstance(x, _dt.datetime) for x in times):
        raise ValueError(f"timepoints must be {nt} datetime.datetime values")
    aware = [x.utcoffset() is not None for x in times]
    if any(aware) and not all(aware):
        naive = [t for t, a in enumerate(aware) if not a]
        raise ValueError(
            "timepoints mix naive and time-zone aware datetimes (naive at time points "
            f"{naive}); give all of them a tzinfo or none"
        )
    if aware[0]:
        # a fixed offset, not the first one's tzinfo: a zone's daylight-saving change would
        # make the wall-clock text go backwards. Converted before the order check, as
        # datetimes sharing a tzinfo compare by wall clock, not by instant
        offset = _dt.timezone(times[0].utcoffset())
        times = [x.astimezone(offset) for x in times]
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise ValueError("timepoints must be strictly increasing (Imaris requires it)")
    # written truncated to the millisecond (format_datetime), which must keep them increasing
    ms = [x.replace(microsecond=x.microsecond // 1000 * 1000) for x in times]
    for t in range(1, nt):
        if ms[t] <= ms[t - 1]:
            raise ValueError(
                f"timepoints {t - 1} and {t} ({times[t - 1].isoformat()}, {times[t].isoformat()}) "
                "fall in the same millisecond, the resolution of the file's time stamps"
            )
    return times


#: relative voxel-size error of the written extents above which the writer warns
EXTENT_TOLERANCE = 1e-3


def _check_extents(voxel_size: Sequence[float], origin: Sequence[float], size: Sequence[int], unit: str) -> None:
    """Refuse or warn when the extents, as Imaris stores them, do not give back the voxel size.

    Imaris keeps only ``ExtMin``/``ExtMax`` (float32, 9 decimals, as ImarisWriter): a voxel
    size far below 1e-9 ``unit``, or small against a large `origin`, is lost in them.
    """
    for axis, d, o, n in zip("zyx", voxel_size, origin, size, strict=True):
        lo, hi = float(format_extent(o)), float(format_extent(o + d * n))
        if hi <= lo:
            raise ValueError(
                f"voxel_size {axis}={d!r} {unit} vanishes in the file's extents (stored with 9 decimals, "
                f"in float32, from origin {o!r}): give the sizes in a smaller unit"
            )
        stored = (hi - lo) / n
        if abs(stored - d) > EXTENT_TOLERANCE * d:
            warnings.warn(
                f"voxel_size {axis}={d!r} {unit} is stored as {stored:.6g} (the extents are float32 with 9 "
                f"decimals, from origin {o!r}): use a smaller unit or an origin nearer 0",
                UserWarning, stacklevel=3,
            )


def _ascii(what: str, text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if not text.isascii():
        raise ValueError(f"{what} must be ASCII (Imaris stores ASCII attributes): {text!r}")
    if "\x00" in text:
        raise ValueError(f"{what} must not contain a NUL (Imaris reads a string up to its first NUL): {text!r}")
    return text


