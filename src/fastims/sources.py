"""Non-HDF5 inputs for :func:`fastims.convert.convert`: TIFF folders, TIFF stacks, ``.npy``.

Each source presents its image as ``(T, C, Z, Y, X)`` with the small surface the converter
reads (the same names as :class:`fastims.reader.BaseReader` where they overlap):

* :attr:`Source.shape`, :attr:`~Source.dtype`, :attr:`~Source.voxel_size` ``(z, y, x)``,
  :attr:`~Source.unit`, :attr:`~Source.channel_names`, :attr:`~Source.channel_colors`,
  :attr:`~Source.timepoints`, :attr:`~Source.path`;
* :meth:`Source.read` — planes ``z0 ..`` of one ``(t, c)`` volume into a caller's buffer, so
  memory stays bounded by the converter's slab whatever the file size;
* :attr:`Source.chunk_depth` — planes a read naturally comes in (1 for page-wise TIFF).

Kinds (:func:`open_source` picks one from the path):

* a folder of 2-D TIFF files, one Z plane each, in natural order (``z2`` before ``z10``);
* one TIFF file, multi-page or not, plain, ImageJ hyperstack or OME-TIFF (``tifffile``):
  the axes come from the file's metadata, the voxel size from OME ``PhysicalSize*`` or
  ImageJ's ``spacing`` and resolution tags, channel names and colours from OME ``Channel``.
  Uncompressed contiguous data are memory-mapped; other files are read page by page;
* a ``.npy`` array (memory-mapped) of 2 to 5 dimensions: ``YX``, ``ZYX``, ``CZYX``,
  ``TCZYX``.

``tifffile`` is optional: a TIFF input without it raises :class:`ImportError` saying how to
install it.
"""

from __future__ import annotations

import errno
import logging
import lzma
import math
import operator
import os
import re
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fastims.errors import FormatError

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "NpySource",
    "Source",
    "TiffFolderSource",
    "TiffSource",
    "is_source_path",
    "natural_key",
    "open_source",
]

logger = logging.getLogger("fastims")

#: Bytes a source may hold in memory at once when a file cannot be read plane by plane
#: (the 2 GB default of lsfmpy).
DEFAULT_MEMORY_LIMIT = 2 * 10**9

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_UNIT_ALIASES = {
    "micron": "um", "microns": "um", "micrometer": "um", "micrometre": "um", "µm": "um",
    "μm": "um", "\\u00b5m": "um", "um": "um", "nm": "nm", "nanometer": "nm", "mm": "mm",
    "millimeter": "mm", "cm": "cm", "m": "m", "meter": "m", "pm": "pm", "å": "nm",
}


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key comparing digit runs as numbers: ``z2`` < ``z10``."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)


def _need_tifffile() -> Any:
    try:
        import tifffile
    except ImportError:
        raise ImportError(
            "reading TIFF files needs tifffile, an optional dependency: pip install tifffile "
            "(or pip install 'fastims[test]')"
        ) from None
    return tifffile


def _norm_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    text = str(unit).strip()
    if not text:
        return None
    return _UNIT_ALIASES.get(text.lower(), _UNIT_ALIASES.get(text, text))


