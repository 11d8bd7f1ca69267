"""BigDataViewer (HDF5 + XML) writer: the BDV adapter on fastims' streaming engine.

The adapter knows group paths, the ``resolutions``/``subdivisions`` tables, the dtype
convention and the SpimData XML (format facts with sources: ``shared/spec/bdv.md``):

* Views are (time point, view setup) pairs; a setup is one (illumination, channel, tile,
  angle), numbered as npy2bdv does: ``((illumination * nchannels + channel) * ntiles + tile) *
  nangles + angle``. Image data go to ``t{tp:05d}/s{setup:02d}/{level}/cells`` (Z, Y, X).
* Levels follow BigDataViewer's own rules: levels proposed by ``ProposeMipmaps`` (or given as
  absolute ``factors``), ceil-sized levels with edge replication and rounding half up
  (``rule="bdv"``, BDV >= 10.6.2), each level computed from the earlier level BDV's loopback
  heuristic picks — all built while streaming, z factors included. Chunks are sized for
  writing (about 1 MiB, :mod:`fastims.bdv.layout`) and ``subdivisions`` equals the real chunk
  shape reversed, so old BDV readers (which use ``subdivisions`` as the cell grid) agree.
* ``dtype_mode="legacy"`` stores uint16 as HDF5 int16 with the same bit pattern and no
  ``dataType`` attribute: every Fiji since 2014 reads it as unsigned 16-bit.
  ``dtype_mode="typed"`` stores the real type and the ``s{NN}@dataType`` attribute (uint8,
  uint16, uint32, float32; BDV >= 10.4.6, Fiji from 2023). A uint16 dataset without the
  attribute is never written: old and new BDV both fail on values above 32767.
* Compression is none or gzip (deflate, optional byte shuffle), encoded in parallel and
  stored with direct chunk writes; LZ4 only on request (Fiji cannot read it). Files use the
  HDF5 1.8-compatible format (``libver=("earliest", "v110")``) that old Fiji opens.
* Partitions (BDV's multi-file layout): ``partitions=`` splits views over
  ``{name}-{tp group:02d}-{setup group:02d}.h5`` files that the master ``.h5`` reaches through
  HDF5 external links, listed as ``<partition>`` in the XML. Independent writers (one per
  process) each write a complete dataset; :func:`merge_partitions` then links them under one
  master.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastims._interrupts import hold_interrupts
from fastims._lifecycle import EngineWriter
from fastims._staging import close_h5, create_h5, h5_path
from fastims._validate import check_index, check_planes, floats, int_shape, native, to_dtype
from fastims.compression import Codec, chunk_addresses
from fastims.engine import ALIGNED_FILE, DatasetRef, Engine, LevelSpec, RawTarget, Stream, open_raw_fds, ranges_text
from fastims.errors import FormatError, WriterStateError
from fastims.pyramid import SUPPORTED_DTYPES
from fastims.bdv import xmlwrite
from fastims.bdv.layout import BdvLevel, plan_levels
from fastims.bdv.spimdata import ZERO_FILLED_ATTR, parse_integer_pattern
from fastims.bdv.xmlwrite import ATTRIBUTE_KINDS, Document, PartitionEntry, SetupEntry

__all__ = ["BdvWriter", "merge_partitions", "write_bdv"]

logger = logging.getLogger("fastims")

DTYPE_MODES = ("legacy", "typed")
COMPRESSIONS = (None, "gzip", "lz4")
#: HDF5 format bounds readable by the HDF5 1.8/1.10 libraries bundled with Fiji's jhdf5
LIBVER = ("earliest", "v110")
_LEGACY_DTYPES = (np.dtype(np.uint16), np.dtype(np.int16))
_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_DEFAULT_AFFINE_NAME = "manually defined"


def cells_path(timepoint: int, setup: int, level: int) -> str:
    """HDF5 path of a level's image data (``t%05d/s%02d/%d/cells``)."""
    return f"t{timepoint:05d}/s{setup:02d}/{level}/cells"


def view_group(timepoint: int, setup: int) -> str:
    """HDF5 group of a view's levels (``t%05d/s%02d``); carries :data:`ZERO_FILLED_ATTR`."""
    return f"t{timepoint:05d}/s{setup:02d}"


def setup_group(setup: int) -> str:
    """HDF5 group of a setup's ``resolutions`` and ``subdivisions`` (``s%02d``)."""
    return f"s{setup:02d}"


