"""Format-independent reader surface shared by :class:`~fastims.ImsReader` and
:class:`~fastims.BdvReader`, and :func:`fastims.open`.

Every reader presents its file as a 5-D ``(T, C, Z, Y, X)`` image per resolution level.
Format classes implement three hooks:

* :meth:`BaseReader._load` — open the file(s) and return a :class:`ImageLayout`
  (sizes, dtype, levels, physical metadata);
* :meth:`BaseReader._dataset` — the HDF5 dataset holding one ``(level, t, c)`` volume
  and the dtype to hand HDF5 when reading it;
* optionally :meth:`BaseReader._axis_origin` for physical coordinates.

Everything else — NumPy-style slicing that reads only the requested hyperslab, ``out=``
reads, dask/xarray views, ``get_image_data``, pickling and handle bookkeeping — lives
here.  HDF5 links (soft and external) are followed by :meth:`BaseReader._resolve`, which
refuses to leave the dataset's folder unless ``allow_external_paths=True``.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
import copy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastims.errors import FormatError, UnsupportedFormatError

if TYPE_CHECKING:  # pragma: no cover
    import h5py

__all__ = ["BaseReader", "ImageLayout", "LevelInfo", "LevelView", "open"]

logger = logging.getLogger("fastims")

DIMS = "TCZYX"

# how deep soft/external link chains may nest before the file is called malformed
_MAX_LINK_DEPTH = 16

_hdf5plugin_loaded = False


def _load_hdf5plugin() -> None:
    """Register hdf5plugin's filters (LZ4 32004 ...) once; imported lazily for import speed."""
    global _hdf5plugin_loaded
    if _hdf5plugin_loaded:
        return
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:  # pragma: no cover - hdf5plugin is a dependency
        logger.debug("hdf5plugin is not installed; LZ4/Blosc datasets will not be readable")
    _hdf5plugin_loaded = True


@dataclass(frozen=True)
class LevelInfo:
    """Geometry of one resolution level.

    Attributes
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` logical size (Imaris padding excluded).
    chunks : tuple of int or None
        ``(Z, Y, X)`` HDF5 chunk shape of the level's datasets (``None`` = contiguous).
        May exceed ``shape`` (BDV) or not divide it.
    voxel_size : tuple of float
        ``(Z, Y, X)`` physical voxel size at this level.
    """

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int] | None
    voxel_size: tuple[float, float, float]


@dataclass
class ImageLayout:
    """What a format class reports about its file (see :meth:`BaseReader._load`).

    ``levels`` is ``None`` when the file's pixel data cannot be read by fastims (an
    unsupported BDV loader); ``data_error`` is then raised on every data access and
    ``shape0`` may still give the level-0 ``(Z, Y, X)`` size from metadata.
    """

    ntime: int
    nchannels: int
    dtype: np.dtype | None
    levels: list[LevelInfo] | None
    voxel_size: tuple[float, float, float]
    unit: str | None
    channel_names: list[str]
    channel_colors: list[tuple[float, float, float] | None] | None
    timepoints: list[datetime | None]
    metadata: dict[str, Any]
    data_error: Exception | None = None
    shape0: tuple[int, int, int] | None = None

    def no_data(self) -> Exception:
        """A fresh copy of the error explaining why there is no pixel data."""
        err = self.data_error
        if err is None:
            return UnsupportedFormatError("the file has no pixel data fastims can read")
        return type(err)(*err.args)


#: the advice in a refusal of a path outside the dataset folder; functions that take the
#: option themselves (convert, link_ims, link_bdv) reword it with :func:`external_path_advice`
EXTERNAL_PATH_ADVICE = "open with allow_external_paths=True"


def external_path_advice(text: str, func: str) -> str:
    """`text` with the readers' advice replaced by passing the option to `func`."""
    return text.replace(EXTERNAL_PATH_ADVICE, f"pass allow_external_paths=True to {func}()")


