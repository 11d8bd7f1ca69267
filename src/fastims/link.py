"""Link tiles into one dataset without copying data: :func:`link_ims` and :func:`link_bdv`.

Imaris (the layout of imaris-linker, ``spec/imaris.md`` section 6): one ``.ims`` whose
``DataSet``, ``DataSet1``, ... hold, for every resolution level, time point and channel, an
HDF5 *external link* (a path relative to the linked file) to the tile's
``DataSet/ResolutionLevel r/TimePoint t/Channel c`` group, so data, histograms and level
sizes stay in the tiles. ``DataSetInfo``, ``DataSetInfo1``, ... are copies of the tiles'
metadata without ``Image/RecordingDate`` (Imaris would otherwise read the datasets as time
points) and without ``TimeInfo`` for single-time-point tiles; the root says
``NumberOfDataSets``. Tile positions are the tiles' own extents (``ExtMin``/``ExtMax``).
String attributes are Imaris' NULLTERM one-character arrays whatever the tiles used.

BigDataViewer (``spec/bdv.md`` 1.7, 2.7): a master ``.h5`` + ``.xml`` whose views are the
tiles' views, the ``cells`` of every level an external link into the tile's file, listed as
``<partition>`` entries (with ``timepointsMapped``/``setupsMapped`` where the ids change);
tiles become setups with a ``tile`` attribute, positioned by their registrations or given
positions (BigStitcher's ``Translation`` + ``calibration``).

Both functions write under a temporary name and rename when complete, refuse links that
would need an absolute path or ``..`` (every tile must be in the linked file's folder or
below it), and check that the tiles agree (data type, size, voxel size) before writing.

Tiles are found either from explicit :class:`LinkSource` entries or from a file-name
pattern over a grid (:func:`grid_sources`), ``tile_x_{x:04d}_y_{y:04d}_z_{z:04d}_ch_{ch}.ims``
by default, as imaris-linker names them.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import os
import re
import secrets
import string
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastims.errors import FormatError

__all__ = [
    "DEFAULT_BDV_PATTERN",
    "DEFAULT_IMS_PATTERN",
    "LinkSource",
    "TilePattern",
    "grid_sources",
    "is_pattern",
    "link_bdv",
    "link_ims",
]

logger = logging.getLogger("fastims")

#: imaris-linker's tile names (its channel field is the channel's label, e.g. a wavelength)
DEFAULT_IMS_PATTERN = "tile_x_{x:04d}_y_{y:04d}_z_{z:04d}_ch_{ch}.ims"
#: the same names for BigDataViewer tiles (their XML)
DEFAULT_BDV_PATTERN = "tile_x_{x:04d}_y_{y:04d}_z_{z:04d}_ch_{ch}.xml"

_ATTRIBUTE_KINDS = ("illumination", "channel", "tile", "angle")
_RTOL = 1e-6  # voxel sizes that agree to this relative tolerance are the same


@dataclass(frozen=True)
class LinkSource:
    """One tile file and where its volumes go in the linked dataset.

    A file's own time points, channels (BDV: setups' attributes) are placed at these
    offsets, so a file per (tile, channel, time point) and a file holding several channels or
    time points of a tile both work.

    Attributes
    ----------
    path : pathlib.Path
        The tile: an ``.ims`` for :func:`link_ims`; a BDV ``.xml`` (or ``.h5``) for
        :func:`link_bdv`.
    tile : int
        Tile index (Imaris: dataset; BDV: ``tile`` attribute id, plus the file's own).
    channel, time, illumination, angle : int
        Index of the file's first channel / time point / illumination / angle.
    position : (float, float, float), optional
        BDV only: ``(z, y, x)`` tile position in the tile's unit, replacing the position the
        file's registration gives (Imaris tiles are placed by their own extents).
    tile_name, channel_name : str, optional
        Labels (BDV ``<Tile>``/``<Channel>`` names; the Imaris channel name when given).
    grid : (int, int, int), optional
        ``(z, y, x)`` position in a tile grid (set by :func:`grid_sources`).
    """

    path: Path
    tile: int = 0
    channel: int = 0
    time: int = 0
    illumination: int = 0
    angle: int = 0
    position: tuple[float, float, float] | None = None
    tile_name: str | None = None
    channel_name: str | None = None
    grid: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(os.fspath(self.path)))
        for name in ("tile", "channel", "time", "illumination", "angle"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.position is not None:
            pos = tuple(float(v) for v in self.position)
            if len(pos) != 3 or not all(math.isfinite(v) for v in pos):
                raise ValueError(f"position must be 3 finite numbers (z, y, x), got {self.position!r}")
            object.__setattr__(self, "position", pos)


# ---------------------------------------------------------------------------------------
# file-name patterns
# ---------------------------------------------------------------------------------------

_FIELD_KINDS = {
    "x": "x", "y": "y", "z": "z", "tile": "tile",
    "c": "channel", "ch": "channel", "channel": "channel",
    "t": "time", "time": "time", "tp": "time",
}


class TilePattern:
    """A file-name pattern with ``str.format`` fields naming a tile's place.

    Fields: ``{x}``, ``{y}``, ``{z}`` (grid coordinates) or ``{tile}`` (tile number);
    ``{ch}`` / ``{c}`` / ``{channel}`` (channel label); ``{t}`` / ``{time}`` (time point).
    An integer format (``{x:04d}``) matches at least that many digits and gives ints; a field
    without format matches any digits (``{ch}``: any text) and keeps the text as written, so
    names found on disk format back to themselves.

    Parameters
    ----------
    pattern : str
        A file name (no folder) such as ``"tile_x_{x:04d}_y_{y:04d}_ch_{ch}.tif"``.

    Examples
    --------
    >>> p = TilePattern("tile_x_{x:04d}_ch_{ch}.ims")
    >>> p.match("tile_x_0003_ch_488.ims")
    {'x': 3, 'channel': '488'}
    >>> p.format(x=3, channel="488")
    'tile_x_0003_ch_488.ims'
    """

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"pattern must be a non-empty str, got {pattern!r}")
        if "/" in pattern or os.sep in pattern:
            raise ValueError(f"pattern {pattern!r} must be a file name without folders")
        self.pattern = pattern
        self.names: dict[str, str] = {}  # kind -> the field name the pattern uses
        self.specs: dict[str, str] = {}
        regex = []
        try:
            parsed = list(string.Formatter().parse(pattern))
        except ValueError as exc:
            raise ValueError(f"pattern {pattern!r}: {exc}") from None
        for literal, name, spec, conversion in parsed:
            regex.append(re.escape(literal))
            if name is None:
                continue
            if conversion:
                raise ValueError(f"pattern {pattern!r}: conversions like !{conversion} are not supported")
            kind = _FIELD_KINDS.get(name)
            if kind is None:
                raise ValueError(
                    f"pattern {pattern!r}: unknown field {{{name}}}; use x, y, z, tile, ch, t"
                )
            if kind in self.names:
                if self.names[kind] != name or self.specs[kind] != (spec or ""):
                    raise ValueError(f"pattern {pattern!r}: field {name!r} appears twice with different forms")
                regex.append(f"(?P={kind})")
                continue
            self.names[kind] = name
            self.specs[kind] = spec or ""
            regex.append(f"(?P<{kind}>{self._field_regex(kind, spec or '')})")
        if not self.names:
            raise ValueError(f"pattern {pattern!r} has no field such as {{x}} or {{t}}")
        if "tile" in self.names and set(self.names) & {"x", "y", "z"}:
            raise ValueError(f"pattern {pattern!r}: use either {{tile}} or {{x}}/{{y}}/{{z}}, not both")
        self._regex = re.compile("".join(regex) + r"\Z")

    def _field_regex(self, kind: str, spec: str) -> str:
        m = re.fullmatch(r"0?(\d*)d", spec)
        if spec and m is None:
            raise ValueError(f"pattern {self.pattern!r}: format {spec!r} is not an integer format like 04d")
        if m is not None:
            width = m.group(1)
            return rf"\d{{{int(width)},}}" if width and spec.startswith("0") else r"\d+"
        return r".+?" if kind == "channel" else r"\d+"

    @property
    def kinds(self) -> set[str]:
        """The kinds of field present (``x``, ``y``, ``z``, ``tile``, ``channel``, ``time``)."""
        return set(self.names)

    def value(self, kind: str, raw: Any) -> Any:
        """A field value as :meth:`format` takes it: int for integer formats, else text."""
        if self.specs.get(kind):
            return int(raw)
        return str(raw)

    def match(self, name: str) -> dict[str, Any] | None:
        """Field values (by kind) of a file name, or ``None`` if it does not match."""
        m = self._regex.match(name)
        if m is None:
            return None
        return {kind: self.value(kind, m.group(kind)) for kind in self.names}

    def format(self, **values: Any) -> str:
        """The file name for field values given by kind (``x=3, channel="488"``)."""
        missing = set(self.names) - set(values)
        if missing:
            raise KeyError(f"pattern {self.pattern!r} needs values for {sorted(missing)}")
        return self.pattern.format(**{self.names[k]: self.value(k, values[k]) for k in self.names})

    def __repr__(self) -> str:
        return f"TilePattern({self.pattern!r})"


def is_pattern(src: Any) -> bool:
    """Whether `src` is a tile pattern: a path whose file name has ``{x}``-style fields and
    that does not exist as such."""
    if not isinstance(src, (str, os.PathLike)):
        return False
    text = os.fspath(src)
    if isinstance(text, bytes):
        return False
    name = os.path.basename(text.rstrip("/" + os.sep)) or text
    return re.search(r"\{[A-Za-z]+(:[^{}]*)?\}", name) is not None and not os.path.exists(text)


def _sort_key(value: Any) -> tuple[Any, ...]:
    from fastims.sources import natural_key

    return (0, value, "") if isinstance(value, int) else (1, 0, natural_key(str(value)))


def _missing_text(names: list[str], limit: int = 8) -> str:
    head = ", ".join(names[:limit])
    return head + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _contiguous(pat: TilePattern, kind: str, found: set[Any]) -> list[Any]:
    """Grid values of a field found in the file names: every integer from the smallest found
    to the largest, so a tile missing inside the grid is reported (its rank would otherwise
    place every later tile one step early) instead of closing up the gap."""
    by_number = {int(v): v for v in found}  # integer formats give ints, bare {x} digit strings
    if not by_number:
        return []
    return [by_number.get(i, pat.value(kind, str(i))) for i in range(min(by_number), max(by_number) + 1)]


def grid_sources(
    folder: str | os.PathLike[str],
    pattern: str | TilePattern = DEFAULT_IMS_PATTERN,
    *,
    x_tiles: int | None = None,
    y_tiles: int | None = None,
    z_tiles: int | None = None,
    tiles: int | None = None,
    channels: Sequence[Any] | None = None,
    timepoints: int | None = None,
) -> list[LinkSource]:
    """The tiles of a grid named by `pattern`, checked complete, as :class:`LinkSource`.

    For each field the values are the given counts (``x_tiles=2``: x = 0, 1), the given
    channel labels, or, when not given, the values found in `folder`'s file names -- for
    x, y, z, tile and time every integer from the smallest found to the largest, so a gap is
    a missing tile. Every combination must exist. Tiles are numbered with x fastest, then y,
    then z (imaris-linker's order); channels and time points in the order of their values.

    Parameters
    ----------
    folder : path-like
        Folder holding the tiles.
    pattern : str or TilePattern
        File-name pattern (see :class:`TilePattern`).
    x_tiles, y_tiles, z_tiles, tiles : int, optional
        Grid size along x, y, z (or number of tiles for a ``{tile}`` pattern).
    channels : sequence, optional
        Channel labels as they appear in the names (e.g. ``[488, 561]``).
    timepoints : int, optional
        Number of time points (``{t}`` = 0 .. timepoints - 1).

    Returns
    -------
    list of LinkSource
        In (time, channel, tile) order, with ``tile``, ``channel``, ``time``, ``grid``,
        ``tile_name`` and ``channel_name`` set.

    Raises
    ------
    FileNotFoundError
        If `folder` does not exist, no file matches, or tiles of the grid are missing (the
        message lists the missing names).
    ValueError
        If a count is given for a field the pattern lacks, or a count is not positive.
    """
    pat = pattern if isinstance(pattern, TilePattern) else TilePattern(pattern)
    root = Path(os.fspath(folder))
    if not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "tile folder not found", str(root))
    counts = {"x": x_tiles, "y": y_tiles, "z": z_tiles, "tile": tiles, "time": timepoints}
    for kind, n in counts.items():
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"the number of {kind} values must be a positive integer, got {n!r}")
        if kind not in pat.kinds:
            if n != 1:
                raise ValueError(f"pattern {pat.pattern!r} has no {{{kind}}} field, but {n} {kind} values were asked for")
    if channels is not None and "channel" not in pat.kinds:
        if len(channels) > 1:
            raise ValueError(f"pattern {pat.pattern!r} has no channel field ({{ch}}), but channels {list(channels)} were given")
        channels = None

    found: dict[str, set[Any]] = {k: set() for k in pat.kinds}
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    for name in names:
        values = pat.match(name)
        if values is not None:
            for kind, v in values.items():
                found[kind].add(v)
    if not any(found.values()) and (channels is None or any(counts[k] is None for k in pat.kinds if k != "channel")):
        raise FileNotFoundError(
            errno.ENOENT, f"no file in the folder matches the pattern {pat.pattern!r}", str(root)
        )
    axes: dict[str, list[Any]] = {}
    for kind in pat.kinds:
        if kind == "channel" and channels is not None:
            axes[kind] = [pat.value(kind, c) for c in channels]
        elif counts.get(kind) is not None:
            axes[kind] = list(range(int(counts[kind])))  # type: ignore[arg-type]
        elif kind == "channel":
            axes[kind] = sorted(found[kind], key=_sort_key)
        else:
            axes[kind] = _contiguous(pat, kind, found[kind])
    order = [k for k in ("time", "channel", "z", "y", "x", "tile") if k in axes]
    missing: list[str] = []
    out: list[LinkSource] = []
    tile_keys = [k for k in ("z", "y", "x", "tile") if k in axes]
    tile_index = {key: i for i, key in enumerate(itertools.product(*(axes[k] for k in tile_keys)))}
    for combo in itertools.product(*(axes[k] for k in order)):
        values = dict(zip(order, combo))
        name = pat.format(**values)
        path = root / name
        if not path.exists():
            missing.append(name)
            continue
        tkey = tuple(values[k] for k in tile_keys)
        grid = None
        if "tile" not in values:
            grid = tuple(axes[k].index(values[k]) if k in values else 0 for k in ("z", "y", "x"))
        label = "_".join(f"{k}{values[k]}" for k in tile_keys) or "0"
        out.append(LinkSource(
            path=path,
            tile=tile_index[tkey],
            channel=axes["channel"].index(values["channel"]) if "channel" in values else 0,
            time=axes["time"].index(values["time"]) if "time" in values else 0,
            tile_name=label,
            channel_name=str(values["channel"]) if "channel" in values else None,
            grid=grid,  # type: ignore[arg-type]
        ))
    if missing:
        raise FileNotFoundError(
            errno.ENOENT,
            f"{len(missing)} tile file{'s are' if len(missing) > 1 else ' is'} missing from the grid "
            f"({_missing_text(missing)})",
            str(root),
        )
    return out


# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------


def _as_sources(sources: Iterable[Any]) -> list[LinkSource]:
    out = []
    plain: dict[str, int] = {}  # a path given twice as a tile of its own is a mistake
    for i, s in enumerate(sources):
        if isinstance(s, LinkSource):
            out.append(s)
        elif isinstance(s, Mapping):
            out.append(LinkSource(**s))
        elif isinstance(s, (str, os.PathLike)):
            key = os.path.normpath(os.path.abspath(os.fspath(s)))
            if key in plain:
                raise ValueError(f"{os.fspath(s)} is given twice (tiles {plain[key]} and {i})")
            plain[key] = i
            out.append(LinkSource(Path(os.fspath(s)), tile=i))
        else:
            raise TypeError(f"a tile must be a path, a LinkSource or a dict, got {type(s).__name__}")
    if not out:
        raise ValueError("no tile to link")
    return out


def _relative(target: Path, folder: Path, what: str) -> str:
    """`target` relative to `folder`, POSIX separators; refuses absolute and ``..`` paths."""
    abs_target = os.path.normpath(os.path.abspath(target))
    try:
        rel = os.path.relpath(abs_target, folder)
    except ValueError:  # another drive (Windows): only an absolute path would reach it
        rel = abs_target
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise ValueError(
            f"{what} {abs_target} is outside the folder {folder} of the linked file; links are "
            "relative paths without '..', so every tile must be in that folder or below it"
        )
    return Path(rel).as_posix()


def _temp_name(final: Path, suffix: str = "") -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.partial{suffix}")


def _same_voxel(a: Sequence[float], b: Sequence[float], rtol: Sequence[float]) -> bool:
    return all(math.isclose(x, y, rel_tol=t) for x, y, t in zip(a, b, rtol))


def _float32_extent_rtol(image: Mapping[str, Any]) -> tuple[float, ...]:
    """Per-axis (z, y, x) relative uncertainty of voxel sizes derived from .ims extents.

    ImarisWriter stores ExtMin/ExtMax as float32: at stage positions of tens of millimetres
    in micrometres their spacing is ~0.004, so a tile 50 voxels of 0.16 wide reads its voxel
    size back ~5e-4 off, differently for each tile.
    """
    out = []
    for axis in (2, 1, 0):
        try:
            lo, hi = float(image[f"ExtMin{axis}"]), float(image[f"ExtMax{axis}"])
        except (KeyError, TypeError, ValueError):
            out.append(0.0)
            continue
        ulp = float(np.spacing(np.float32(abs(lo)))) + float(np.spacing(np.float32(abs(hi))))
        out.append(ulp / abs(hi - lo) if hi != lo else 0.0)
    return tuple(out)


def _check_out(path: Path, overwrite: bool, sources: list[LinkSource]) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "output folder not found", str(path.parent))
    for s in sources:
        if os.path.normpath(os.path.abspath(s.path)) == str(path):
            raise ValueError(f"the linked file {path} cannot also be one of the tiles")


@dataclass
class _Geometry:
    """What every tile must share."""

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel: tuple[float, float, float]
    unit: str | None
    levels: int
    #: relative uncertainty of `voxel` per axis (float32 extents of .ims tiles; 0 otherwise)
    rtol: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def check(self, other: _Geometry, voxel_rtol: float = _RTOL) -> None:
        what = None
        if other.dtype != self.dtype:
            what = f"data type {other.dtype}, unlike {self.dtype}"
        elif other.shape != self.shape:
            what = f"(Z, Y, X) size {other.shape}, unlike {self.shape}"
        elif (other.unit or "") != (self.unit or "") or not _same_voxel(
                other.voxel, self.voxel, [voxel_rtol + a + b for a, b in zip(self.rtol, other.rtol)]):
            what = f"voxel size {other.voxel} {other.unit}, unlike {self.voxel} {self.unit}"
        elif other.levels != self.levels:
            what = f"{other.levels} resolution levels, unlike {self.levels}"
        if what is not None:
            raise ValueError(f"tile {other.path} has {what} in {self.path}: linked tiles must match")


def _publish(temp: Path, final: Path) -> None:
    from fastims.convert import _fsync, _fsync_dir

    _fsync(temp)
    os.replace(temp, final)
    _fsync_dir(final.parent)


# ---------------------------------------------------------------------------------------
# Imaris
# ---------------------------------------------------------------------------------------


@dataclass
class _ImsTile:
    """What linking needs from one tile file (read once, file closed)."""

    source: LinkSource
    rel: str
    scene: str
    ntime: int
    nchannels: int
    geometry: _Geometry
    info: dict[str, dict[str, Any]]
    times: list[Any]


@dataclass
class _ImsDataset:
    """One ``DataSet{i}``: (t, c) -> (tile, t in tile, c in tile, global channel)."""

    volumes: dict[tuple[int, int], tuple[_ImsTile, int, int, int]] = field(default_factory=dict)


def _tile_error(path: Path, exc: FormatError, func: str) -> FormatError:
    """A tile's read error naming the tile, and `func`'s option where the reader names its own."""
    from fastims.reader import external_path_advice

    return FormatError(f"tile {path}: {external_path_advice(str(exc), func)}")


def _read_ims_tile(source: LinkSource, folder: Path, *, allow_external_paths: bool = False) -> _ImsTile:
    from fastims.ims.reader import ImsReader

    path = source.path
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "tile not found", str(path))
    rel = _relative(path, folder, "tile")
    try:
        reader = ImsReader(path, allow_external_paths=allow_external_paths)
    except FormatError as exc:
        raise _tile_error(path, exc, "link_ims") from exc
    with reader:
        if reader.scenes and len(reader.scenes) > 1:
            warnings.warn(f"{path.name} holds {len(reader.scenes)} datasets; linking the first",
                          UserWarning, stacklevel=3)
        nt, nc, *zyx = reader.shape
        meta = reader.metadata
        rtol = _float32_extent_rtol(meta.get("DataSetInfo", {}).get("Image", {}))
        geometry = _Geometry(path, tuple(zyx), reader.dtype, tuple(reader.voxel_size),  # type: ignore[arg-type]
                             reader.unit, reader.levels, rtol)  # type: ignore[arg-type]
        return _ImsTile(source, rel, reader.scenes[0], nt, nc, geometry,
                        meta.get("DataSetInfo", {}), reader.timepoints)


def _color_args(
    name: str, values: Sequence[Any] | None, n: int, width: int
) -> list[tuple[float, ...]] | None:
    """Per-channel tuples from nested or flat (imaris-linker's ``r g b r g b``) lists."""
    if values is None:
        return None
    flat = list(values)
    if flat and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in flat):
        if len(flat) % width:
            raise ValueError(f"{name} needs {width} numbers per channel, got {len(flat)} numbers")
        rows = [tuple(float(v) for v in flat[i : i + width]) for i in range(0, len(flat), width)]
    else:
        rows = [tuple(float(v) for v in row) for row in flat]
        if any(len(r) != width for r in rows):
            raise ValueError(f"{name} needs {width} numbers per channel, got {values!r}")
    if len(rows) != n:
        raise ValueError(
            f"{name} gives {len(rows)} channel{'s' if len(rows) != 1 else ''}, but the tiles have "
            f"{n} channel{'s' if n != 1 else ''}"
        )
    if not all(math.isfinite(v) for r in rows for v in r):
        raise ValueError(f"{name} must be finite numbers, got {values!r}")
    if name == "color_ranges" and any(lo > hi for lo, hi in rows):
        raise ValueError(f"a color range is (min, max); {name} has a min above its max: {values!r}")
    return rows


def link_ims(
    path: str | os.PathLike[str],
    sources: Iterable[Any] | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
    pattern: str | TilePattern = DEFAULT_IMS_PATTERN,
    x_tiles: int | None = None,
    y_tiles: int | None = None,
    z_tiles: int | None = None,
    channels: Sequence[Any] | None = None,
    channel_colors: Sequence[Any] | None = None,
    color_ranges: Sequence[Any] | None = None,
    color_table: Any = None,
    split_channels: bool = True,
    voxel_rtol: float = _RTOL,
    overwrite: bool = False,
    allow_external_paths: bool = False,
) -> Path:
    """Link Imaris tiles into one multi-dataset ``.ims`` (imaris-linker's layout).

    Parameters
    ----------
    path : path-like
        The linked ``.ims`` to write; every tile must be in its folder or below.
    sources : iterable, optional
        The tiles: paths (dataset order), :class:`LinkSource` entries or dicts of their
        fields. Default: the grid `pattern` names in `folder`.
    folder : path-like, optional
        Folder of the grid (default: the folder of `path`).
    pattern : str or TilePattern
        File names of the grid (default imaris-linker's
        ``tile_x_{x:04d}_y_{y:04d}_z_{z:04d}_ch_{ch}.ims``).
    x_tiles, y_tiles, z_tiles : int, optional
        Grid size (default: what the folder holds).
    channels : sequence, optional
        Channel labels in the names, e.g. ``[488, 561]`` (default: what the folder holds).
    channel_colors : sequence, optional
        ``(r, g, b)`` in 0..1 per channel (or imaris-linker's flat ``r g b r g b ...``).
    color_ranges : sequence, optional
        ``(min, max)`` display range per channel (or flat ``min max min max ...``).
    color_table : array_like, optional
        ``(n, 3)`` colour table in 0..1 for every channel (``ColorMode`` ``TableColor``),
        instead of `channel_colors`.
    split_channels : bool
        Each channel its own dataset, as imaris-linker does (default); ``False`` gathers a
        tile's channels in one dataset.
    voxel_rtol : float
        Relative difference of voxel sizes below which tiles count as alike (default 1e-6).
        The voxel sizes of .ims tiles come from float32 extents; their uncertainty is added
        (~5e-4 for tiles tens of millimetres from the stage origin).
    overwrite : bool
        Replace an existing `path`.
    allow_external_paths : bool
        Read tiles whose own HDF5 external links leave the tile's folder (see
        :class:`fastims.ImsReader`). The links written into `path` are always relative and
        inside its folder.

    Returns
    -------
    pathlib.Path
        `path`.

    Raises
    ------
    FileNotFoundError
        For missing tiles (all named) or folders.
    FileExistsError
        If `path` exists and `overwrite` is false.
    ValueError
        If tiles disagree in data type, size, voxel size or levels, two tiles claim the same
        place, a dataset lacks a channel or time point, a tile is outside the folder of
        `path`, or the colours do not match the number of channels.
    FormatError
        If a tile is not a readable Imaris file, or links outside its folder without
        `allow_external_paths`.

    Examples
    --------
    >>> link_ims("/data/run1/all.ims", x_tiles=2, y_tiles=3, channels=[488, 561],
    ...          color_ranges=[(0, 1000), (0, 500)])  # doctest: +SKIP
    PosixPath('/data/run1/all.ims')
    """
    import h5py

    from fastims.ims.attrs import write_attr_str, write_attr_u32

    out = Path(os.path.normpath(os.path.abspath(os.fspath(path))))
    if out.suffix.lower() != ".ims":
        raise ValueError(f"the linked Imaris file must end in .ims, got {out.name!r}")
    if color_table is not None and channel_colors is not None:
        raise ValueError("give channel_colors or color_table, not both")
    if sources is None:
        grid_folder = Path(os.fspath(folder)) if folder is not None else out.parent
        entries = grid_sources(grid_folder, pattern, x_tiles=x_tiles, y_tiles=y_tiles,
                               z_tiles=z_tiles, channels=channels)
    else:
        if any(v is not None for v in (folder, x_tiles, y_tiles, z_tiles, channels)):
            raise ValueError("folder, x_tiles, y_tiles, z_tiles and channels describe a grid; "
                             "do not pass them with explicit sources")
        entries = _as_sources(sources)
    _check_out(out, overwrite, entries)
    folder_out = out.parent

    tiles = [_read_ims_tile(e, folder_out, allow_external_paths=allow_external_paths) for e in entries]
    first = tiles[0].geometry
    for tile in tiles[1:]:
        first.check(tile.geometry, voxel_rtol)

    datasets: dict[tuple[int, ...], _ImsDataset] = {}
    names: dict[int, str] = {}
    for tile in tiles:
        s = tile.source
        for tf in range(tile.ntime):
            for cf in range(tile.nchannels):
                gch = s.channel + cf
                key = (gch, s.tile) if split_channels else (s.tile,)
                c_in = 0 if split_channels else gch
                ds = datasets.setdefault(key, _ImsDataset())
                slot = (s.time + tf, c_in)
                if slot in ds.volumes:
                    other = ds.volumes[slot][0].source.path
                    raise ValueError(
                        f"{s.path} and {other} both give tile {s.tile}, channel {gch}, time point "
                        f"{s.time + tf}"
                    )
                ds.volumes[slot] = (tile, tf, cf, gch)
                if s.channel_name is not None and tile.nchannels == 1:
                    names.setdefault(gch, s.channel_name)
    nchannels = 1 + max(v[3] for d in datasets.values() for v in d.volumes.values())
    colors = _color_args("channel_colors", channel_colors, nchannels, 3)
    ranges = _color_args("color_ranges", color_ranges, nchannels, 2)
    if colors is not None and not all(0.0 <= v <= 1.0 for c in colors for v in c):
        raise ValueError(f"channel colours are (r, g, b) in 0..1, got {channel_colors!r}")
    table = None
    if color_table is not None:
        table = np.asarray(color_table, dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != 3 or not len(table) or not np.all((table >= 0) & (table <= 1)):
            raise ValueError(f"color_table must be (n, 3) values in 0..1, got shape {table.shape}")
    for key, ds in datasets.items():
        nt = 1 + max(t for t, _ in ds.volumes)
        nc = 1 + max(c for _, c in ds.volumes)
        holes = [(t, c) for t in range(nt) for c in range(nc) if (t, c) not in ds.volumes]
        if holes:
            where = "tile {}".format(key[-1]) + (f" channel {key[0]}" if split_channels else "")
            raise ValueError(
                f"{where} lacks (time point, channel) {holes[:8]}: no tile file gives them"
            )

    order = sorted(datasets)
    temp = _temp_name(out)
    try:
        with h5py.File(temp, "w", libver=("v108", "v108")) as f:
            write_attr_str(f, "ImarisDataSet", "ImarisDataSet")
            write_attr_str(f, "ImarisVersion", "5.5.0")
            write_attr_str(f, "DataSetDirectoryName", "DataSet")
            write_attr_str(f, "DataSetInfoDirectoryName", "DataSetInfo")
            write_attr_str(f, "ThumbnailDirectoryName", "Thumbnail")
            write_attr_u32(f, "NumberOfDataSets", len(order))
            for i, key in enumerate(order):
                suffix = str(i) if i else ""
                ds = datasets[key]
                group = f.create_group("DataSet" + suffix)
                for (t, c), (tile, tf, cf, _g) in sorted(ds.volumes.items()):
                    for r in range(first.levels):
                        parent = group.require_group(f"ResolutionLevel {r}/TimePoint {t}")
                        parent[f"Channel {c}"] = h5py.ExternalLink(
                            tile.rel, f"/{tile.scene}/ResolutionLevel {r}/TimePoint {tf}/Channel {cf}"
                        )
                _write_ims_info(f.create_group("DataSetInfo" + suffix), ds, names, colors, ranges, table)
        _publish(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return out


def _ascii(text: Any) -> str:
    return str(text).encode("ascii", "replace").decode("ascii")


def _write_section(group: Any, values: Mapping[str, Any], skip: Iterable[str] = ()) -> None:
    from fastims.ims.attrs import write_attr_str

    for key, value in values.items():
        if key in skip or value is None:
            continue
        write_attr_str(group, key, _ascii(value), long_to_dataset=True)


def _write_ims_info(
    info: Any,
    ds: _ImsDataset,
    names: Mapping[int, str],
    colors: list[tuple[float, ...]] | None,
    ranges: list[tuple[float, ...]] | None,
    table: np.ndarray | None,
) -> None:
    """``DataSetInfo{i}``: the first tile's sections, its channels, no RecordingDate."""
    from fastims.ims.attrs import format_datetime, write_attr_str
    from fastims.ims.color import format_color, format_color_range, format_color_table

    base = ds.volumes[(0, 0)][0]
    for section, values in base.info.items():
        if re.fullmatch(r"Channel \d+", section) or section == "TimeInfo":
            continue
        group = info.require_group(section)
        # a dated image makes Imaris read the datasets as time points (imaris-linker README)
        _write_section(group, values, skip=("RecordingDate",) if section == "Image" else ())
    nt = 1 + max(t for t, _ in ds.volumes)
    nc = 1 + max(c for _, c in ds.volumes)
    for c in range(nc):
        tile, _tf, cf, gch = ds.volumes[(0, c)]
        group = info.require_group(f"Channel {c}")
        _write_section(group, tile.info.get(f"Channel {cf}", {}))
        own = tile.info.get(f"Channel {cf}", {}).get("Name")
        if gch in names and (not own or re.fullmatch(r"Channel \d+|\(name not specified\)", str(own))):
            # the label from the file name says more than a default name
            write_attr_str(group, "Name", _ascii(names[gch]))
        elif not own:
            write_attr_str(group, "Name", f"Channel {gch}")
        if table is not None:
            for key in ("Color", "ColorTable"):
                if key in group:
                    del group[key]
                if key in group.attrs:
                    del group.attrs[key]
            write_attr_str(group, "ColorMode", "TableColor")
            write_attr_str(group, "ColorTable", format_color_table(table), long_to_dataset=True)
            write_attr_str(group, "ColorTableLength", str(len(table)))
            write_attr_str(group, "ColorOpacity", "1.000")
        elif colors is not None:
            write_attr_str(group, "ColorMode", "BaseColor")
            write_attr_str(group, "Color", format_color(colors[gch]))
        if ranges is not None:
            write_attr_str(group, "ColorRange", format_color_range(*ranges[gch]))
    if nt > 1:
        # several time points in one dataset: their stamps (drop them all if any is unknown)
        stamps = [ds.volumes[(t, 0)][0].times[ds.volumes[(t, 0)][1]] for t in range(nt)]
        tinfo = info.require_group("TimeInfo")
        write_attr_str(tinfo, "DatasetTimePoints", str(nt))
        write_attr_str(tinfo, "FileTimePoints", str(nt))
        known = all(s is not None for s in stamps) and all(b > a for a, b in zip(stamps, stamps[1:]))
        for t, s in enumerate(stamps):
            write_attr_str(tinfo, f"TimePoint{t + 1}", format_datetime(s) if known else "")


# ---------------------------------------------------------------------------------------
# BigDataViewer
# ---------------------------------------------------------------------------------------


@dataclass
class _BdvSetupOut:
    """One setup of the master."""

    keys: dict[str, int]
    name: str
    geometry: _Geometry
    factors: list[tuple[float, float, float]]
    chunks: list[tuple[int, int, int]]
    data_type: str | None
    voxel: tuple[float, float, float]
    unit: str


@dataclass
class _BdvView:
    source: LinkSource
    setup: int  # global id
    time: int  # global id
    src_time: int  # id in the tile
    src_setup: int  # id in the tile
    cells: list[tuple[str, str]]  # per level: (relative file, dataset path)
    transforms: list[tuple[str, np.ndarray]] | None
    location: tuple[float, float, float] | None  # (z, y, x)
    part_rel: str


def _bdv_file(reader: Any) -> Path:
    h5 = reader.spimdata.image_loader.hdf5
    return Path(h5) if h5 is not None else reader.path


def _bdv_location(reader: Any, t: int, sid: int, vox: Sequence[float], unit: str,
                  smallest: tuple[float, str]) -> tuple[float, float, float] | None:
    """(z, y, x) tile position of a view whose registration is calibration + translation."""
    from fastims.convert import _calibration

    try:
        affine = np.asarray(reader.affine(t, sid), dtype=np.float64)
    except KeyError:
        return None
    cal = _calibration(vox, unit, smallest)
    if not np.allclose(affine[:, :3], cal[:3, :3], rtol=1e-9, atol=1e-12):
        return None
    x, y, z = (float(v) * smallest[0] for v in affine[:, 3])
    return (z, y, x)


def link_bdv(
    path: str | os.PathLike[str],
    sources: Iterable[Any] | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
    pattern: str | TilePattern = DEFAULT_BDV_PATTERN,
    x_tiles: int | None = None,
    y_tiles: int | None = None,
    z_tiles: int | None = None,
    channels: Sequence[Any] | None = None,
    voxel_rtol: float = _RTOL,
    overwrite: bool = False,
    allow_external_paths: bool = False,
) -> Path:
    """Link BigDataViewer tiles (``.xml`` + ``.h5`` each) into one master ``.xml`` + ``.h5``.

    Each tile file's views become views of the master: its setups' illumination, channel,
    tile and angle (renumbered densely within the file) are offset by the
    :class:`LinkSource`'s indices, its time points by ``time``. The master ``.h5`` holds each
    setup's ``resolutions``/``subdivisions``/``dataType`` and, per view and level, an external
    link to the tile's ``cells``; the XML lists every tile file as a ``<partition>``.

    Registrations: a source's ``position`` gives BigStitcher's ``Translation`` +
    ``calibration``; otherwise the tile's own registration is kept and its translation
    becomes the tile's ``location``. A UserWarning names kept registrations whose scale
    differs from the calibration given to the other tiles (mixed world units).

    Parameters
    ----------
    path : path-like
        Master ``.xml`` (or ``.h5``; the other is written beside it).
    sources : iterable, optional
        Tiles: paths (tile = position in the list), :class:`LinkSource` entries or dicts.
        Default: the grid `pattern` names in `folder`.
    folder, pattern, x_tiles, y_tiles, z_tiles, channels
        The grid, as for :func:`link_ims` (pattern default
        ``tile_x_{x:04d}_y_{y:04d}_z_{z:04d}_ch_{ch}.xml``).
    voxel_rtol : float
        Relative difference of voxel sizes below which tiles count as alike (default 1e-6).
    overwrite : bool
        Replace an existing master.
    allow_external_paths : bool
        Read tiles whose XML names an ``.h5`` outside the XML's folder (``<hdf5>`` given as
        an absolute path or as ``../data/t.h5``; see :class:`fastims.BdvReader`). The data
        files must still lie in the master's folder or below: the master links them by
        relative paths.

    Returns
    -------
    pathlib.Path
        The master XML.

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError, FormatError
        As :func:`link_ims` (missing or mismatched tiles, two tiles for one view, tiles
        outside the master's folder, unreadable tiles, tiles whose data lie outside their
        XML's folder without `allow_external_paths`).
    """
    import h5py

    from fastims.bdv import xmlwrite
    from fastims.bdv.reader import BdvReader
    from fastims.bdv.writer import LIBVER, pair_paths, write_ascii_attr
    from fastims.bdv.xmlwrite import Document, PartitionEntry, SetupEntry, calibration_transforms
    from fastims.convert import _smallest_voxel

    xml_path, h5_path = (Path(os.path.normpath(os.path.abspath(p))) for p in pair_paths(path))
    if sources is None:
        grid_folder = Path(os.fspath(folder)) if folder is not None else xml_path.parent
        entries = grid_sources(grid_folder, pattern, x_tiles=x_tiles, y_tiles=y_tiles,
                               z_tiles=z_tiles, channels=channels)
    else:
        if any(v is not None for v in (folder, x_tiles, y_tiles, z_tiles, channels)):
            raise ValueError("folder, x_tiles, y_tiles, z_tiles and channels describe a grid; "
                             "do not pass them with explicit sources")
        entries = _as_sources(sources)
    for p in (xml_path, h5_path):
        _check_out(p, overwrite, entries)
    for e in entries:
        if e.path.suffix.lower() == ".h5" and os.path.normpath(os.path.abspath(e.path)) == str(h5_path):
            raise ValueError(f"the master {h5_path} cannot also be one of the tiles")
    folder_out = xml_path.parent

    setups: dict[tuple[int, ...], _BdvSetupOut] = {}
    views: dict[tuple[int, tuple[int, ...]], _BdvView] = {}
    labels: dict[str, dict[int, str]] = {k: {} for k in _ATTRIBUTE_KINDS}
    geometry0: _Geometry | None = None
    for entry in entries:
        if not entry.path.exists():
            raise FileNotFoundError(errno.ENOENT, "tile not found", str(entry.path))
        _relative(entry.path, folder_out, "tile")
        try:
            reader = BdvReader(entry.path, allow_external_paths=allow_external_paths)
        except FormatError as exc:
            raise _tile_error(entry.path, exc, "link_bdv") from exc
        with reader:
            part_rel = _relative(_bdv_file(reader), folder_out, "tile data file")
            src_setups = reader.setups
            dense = {
                kind: {i: n for n, i in enumerate(sorted({s.attributes.get(kind, 0) for s in src_setups}))}
                for kind in _ATTRIBUTE_KINDS
            }
            offsets = {"illumination": entry.illumination, "channel": entry.channel,
                       "tile": entry.tile, "angle": entry.angle}
            values = reader.attribute_values
            smallest = _smallest_voxel([(s.voxel_size or reader.voxel_size, s.unit or "pixel") for s in src_setups])
            for c, s in enumerate(src_setups):
                try:
                    data = reader._setup(c)
                except (KeyError, FileNotFoundError) as exc:
                    raise FormatError(f"tile {entry.path}: setup {s.id} has no readable data ({exc})") from exc
                keys = {k: offsets[k] + dense[k][s.attributes.get(k, 0)] for k in _ATTRIBUTE_KINDS}
                key = tuple(keys[k] for k in _ATTRIBUTE_KINDS)
                vox = tuple(float(v) for v in (s.voxel_size or reader.voxel_size))
                unit = s.unit or "pixel"
                geo = _Geometry(entry.path, data.shapes[0], data.dtype, vox, unit, len(data.shapes))  # type: ignore[arg-type]
                if geometry0 is None:
                    geometry0 = geo
                else:
                    geometry0.check(geo, voxel_rtol)
                legacy = data.read_dtype != data.dtype
                out_setup = _BdvSetupOut(
                    keys=keys,
                    name=entry.path.stem if len(src_setups) == 1 else f"{entry.path.stem} {s.name or s.id}",
                    geometry=geo,
                    factors=list(data.factors),
                    chunks=[ch if ch is not None else shp for ch, shp in zip(data.chunks, data.shapes)],
                    data_type=None if legacy else data.dtype.name,
                    voxel=vox,  # type: ignore[arg-type]
                    unit=unit,
                )
                setups.setdefault(key, out_setup)
                # labels: the entry's names for single-valued files, else the file's own names
                for kind in _ATTRIBUTE_KINDS:
                    gid = keys[kind]
                    name = None
                    if kind == "tile" and entry.tile_name is not None and len(dense["tile"]) == 1:
                        name = entry.tile_name
                    elif kind == "channel" and entry.channel_name is not None and len(dense["channel"]) == 1:
                        name = entry.channel_name
                    else:
                        src_id = s.attributes.get(kind, 0)
                        ent = values.get(kind, {}).get(src_id)
                        name = ent.name.strip() if ent is not None and ent.name else None
                        if name == str(src_id):  # named by its id: unnamed, named by its new id
                            name = None
                    labels[kind].setdefault(gid, name or str(gid))
                for ti, tp in enumerate(reader.timepoint_ids):
                    if (tp, s.id) in reader.missing_views:
                        continue
                    gt = entry.time + ti
                    vkey = (gt, key)
                    if vkey in views:
                        raise ValueError(
                            f"{entry.path} and {views[vkey].source.path} both give the view time "
                            f"point {gt}, " + ", ".join(f"{k} {v}" for k, v in keys.items())
                        )
                    cells = []
                    for level in range(len(data.shapes)):
                        try:
                            ds, _ = reader._get_dataset(level, ti, c)
                        except KeyError:
                            continue  # absent view: MissingViews
                        except FormatError as exc:  # e.g. an external link leaving the tile's folder
                            raise _tile_error(entry.path, exc, "link_bdv") from exc
                        cells.append((_relative(Path(ds.file.filename), folder_out, "tile data file"), ds.name))
                    if not cells:
                        continue
                    if len(cells) != len(data.shapes):
                        raise FormatError(f"tile {entry.path}: view (time point {tp}, setup {s.id}) lacks levels")
                    # BigStitcher's Translation + calibration when the tile's registration is
                    # that (or a position is given); any other registration is kept as it is
                    transforms = None
                    location = entry.position
                    if location is None:
                        location = _bdv_location(reader, ti, s.id, vox, unit, smallest)
                    if location is None:
                        regs = reader.spimdata.registrations.get((tp, s.id))
                        if regs:
                            transforms = [(tr.name or "affine", np.asarray(tr.affine)) for tr in regs
                                          if tr.affine is not None]
                        tile_ent = values.get("tile", {}).get(s.attributes.get("tile", 0))
                        if tile_ent is not None and "location" in tile_ent.extra:
                            try:
                                lx, ly, lz = (float(v) for v in tile_ent.extra["location"].split())
                                location = (lz, ly, lx)
                            except ValueError:
                                location = None
                    views[vkey] = _BdvView(entry, -1, gt, tp, s.id, cells, transforms, location, part_rel)
    if not views:
        raise ValueError("the tiles hold no view with data")

    counts = {k: 1 + max(key[i] for key in setups) for i, k in enumerate(_ATTRIBUTE_KINDS)}
    ids: dict[tuple[int, ...], int] = {}
    for key in setups:
        sid = 0
        for kind, v in zip(_ATTRIBUTE_KINDS, key):
            sid = sid * counts[kind] + v
        ids[key] = sid
    smallest = _smallest_voxel([(s.voxel, s.unit) for s in setups.values()])
    doc = Document(h5_path=h5_path.name)
    for key, s in setups.items():
        doc.setups[ids[key]] = SetupEntry(
            id=ids[key], name=s.name, size=s.geometry.shape, voxel_size=s.voxel, unit=s.unit,
            attributes=dict(s.keys),
        )
    doc.attribute_labels = {k: dict(v) for k, v in labels.items()}
    times = sorted({t for t, _ in views})
    all_times = list(range(times[0], times[-1] + 1))  # a time point without any view: all missing
    doc.timepoints = all_times
    present = {(t, ids[key]) for t, key in views}
    doc.missing = {(t, sid) for t in all_times for sid in ids.values() if (t, sid) not in present}
    parts: dict[str, tuple[set[int], set[int], dict[int, int], dict[int, int]]] = {}
    _warn_mixed_world_units(views, setups, smallest)
    for (t, key), view in views.items():
        view.setup = ids[key]
        s = setups[key]
        if view.transforms is None:
            view.transforms = calibration_transforms(s.voxel, s.unit, smallest[0], smallest_unit=smallest[1],
                                                     tile_location=view.location)
        doc.registrations[(t, view.setup)] = view.transforms
        tile_id = s.keys["tile"]
        if view.location is not None:
            x_y_z = (view.location[2], view.location[1], view.location[0])
            known = doc.tile_locations.get(tile_id)
            if known is not None and not np.allclose(known, x_y_z):
                logger.warning("tile %d has different positions in its views; keeping %s", tile_id, known)
            else:
                doc.tile_locations[tile_id] = x_y_z
        tps, sps, tmap, smap = parts.setdefault(view.part_rel, (set(), set(), {}, {}))
        tps.add(t)
        sps.add(view.setup)
        tmap[t] = view.src_time
        smap[view.setup] = view.src_setup
    mapped: list[tuple[dict[int, int], dict[int, int]]] = []
    for rel, (tps, sps, tmap, smap) in sorted(parts.items()):
        doc.partitions.append(PartitionEntry(rel, sorted(tps), sorted(sps)))
        mapped.append((tmap, smap))

    tmp_h5 = _temp_name(h5_path)
    try:
        with h5py.File(tmp_h5, "w", libver=LIBVER) as f:
            for key, s in setups.items():
                grp = f.create_group(f"s{ids[key]:02d}")
                grp.create_dataset("resolutions", data=np.array([tuple(reversed(v)) for v in s.factors], dtype="<f8"))
                grp.create_dataset("subdivisions", data=np.array([tuple(reversed(v)) for v in s.chunks], dtype="<i4"))
                if s.data_type is not None:
                    write_ascii_attr(grp, "dataType", s.data_type)
            for (t, _key), view in sorted(views.items(), key=lambda kv: (kv[0][0], kv[1].setup)):
                for level, (rel, dpath) in enumerate(view.cells):
                    grp = f.require_group(f"t{t:05d}/s{view.setup:02d}/{level}")
                    grp["cells"] = h5py.ExternalLink(rel, dpath)
        root = xmlwrite.build_spimdata(doc)
        _add_partition_maps(root, doc.partitions, mapped)
        _publish(tmp_h5, h5_path)
    except BaseException:
        tmp_h5.unlink(missing_ok=True)
        raise
    xmlwrite.write_xml(xml_path, root)
    return xml_path


def _warn_mixed_world_units(views: Mapping[Any, Any], setups: Mapping[Any, Any], smallest: tuple[float, str]) -> None:
    """Warn when tiles keeping their own registration scale voxels unlike the calibration
    given to the others (world unit: the smallest voxel): BigStitcher would place them at
    different scales (e.g. npy2bdv registers views by the identity, whatever their voxel size)."""
    from fastims.convert import _calibration, _h4

    if all(view.transforms is not None for view in views.values()):
        return  # no tile is calibrated: every world unit is the tiles' own
    foreign = []
    expected: dict[Any, np.ndarray] = {}  # per setup: a view's voxel scales under calibration
    for (_t, key), view in views.items():
        if view.transforms is None:
            continue
        if key not in expected:
            s = setups[key]
            expected[key] = np.linalg.norm(_calibration(s.voxel, s.unit, smallest)[:3, :3], axis=0)
        total = np.eye(4)
        for _name, m in view.transforms:  # 3x4 affines, listed first = applied last
            total = total @ _h4(m)
        if not np.allclose(np.linalg.norm(total[:3, :3], axis=0), expected[key], rtol=1e-3):
            foreign.append(view.source.path)
    if foreign:
        names = sorted({Path(p).name for p in foreign})
        warnings.warn(
            f"tile(s) {', '.join(names)} keep their own registration, whose world unit differs from "
            f"the calibration given to the other tiles (1 = {smallest[0]:g} {smallest[1]}); viewers "
            "would place them at different scales. Give every tile a position to recalibrate them all",
            UserWarning, stacklevel=3,
        )


def _add_partition_maps(root: Any, partitions: list[Any], mapped: list[tuple[dict[int, int], dict[int, int]]]) -> None:
    """``timepointsMapped`` / ``setupsMapped`` where a partition's ids differ from the master's."""
    import xml.etree.ElementTree as ET

    elems = root.findall("SequenceDescription/ImageLoader/partition")
    for elem, part, (tmap, smap) in zip(elems, partitions, mapped):
        tlist = [tmap[t] for t in part.timepoints]
        slist = [smap[s] for s in part.setups]
        if tlist != list(part.timepoints) or slist != list(part.setups):
            ET.SubElement(elem, "timepointsMapped").text = " ".join(str(v) for v in tlist)
            ET.SubElement(elem, "setupsMapped").text = " ".join(str(v) for v in slist)