def pair_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (xml, h5) pair named by either file (the other one sits beside it)."""
    p = Path(os.fspath(path))
    suffix = p.suffix.lower()
    if suffix == ".xml":
        return p, p.with_suffix(".h5")
    if suffix in _H5_SUFFIXES:
        return p.with_suffix(".xml"), p
    raise ValueError(f"path must name the dataset's .xml or .h5 file, got {str(p)!r}")


def _release_refs(refs: Sequence[DatasetRef]) -> None:
    # writer thread, after the stream's last chunk: a long acquisition keeps no handle open
    for ref in refs:
        ref.id = None


def _level_specs(setup: _Setup) -> list[LevelSpec]:
    """The engine's description of a setup's pyramid."""
    return [LevelSpec(lv.shape, lv.chunks, lv.source, lv.relative) for lv in setup.levels]


class _Finished:
    """Stands in for the engine stream of a complete view (keeps long time series small)."""

    __slots__ = ()

    @staticmethod
    def missing_planes() -> np.ndarray:
        return np.empty(0, dtype=np.intp)


_FINISHED = _Finished()


@dataclass
class _Setup:
    """A declared view setup (shared by all its time points)."""

    id: int
    attributes: dict[str, int]
    shape: tuple[int, int, int]
    dtype: np.dtype  # what the caller writes
    storage: np.dtype  # what the HDF5 dataset declares
    stream_dtype: np.dtype  # what the engine averages (uint16 for legacy int16 storage)
    typed: bool  # writes s{NN}@dataType
    voxel_size: tuple[float, float, float]
    unit: str
    name: str
    exposure_time: float | None
    exposure_unit: str
    levels: list[BdvLevel]
    codec: Codec
    default_affine: tuple[str, np.ndarray] | None = None


@dataclass
class _View:
    """One (time point, setup)."""

    time: int
    setup: _Setup
    affine: tuple[str, np.ndarray] | None
    explicit: bool  # declared by add_view (False: created by a write to another time point)
    stream: Stream | _Finished | None = None


# ---------------------------------------------------------------------------------------
# the shared streaming core (BdvWriter and BdvEditor)
# ---------------------------------------------------------------------------------------


class _ViewStreamer(EngineWriter):
    """Declaring views and streaming them through the engine; subclasses own the files."""

    # set by subclasses
    xml_path: Path
    h5_path: Path
    dtype_mode: str
    allow_incomplete: bool
    _engine: Engine
    _file: Any

    def _init_streaming(
        self,
        *,
        factors: Sequence[Sequence[int]] | None,
        chunks: Any,
        compression: str | None,
        compression_level: int,
        shuffle: bool,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if compression == "lz4":
            warnings.warn(
                "LZ4 (HDF5 filter 32004, hdf5plugin) is not readable by Fiji/BigDataViewer; use "
                "compression=None or 'gzip' for files meant for Fiji", UserWarning, stacklevel=3,
            )
        self.compression = compression
        self.compression_level = compression_level
        # shuffle without a codec only reorders bytes; ignored, as ImsWriter does (uncompressed
        # chunks are then written in place, which a shuffle filter would forbid)
        self.shuffle = bool(shuffle) and compression is not None
        # (buffered, O_DIRECT) descriptors for in-place chunks, by file name
        self._fds: dict[str, tuple[int, int]] = {}
        # validate the codec options once, before any file exists
        Codec.create(compression, level=compression_level, shuffle=self.shuffle, dtype=np.uint16,
                     shuffle_rule="always")
        self.factors = None if factors is None else [tuple(f) for f in factors]
        self.chunks = chunks
        if factors is not None:
            # factor and chunk errors surface now, not at the first add_view
            plan_levels((1, 1, 1), itemsize=2, factors=factors, chunks=chunks)
        elif chunks is not None:
            plan_levels((1, 1, 1), itemsize=2, factors=[(1, 1, 1)], chunks=chunks)
        self._codecs: dict[str, Codec] = {}
        self._lock = threading.RLock()
        self._setups: dict[int, _Setup] = {}
        self._views: dict[tuple[int, int], _View] = {}
        self._tile_locations: dict[int, tuple[float, float, float]] = {}
        # (time, setup) -> full-resolution planes zero-filled at close, recorded in both files
        self._zero_filled: dict[tuple[int, int], list[int]] = {}
        self._closed = False

    # -- hooks -------------------------------------------------------------------------

    def _setup_id(self, keys: Mapping[str, int], *, create: bool) -> int:
        raise NotImplementedError

    def _check_time(self, time: Any) -> int:
        raise NotImplementedError

    @property
    def _label(self) -> Path:
        return self.xml_path

    def _raw_fd(self, f: Any) -> tuple[int, int]:
        """Descriptors of HDF5 file `f` for in-place chunk writes (writer thread)."""
        path = h5_path(f)
        fds = self._fds.get(path)
        if fds is None:
            fds = self._fds[path] = open_raw_fds(path)
            if f is self._file:
                self._engine.set_writeback(fds[0])
        return fds

    def _close_fds(self) -> None:
        for fds in self._fds.values():
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
        self._fds.clear()

    def _file_for(self, time: int, setup: int) -> tuple[Any, str | None]:
        """(h5py file receiving the view's datasets, its name relative to the master or None)."""
        return self._file, None

    def _ensure_setup(self, sid: int) -> bool:
        """Whether setup `sid` can take views (the editor registers the file's setups here)."""
        return sid in self._setups

    def _setup_declared(self, setup: _Setup) -> None:
        """Called (caller thread) when a setup is first declared."""
        self._engine.post(self._write_setup_h5, self._file, setup)

    # -- public streaming API ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def add_view(
        self,
        *,
        time: int = 0,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
        shape: Sequence[int],
        dtype: Any,
        voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
        unit: str = "um",
        exposure_time: float | None = None,
        exposure_unit: str = "s",
        affine: Any = None,
        affine_name: str | None = None,
        name: str | None = None,
        tile_location: Sequence[float] | None = None,
    ) -> None:
        """Declare the view (`time`, `illumination`, `channel`, `tile`, `angle`).

        Parameters
        ----------
        time, illumination, channel, tile, angle : int
            The view's keys.
        shape : sequence of int
            (Z, Y, X) size. Every time point of a setup has the same shape, dtype and voxel
            size.
        dtype : dtype-like
            Data type of the frames written.
        voxel_size : sequence of float
            (z, y, x) voxel size in `unit`.
        unit : str
            Voxel size unit (e.g. "um", "nm").
        exposure_time : float, optional
            Camera exposure, stored with the setup (``<camera>``).
        exposure_unit : str
            Unit of `exposure_time`.
        affine : array_like, optional
            A 3x4 (or 4x4, or 12-number row-packed) affine on BDV's (x, y, z) voxel
            coordinates, listed first (applied last) before BigStitcher's calibration.
        affine_name : str, optional
            Name of `affine` (default "manually defined").
        name : str, optional
            Setup name (default "setup {id}").
        tile_location : sequence of float, optional
            (z, y, x) position of the tile in `unit`; stored with the tile and turned into a
            ``Translation`` transform.

        Raises
        ------
        ValueError
            For a view declared twice, a setup redeclared with another shape, dtype or voxel
            size, or invalid values.
        TypeError
            For a dtype the dtype mode cannot store.
        IndexError
            For keys out of range.
        """
        self._check_open()
        keys = {"illumination": illumination, "channel": channel, "tile": tile, "angle": angle}
        t = self._check_time(time)
        dims = int_shape(shape, "ZYX")
        dt = self._check_dtype(dtype)
        vox = floats("voxel_size", voxel_size, 3, positive=True)
        if not isinstance(unit, str) or not unit.strip():
            raise ValueError(f"unit must be a non-empty string, got {unit!r}")
        exposure = None
        if exposure_time is not None:
            exposure = floats("exposure_time", (exposure_time,), 1, positive=False)[0]
            if exposure < 0:
                raise ValueError(f"exposure_time must be >= 0, got {exposure_time!r}")
        if not isinstance(exposure_unit, str):
            raise TypeError(f"exposure_unit must be a str, got {exposure_unit!r}")
        for what, text in (("name", name), ("unit", unit), ("exposure_unit", exposure_unit), ("affine_name", affine_name)):
            if isinstance(text, str):
                xmlwrite.check_xml_text(what, text)
        user_affine = None
        if affine is not None:
            user_affine = (affine_name or _DEFAULT_AFFINE_NAME, _affine3x4(affine))
        elif affine_name is not None:
            raise ValueError("affine_name given without an affine")
        loc = None if tile_location is None else floats("tile_location", tile_location, 3, positive=False)
        with self._lock:
            sid = self._setup_id(keys, create=True)
            if (t, sid) in self._views and self._views[(t, sid)].explicit:
                raise ValueError(f"view time={t} {_keys_text(keys)} is already declared")
            if loc is not None:
                known = self._tile_locations.get(tile)
                if known is not None and not np.allclose(known, loc, rtol=0, atol=0):
                    raise ValueError(f"tile {tile} already has location {known}, got {loc}")
            setup = self._setups.get(sid)
            if setup is None:
                setup = self._make_setup(sid, keys, dims, dt, vox, unit, name, exposure, exposure_unit)
            else:
                _check_same_setup(setup, dims, dt, vox, unit)
            if setup.default_affine is None:
                setup.default_affine = user_affine
            if loc is not None:
                self._tile_locations[tile] = loc  # type: ignore[assignment]
            view = self._views.get((t, sid))
            if view is None:
                self._views[(t, sid)] = _View(t, setup, user_affine, explicit=True)
            else:  # created by a write before its declaration: adopt the declaration
                view.explicit = True
                view.affine = user_affine
            new = sid not in self._setups
            if new:
                self._setups[sid] = setup
                self._setup_declared(setup)
        if new:  # the buffers its streams hold are faulted in now, not by the first frames
            self._engine.preallocate(_level_specs(setup), setup.stream_dtype, setup.codec)

    def write_plane(
        self,
        frame: np.ndarray,
        *,
        z: int,
        time: int = 0,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
    ) -> None:
        """Write one (Y, X) frame as plane `z` of a declared view.

        Blocks (back-pressure) while the in-flight memory budget is exhausted.
        """
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"write_plane takes a (Y, X) frame, got shape {frame.shape}")
        self.write(frame[None], z=z, time=time, illumination=illumination, channel=channel,
                   tile=tile, angle=angle)

    def write(
        self,
        block: np.ndarray,
        *,
        z: int = 0,
        time: int = 0,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
    ) -> None:
        """Write a (Z', Y, X) block as planes ``z .. z + Z' - 1`` of a declared view.

        A view of a declared setup at another time point is declared implicitly, with the
        setup's properties.

        Raises
        ------
        KeyError
            If the view's setup was never declared.
        ValueError, TypeError, IndexError
            For a block of the wrong shape or dtype, or planes out of range.
        WriterStateError
            For planes written twice, or writing after close.
        """
        self._check_open()
        block = np.asarray(block)
        keys = {"illumination": illumination, "channel": channel, "tile": tile, "angle": angle}
        view = self._view(time, keys)
        setup = view.setup
        nz, ny, nx = setup.shape
        if block.ndim != 3 or block.shape[1:] != (ny, nx):
            raise ValueError(f"expected a (Z', {ny}, {nx}) block for setup {setup.id}, got shape {block.shape}")
        converted = to_dtype(block, setup.dtype)
        if converted is None:
            raise TypeError(f"setup {setup.id} is {setup.dtype}, got {block.dtype} data (convert it explicitly)")
        block = converted
        check_planes(z, block.shape[0], nz)
        if block.shape[0] == 0:
            return
        if block.dtype != setup.stream_dtype:
            block = block.view(setup.stream_dtype)  # legacy int16 input: same bits, unsigned pyramid
        stream = self._stream(view)
        if stream is _FINISHED:
            raise WriterStateError(
                f"view time={view.time} setup={setup.id} is complete: planes "
                f"{z}..{int(z) + block.shape[0] - 1} written twice"
            )
        self._engine.write(stream, int(z), block)

    def write_view(
        self,
        stack: np.ndarray,
        *,
        time: int = 0,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
        **view_options: Any,
    ) -> None:
        """Write a whole (Z, Y, X) view, declaring it first when needed.

        `view_options` are :meth:`add_view` options (voxel_size, unit, affine...); they are
        only accepted for a view not declared yet. Without options, a new time point of a
        declared setup takes the setup's properties.
        """
        stack = np.asarray(stack)
        if stack.ndim != 3:
            raise ValueError(f"write_view takes a (Z, Y, X) stack, got shape {stack.shape}")
        keys = {"illumination": illumination, "channel": channel, "tile": tile, "angle": angle}
        self._check_open()
        t = self._check_time(time)
        with self._lock:
            sid = self._setup_id(keys, create=False)
            declared = sid is not None and (t, sid) in self._views and self._views[(t, sid)].explicit
            setup_known = sid is not None and self._ensure_setup(sid)
        if declared and view_options:
            raise ValueError(f"view time={t} {_keys_text(keys)} is already declared; "
                             f"options {sorted(view_options)} cannot change it")
        if not declared and (view_options or not setup_known):
            self.add_view(time=t, **keys, shape=stack.shape, dtype=stack.dtype, **view_options)
        # else: a new time point of a declared setup takes the setup's properties
        self.write(stack, z=0, time=t, **keys)

    # -- internals (caller thread) -----------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise WriterStateError(f"{self.xml_path} is closed")
        self._engine.check()

    def _check_dtype(self, dtype: Any) -> np.dtype:
        try:
            dt = native(np.dtype(dtype))
        except TypeError:
            raise TypeError(f"dtype must be a numpy dtype, got {dtype!r}") from None
        if self.dtype_mode == "legacy":
            if dt not in _LEGACY_DTYPES:
                raise TypeError(
                    f"dtype_mode='legacy' stores 16-bit data only (BigDataViewer's int16 convention, "
                    f"read as unsigned 16-bit by every Fiji); for {dt} data use dtype_mode='typed' "
                    f"(real type + dataType attribute, needs BigDataViewer >= 10.4.6 / Fiji from 2023)"
                )
        elif dt not in SUPPORTED_DTYPES:
            names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
            raise TypeError(f"dtype_mode='typed' writes {names} (the dtypes with pyramid kernels), got {dt}")
        return dt

    def _codec(self, storage: np.dtype) -> Codec:
        codec = self._codecs.get(storage.str)
        if codec is None:
            codec = self._codecs[storage.str] = Codec.create(
                self.compression, level=self.compression_level, shuffle=self.shuffle,
                dtype=storage, shuffle_rule="always",
            )
        return codec

    def _make_setup(
        self,
        sid: int,
        keys: Mapping[str, int],
        dims: tuple[int, int, int],
        dt: np.dtype,
        vox: tuple[float, ...],
        unit: str,
        name: str | None,
        exposure: float | None,
        exposure_unit: str,
    ) -> _Setup:
        if self.dtype_mode == "legacy":
            storage, stream_dtype, typed = np.dtype(np.int16), np.dtype(np.uint16), False
        else:
            storage, stream_dtype, typed = dt, dt, True
        levels = self._plan_levels(dims, dt.itemsize, vox)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        return _Setup(
            id=sid, attributes=dict(keys), shape=dims, dtype=dt, storage=storage, stream_dtype=stream_dtype,
            typed=typed, voxel_size=vox, unit=unit, name=name if name is not None else f"setup {sid}",  # type: ignore[arg-type]
            exposure_time=exposure, exposure_unit=exposure_unit, levels=levels, codec=self._codec(storage),
        )

    def _plan_levels(self, dims: tuple[int, int, int], itemsize: int, vox: tuple[float, ...]) -> list[BdvLevel]:
        """The levels of a new setup: the writer's factors and chunks, or the default rule."""
        return plan_levels(dims, itemsize=itemsize, voxel_size=vox, factors=self.factors, chunks=self.chunks)

    def _view(self, time: Any, keys: Mapping[str, int]) -> _View:
        t = self._check_time(time)
        with self._lock:
            sid = self._setup_id(keys, create=False)
            if sid is None or not self._ensure_setup(sid):
                raise KeyError(f"view time={t} {_keys_text(keys)} is not declared: call add_view(...) first")
            view = self._views.get((t, sid))
            if view is None:
                setup = self._setups[sid]
                view = self._views[(t, sid)] = _View(t, setup, setup.default_affine, explicit=False)
        return view

    def _stream(self, view: _View) -> Stream | _Finished:
        stream = view.stream
        if stream is not None:
            return stream
        # held: a Ctrl-C inside would leave the lock taken, or the datasets' job posted for a
        # stream never recorded (posted again at the next call)
        with hold_interrupts(), self._lock:
            if view.stream is None:
                setup = view.setup
                specs = _level_specs(setup)
                raw = setup.codec.compression is None and RawTarget.SUPPORTED
                refs = [DatasetRef(RawTarget() if raw else None) for _ in specs]
                stream = self._engine.open_stream(
                    (view.time, setup.id), dtype=setup.stream_dtype, levels=specs, datasets=refs,
                    codec=setup.codec, rule="bdv", histograms=False,
                    on_done=lambda _stream, view=view, refs=refs: self._stream_done(view, refs),
                    label=f"{self._label.name} timepoint {view.time} setup {setup.id}",
                )
                # FIFO: the writer thread creates the datasets before it stores any chunk,
                # which only exist once this call has returned
                self._engine.post(self._create_datasets, view, refs)
                view.stream = stream
            return view.stream

    def _stream_done(self, view: _View, refs: list[DatasetRef]) -> None:
        # a worker thread, once every level is stored or queued: drop the stream's state
        view.stream = _FINISHED
        self._engine.post(_release_refs, refs)

    def _finish_streams(self) -> dict[tuple[int, int], str]:
        """Zero-fill partly written views; describe every incomplete declared view."""
        incomplete: dict[tuple[int, int], str] = {}
        for (t, sid), view in sorted(self._views.items()):
            if view.stream is None:
                if view.explicit:
                    incomplete[(t, sid)] = "never written (listed in MissingViews)"
                continue
            stream = view.stream
            gaps = stream.missing_planes().tolist()
            if gaps and isinstance(stream, Stream):
                incomplete[(t, sid)] = f"z={ranges_text(gaps)} zero-filled"
                self._zero_filled[(t, sid)] = [int(z) for z in gaps]
                self._engine.finish(stream, zero_fill=True)
        return incomplete

    def _report_incomplete(self, incomplete: Mapping[tuple[int, int], str]) -> BaseException | None:
        if not incomplete:
            return None
        text = "; ".join(f"time={t} setup={s}: {what}" for (t, s), what in incomplete.items())
        if self.allow_incomplete:
            warnings.warn(f"{self.xml_path}: incomplete views: {text}", UserWarning, stacklevel=5)
            return None
        return WriterStateError(f"{self.xml_path}: incomplete views (the file is complete and opens): {text}")

    # -- writer thread: HDF5 only here -------------------------------------------------

    def _create_datasets(self, view: _View, refs: list[DatasetRef]) -> None:
        try:
            self._create_view_datasets(view, refs)
        finally:
            for ref in refs:  # also on failure: workers then see the engine's error
                if ref.raw is not None:
                    ref.raw.ready.set()

    def _create_view_datasets(self, view: _View, refs: list[DatasetRef]) -> None:
        setup = view.setup
        f, link_name = self._file_for(view.time, setup.id)
        for li, (lv, ref) in enumerate(zip(setup.levels, refs)):
            path = cells_path(view.time, setup.id, li)
            if path in f:
                del f[path]  # a view re-created by the editor
            ds = setup.codec.create_dataset(
                f, path, shape=lv.shape, dtype=setup.storage, chunks=lv.chunks, maxshape=(None, None, None),
                allocate=ref.raw is not None,
            )
            ref.id = ds.id
            if ref.raw is not None:
                ref.raw.attach(self._raw_fd(f), chunk_addresses(ds), int(np.prod(lv.chunks)) * ds.dtype.itemsize)
            if link_name is not None:
                import h5py

                grp = self._file.require_group(path.rsplit("/", 1)[0])
                if "cells" in grp:
                    del grp["cells"]
                grp["cells"] = h5py.ExternalLink(link_name, "/" + path)

    def _record_zero_filled(self) -> None:
        """Name the zero-filled planes on each incomplete view's group (HDF5 attribute)."""
        for (t, sid), planes in self._zero_filled.items():
            f, link_name = self._file_for(t, sid)
            groups = [f[view_group(t, sid)]]
            if link_name is not None and view_group(t, sid) in self._file:
                groups.append(self._file[view_group(t, sid)])  # the master's group too (h5dump)
            for grp in groups:
                write_zero_filled(grp, planes)

    def _write_setup_h5(self, f: Any, setup: _Setup) -> None:
        write_setup_tables(
            f, setup.id,
            factors=[lv.factors for lv in setup.levels],
            chunks=[lv.chunks for lv in setup.levels],
            data_type=setup.dtype.name if setup.typed else None,
        )

    # -- XML pieces --------------------------------------------------------------------

    def _registration(self, view: _View, smallest: tuple[Any, str]) -> list[tuple[str, np.ndarray]]:
        setup = view.setup
        transforms = [] if view.affine is None else [view.affine]
        transforms += xmlwrite.calibration_transforms(
            setup.voxel_size, setup.unit, smallest[0], smallest_unit=smallest[1],
            tile_location=self._tile_locations.get(setup.attributes.get("tile", 0)),
        )
        return transforms

    def _smallest_voxel(self) -> tuple[float, str]:
        """Smallest voxel dimension over all setups (BigStitcher's ``minResolution``)."""
        best: tuple[float, float, str] | None = None
        for setup in self._setups.values():
            metres = xmlwrite.length_in_meters(setup.unit) or 1.0
            for v in setup.voxel_size:
                if best is None or v * metres < best[0]:
                    best = (v * metres, v, setup.unit)
        if best is None:
            return 1.0, "um"
        return best[1], best[2]