def _check_voxel(voxel_size: Sequence[float] | None) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise TypeError(f"voxel_size must be 3 numbers (z, y, x), got {voxel_size!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"voxel_size must be 3 positive numbers (z, y, x), got {voxel_size!r}")
    return values  # type: ignore[return-value]


class Source:
    """Base of the non-HDF5 inputs; subclasses fill the geometry and implement :meth:`_read`.

    Parameters
    ----------
    path : path-like
        The file or folder.
    voxel_size : (float, float, float), optional
        ``(z, y, x)`` voxel size overriding the file's metadata.
    unit : str, optional
        Unit of the voxel size (default: the file's, else ``"um"`` when `voxel_size` is given).
    channel_names : sequence of str, optional
        One name per channel, overriding the file's.
    origin : (float, float, float), optional
        ``(z, y, x)`` physical position of the outer corner of voxel 0 (default zeros).
    memory_limit : int, optional
        Bytes a source may read at once when it cannot read plane by plane
        (default :data:`DEFAULT_MEMORY_LIMIT`).
    """

    #: planes a read naturally comes in (``None``: any number)
    chunk_depth: int | None = None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        voxel_size: Sequence[float] | None = None,
        unit: str | None = None,
        channel_names: Sequence[str] | None = None,
        origin: Sequence[float] | None = None,
        memory_limit: int | None = None,
    ) -> None:
        self._path = Path(os.path.abspath(os.fspath(path)))
        self._voxel_override = _check_voxel(voxel_size)
        self._unit_override = None if unit is None else str(unit)
        if channel_names is not None and (isinstance(channel_names, str) or not all(
            isinstance(n, str) for n in channel_names
        )):
            raise TypeError(f"channel_names must be a sequence of str, got {channel_names!r}")
        self._names_override = None if channel_names is None else list(channel_names)
        if origin is None:
            self._origin = (0.0, 0.0, 0.0)
        else:
            values = tuple(float(v) for v in origin)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"origin must be 3 finite numbers (z, y, x), got {origin!r}")
            self._origin = values
        if memory_limit is not None:
            memory_limit = operator.index(memory_limit)
            if memory_limit < 1:
                raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit}")
        self.memory_limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else memory_limit
        self._closed = False
        # filled by subclasses
        self._shape: tuple[int, int, int, int, int] = (1, 1, 1, 1, 1)
        self._dtype = np.dtype(np.uint8)
        self._file_voxel: tuple[float, float, float] | None = None
        self._file_unit: str | None = None
        self._file_names: list[str] | None = None
        self._colors: list[tuple[float, float, float] | None] | None = None

    def _finish_init(self) -> None:
        """Validate the overrides against the geometry (called by subclasses)."""
        nc = self._shape[1]
        if self._names_override is not None and len(self._names_override) != nc:
            raise ValueError(
                f"{self._path.name} has {nc} channel{'s' if nc != 1 else ''}, but "
                f"{len(self._names_override)} channel names were given"
            )
        if self._dtype.kind not in "uif" or self._dtype.itemsize > 8:
            raise TypeError(f"{self._path.name} holds {self._dtype} data, not a numeric image")

    # ------------------------------------------------------------------ surface

    @property
    def path(self) -> Path:
        """The input file or folder."""
        return self._path

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """``(T, C, Z, Y, X)``."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """Voxel type (native byte order)."""
        return self._dtype

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """``(z, y, x)`` voxel size in :attr:`unit` (``(1, 1, 1)`` when unknown)."""
        return self._voxel_override or self._file_voxel or (1.0, 1.0, 1.0)

    @property
    def unit(self) -> str | None:
        """Unit of :attr:`voxel_size` (``None`` when the file gives none)."""
        if self._unit_override is not None:
            return self._unit_override
        if self._voxel_override is not None:
            return self._file_unit or "um"
        return self._file_unit

    @property
    def channel_names(self) -> list[str]:
        """One name per channel."""
        if self._names_override is not None:
            return list(self._names_override)
        if self._file_names is not None:
            return list(self._file_names)
        return [f"Channel {c}" for c in range(self._shape[1])]

    @property
    def channel_colors(self) -> list[tuple[float, float, float] | None] | None:
        """``(r, g, b)`` in 0..1 per channel when the file has them, else ``None``."""
        return None if self._colors is None else list(self._colors)

    @property
    def timepoints(self) -> list[datetime | None]:
        """Acquisition times (none known)."""
        return [None] * self._shape[0]

    @property
    def origin(self) -> tuple[float, float, float]:
        """``(z, y, x)`` position of the outer corner of voxel 0."""
        return self._origin

    @property
    def metadata(self) -> dict[str, Any]:
        """What the file says beyond the geometry (kind-specific)."""
        return {}

    @property
    def nbytes(self) -> int:
        """Bytes of the whole image."""
        return math.prod(self._shape) * self._dtype.itemsize

    # the hooks of fastims.reader.BaseReader the converter calls
    def _level_shape(self, level: int, c: int) -> tuple[int, int, int]:
        return self._shape[2:]  # type: ignore[return-value]

    def _channel_dtype(self, c: int) -> np.dtype:
        return self._dtype

    def _axis_origin(self, level: int) -> tuple[float, float, float]:
        """Centre of voxel 0 (the readers' convention)."""
        return tuple(o + v / 2 for o, v in zip(self._origin, self.voxel_size))  # type: ignore[return-value]

    def read(self, t: int, c: int, z0: int, out: np.ndarray) -> np.ndarray:
        """Read planes ``z0 .. z0 + len(out)`` of volume ``(t, c)`` into `out`.

        Parameters
        ----------
        t, c, z0 : int
            Time point, channel and first plane.
        out : numpy.ndarray
            Writable ``(nz, Y, X)`` array of :attr:`dtype`.

        Returns
        -------
        numpy.ndarray
            `out`.
        """
        if self._closed:
            raise ValueError(f"I/O operation on a closed source ({self._path.name})")
        nt, nc, nz, ny, nx = self._shape
        if not (0 <= t < nt and 0 <= c < nc):
            raise IndexError(f"(t, c) = ({t}, {c}) is out of range for shape {self._shape}")
        if out.ndim != 3 or out.shape[1:] != (ny, nx) or not 0 <= z0 <= z0 + out.shape[0] <= nz:
            raise ValueError(f"out of shape {out.shape} at z0={z0} does not fit a ({nz}, {ny}, {nx}) volume")
        if out.dtype != self._dtype:
            raise ValueError(f"out has dtype {out.dtype}, expected {self._dtype}")
        if out.shape[0]:
            self._read(t, c, z0, out)
        return out

    def asarray(self, *, t: int = 0, c: int = 0) -> np.ndarray:
        """One whole ``(Z, Y, X)`` volume (for tests and small images)."""
        return self.read(t, c, 0, np.empty(self._shape[2:], dtype=self._dtype))

    def _read(self, t: int, c: int, z0: int, out: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handles (idempotent)."""
        self._closed = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._path.name!r} shape={self._shape} dtype={self._dtype}>"


# ---------------------------------------------------------------------------------------
# .npy
# ---------------------------------------------------------------------------------------


def _check_npy_magic(path: Path) -> None:
    """Name what a file that is not a .npy is (np.load would blame pickled data)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise FormatError(f"{path} is not a readable .npy file ({exc})") from exc
    if head == b"\x93NUMPY":
        return
    if head.startswith(b"PK\x03\x04"):
        raise FormatError(f"{path} is a .npz archive, not a .npy file: save one array with numpy.save")
    raise FormatError(f"{path} is not a .npy file: it does not start with NumPy's magic string")


class NpySource(Source):
    """A ``.npy`` array, memory-mapped: ``YX``, ``ZYX``, ``CZYX`` or ``TCZYX``.

    See :class:`Source` for the parameters.
    """

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        _check_npy_magic(self._path)
        try:
            arr = np.load(self._path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(f"{self._path} is not a readable .npy file ({exc})") from exc
        if not isinstance(arr, np.ndarray) or not 2 <= arr.ndim <= 5:
            raise ValueError(
                f"{self._path.name} holds a {getattr(arr, 'ndim', '?')}-D array; fastims reads "
                "YX, ZYX, CZYX or TCZYX arrays (2 to 5 dimensions)"
            )
        self._arr = arr.reshape((1,) * (5 - arr.ndim) + arr.shape)
        self._shape = tuple(int(n) for n in self._arr.shape)  # type: ignore[assignment]
        self._dtype = np.dtype(arr.dtype.newbyteorder("="))
        self._finish_init()

    def _read(self, t: int, c: int, z0: int, out: np.ndarray) -> None:
        out[...] = self._arr[t, c, z0 : z0 + out.shape[0]]

    def close(self) -> None:
        self._arr = None  # type: ignore[assignment]  # drops the memory map
        super().close()


# ---------------------------------------------------------------------------------------
# TIFF
# ---------------------------------------------------------------------------------------


def _tiff_error(path: Path, exc: BaseException) -> FormatError:
    return FormatError(f"{path} is not a readable TIFF file ({type(exc).__name__}: {exc})")


class TiffFolderSource(Source):
    """A folder of 2-D TIFF files, one Z plane each, in natural order.

    All files must have the first file's size and data type; a file that differs raises
    ValueError, and one that cannot be read :class:`~fastims.FormatError`, naming it. The
    headers are checked when the source opens, so a conversion fails before writing anything.

    Parameters
    ----------
    path : path-like
        The folder.
    **kwargs
        See :class:`Source`.
    """

    chunk_depth = 1

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        tifffile = _need_tifffile()
        if not self._path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self._path))
        files = [p for p in self._path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()
                 and not p.name.startswith(".")]
        if not files:
            raise FileNotFoundError(errno.ENOENT, "no .tif/.tiff files in the folder", str(self._path))
        self.files = sorted(files, key=lambda p: natural_key(p.name))
        first_shape, first_dtype = None, None
        for p in self.files:
            try:
                with tifffile.TiffFile(p) as tif:
                    series = tif.series[0]
                    shape, dtype = tuple(series.shape), np.dtype(series.dtype)
                    if first_shape is None:
                        self._metadata_from(tif)
            except (*_DECODE_ERRORS, tifffile.TiffFileError) as exc:
                raise _tiff_error(p, exc) from exc
            if len(shape) != 2:
                raise ValueError(
                    f"{p.name} holds an image of shape {shape}; a TIFF folder must hold one 2-D "
                    "plane per file (convert multi-page TIFF files one by one)"
                )
            if first_shape is None:
                first_shape, first_dtype = shape, dtype
            elif (shape, dtype) != (first_shape, first_dtype):
                raise ValueError(
                    f"{p.name} is {shape[0]}x{shape[1]} {dtype}, unlike {self.files[0].name} "
                    f"({first_shape[0]}x{first_shape[1]} {first_dtype}): every plane of a TIFF "
                    "folder must have the same size and data type"
                )
        self._shape = (1, 1, len(self.files), int(first_shape[0]), int(first_shape[1]))  # type: ignore[index]
        self._dtype = np.dtype(first_dtype.newbyteorder("="))  # type: ignore[union-attr]
        self._finish_init()

    def _metadata_from(self, tif: Any) -> None:
        """Voxel size in X and Y from ImageJ or OME metadata of the first plane, if any."""
        meta = _tiff_metadata(tif)
        vox = meta.get("voxel_size")
        if vox is not None:
            self._file_voxel = (1.0, vox[1], vox[2])
        self._file_unit = meta.get("unit")

    def _read(self, t: int, c: int, z0: int, out: np.ndarray) -> None:
        tifffile = _need_tifffile()
        for i in range(out.shape[0]):
            p = self.files[z0 + i]
            try:
                plane = tifffile.imread(p)
            except (*_DECODE_ERRORS, tifffile.TiffFileError) as exc:
                raise _tiff_error(p, exc) from exc
            if plane.shape != out.shape[1:]:
                raise ValueError(f"{p.name} changed: it is now {plane.shape}, expected {out.shape[1:]}")
            out[i] = plane


#: what reading a damaged image file raises: I/O and format errors, and the decoders' own
#: (zlib.error, lzma.LZMAError; imagecodecs' codec errors are RuntimeErrors)
_DECODE_ERRORS = (OSError, ValueError, IndexError, KeyError, RuntimeError, zlib.error, lzma.LZMAError)


def _axes_map(axes: str, shape: Sequence[int], name: str) -> dict[str, str]:
    """Series axis letter -> one of ``TCZYX`` (letters of size 1 map to nothing)."""
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for letter in axes:
        if letter in "TCZYX":
            mapping[letter] = letter
            taken.add(letter)
    sizes = dict(zip(axes, shape))
    if "S" in sizes and sizes["S"] > 1:
        if "C" in taken:
            raise ValueError(
                f"{name} has both channels (C) and samples per pixel (S, e.g. RGB); fastims "
                f"cannot tell which is the channel axis (axes {axes!r}, shape {tuple(shape)})"
            )
        mapping["S"] = "C"
        taken.add("C")
    for letter in axes:
        if letter in mapping or sizes[letter] == 1:
            continue
        free = next((k for k in "ZTC" if k not in taken), None)
        if free is None:
            raise ValueError(
                f"{name} has axes {axes!r} (shape {tuple(shape)}); fastims maps them to T, C, Z, "
                f"Y, X but has no place for {letter!r}"
            )
        mapping[letter] = free
        taken.add(free)
    if "Y" not in mapping or "X" not in mapping:
        raise ValueError(f"{name} has axes {axes!r}: no Y and X image plane")
    return mapping


def _tiff_metadata(tif: Any) -> dict[str, Any]:
    """Voxel size, unit, channel names and colours from OME or ImageJ metadata."""
    out: dict[str, Any] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            out.update(_ome_metadata(tif.ome_metadata))
        except ET.ParseError as exc:
            logger.warning("%s: unreadable OME-XML metadata ignored (%s)", tif.filename, exc)
        return out
    if tif.is_imagej and tif.imagej_metadata:
        ij = tif.imagej_metadata
        page = tif.pages[0]
        xy = []
        for tag in ("YResolution", "XResolution"):
            value = page.tags.get(tag)
            try:
                num, den = value.value  # type: ignore[union-attr]
                xy.append(den / num if num else None)
            except (AttributeError, TypeError, ValueError, ZeroDivisionError):
                xy.append(None)
        z = ij.get("spacing")
        # without a unit or a z spacing ImageJ itself shows pixels: nothing calibrated
        if ij.get("unit") is not None or z is not None:
            vy, vx = (v if v and math.isfinite(v) and v > 0 else 1.0 for v in xy)
            vz = float(z) if isinstance(z, (int, float)) and z > 0 else 1.0
            out["voxel_size"] = (vz, vy, vx)
            out["unit"] = _norm_unit(ij.get("unit")) or "um"
    return out


def _ome_metadata(text: str) -> dict[str, Any]:
    root = ET.fromstring(text)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    out: dict[str, Any] = {}
    if pixels is None:
        return out
    sizes: list[float | None] = []
    units: list[str | None] = []
    for axis in "ZYX":
        try:
            value = float(pixels.get(f"PhysicalSize{axis}", "nan"))
        except ValueError:
            value = math.nan
        sizes.append(value if math.isfinite(value) and value > 0 else None)
        # as written (Å is stored in nm: the scale comes from the unit's own length)
        units.append(str(pixels.get(f"PhysicalSize{axis}Unit") or "").strip() or "um")
    if any(v is not None for v in sizes):
        # one unit for all three axes: the X unit; others converted when both are lengths
        from fastims.bdv.xmlwrite import length_in_meters

        unit = _norm_unit(units[2]) or "um"
        target = length_in_meters(unit)
        vox = []
        for v, u in zip(sizes, units):
            if v is None:
                vox.append(1.0)
                continue
            here = length_in_meters(u or unit)
            # 2000 nm -> 2.0 um, not 2.0000000000000004
            vox.append(float(f"{v * here / target:.12g}") if here and target else v)
        out["voxel_size"] = tuple(vox)
        out["unit"] = unit
    names: list[str | None] = []
    colors: list[tuple[float, float, float] | None] = []
    for ch in (e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Channel"):
        names.append(ch.get("Name"))
        color = ch.get("Color")
        try:
            rgba = int(color) & 0xFFFFFFFF if color is not None else None
        except ValueError:
            rgba = None
        colors.append(None if rgba is None else (
            (rgba >> 24 & 255) / 255, (rgba >> 16 & 255) / 255, (rgba >> 8 & 255) / 255))
    out["channel_names"] = names
    out["channel_colors"] = colors
    return out


class TiffSource(Source):
    """One TIFF file: plain multi-page, ImageJ hyperstack or OME-TIFF (``tifffile``).

    The first series is read. Its axes map to ``TCZYX`` (samples per pixel, e.g. RGB, become
    channels; an unnamed page axis becomes Z). Uncompressed contiguous data are memory-mapped,
    others read page by page; a file that is neither (rare layouts) is read whole, if it fits
    in `memory_limit`.

    Parameters
    ----------
    path : path-like
        The TIFF file.
    **kwargs
        See :class:`Source`.
    """

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        tifffile = _need_tifffile()
        try:
            self._tif = tifffile.TiffFile(self._path)
        except (OSError, ValueError, IndexError, KeyError, tifffile.TiffFileError) as exc:
            raise _tiff_error(self._path, exc) from exc
        try:
            self._open_series()
            self._finish_init()
        except BaseException:
            self._tif.close()
            raise

    def _open_series(self) -> None:
        tif = self._tif
        if not tif.series:
            raise FormatError(f"{self._path} holds no image")
        if len(tif.series) > 1:  # as convert says of an .ims holding several datasets
            names = ", ".join(s.name or f"#{i}" for i, s in enumerate(tif.series[:4]))
            warnings.warn(f"{self._path.name} holds {len(tif.series)} image series ({names}"
                          f"{', ...' if len(tif.series) > 4 else ''}); reading the first", UserWarning, stacklevel=4)
        series = tif.series[0]
        axes, shape = series.axes, tuple(int(n) for n in series.shape)
        mapping = _axes_map(axes, shape, self._path.name)
        sizes = dict.fromkeys("TCZYX", 1)
        for letter, n in zip(axes, shape):
            if letter in mapping:
                sizes[mapping[letter]] = n
        self._shape = tuple(sizes[k] for k in "TCZYX")  # type: ignore[assignment]
        disk = np.dtype(series.dtype)
        self._dtype = np.dtype(disk.newbyteorder("="))
        self._axes, self._series_shape, self._mapping = axes, shape, mapping
        meta = _tiff_metadata(tif)
        self._meta = meta
        if "voxel_size" in meta:
            self._file_voxel = tuple(float(v) for v in meta["voxel_size"])  # type: ignore[assignment]
        self._file_unit = meta.get("unit")
        nc = self._shape[1]
        names = meta.get("channel_names")
        if names and len(names) == nc and all(names):
            self._file_names = [str(n) for n in names]
        colors = meta.get("channel_colors")
        if colors and len(colors) == nc and all(col is not None for col in colors):
            self._colors = list(colors)
        self._pages = None
        self._memmap = None
        self._whole: np.ndarray | None = None
        offset = series.dataoffset
        if offset is not None:
            # uncompressed and contiguous: map it (reads only what each slab touches)
            try:
                data = np.memmap(self._path, dtype=disk.newbyteorder(tif.byteorder), mode="r",
                                 offset=offset, shape=shape)
            except (OSError, ValueError) as exc:
                raise _tiff_error(self._path, exc) from exc
            self._memmap = self._as5d(data, axes)
            self.chunk_depth = None
            return
        page_axes = series.pages[0].axes if series.pages and series.pages[0] is not None else ""
        outer = axes[: len(axes) - len(page_axes)] if axes.endswith(page_axes) else None
        npages = len(series.pages)
        if outer is not None and math.prod(shape[: len(outer)]) == npages and set(page_axes) <= set("YXS"):
            self._pages = series.pages
            self._outer = outer
            self._page_axes = page_axes
            self.chunk_depth = 1
            return
        if math.prod(shape) * disk.itemsize > self.memory_limit:
            raise MemoryError(
                f"{self._path.name} cannot be read plane by plane (axes {axes!r}, {npages} pages) "
                f"and holds {math.prod(shape) * disk.itemsize / 1e9:.1f} GB, more than the "
                f"memory limit of {self.memory_limit / 1e9:.1f} GB; raise memory_limit"
            )
        self.chunk_depth = None  # read whole on first use (self._whole)

    def _as5d(self, data: np.ndarray, axes: str) -> np.ndarray:
        """A ``(T, C, Z, Y, X)`` view of an array with the series' axes."""
        index = []
        order = []
        for letter in axes:
            target = self._mapping.get(letter)
            if target is None:
                index.append(0)  # a size-1 axis fastims has no use for
            else:
                index.append(slice(None))
                order.append(target)
        view = data[tuple(index)]
        for k in "TCZYX":
            if k not in order:
                view = view[..., None]
                order.append(k)
        return view.transpose([order.index(k) for k in "TCZYX"])

    @property
    def metadata(self) -> dict[str, Any]:
        """``axes`` of the series, whether OME / ImageJ, and the parsed metadata."""
        return {"axes": self._axes, "shape": self._series_shape, "ome": bool(self._tif.is_ome),
                "imagej": bool(self._tif.is_imagej), **self._meta}

    def _read(self, t: int, c: int, z0: int, out: np.ndarray) -> None:
        nz = out.shape[0]
        try:
            if self._memmap is not None:
                out[...] = self._memmap[t, c, z0 : z0 + nz]
                return
            if self._pages is not None:
                for i in range(nz):
                    out[i] = self._page_plane(t, c, z0 + i)
                return
            if self._whole is None:
                self._whole = self._as5d(self._tif.series[0].asarray(), self._axes)
            out[...] = self._whole[t, c, z0 : z0 + nz]
        except (*_DECODE_ERRORS, AttributeError) as exc:
            # a page missing from the file (None), a truncated or corrupt page...
            raise FormatError(f"{self._path}: reading t={t} c={c} z={z0}..{z0 + nz - 1} failed ({exc})") from exc

    def _page_plane(self, t: int, c: int, z: int) -> np.ndarray:
        coords = {"T": t, "C": c, "Z": z}
        outer_index = []
        for letter, _n in zip(self._outer, self._series_shape):
            target = self._mapping.get(letter)
            outer_index.append(coords[target] if target in coords else 0)
        page_no = int(np.ravel_multi_index(outer_index, self._series_shape[: len(self._outer)])) if self._outer else 0
        data = self._pages[page_no].asarray()  # type: ignore[index]
        page_axes = self._page_axes
        if data.ndim != len(page_axes):  # squeezed by tifffile
            data = data.reshape(self._series_shape[len(self._outer):])
        index = [c if letter == "S" and self._mapping.get("S") == "C" else (slice(None) if letter in "YX" else 0)
                 for letter in page_axes]
        plane = data[tuple(index)]
        if page_axes.index("Y") > page_axes.index("X"):
            plane = plane.T
        return plane

    def close(self) -> None:
        self._memmap = None
        self._whole = None
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
        super().close()


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def is_source_path(path: str | os.PathLike[str]) -> bool:
    """Whether :func:`open_source` reads `path` (a folder, a TIFF or a ``.npy`` file)."""
    p = Path(os.fspath(path))
    return p.is_dir() or _suffix(p) in TIFF_SUFFIXES or _suffix(p) == ".npy"


def open_source(path: str | os.PathLike[str], **kwargs: Any) -> Source:
    """Open a TIFF folder, a TIFF file or a ``.npy`` file as a :class:`Source`.

    Parameters
    ----------
    path : path-like
        The input.
    **kwargs
        ``voxel_size``, ``unit``, ``channel_names``, ``origin``, ``memory_limit``
        (see :class:`Source`).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist (or a folder holds no TIFF file).
    ImportError
        For a TIFF input without tifffile installed.
    FormatError
        If a file cannot be read (the message names it).
    ValueError
        For an unknown kind of input or inconsistent planes.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "input not found", str(p))
    if p.is_dir():
        return TiffFolderSource(p, **kwargs)
    suffix = _suffix(p)
    if suffix in TIFF_SUFFIXES:
        return TiffSource(p, **kwargs)
    if suffix == ".npy":
        return NpySource(p, **kwargs)
    raise ValueError(f"{p.name}: unknown input kind (expected a folder of TIFFs, .tif/.tiff or .npy)")