class _H5Mixin:
    """HDF5 file opening and link following with the dataset-folder policy.

    Mixed into :class:`BaseReader` (kept apart so the slicing code stays readable).
    """

    _path: Path
    _root_dir: Path
    _allow_external: bool
    _chunk_cache_bytes: int | None
    _files: dict[str, Any]
    _lock: threading.RLock

    def _check_inside(self, target: str | os.PathLike[str], *, what: str) -> Path:
        """Normalise ``target`` and refuse it if it leaves the dataset folder."""
        norm = Path(os.path.normpath(os.path.abspath(os.fspath(target))))
        if not self._allow_external:
            root = os.path.normpath(str(self._root_dir))
            if os.path.commonpath([root, str(norm)]) != root:
                raise FormatError(
                    f"{self._path.name}: {what} {os.fspath(target)!r} points outside the "
                    f"dataset folder {root}; {EXTERNAL_PATH_ADVICE} to follow it"
                )
        return norm

    def _open_h5(self, path: str | os.PathLike[str], *, what: str = "file") -> Any:
        """Open (once) an HDF5 file read-only; readable errors for missing/bad files."""
        import h5py

        key = os.path.normpath(os.path.abspath(os.fspath(path)))
        with self._lock:
            f = self._files.get(key)
            if f is not None:
                return f
            if not os.path.exists(key):
                raise FileNotFoundError(errno.ENOENT, f"{what} not found", key)
            if os.path.isdir(key):
                raise FormatError(f"{key} is a directory, not an HDF5 {what}")
            kwargs: dict[str, Any] = {}
            if self._chunk_cache_bytes is not None:
                kwargs["rdcc_nbytes"] = self._chunk_cache_bytes
            try:
                f = h5py.File(key, "r", **kwargs)
            except OSError as exc:
                text = str(exc)
                if "signature" in text:
                    msg = "is not an HDF5 file"
                elif "truncated" in text or "eof" in text.lower():
                    msg = "is a truncated HDF5 file"
                else:
                    msg = "could not be opened as HDF5"
                raise FormatError(f"{key} {msg} ({text})") from exc
            self._files[key] = f
            return f

    def _resolve(self, start: Any, path: str, *, _depth: int = 0) -> Any:
        """Follow ``path`` from group ``start`` link by link; ``None`` if absent.

        Soft links resolve inside their file, external links are opened by this reader
        (relative to the file holding the link) after the dataset-folder check, so no
        HDF5 search path or working directory can redirect them.
        """
        import h5py

        if _depth > _MAX_LINK_DEPTH:
            raise FormatError(
                f"{self._path.name}: link chain deeper than {_MAX_LINK_DEPTH} at {path!r}"
            )
        obj = start.file["/"] if path.startswith("/") else start
        for name in (p for p in path.split("/") if p and p != "."):
            if not isinstance(obj, h5py.Group):
                return None
            try:
                link = obj.get(name, getlink=True)
            except (KeyError, OSError):
                return None
            if link is None:
                return None
            if isinstance(link, h5py.ExternalLink):
                holder = Path(os.path.abspath(obj.file.filename)).parent
                target = self._check_inside(
                    holder / link.filename, what=f"external link {obj.name.rstrip('/')}/{name} ->"
                )
                if not target.exists():
                    raise FileNotFoundError(
                        errno.ENOENT,
                        f"{self._path.name}: file of external link "
                        f"{obj.name.rstrip('/')}/{name} not found",
                        str(target),
                    )
                ext = self._open_h5(target, what="linked file")
                obj = self._resolve(ext["/"], link.path, _depth=_depth + 1)
            elif isinstance(link, h5py.SoftLink):
                target_path = link.path
                if not target_path.startswith("/"):
                    target_path = obj.name.rstrip("/") + "/" + target_path
                obj = self._resolve(obj.file["/"], target_path, _depth=_depth + 1)
            else:
                try:
                    obj = obj[name]
                except (KeyError, OSError):
                    return None
            if obj is None:
                return None
        return obj