# ---------------------------------------------------------------------------------------
# BdvWriter
# ---------------------------------------------------------------------------------------


class BdvWriter(_ViewStreamer):
    """Stream camera frames into a BigDataViewer/BigStitcher HDF5 + XML dataset.

    Parameters
    ----------
    path : str or os.PathLike
        The dataset's ``.xml`` (the ``.h5`` is written beside it) or its ``.h5`` (the
        ``.xml`` beside it).
    ntimepoints, nilluminations, nchannels, ntiles, nangles : int
        Number of time points and of each view attribute.
    factors : sequence of (int, int, int), optional
        Absolute (z, y, x) downsampling factors of every level, level 0 being (1, 1, 1).
        Default: BigDataViewer's ``ProposeMipmaps`` rule for each setup's size and voxel size.
    chunks : (int, int, int) or sequence of them, optional
        (z, y, x) chunk shape for every level, or one per level. Default: about 1 MiB,
        up to 256 x 256 in Y and X (:func:`fastims.bdv.layout.write_chunks`). A level's chunk
        depth must be a multiple of the z factor of the levels computed from it.
    compression : {None, "gzip", "lz4"}
        Chunk codec. Fiji reads None and "gzip"; "lz4" warns (Fiji cannot read it).
    compression_level : int
        gzip level 1-9.
    shuffle : bool
        Byte-shuffle before the codec (HDF5 shuffle filter; Fiji reads it). Ignored without
        compression.
    dtype_mode : {"legacy", "typed"}
        "legacy" (default): 16-bit data stored as int16 bit patterns without a ``dataType``
        attribute (every Fiji). "typed": the real dtype (uint8, uint16, uint32, float32) and
        ``s{NN}@dataType`` (BigDataViewer >= 10.4.6).
    partitions : {None, "timepoint", "setup"} or (int, int)
        Split views over partition files: one per time point, one per setup, or
        (time points per file, setups per file). The master ``.h5`` links them.
    max_workers : int, optional
        Encoding/downsampling threads (default: number of CPUs).
    memory_limit : int, optional
        Bytes of slabs (images being assembled and encoded) before writes block
        (back-pressure). Default: 256 MiB (1/8 of RAM if less), raised to hold one slab per
        level of the images written together; the flat default keeps peak memory independent
        of the stack depth.
    overwrite : bool
        Replace existing files; otherwise an existing ``.xml`` or ``.h5`` raises
        FileExistsError.
    allow_incomplete : bool
        At close, accept declared views with missing planes (zero-filled) or without data
        (listed in ``MissingViews``) with a warning instead of raising WriterStateError.
        Zero-filled planes are named in both files however the writer closes (``t…/s…``
        attribute ``zeroFilledPlanes`` and ``<generatedBy><zeroFilledPlanes>``, see
        :attr:`fastims.BdvReader.zero_filled`).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.xml")
    >>> with BdvWriter(path, nchannels=2) as w:
    ...     for c in range(2):
    ...         w.add_view(channel=c, shape=(4, 64, 64), dtype="uint16", voxel_size=(2.0, 0.5, 0.5))
    ...         for z in range(4):
    ...             w.write_plane(np.full((64, 64), 40000, np.uint16), z=z, channel=c)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        ntimepoints: int = 1,
        nilluminations: int = 1,
        nchannels: int = 1,
        ntiles: int = 1,
        nangles: int = 1,
        factors: Sequence[Sequence[int]] | None = None,
        chunks: Any = None,
        compression: str | None = None,
        compression_level: int = 6,
        shuffle: bool = False,
        dtype_mode: str = "legacy",
        partitions: str | tuple[int, int] | None = None,
        max_workers: int | None = None,
        memory_limit: int | None = None,
        overwrite: bool = False,
        allow_incomplete: bool = False,
    ) -> None:
        self.xml_path, self.h5_path = pair_paths(path)
        self.ntimepoints = _count("ntimepoints", ntimepoints)
        self.counts = {
            "illumination": _count("nilluminations", nilluminations),
            "channel": _count("nchannels", nchannels),
            "tile": _count("ntiles", ntiles),
            "angle": _count("nangles", nangles),
        }
        self.nsetups = math.prod(self.counts.values())
        if dtype_mode not in DTYPE_MODES:
            raise ValueError(f"dtype_mode must be one of {DTYPE_MODES}, got {dtype_mode!r}")
        self.dtype_mode = dtype_mode
        self.allow_incomplete = bool(allow_incomplete)
        self._partition_sizes = _partition_sizes(partitions, self.ntimepoints, self.nsetups)
        self._init_streaming(factors=factors, chunks=chunks, compression=compression,
                             compression_level=compression_level, shuffle=shuffle)
        paths = [self.xml_path, self.h5_path]
        if self._partition_sizes is not None:
            tp, sp = self._partition_sizes
            paths += [self._partition_path((ti, si)) for ti in range(-(-self.ntimepoints // tp))
                      for si in range(-(-self.nsetups // sp))]
        self._outputs = paths  # every file this writer may create (checked free, or overwrite=True)
        for p in paths:
            if p.is_dir():
                raise IsADirectoryError(f"{p} is a directory")
            if p.exists() and not overwrite:
                raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
        if not self.h5_path.parent.is_dir():
            raise FileNotFoundError(f"folder {self.h5_path.parent} does not exist")
        self._labels: dict[str, list[str]] = {k: [str(i) for i in range(n)] for k, n in self.counts.items()}
        self._metadata: dict[str, str] = {}
        self._camera: str | None = None
        self._parts: dict[tuple[int, int], Any] = {}
        self._file = None
        # BDV chunks do not depend on the stack depth (8-deep slabs of 64 MiB for 2048 x 2048
        # uint16): a quarter GiB keeps four slabs in flight, the same for every depth
        self._engine = Engine(max_workers=max_workers, memory_limit=memory_limit, memory_floor=256 << 20)
        try:
            self._engine.call(self._open_file)
            # a stale XML would describe another file; the new one is written at close
            self.xml_path.unlink(missing_ok=True)
        except BaseException:
            try:
                self._engine.call(self._close_files)
            finally:
                self._engine.close()
            raise
        # registered for the exit hook only once complete: a failed constructor leaves nothing
        self._opened()

    # -- public API --------------------------------------------------------------------

    def setup_id(self, *, illumination: int = 0, channel: int = 0, tile: int = 0, angle: int = 0) -> int:
        """Setup id of a view: its index in (illumination, channel, tile, angle) order."""
        return self._setup_id({"illumination": illumination, "channel": channel, "tile": tile, "angle": angle},
                              create=True)

    def levels(self, *, illumination: int = 0, channel: int = 0, tile: int = 0, angle: int = 0) -> list[BdvLevel]:
        """The levels (factors, shapes, chunks, sources) of a declared setup."""
        sid = self.setup_id(illumination=illumination, channel=channel, tile=tile, angle=angle)
        if sid not in self._setups:
            raise KeyError(f"setup {sid} is not declared")
        return list(self._setups[sid].levels)

    def set_attribute_labels(self, kind: str, labels: Sequence[str]) -> None:
        """Names of the illuminations, channels, tiles or angles shown by BDV/BigStitcher.

        Parameters
        ----------
        kind : {"illumination", "channel", "tile", "angle"}
        labels : sequence of str
            One name per id (``n{kind}s`` of them).
        """
        self._check_open()
        if kind not in ATTRIBUTE_KINDS:
            raise ValueError(f"kind must be one of {ATTRIBUTE_KINDS}, got {kind!r}")
        values = [str(v) for v in labels] if not isinstance(labels, str) else None
        if values is None or len(values) != self.counts[kind]:
            raise ValueError(f"{kind} labels must be a sequence of {self.counts[kind]} names, got {labels!r}")
        for value in values:
            xmlwrite.check_xml_text(f"{kind} label", value)
        self._labels[kind] = values

    def set_metadata(
        self,
        *,
        camera: str | None = None,
        microscope: str | None = None,
        microscope_version: str | None = None,
        user: str | None = None,
        **extra: str,
    ) -> None:
        """Acquisition metadata stored in the XML.

        `camera` goes to every setup's ``<camera><name>``; `microscope`,
        `microscope_version` and `user` to ``<generatedBy><microscope>`` (npy2bdv's
        layout); other keys (valid XML names) to ``<generatedBy><metadata>``, where a value of
        None removes the key. Text XML 1.0 cannot hold (control characters) raises ValueError.
        """
        self._check_open()
        given = {"microscope": microscope, "microscope_version": microscope_version, "user": user, **extra}
        values = {key: (None if value is None else str(value)) for key, value in given.items()}
        xmlwrite.check_metadata({**values, "camera": None if camera is None else str(camera)})
        if camera is not None:
            self._camera = str(camera)
        for key, value in values.items():
            if value is not None:
                self._metadata[key] = value
            elif key in extra:  # as BdvEditor.set_metadata: None removes the entry
                self._metadata.pop(key, None)

    def flush(self) -> None:
        """Store every complete slab, flush the HDF5 files and write the XML as it stands.

        Views still being written are described as present; their unwritten planes read as 0.
        """
        self._check_open()
        self._engine.wait()
        self._engine.call(self._flush_files)
        self._write_xml()

    def close(self) -> None:
        """Finish every pyramid, write the ``s{NN}`` tables and the XML, and close the files.

        Raises
        ------
        WriterStateError
            When declared views have missing planes or no data (unless
            ``allow_incomplete=True``). The dataset is still completed: missing planes read as
            zeros (and are named in the files) and views without data are listed in
            ``MissingViews``.
        """
        self._close(raising=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<BdvWriter {str(self.xml_path)!r} setups={len(self._setups)} "
                f"dtype_mode={self.dtype_mode} compression={self.compression} ({state})>")

    # -- hooks -------------------------------------------------------------------------

    def _check_time(self, time: Any) -> int:
        check_index("time", time, self.ntimepoints)
        return int(time)

    def _setup_id(self, keys: Mapping[str, int], *, create: bool) -> int:
        sid = 0
        for kind in ATTRIBUTE_KINDS:
            check_index(kind, keys[kind], self.counts[kind])
            sid = sid * self.counts[kind] + int(keys[kind])
        return sid

    def _file_for(self, time: int, setup: int) -> tuple[Any, str | None]:
        if self._partition_sizes is None:
            return self._file, None
        index = self._partition_index(time, setup)
        f = self._parts.get(index)
        if f is None:
            self._partition_path(index).unlink(missing_ok=True)
            f = self._parts[index] = create_h5(self._partition_path(index), libver=LIBVER, **ALIGNED_FILE)
        return f, self._partition_path(index).name

    # -- internals ---------------------------------------------------------------------

    def _partition_index(self, time: int, setup: int) -> tuple[int, int]:
        tp, sp = self._partition_sizes  # type: ignore[misc]
        return time // tp, setup // sp

    def _partition_path(self, index: tuple[int, int]) -> Path:
        return self.h5_path.with_name(f"{self.h5_path.stem}-{index[0]:02d}-{index[1]:02d}.h5")

    def _finish(self) -> BaseException | None:
        incomplete: dict[tuple[int, int], str] = {}
        if self._engine.error is None:
            incomplete = self._finish_streams()
        self._engine.wait()
        if self._engine.error is None:
            self._engine.call(self._record_zero_filled)
        self._engine.call(self._finalize_files)
        self._write_xml()
        return self._report_incomplete(incomplete)

    def _present(self) -> set[tuple[int, int]]:
        return {key for key, view in self._views.items() if view.stream is not None}

    def _document(self) -> Document:
        present = self._present()
        smallest = self._smallest_voxel()
        doc = Document(h5_path=self.h5_path.name, timepoints=list(range(self.ntimepoints)),
                       metadata=dict(self._metadata),
                       zero_filled={key: ranges_text(z) for key, z in self._zero_filled.items()})
        for sid, setup in sorted(self._setups.items()):
            doc.setups[sid] = SetupEntry(
                id=sid, name=setup.name, size=setup.shape, voxel_size=setup.voxel_size, unit=setup.unit,
                attributes=dict(setup.attributes), camera=self._camera, exposure_time=setup.exposure_time,
                exposure_unit=setup.exposure_unit,
            )
        doc.attribute_labels = {k: dict(enumerate(v)) for k, v in self._labels.items()}
        doc.tile_locations = {
            tile: (loc[2], loc[1], loc[0]) for tile, loc in self._tile_locations.items()
        }
        for t in range(self.ntimepoints):
            for sid in self._setups:
                if (t, sid) not in present:
                    doc.missing.add((t, sid))
        for key in present:
            doc.registrations[key] = self._registration(self._views[key], smallest)
        if self._partition_sizes is not None:
            tp, sp = self._partition_sizes
            groups: dict[tuple[int, int], tuple[set[int], set[int]]] = {}
            for t, sid in present:
                tps, sps = groups.setdefault(self._partition_index(t, sid), (set(), set()))
                tps.add(t)
                sps.add(sid)
            for index in sorted(groups):
                ti, si = index
                tps = [t for t in range(ti * tp, min((ti + 1) * tp, self.ntimepoints))]
                sps = [s for s in sorted(self._setups) if si * sp <= s < (si + 1) * sp]
                doc.partitions.append(PartitionEntry(self._partition_path(index).name, tps, sps))
        return doc

    def _write_xml(self) -> None:
        root = xmlwrite.build_spimdata(self._document())
        xmlwrite.write_xml(self.xml_path, root)

    # -- writer thread -----------------------------------------------------------------

    def _open_file(self) -> None:
        # replace rather than truncate: ext4 flushes a truncated-and-rewritten file on close
        self.h5_path.unlink(missing_ok=True)
        # compressed chunks reach the disk with direct I/O through a staging buffer (_staging)
        self._file = create_h5(self.h5_path, libver=LIBVER, **ALIGNED_FILE)
        self._raw_fd(self._file)  # also carries the writeback hints

    def _flush_files(self) -> None:
        self._file.flush()
        for f in self._parts.values():
            f.flush()

    def _finalize_files(self) -> None:
        # each partition file also describes its setups, so it opens on its own
        for (_ti, si), f in self._parts.items():
            sp = self._partition_sizes[1]  # type: ignore[index]
            for sid, setup in self._setups.items():
                if si * sp <= sid < (si + 1) * sp:
                    self._write_setup_h5(f, setup)
        self._flush_files()

    def _close_files(self) -> None:
        self._close_fds()
        for f in self._parts.values():
            close_h5(f)
        self._parts.clear()
        if self._file is not None:
            close_h5(self._file)


# ---------------------------------------------------------------------------------------
# one-shot writing
# ---------------------------------------------------------------------------------------

_VIEW_KEYS = ("time", "illumination", "channel", "tile", "angle")


def _keyword_options(fn: Callable[..., Any]) -> frozenset[str]:
    return frozenset(name for name, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY)


# write_bdv's options, split between the writer and each view (read from the signatures, so
# they cannot drift from them); shape, dtype and the view keys come from write_bdv's data
_WRITER_OPTIONS = _keyword_options(BdvWriter.__init__)
_VIEW_OPTIONS = _keyword_options(BdvWriter.add_view) - {"shape", "dtype", *_VIEW_KEYS}


def write_bdv(path: str | os.PathLike, data: Any, **options: Any) -> None:
    """Write one (Z, Y, X) array, or several views, as a BigDataViewer dataset.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.xml`` or ``.h5`` of the dataset.
    data : numpy.ndarray, mapping or sequence of pairs
        A (Z, Y, X) array (one view); or a mapping from view keys to (Z, Y, X) arrays, a key
        being a tuple ``(time, illumination, channel, tile, angle)`` (trailing entries may be
        left out, they default to 0); or a sequence of ``(key, array)`` pairs whose keys may
        also be dicts with any of those names.
    **options
        :class:`BdvWriter` options (counts default to what `data` needs) and
        :meth:`BdvWriter.add_view` options applied to every view (voxel_size, unit,
        exposure_time, ...).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> write_bdv(os.path.join(folder, "one.xml"), np.zeros((3, 32, 32), np.uint16))
    >>> views = {(0, 0, c): np.full((2, 16, 16), c, np.uint16) for c in range(3)}
    >>> write_bdv(os.path.join(folder, "three.xml"), views, voxel_size=(2, 1, 1))
    """
    if isinstance(data, Mapping):
        pairs = list(data.items())
    elif isinstance(data, (list, tuple)) and data and all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (Mapping, tuple)) for item in data
    ):
        pairs = list(data)  # (key, array) pairs: lets dicts, which cannot key a mapping, name views
    else:
        pairs = [({}, data)]
    views: dict[tuple[int, ...], np.ndarray] = {}
    for key, value in pairs:
        k = _view_key(key)
        if k in views:
            raise ValueError(f"view {dict(zip(_VIEW_KEYS, k))} is given twice")
        views[k] = np.asarray(value)
    if not views:
        raise ValueError("data holds no view")
    writer_opts = {k: v for k, v in options.items() if k in _WRITER_OPTIONS}
    view_opts = {k: v for k, v in options.items() if k not in _WRITER_OPTIONS}
    for bad in ("shape", "dtype", *_VIEW_KEYS):
        if bad in view_opts:
            raise TypeError(f"write_bdv takes {bad} from data; do not pass {bad}=")
    _check_view_options(view_opts)
    for i, kind in enumerate(_VIEW_KEYS):
        count = "ntimepoints" if kind == "time" else f"n{kind}s"
        writer_opts.setdefault(count, max(k[i] for k in views) + 1)
    for key, stack in views.items():
        if stack.ndim != 3:
            raise ValueError(f"view {dict(zip(_VIEW_KEYS, key))} must be (Z, Y, X), got shape {stack.shape}")
    w = BdvWriter(path, **writer_opts)
    try:
        for key, stack in views.items():
            w.write_view(stack, **dict(zip(_VIEW_KEYS, key)), **view_opts)
    except BaseException:
        # a failed one-shot call leaves nothing behind (a retry would meet FileExistsError)
        w.abort()
        for p in w._outputs:
            p.unlink(missing_ok=True)
        raise
    w.close()


def _check_view_options(view_opts: Mapping[str, Any]) -> None:
    """Refuse an option neither BdvWriter nor add_view takes, before any file is created
    (the TypeError would otherwise name a private method, after the .h5 was begun)."""
    unknown = sorted(set(view_opts) - _VIEW_OPTIONS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_WRITER_OPTIONS | _VIEW_OPTIONS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"write_bdv() got an unexpected keyword argument {unknown[0]!r}{hint}")


def _view_key(key: Any) -> tuple[int, ...]:
    if isinstance(key, Mapping):
        unknown = set(key) - set(_VIEW_KEYS)
        if unknown:
            raise ValueError(f"unknown view keys {sorted(unknown)}; use {_VIEW_KEYS}")
        values = [key.get(k, 0) for k in _VIEW_KEYS]
    elif isinstance(key, tuple):
        if len(key) > len(_VIEW_KEYS):
            raise ValueError(f"a view tuple is (time, illumination, channel, tile, angle), got {key!r}")
        values = list(key) + [0] * (len(_VIEW_KEYS) - len(key))
    else:
        raise TypeError(f"view keys are dicts or tuples, got {key!r}")
    for name, v in zip(_VIEW_KEYS, values):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"view key {name} must be a non-negative integer, got {v!r}")
    return tuple(int(v) for v in values)


# ---------------------------------------------------------------------------------------
# HDF5 helpers shared with the editor
# ---------------------------------------------------------------------------------------


def write_setup_tables(
    f: Any,
    setup: int,
    *,
    factors: Sequence[Sequence[int]],
    chunks: Sequence[Sequence[int]],
    data_type: str | None,
) -> None:
    """(Re)write ``s{NN}/resolutions`` (float64), ``subdivisions`` (int32) and ``dataType``.

    `factors` and `chunks` are (z, y, x) per level; the tables store them as (x, y, z) rows.
    `data_type` None writes no attribute (legacy int16 convention).
    """
    grp = f.require_group(setup_group(setup))
    for name in ("resolutions", "subdivisions"):
        if name in grp:
            del grp[name]
    grp.create_dataset("resolutions", data=np.array([tuple(reversed(v)) for v in factors], dtype="<f8"))
    grp.create_dataset("subdivisions", data=np.array([tuple(reversed(v)) for v in chunks], dtype="<i4"))
    if "dataType" in grp.attrs:
        del grp.attrs["dataType"]
    if data_type is not None:
        write_ascii_attr(grp, "dataType", data_type)


def write_zero_filled(group: Any, planes: Sequence[int]) -> None:
    """Set (or, for no planes, remove) a view group's :data:`ZERO_FILLED_ATTR` attribute."""
    if ZERO_FILLED_ATTR in group.attrs:
        del group.attrs[ZERO_FILLED_ATTR]
    if len(planes):
        write_ascii_attr(group, ZERO_FILLED_ATTR, ranges_text(sorted(int(z) for z in planes)))


def read_zero_filled(group: Any) -> list[int]:
    """The planes a view group's :data:`ZERO_FILLED_ATTR` attribute names (empty without it)."""
    if ZERO_FILLED_ATTR not in group.attrs:
        return []
    value = group.attrs[ZERO_FILLED_ATTR]
    text = value.decode("ascii") if isinstance(value, bytes) else str(value)
    return parse_integer_pattern(text) if text.strip() else []


def write_ascii_attr(obj: Any, name: str, text: str) -> None:
    """A scalar fixed-length, null-padded ASCII string attribute (how BDV's writer stores it)."""
    from h5py import h5a, h5s, h5t

    raw = text.encode("ascii")
    tid = h5t.C_S1.copy()
    tid.set_size(max(1, len(raw)))
    tid.set_strpad(h5t.STR_NULLPAD)
    tid.set_cset(h5t.CSET_ASCII)
    aid = h5a.create(obj.id, name.encode("ascii"), tid, h5s.create(h5s.SCALAR))
    aid.write(np.array(raw, dtype=f"S{max(1, len(raw))}"), mtype=tid)


# ---------------------------------------------------------------------------------------
# merging independently written partitions
# ---------------------------------------------------------------------------------------


def merge_partitions(
    path: str | os.PathLike,
    parts: Iterable[str | os.PathLike],
    *,
    overwrite: bool = False,
) -> Path:
    """Link datasets written independently (e.g. one :class:`BdvWriter` per process) into one.

    Each part is a complete fastims/BDV dataset (``.xml`` + ``.h5``) whose setup ids and time
    points are the global ones (give every process the same counts and let it write its own
    views). The result is a master ``.h5`` holding the ``s{NN}`` tables and one HDF5 external
    link per view and level into the part holding the view, and an XML listing every part as a
    ``<partition>`` — BigDataViewer's partitioned layout. The parts stay where they are and
    must stay beside the master.

    Parameters
    ----------
    path : str or os.PathLike
        Master ``.xml`` or ``.h5`` (the other beside it).
    parts : iterable of path-like
        The parts' ``.xml`` (or ``.h5``) files, in the master's folder or below it.
    overwrite : bool
        Replace an existing master.

    Returns
    -------
    pathlib.Path
        The master XML.

    Raises
    ------
    ValueError
        If two parts hold the same view or describe a setup differently.
    """
    import h5py

    from fastims.bdv.spimdata import parse_spimdata

    xml_path, h5_path = pair_paths(path)
    for p in (xml_path, h5_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass overwrite=True to replace it")
    folder = h5_path.resolve().parent
    doc = Document(h5_path=h5_path.name, timepoints=[])
    owner: dict[tuple[int, int], Path] = {}
    tables: dict[int, tuple[Path, str]] = {}
    timepoints: set[int] = set()
    cells: list[tuple[Path, str]] = []
    zero_filled: dict[tuple[int, int], list[int]] = {}
    part_list = [pair_paths(p) for p in parts]
    if not part_list:
        raise ValueError("parts is empty")
    for part_xml, _ in part_list:
        sd = parse_spimdata(part_xml)
        part_h5 = sd.image_loader.hdf5
        if sd.image_loader.format != "bdv.hdf5" or part_h5 is None:
            raise FormatError(f"{part_xml} is not a bdv.hdf5 dataset")
        try:
            rel = part_h5.resolve().relative_to(folder).as_posix()
        except ValueError:
            raise ValueError(f"part {part_h5} must be in the master's folder {folder} or below it") from None
        timepoints.update(sd.timepoints)
        extra = _setup_extras(part_xml)
        present_setups: set[int] = set()
        present_tps: set[int] = set()
        with h5py.File(part_h5, "r") as pf:
            for sid, vs in sd.setups.items():
                entry = SetupEntry(
                    id=sid, name=vs.name or f"setup {sid}", size=vs.size or (1, 1, 1),  # type: ignore[arg-type]
                    voxel_size=vs.voxel_size or (1.0, 1.0, 1.0), unit=vs.unit or "pixel",  # type: ignore[arg-type]
                    attributes=dict(vs.attributes), **extra.get(sid, {}),
                )
                known = doc.setups.get(sid)
                if known is not None and (known.size, known.voxel_size, known.unit, known.attributes) != (
                    entry.size, entry.voxel_size, entry.unit, entry.attributes
                ):
                    raise ValueError(f"setup {sid} is described differently in {part_xml} and another part")
                doc.setups.setdefault(sid, entry)
                nlevels = len(pf[f"{setup_group(sid)}/resolutions"]) if f"{setup_group(sid)}/resolutions" in pf else 0
                for t in sd.timepoints:
                    if (t, sid) in sd.missing_views or f"t{t:05d}/s{sid:02d}/0/cells" not in pf:
                        continue
                    if (t, sid) in owner:
                        raise ValueError(f"view time={t} setup={sid} is in {owner[(t, sid)]} and {part_xml}")
                    owner[(t, sid)] = part_xml
                    present_setups.add(sid)
                    present_tps.add(t)
                    tables.setdefault(sid, (part_h5, rel))
                    for li in range(nlevels):
                        cells.append((Path(rel), cells_path(t, sid, li)))
                    planes = read_zero_filled(pf[view_group(t, sid)])
                    if planes:  # the master names them too (its XML and its view group)
                        zero_filled[(t, sid)] = planes
                    if (t, sid) in sd.registrations:
                        doc.registrations[(t, sid)] = [
                            (tr.name or "affine", tr.affine) for tr in sd.registrations[(t, sid)]
                            if tr.affine is not None
                        ]
        for kind, values in sd.attribute_values.items():
            labels = doc.attribute_labels.setdefault(kind, {})
            for eid, value in values.items():
                labels.setdefault(eid, value.name or str(eid))
                if kind == "tile" and "location" in value.extra:
                    doc.tile_locations.setdefault(eid, tuple(float(v) for v in value.extra["location"].split()))  # type: ignore[arg-type]
        if present_setups:
            doc.partitions.append(PartitionEntry(rel, sorted(present_tps), sorted(present_setups)))
        meta = _generated_by(part_xml)
        for key, value in meta.items():
            doc.metadata.setdefault(key, value)
    doc.timepoints = sorted(timepoints) or [0]
    doc.missing = {(t, s) for t in doc.timepoints for s in doc.setups if (t, s) not in owner}
    doc.zero_filled = {key: ranges_text(planes) for key, planes in zero_filled.items()}
    with h5py.File(h5_path, "w", libver=LIBVER) as mf:
        for sid, (part_h5, _rel) in sorted(tables.items()):
            with h5py.File(part_h5, "r") as pf:
                src = pf[setup_group(sid)]
                grp = mf.require_group(setup_group(sid))
                for name in ("resolutions", "subdivisions"):
                    grp.create_dataset(name, data=src[name][()])
                if "dataType" in src.attrs:
                    value = src.attrs["dataType"]
                    write_ascii_attr(grp, "dataType", value.decode() if isinstance(value, bytes) else str(value))
        for rel, cpath in cells:
            grp = mf.require_group(cpath.rsplit("/", 1)[0])
            grp["cells"] = h5py.ExternalLink(rel.as_posix(), "/" + cpath)
        for (t, sid), planes in zero_filled.items():
            write_zero_filled(mf[view_group(t, sid)], planes)
    xmlwrite.write_xml(xml_path, xmlwrite.build_spimdata(doc))
    return xml_path


def _setup_extras(xml_path: Path) -> dict[int, dict[str, Any]]:
    """Camera name and exposure of each setup (``<camera>``, which spimdata does not model)."""
    root = xmlwrite.ET.parse(xml_path).getroot()
    out: dict[int, dict[str, Any]] = {}
    for vs in root.iter("ViewSetup"):
        cam = vs.find("camera")
        sid_text = vs.findtext("id")
        if cam is None or sid_text is None:
            continue
        exposure = cam.findtext("exposureTime")
        out[int(sid_text.strip())] = {
            "camera": (cam.findtext("name") or "").strip() or None,
            "exposure_time": float(exposure) if exposure and exposure.strip() else None,
            "exposure_unit": (cam.findtext("exposureUnits") or "s").strip(),
        }
    return out


def _generated_by(xml_path: Path) -> dict[str, str]:
    return xmlwrite.generated_by(xmlwrite.ET.parse(xml_path).getroot())


# ---------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------


def _count(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _affine3x4(matrix: Any) -> np.ndarray:
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"an affine must be numeric, got {matrix!r}") from None
    if m.shape == (12,):
        m = m.reshape(3, 4)
    elif m.shape == (4, 4):
        if not np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError(f"a 4x4 affine must end with the row (0, 0, 0, 1), got {m[3]}")
        m = m[:3]
    if m.shape != (3, 4):
        raise ValueError(f"an affine is 3x4, 4x4 or 12 row-packed numbers, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the affine has non-finite values")
    return m.copy()


def _check_same_setup(setup: _Setup, dims: tuple[int, int, int], dt: np.dtype, vox: tuple[float, ...], unit: str) -> None:
    if (setup.shape, setup.dtype, setup.voxel_size, setup.unit) != (dims, dt, vox, unit):
        raise ValueError(
            f"setup {setup.id} is {setup.shape} {setup.dtype} voxel {setup.voxel_size} {setup.unit} at other "
            f"time points, got {dims} {dt} voxel {vox} {unit} (a setup has one shape, dtype and voxel size)"
        )


def _keys_text(keys: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in keys.items())


def _partition_sizes(partitions: Any, ntimepoints: int, nsetups: int) -> tuple[int, int] | None:
    if partitions is None:
        return None
    if partitions == "timepoint":
        return 1, nsetups
    if partitions == "setup":
        return ntimepoints, 1
    if isinstance(partitions, tuple) and len(partitions) == 2:
        tp, sp = partitions
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in (tp, sp)):
            return int(tp), int(sp)
    raise ValueError(
        f"partitions must be None, 'timepoint', 'setup' or (timepoints per file, setups per file), got {partitions!r}"
    )