class BaseReader(_H5Mixin, ABC):
    """Shared surface of the fastims readers; use :func:`fastims.open` or a subclass.

    Parameters
    ----------
    path : path-like
        File to open.
    allow_external_paths : bool, optional
        Follow HDF5 external links and XML paths that point outside the folder of
        ``path`` (default ``False``: such paths raise :class:`~fastims.FormatError`).
    chunk_cache_bytes : int, optional
        HDF5 raw-data chunk cache per open dataset (h5py ``rdcc_nbytes``); the HDF5
        default (1 MiB) when omitted.  Raise it when reading plane by plane from deep
        compressed chunks.
    """

    dims: str = DIMS
    #: datasets may be larger than their level (Imaris pads to whole chunks); else a larger
    #: dataset is an inconsistent file, not a source of silently cropped data
    _padded: bool = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allow_external_paths: bool = False,
        chunk_cache_bytes: int | None = None,
    ) -> None:
        if not isinstance(allow_external_paths, bool):
            raise TypeError("allow_external_paths must be a bool")
        if chunk_cache_bytes is not None:
            chunk_cache_bytes = operator.index(chunk_cache_bytes)
            if chunk_cache_bytes < 0:
                raise ValueError("chunk_cache_bytes must be >= 0")
        self._path = Path(os.path.abspath(os.fspath(path)))
        self._root_dir = self._path.parent
        self._allow_external = allow_external_paths
        self._chunk_cache_bytes = chunk_cache_bytes
        self._files: dict[str, h5py.File] = {}
        self._datasets: dict[tuple[int, int, int], tuple[Any, np.dtype]] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._layout: ImageLayout | None = None
        if not self._path.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file", str(self._path))
        _load_hdf5plugin()
        try:
            self._layout = self._load()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ hooks

    @abstractmethod
    def _load(self) -> ImageLayout:
        """Open the file(s), parse the metadata and describe the image."""

    @abstractmethod
    def _dataset(self, level: int, t: int, c: int) -> tuple[Any, np.dtype]:
        """Return ``(h5py.Dataset, read_dtype)`` for one volume.

        ``read_dtype`` has the itemsize of the logical dtype; it differs from it only
        when the stored bits must be reinterpreted (BDV legacy int16 -> uint16).
        Indices are already validated.  Raise ``KeyError`` for an absent volume.
        """

    def _level_shape(self, level: int, c: int) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of channel ``c`` at ``level`` (BDV setups may differ)."""
        return self._levels()[level].shape

    def _channel_dtype(self, c: int) -> np.dtype:
        """Logical dtype of channel ``c`` (BDV setups may differ)."""
        return self.dtype

    def _axis_origin(self, level: int) -> tuple[float, float, float]:
        """Physical ``(z, y, x)`` coordinate of the centre of voxel 0 at ``level``."""
        return (0.0, 0.0, 0.0)

    def _reopen_kwargs(self) -> dict[str, Any]:
        """Constructor keywords that recreate this reader (for pickling)."""
        return {
            "allow_external_paths": self._allow_external,
            "chunk_cache_bytes": self._chunk_cache_bytes,
        }

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close every HDF5 file this reader opened (idempotent)."""
        with self._lock:
            self._datasets.clear()
            files, self._files = self._files, {}
            self._closed = True
        for f in files.values():
            try:
                f.close()
            except Exception:  # pragma: no cover - closing must not mask errors
                logger.debug("error closing %s", f, exc_info=True)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> BaseReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # file handles do not pickle; the copy reopens the file by path
        return {"path": str(self._path), "kwargs": self._reopen_kwargs()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["path"], **state["kwargs"])  # type: ignore[misc]

    def __repr__(self) -> str:
        if self._closed or self._layout is None:
            return f"<{type(self).__name__} {self._path.name!r} (closed)>"
        try:
            desc = f"shape={self.shape} dtype={self.dtype} levels={self.levels}"
        except Exception as exc:  # e.g. unsupported loader: say why
            desc = f"({type(exc).__name__}: {exc})"
        return f"<{type(self).__name__} {self._path.name!r} {desc}>"

    # ------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """The opened file."""
        return self._path

    def _info(self) -> ImageLayout:
        if self._closed or self._layout is None:
            raise ValueError(f"I/O operation on a closed reader ({self._path.name})")
        return self._layout

    def _levels(self) -> list[LevelInfo]:
        info = self._info()
        if info.levels is None:
            raise info.no_data()
        return info.levels

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(T, C, Z, Y, X)`` at level 0."""
        info = self._info()
        if info.levels is None:
            if info.shape0 is None:
                raise info.no_data()
            return (info.ntime, info.nchannels, *info.shape0)
        return (info.ntime, info.nchannels, *info.levels[0].shape)

    @property
    def ndim(self) -> int:
        """Always 5 (``TCZYX``)."""
        return 5

    @property
    def dtype(self) -> np.dtype:
        """Logical voxel type (native byte order; ``uint16`` for BDV legacy int16)."""
        info = self._info()
        if info.dtype is None:
            raise info.no_data()
        return info.dtype

    @property
    def levels(self) -> int:
        """Number of resolution levels."""
        return len(self._levels())

    @property
    def level_shapes(self) -> list[tuple[int, int, int, int, int]]:
        """``(T, C, Z, Y, X)`` of every level, level 0 first."""
        info = self._info()
        return [(info.ntime, info.nchannels, *lv.shape) for lv in self._levels()]

    @property
    def chunks(self) -> list[tuple[int, int, int] | None]:
        """``(Z, Y, X)`` HDF5 chunk shape of every level (``None`` if contiguous)."""
        return [lv.chunks for lv in self._levels()]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """``(Z, Y, X)`` physical voxel size at level 0, in :attr:`unit`."""
        return self._info().voxel_size

    @property
    def unit(self) -> str | None:
        """Physical unit of :attr:`voxel_size` (``None`` when the file gives none)."""
        return self._info().unit

    @property
    def channel_names(self) -> list[str]:
        """One name per channel (C index)."""
        return list(self._info().channel_names)

    @property
    def channel_colors(self) -> list[tuple[float, float, float] | None] | None:
        """``(r, g, b)`` in 0..1 per channel, or ``None`` when the format has none."""
        colors = self._info().channel_colors
        return None if colors is None else list(colors)

    @property
    def timepoints(self) -> list[datetime | None]:
        """Acquisition time of every time point (``None`` where the file has none)."""
        return list(self._info().timepoints)

    @property
    def scenes(self) -> list[str]:
        """Names of the images in the file; one (the file's stem) unless overridden."""
        self._info()
        return [self._path.stem]

    @property
    def scene(self) -> int:
        """Index of the current scene."""
        return 0

    def set_scene(self, scene: int | str) -> None:
        """Select a scene by index or name (a file with one scene accepts only that one).

        Raises
        ------
        IndexError, KeyError
            If the scene does not exist.
        """
        if isinstance(scene, str):
            if scene not in self.scenes:
                raise KeyError(f"scene {scene!r} not in {self.scenes}")
            return
        self._check_index("scene", scene, len(self.scenes))

    @property
    def metadata(self) -> dict[str, Any]:
        """The file's own metadata as nested dicts (strings decoded); a copy."""
        return copy.deepcopy(self._info().metadata)

    # ------------------------------------------------------------ validation

    def _check_index(self, name: str, value: Any, size: int) -> int:
        """`value` as an index in ``0 .. size-1``; negative ones count from the end (Python)."""
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int, not bool")
        try:
            i = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
        if not -size <= i < size:
            raise IndexError(
                f"{name}={i} is out of range: valid {name} are 0..{size - 1} "
                f"(or -{size}..-1 from the end)"
            )
        return i + size if i < 0 else i

    def _check_level(self, level: Any) -> int:
        n = self.levels
        if isinstance(level, (bool, np.bool_)):
            raise TypeError("level must be an int, not bool")
        try:
            i = operator.index(level)
        except TypeError:
            raise TypeError(f"level must be an int, not {type(level).__name__}") from None
        if not 0 <= i < n:
            raise IndexError(
                f"level {i} does not exist: {self._path.name} has {n} level"
                f"{'s' if n != 1 else ''} (0..{n - 1})"
            )
        return i

    # ------------------------------------------------------------ data access

    def asarray(
        self,
        *,
        level: int = 0,
        t: int = 0,
        c: int = 0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Read one whole ``(Z, Y, X)`` volume.

        Parameters
        ----------
        level, t, c : int, optional
            Resolution level, time point and channel indices (`t` and `c` may be negative,
            counting from the end).
        out : numpy.ndarray, optional
            C-contiguous, writable array of the volume's shape and :attr:`dtype` to
            read into (no allocation, no copy).

        Returns
        -------
        numpy.ndarray
            ``out`` if given, else a new array.

        Raises
        ------
        IndexError
            If ``level``, ``t`` or ``c`` is out of range.
        KeyError
            If the file has no data for that volume (e.g. a BDV missing view).
        """
        level = self._check_level(level)
        info = self._info()
        t = self._check_index("t", t, info.ntime)
        c = self._check_index("c", c, info.nchannels)
        return self._read_volume(level, t, c, out)

    def _read_volume(self, level: int, t: int, c: int, out: np.ndarray | None) -> np.ndarray:
        shape = self._level_shape(level, c)
        dtype = self._channel_dtype(c)
        if out is None:
            out = np.empty(shape, dtype=dtype)
        else:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy.ndarray, not {type(out).__name__}")
            if out.shape != shape:
                raise ValueError(f"out has shape {out.shape}, expected {shape}")
            if out.dtype != dtype:
                raise ValueError(f"out has dtype {out.dtype}, expected {dtype}")
            if not (out.flags.c_contiguous and out.flags.writeable):
                raise ValueError("out must be C-contiguous and writable")
        if out.size:
            self._read_into(level, t, c, tuple(slice(0, n) for n in shape), out, None)
        return out

    def _read_into(
        self,
        level: int,
        t: int,
        c: int,
        source_sel: tuple[slice, ...],
        out: np.ndarray,
        dest_sel: tuple[Any, ...] | None,
    ) -> None:
        """Read a ``(Z, Y, X)`` hyperslab of one volume straight into ``out[dest_sel]``."""
        ds, read_dtype = self._get_dataset(level, t, c)
        shape = self._level_shape(level, c)
        if len(ds.shape) != 3 or any(d < n if self._padded else d != n for d, n in zip(ds.shape, shape)):
            raise FormatError(
                f"{self._path.name}: dataset {ds.name} has shape {ds.shape}, "
                f"{'smaller than' if self._padded else 'unlike'} the level's (Z, Y, X) size {shape}"
            )
        if out.dtype.itemsize == read_dtype.itemsize:
            dest = out if out.dtype == read_dtype else out.view(read_dtype)
            self._h5read(ds, dest, source_sel, dest_sel, level, t, c)
            return
        # channels of different types read through a temporary of their own type
        tmp_shape = tuple(len(range(*s.indices(n))) for s, n in zip(source_sel, shape))
        tmp = np.empty(tmp_shape, dtype=read_dtype)
        self._h5read(ds, tmp, source_sel, None, level, t, c)
        if dest_sel is None:
            out[...] = tmp.view(self._channel_dtype(c))
        else:
            out[dest_sel] = tmp.view(self._channel_dtype(c))

    def _h5read(
        self,
        ds: Any,
        dest: np.ndarray,
        source_sel: tuple[slice, ...],
        dest_sel: tuple[Any, ...] | None,
        level: int,
        t: int,
        c: int,
    ) -> None:
        try:
            ds.read_direct(dest, source_sel, dest_sel)
        except OSError as exc:
            raise self._read_error(ds, exc, level, t, c) from exc

    def _read_error(self, ds: Any, exc: OSError, level: int, t: int, c: int) -> Exception:
        where = f"{self._path.name}: dataset {ds.name} (level {level}, t {t}, c {c})"
        missing = _unavailable_filters(ds)
        if missing:
            return UnsupportedFormatError(
                f"{where} needs HDF5 filter(s) {missing} that are not available ({exc}); "
                "install hdf5plugin or the matching HDF5 filter plugin"
            )
        return FormatError(f"{where} could not be read, the file is corrupted or truncated ({exc})")

    def _get_dataset(self, level: int, t: int, c: int) -> tuple[Any, np.dtype]:
        key = (level, t, c)
        with self._lock:
            if self._closed:
                raise ValueError(f"I/O operation on a closed reader ({self._path.name})")
            hit = self._datasets.get(key)
            if hit is None:
                hit = self._dataset(level, t, c)
                self._datasets[key] = hit
            return hit

    # ------------------------------------------------------------ slicing

    def __getitem__(self, key: Any) -> np.ndarray:
        """NumPy-style read at level 0 over ``(T, C, Z, Y, X)``.

        See :meth:`LevelView.__getitem__`.
        """
        return self._getitem(0, key)

    def level(self, i: int) -> LevelView:
        """A sliceable view of resolution level ``i`` (same surface as the reader)."""
        return LevelView(self, self._check_level(i))

    def _getitem(self, level: int, key: Any) -> np.ndarray:
        info = self._info()
        zyx = self._levels()[level].shape
        shape = (info.ntime, info.nchannels, *zyx)
        tsel, csel, spatial, drop, flips = _normalize_key(key, shape)
        counts = [len(range(*s.indices(n))) for s, n in zip(spatial, zyx)]
        # setups of different types (BDV) share the smallest type holding them all
        dtype = np.result_type(*{self._channel_dtype(c) for c in csel}) if csel else self.dtype
        out = np.empty((len(tsel), len(csel), *counts), dtype=dtype)
        if out.size:
            for c in csel:
                if self._level_shape(level, c) != zyx:
                    raise ValueError(
                        f"channel {c} has shape {self._level_shape(level, c)} at level {level}, "
                        f"unlike the level's {zyx}; read it alone with asarray(c={c})"
                    )
            for i, t in enumerate(tsel):
                for j, c in enumerate(csel):
                    self._read_into(level, t, c, spatial, out, (i, j))
        if any(flips):
            out = out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        if any(drop):
            out = out[tuple(0 if d else slice(None) for d in drop)]
        return out

    # ------------------------------------------------------------ dask / xarray / bioio

    def to_dask(self, level: int = 0) -> Any:
        """A lazy ``dask.array`` of one level, ``(T, C, Z, Y, X)``, chunked like the file.

        Each dask chunk is one HDF5 chunk (clipped to the level) of one ``(t, c)``
        volume.  The graph holds the reader, which pickles by path, so it works with
        distributed schedulers.

        Raises
        ------
        ImportError
            If dask is not installed (``pip install "dask[array]"``).
        """
        try:
            import dask.array as da
        except ImportError:
            raise ImportError(
                "to_dask() needs dask, which is an optional dependency: "
                "pip install 'dask[array]' (or fastims[dask])"
            ) from None
        view = self.level(level)
        shape = view.shape
        zyx = shape[2:]
        file_chunks = self._levels()[view.index].chunks
        if file_chunks is None:
            # contiguous data: whole planes, about 64 MiB per dask chunk
            plane = max(1, zyx[1] * zyx[2] * view.dtype.itemsize)
            file_chunks = (max(1, (64 << 20) // plane), zyx[1], zyx[2])
        chunks = (1, 1, *(max(1, min(c, n)) for c, n in zip(file_chunks, zyx)))
        return da.from_array(
            view,
            chunks=chunks,
            name=f"fastims-{_token(view)}",
            asarray=False,
            fancy=False,
            lock=False,
            meta=np.empty((0,) * 5, dtype=view.dtype),
        )

    def to_xarray(self, level: int = 0) -> Any:
        """An ``xarray.DataArray`` of one level with dims ``T, C, Z, Y, X``.

        Z/Y/X coordinates are physical voxel-centre positions in :attr:`unit`, C
        coordinates are the channel names.  The data is a dask array when dask is
        installed, otherwise the level is read into memory.

        Raises
        ------
        ImportError
            If xarray is not installed.
        """
        try:
            import xarray as xr
        except ImportError:
            raise ImportError(
                "to_xarray() needs xarray, which is an optional dependency: "
                "pip install xarray (or fastims[xarray])"
            ) from None
        level = self._check_level(level)
        try:
            data: Any = self.to_dask(level)
        except ImportError:
            data = self._getitem(level, ())
        lv = self._levels()[level]
        origin = self._axis_origin(level)
        coords: dict[str, Any] = {
            "T": np.arange(self._info().ntime),
            "C": list(self.channel_names),
        }
        for axis, n, step, start in zip("ZYX", lv.shape, lv.voxel_size, origin):
            coords[axis] = start + step * np.arange(n, dtype=np.float64)
        return xr.DataArray(
            data,
            dims=list(DIMS),
            coords=coords,
            attrs={"unit": self.unit, "voxel_size": lv.voxel_size, "level": level},
            name=self._path.stem,
        )

    def get_image_data(
        self, dimension_order_out: str | None = None, *, level: int = 0, **selection: Any
    ) -> np.ndarray:
        """Read data in any dimension order, as AICSImageIO / bioio do.

        Parameters
        ----------
        dimension_order_out : str, optional
            Letters of ``"TCZYX"`` in the wanted order, e.g. ``"CZYX"`` or ``"YX"``
            (default: all five, ``"TCZYX"``).
        level : int, optional
            Resolution level.
        **selection
            ``T=``, ``C=``, ``Z=``, ``Y=``, ``X=``.  Dimensions absent from the
            output need an int (default 0).  Dimensions in the output take an int
            (kept with length 1), a slice, a range or a list of ints.

        Returns
        -------
        numpy.ndarray

        Examples
        --------
        ``reader.get_image_data("CZYX", T=0)`` returns every channel of the first
        time point; ``reader.get_image_data("ZYX", C=1)`` one volume.
        """
        order = DIMS if dimension_order_out is None else str(dimension_order_out).upper()
        if len(set(order)) != len(order) or not set(order) <= set(DIMS):
            raise ValueError(
                f"dimension_order_out {dimension_order_out!r} must use each of the letters "
                f"{DIMS!r} at most once"
            )
        unknown = set(selection) - set(DIMS)
        if unknown:
            raise TypeError(
                f"unexpected selection keyword(s) {sorted(unknown)}; use {', '.join(DIMS)}"
            )
        level = self._check_level(level)
        sizes = self.level_shapes[level]
        key: list[Any] = []
        picks: dict[int, np.ndarray] = {}  # output axis -> indices to take after reading
        for d, n in zip(DIMS, sizes):
            v = selection.get(d, 0 if d not in order else slice(None))
            is_int = _is_int(v) and not isinstance(v, (bool, np.bool_))
            if d not in order:
                if not is_int:
                    raise ValueError(
                        f"dimension {d} is not in the output order {order!r}, so it must be "
                        f"selected with a single int, got {v!r}"
                    )
                key.append(operator.index(v))
            elif is_int:
                i = _wrap(operator.index(v), n, d)
                key.append(slice(i, i + 1))
            elif isinstance(v, slice):
                key.append(v)
            elif d in "TC":
                key.append(list(v))
            else:
                # Z/Y/X lists: read the bounding range, then pick from it
                idx = np.array([_wrap(int(i), n, d) for i in v], dtype=np.intp)
                if idx.size == 0:
                    key.append(slice(0, 0))
                else:
                    lo = int(idx.min())
                    key.append(slice(lo, int(idx.max()) + 1))
                    picks[len([k for k in key[:-1] if not _is_int(k)])] = idx - lo
        data = self._getitem(level, tuple(key))
        for axis, idx in picks.items():
            data = np.take(data, idx, axis=axis)
        kept = [d for d in DIMS if d in order]
        return np.transpose(data, [kept.index(d) for d in order])


class LevelView:
    """One resolution level of a reader, sliceable like a 5-D ``(T, C, Z, Y, X)`` array.

    Obtained with ``reader.level(i)``.  Reads go through the reader (which must stay
    open); the view itself holds no file handle.
    """

    def __init__(self, reader: BaseReader, index: int) -> None:
        self._reader = reader
        self._index = index

    @property
    def index(self) -> int:
        """The level number."""
        return self._index

    @property
    def reader(self) -> BaseReader:
        """The reader this view reads through."""
        return self._reader

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(T, C, Z, Y, X)`` of this level."""
        return self._reader.level_shapes[self._index]

    @property
    def dtype(self) -> np.dtype:
        """Logical voxel type."""
        return self._reader.dtype

    @property
    def ndim(self) -> int:
        """Always 5."""
        return 5

    @property
    def dims(self) -> str:
        """``"TCZYX"``."""
        return DIMS

    @property
    def chunks(self) -> tuple[int, int, int] | None:
        """``(Z, Y, X)`` HDF5 chunk shape of this level."""
        return self._reader.chunks[self._index]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """``(Z, Y, X)`` physical voxel size at this level."""
        return self._reader._levels()[self._index].voxel_size

    @property
    def size(self) -> int:
        """Number of voxels."""
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Number of bytes of the whole level."""
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read a NumPy-style selection over ``(T, C, Z, Y, X)``.

        T and C take ints, slices or lists of ints; Z, Y and X take ints or slices
        (any step).  Integer indices drop their axis; ``...`` is supported.  Only the
        chunks intersecting the selection are read and decompressed.
        """
        return self._reader._getitem(self._index, key)

    def asarray(self, *, t: int = 0, c: int = 0, out: np.ndarray | None = None) -> np.ndarray:
        """Read one ``(Z, Y, X)`` volume of this level; see :meth:`BaseReader.asarray`."""
        return self._reader.asarray(level=self._index, t=t, c=c, out=out)

    def to_dask(self) -> Any:
        """Lazy dask array of this level; see :meth:`BaseReader.to_dask`."""
        return self._reader.to_dask(self._index)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self._reader._getitem(self._index, ())
        return data if dtype is None else data.astype(dtype, copy=False)

    def __dask_tokenize__(self) -> str:
        return _token(self)

    def __repr__(self) -> str:
        return f"<LevelView {self._index} of {self._reader!r}>"


# ---------------------------------------------------------------------------
# key normalisation
# ---------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def _normalize_key(
    key: Any, shape: Sequence[int]
) -> tuple[list[int], list[int], tuple[slice, ...], list[bool], list[bool]]:
    """Turn a NumPy-style key over ``(T, C, Z, Y, X)`` into read instructions.

    Returns T indices, C indices, three positive-step ``(Z, Y, X)`` slices, which of
    the five axes an int index drops, and which axes must be reversed after reading
    (negative steps are read forwards, then flipped).
    """
    if not isinstance(key, tuple):
        key = (key,)
    n_ellipsis = sum(1 for k in key if k is Ellipsis)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ellipsis:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = 5 - (len(key) - 1)
        if fill < 0:
            raise IndexError(f"too many indices: the array is 5-D, got {len(key) - 1}")
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > 5:
        raise IndexError(f"too many indices: the array is 5-D (TCZYX), got {len(key)}")
    key = key + (slice(None),) * (5 - len(key))

    drop = [False] * 5
    flips = [False] * 5
    axis_lists: list[list[int]] = []
    for axis in range(2):
        k, n, name = key[axis], shape[axis], DIMS[axis]
        if isinstance(k, slice):
            axis_lists.append(list(range(*k.indices(n))))
        elif _is_int(k) and not isinstance(k, (bool, np.bool_)):
            axis_lists.append([_wrap(operator.index(k), n, name)])
            drop[axis] = True
        elif isinstance(k, (list, tuple, range, np.ndarray)):
            arr = np.asarray(k)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise IndexError(f"{name} index must be an int, a slice or a 1-D list of ints")
            axis_lists.append([_wrap(int(v), n, name) for v in arr])
        else:
            raise IndexError(
                f"{name} index must be an int, a slice or a list of ints, not {type(k).__name__}"
            )
    spatial: list[slice] = []
    for axis in range(2, 5):
        k, n, name = key[axis], shape[axis], DIMS[axis]
        if isinstance(k, slice):
            r = range(*k.indices(n))
            if r.step < 0:
                r = r[::-1]
                flips[axis] = True
            if len(r) == 0:
                spatial.append(slice(0, 0, 1))
            else:
                spatial.append(slice(r.start, r.stop, r.step))
        elif _is_int(k) and not isinstance(k, (bool, np.bool_)):
            i = _wrap(operator.index(k), n, name)
            spatial.append(slice(i, i + 1, 1))
            drop[axis] = True
        else:
            raise IndexError(
                f"{name} index must be an int or a slice, not {type(k).__name__} "
                "(read a range, then index the NumPy result)"
            )
    return axis_lists[0], axis_lists[1], tuple(spatial), drop, flips


def _wrap(i: int, n: int, name: str) -> int:
    if not -n <= i < n:
        raise IndexError(f"index {i} is out of bounds for axis {name} with size {n}")
    return i + n if i < 0 else i


def _unavailable_filters(ds: Any) -> list[str]:
    """``"id (name)"`` of the dataset's filters that this HDF5 library cannot run."""
    import h5py

    out = []
    try:
        plist = ds.id.get_create_plist()
        for i in range(plist.get_nfilters()):
            code, _flags, _values, name = plist.get_filter(i)
            if not h5py.h5z.filter_avail(code):
                label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                out.append(f"{code} ({label})" if label else str(code))
    except Exception:  # pragma: no cover - best effort for an error message
        logger.debug("could not list the filters of %s", ds, exc_info=True)
    return out


def _token(view: LevelView) -> str:
    """Deterministic identity of a level view (file, its mtime/size, options, level)."""
    import hashlib

    path = view.reader.path
    try:
        stat = path.stat()
        stamp: tuple[Any, ...] = (stat.st_mtime_ns, stat.st_size)
    except OSError:  # pragma: no cover
        stamp = ()
    extra = sorted(view.reader._reopen_kwargs().items())
    text = repr((str(path), stamp, extra, view.index))
    return hashlib.sha1(text.encode()).hexdigest()


# ---------------------------------------------------------------------------
# HDF5 helpers used by the format readers
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# fastims.open
# ---------------------------------------------------------------------------


def open(path: str | os.PathLike[str], **kwargs: Any) -> BaseReader:  # noqa: A001
    """Open an Imaris (``.ims``) or BigDataViewer (``.xml`` / ``.h5``) file for reading.

    Parameters
    ----------
    path : path-like
        ``.ims`` -> :class:`~fastims.ImsReader`; ``.xml`` -> :class:`~fastims.BdvReader`;
        other HDF5 files are inspected (BDV ``s00``/``t00000`` groups or an Imaris
        ``DataSet`` group).
    **kwargs
        Passed to the reader (``allow_external_paths``, ``chunk_cache_bytes``,
        ``scene`` for Imaris).

    Returns
    -------
    ImsReader or BdvReader
        Use it as a context manager so the file is closed.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    FormatError
        If the file is neither format.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "No such file", str(p))
    suffix = p.suffix.lower()
    if suffix == ".ims":
        from fastims.ims.reader import ImsReader

        return ImsReader(p, **kwargs)
    if suffix == ".xml":
        from fastims.bdv.reader import BdvReader

        return BdvReader(p, **kwargs)
    kind = _sniff_hdf5(p)
    if kind == "ims":
        from fastims.ims.reader import ImsReader

        return ImsReader(p, **kwargs)
    from fastims.bdv.reader import BdvReader

    return BdvReader(p, **kwargs)


def _sniff_hdf5(p: Path) -> str:
    """``"ims"`` or ``"bdv"`` from the root of an HDF5 file."""
    import re

    import h5py

    if p.is_dir():
        raise FormatError(f"{p} is a directory, not an Imaris or BigDataViewer file")
    try:
        with h5py.File(p, "r") as f:
            keys = list(f.keys())
            attrs = set(f.attrs.keys())
    except OSError as exc:
        raise FormatError(f"{p} is not a readable HDF5 file ({exc})") from exc
    if "ImarisDataSet" in attrs or "DataSet" in keys:
        return "ims"
    if any(re.fullmatch(r"s\d+", k) for k in keys) or any(re.fullmatch(r"t\d+", k) for k in keys):
        return "bdv"
    raise FormatError(
        f"{p} is neither an Imaris file (no DataSet group) nor a BigDataViewer HDF5 file "
        "(no s00/t00000 groups)"
    )
