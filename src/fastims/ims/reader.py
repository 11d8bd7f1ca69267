"""Lazy reader for Imaris (.ims) files: :class:`ImsReader` and :func:`read_ims`.

Reads every layout seen in the wild (``spec/imaris.md`` sections 1, 6, 7, 9, 10):

* ``DataSet/ResolutionLevel r/TimePoint t/Channel c/Data`` padded to whole chunks
  (ImarisWriter) or not (BigDataProcessor); the logical size comes from the Channel
  group's ``ImageSizeZ/Y/X``, else ``DataSetInfo/Image`` ``Z/Y/X`` (level 0), else the
  dataset shape;
* string attributes in any encoding (via :mod:`fastims.ims.attrs`);
* root groups that are soft links (newer Imaris) or external links (imaris-linker,
  BigDataProcessor headers), followed only inside the file's folder unless
  ``allow_external_paths=True``;
* several datasets in one file (``DataSet``, ``DataSet1``...), exposed as *scenes*;
* big-endian data (returned in native byte order), gzip/shuffle/LZ4 (hdf5plugin).
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from typing import Any

import numpy as np

from fastims.errors import FormatError
from fastims.ims.attrs import parse_datetime, read_attr_float, read_attr_int, read_attr_str
from fastims.reader import BaseReader, ImageLayout, LevelInfo

__all__ = ["ImsReader", "read_ims"]

_LEVEL_RE = re.compile(r"ResolutionLevel (\d+)")
_TIME_RE = re.compile(r"TimePoint (\d+)")
_CHANNEL_RE = re.compile(r"Channel (\d+)")
_TIMEPOINT_ATTR_RE = re.compile(r"TimePoint(\d+)")


class ImsReader(BaseReader):
    """Read an Imaris ``.ims`` file lazily, any resolution level, time point and channel.

    Parameters
    ----------
    path : path-like
        The ``.ims`` file.
    scene : int or str, optional
        Which dataset of a multi-dataset file to expose (index into :attr:`scenes` or
        its group name); default the first.
    allow_external_paths : bool, optional
        Follow external links that leave the file's folder.
    chunk_cache_bytes : int, optional
        HDF5 chunk cache per dataset (see :class:`fastims.reader.BaseReader`).

    Examples
    --------
    >>> with ImsReader("cells.ims") as r:  # doctest: +SKIP
    ...     r.shape, r.levels, r.voxel_size
    ...     plane = r[0, 0, 10]           # (Y, X) of t=0, c=0, z=10, level 0
    ...     small = r.asarray(level=2)    # (Z, Y, X)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        scene: int | str = 0,
        allow_external_paths: bool = False,
        chunk_cache_bytes: int | None = None,
    ) -> None:
        self._scene_request = scene
        self._scene = 0
        self._scenes: list[str] = []
        super().__init__(
            path, allow_external_paths=allow_external_paths, chunk_cache_bytes=chunk_cache_bytes
        )

    # ------------------------------------------------------------ scenes

    @property
    def scenes(self) -> list[str]:
        """Names of the datasets in the file (``["DataSet"]`` for ordinary files)."""
        return list(self._scenes)

    @property
    def scene(self) -> int:
        """Index of the current scene."""
        return self._scene

    def set_scene(self, scene: int | str) -> None:
        """Switch every property and read to another dataset of a multi-dataset file.

        Raises
        ------
        IndexError
            If ``scene`` is an index outside ``0..len(scenes)-1`` (negative indices count
            from the end).
        KeyError
            If ``scene`` is a name not in :attr:`scenes`.
        """
        self._info()  # raises on a closed reader
        index = self._scene_index(scene)
        with self._lock:
            previous = self._scene
            self._scene = index
            try:
                layout = self._load_scene()
            except BaseException:
                self._scene = previous  # stay on the scene that works
                raise
            self._datasets.clear()
            self._layout = layout

    def _scene_index(self, scene: int | str) -> int:
        if isinstance(scene, str):
            if scene not in self._scenes:
                raise KeyError(f"scene {scene!r} not in {self._scenes}")
            return self._scenes.index(scene)
        return self._check_index("scene", scene, len(self._scenes))

    def _reopen_kwargs(self) -> dict[str, Any]:
        return {**super()._reopen_kwargs(), "scene": self._scene}

    # ------------------------------------------------------------ loading

    def _load(self) -> ImageLayout:
        f = self._open_h5(self._path)
        self._file = f
        dir_name = read_attr_str(f, "DataSetDirectoryName") or "DataSet"
        self._info_dir = read_attr_str(f, "DataSetInfoDirectoryName") or "DataSetInfo"
        self._dir_name = dir_name
        self._scenes = self._find_scenes(f, dir_name)
        self._scene = self._scene_index(self._scene_request)
        return self._load_scene()

    def _find_scenes(self, f: Any, dir_name: str) -> list[str]:
        count = read_attr_int(f, "NumberOfDataSets")
        if count is not None and count >= 1:
            names = [dir_name + (str(i) if i else "") for i in range(count)]
        else:
            pattern = re.compile(re.escape(dir_name) + r"(\d*)")
            found = []
            for key in f.keys():
                m = pattern.fullmatch(key)
                if m:
                    found.append((int(m.group(1) or 0), key))
            names = [k for _, k in sorted(found)]
        # look at the links only: a scene linked to a missing file must not hide the others
        present = [n for n in names if f.get(n, getlink=True) is not None]
        if not present:
            raise FormatError(
                f"{self._path.name} is not an Imaris file: no {dir_name!r} group "
                f"(root holds {sorted(f.keys())})"
            )
        return present

    def _load_scene(self) -> ImageLayout:
        f = self._file
        scene = self._scenes[self._scene]
        root = self._resolve(f, scene)
        if root is None:
            raise FormatError(f"{self._path.name}: scene {scene!r} is a dangling link")
        suffix = scene[len(self._dir_name) :]
        info = self._resolve(f, self._info_dir + suffix)
        image = None if info is None else self._resolve(info, "Image")

        level_ids = _numbered(root, _LEVEL_RE)
        levels_n = _contiguous(level_ids)
        if levels_n == 0:
            raise FormatError(f"{self._path.name}: {scene} has no 'ResolutionLevel 0' group")
        lvl0 = self._resolve(root, "ResolutionLevel 0")
        ntime = _contiguous(_numbered(lvl0, _TIME_RE))
        if ntime == 0:
            raise FormatError(f"{self._path.name}: {scene}/ResolutionLevel 0 has no 'TimePoint 0'")
        tp0 = self._resolve(lvl0, "TimePoint 0")
        nchan = _contiguous(_numbered(tp0, _CHANNEL_RE))
        if nchan == 0:
            raise FormatError(
                f"{self._path.name}: {scene}/ResolutionLevel 0/TimePoint 0 has no 'Channel 0'"
            )

        # physical extent (outer faces of the border voxels, spec 1.3)
        image_size = None
        if image is not None:
            sizes = [read_attr_int(image, k) for k in ("Z", "Y", "X")]
            if all(s is not None and s > 0 for s in sizes):
                image_size = tuple(sizes)

        shapes: list[tuple[int, int, int]] = []
        chunks: list[tuple[int, int, int] | None] = []
        dtype: np.dtype | None = None
        for r in range(levels_n):
            group = self._resolve(root, f"ResolutionLevel {r}/TimePoint 0/Channel 0")
            data = None if group is None else self._resolve(group, "Data")
            if data is None or not hasattr(data, "shape"):
                if r == 0:
                    raise FormatError(
                        f"{self._path.name}: {scene}/ResolutionLevel 0/TimePoint 0/Channel 0 "
                        "has no Data dataset"
                    )
                break  # a truncated pyramid: expose the levels that exist
            if len(data.shape) != 3:
                raise FormatError(
                    f"{self._path.name}: {data.name} is {len(data.shape)}-D, expected (Z, Y, X)"
                )
            size = [read_attr_int(group, f"ImageSize{a}") for a in "ZYX"]
            if not all(s is not None and s >= 0 for s in size):
                size = list(image_size) if (r == 0 and image_size) else list(data.shape)
            shape = (int(size[0]), int(size[1]), int(size[2]))
            if any(s > d for s, d in zip(shape, data.shape)):
                raise FormatError(
                    f"{self._path.name}: {data.name} has shape {data.shape}, smaller than its "
                    f"ImageSize (Z, Y, X) {shape}"
                )
            shapes.append(shape)
            chunks.append(None if data.chunks is None else tuple(data.chunks))
            if r == 0:
                dtype = np.dtype(data.dtype.newbyteorder("="))
        if dtype is None:  # pragma: no cover - level 0 raised above when absent
            raise FormatError(f"{self._path.name}: {scene} has no readable level 0")

        ext = self._extent(image, shapes[0])
        origin = tuple(lo for lo, _ in ext)
        span = tuple(hi - lo for lo, hi in ext)
        n0 = image_size or shapes[0]
        voxel0 = tuple(_voxel(s, n) for s, n in zip(span, n0))
        levels = []
        for shape, ch in zip(shapes, chunks):
            # a coarser level covers the same extent with fewer voxels
            scale = tuple(n / max(1, s) for n, s in zip(n0, shape))
            vs: Any = tuple(v * k for v, k in zip(voxel0, scale))
            levels.append(LevelInfo(shape=shape, chunks=ch, voxel_size=vs))
        self._origin = origin

        unit = (read_attr_str(image, "Unit") if image is not None else None) or "um"
        names, colors = self._channels(info, nchan)
        return ImageLayout(
            ntime=ntime,
            nchannels=nchan,
            dtype=np.dtype(dtype),
            levels=levels,
            voxel_size=voxel0,  # type: ignore[arg-type]
            unit=unit,
            channel_names=names,
            channel_colors=colors,
            timepoints=self._timepoints(info, ntime),
            metadata=self._metadata(f, info),
        )

    def _extent(self, image: Any, shape: tuple[int, int, int]) -> list[tuple[float, float]]:
        """``(min, max)`` per (z, y, x); the voxel grid itself when the file has none."""
        out = []
        for axis, n in zip((2, 1, 0), shape):
            lo = read_attr_float(image, f"ExtMin{axis}") if image is not None else None
            hi = read_attr_float(image, f"ExtMax{axis}") if image is not None else None
            if lo is None or hi is None or not np.isfinite(lo) or not np.isfinite(hi) or lo == hi:
                lo, hi = 0.0, float(max(n, 1))
            if hi < lo:  # ImarisWriter swaps reversed extents (AdaptExtents)
                lo, hi = hi, lo
            out.append((lo, hi))
        return out

    def _channels(
        self, info: Any, nchan: int
    ) -> tuple[list[str], list[tuple[float, float, float] | None]]:
        names: list[str] = []
        colors: list[tuple[float, float, float] | None] = []
        for c in range(nchan):
            group = None if info is None else self._resolve(info, f"Channel {c}")
            # a name is kept as written (spaces, or empty); only a missing one gets the default
            name = read_attr_str(group, "Name", strip=False) if group is not None else None
            names.append(f"Channel {c}" if name is None else name)
            colors.append(None if group is None else _channel_color(group))
        return names, colors

    def _timepoints(self, info: Any, ntime: int) -> list[datetime | None]:
        times: list[datetime | None] = [None] * ntime
        tinfo = None if info is None else self._resolve(info, "TimeInfo")
        if tinfo is None:
            return times
        for t in range(ntime):
            text = read_attr_str(tinfo, f"TimePoint{t + 1}")
            if text:
                times[t] = parse_datetime(text)
        return times

    def _metadata(self, f: Any, info: Any) -> dict[str, Any]:
        import h5py

        meta: dict[str, Any] = {"root": {k: read_attr_str(f, k) for k in f.attrs}}
        sections: dict[str, Any] = {}
        if info is not None:
            for name in info.keys():
                group = self._resolve(info, name)
                if isinstance(group, h5py.Group):
                    entries: dict[str, Any] = {k: read_attr_str(group, k) for k in group.attrs}
                    for key in group.keys():  # long values stored as datasets (ColorTable)
                        # only real datasets: a link here must not open other files
                        if key not in entries and isinstance(
                            group.get(key, getlink=True), h5py.HardLink
                        ):
                            entries[key] = read_attr_str(group, key)
                    sections[name] = entries
        meta["DataSetInfo"] = sections
        meta["scene"] = self._scenes[self._scene]
        return meta

    # ------------------------------------------------------------ data

    def _dataset(self, level: int, t: int, c: int) -> tuple[Any, np.dtype]:
        scene = self._scenes[self._scene]
        path = f"{scene}/ResolutionLevel {level}/TimePoint {t}/Channel {c}/Data"
        ds = self._resolve(self._file, path)
        if ds is None or not hasattr(ds, "read_direct"):
            raise KeyError(
                f"{self._path.name} has no data for level {level}, time point {t}, "
                f"channel {c} ({path} is missing)"
            )
        return ds, self.dtype

    def _axis_origin(self, level: int) -> tuple[float, float, float]:
        vs = self._levels()[level].voxel_size
        return tuple(o + v / 2 for o, v in zip(self._origin, vs))  # type: ignore[return-value]


def read_ims(
    path: str | os.PathLike[str],
    *,
    level: int = 0,
    t: int | None = None,
    c: int | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Read an Imaris file (or part of it) into a NumPy array in one call.

    Parameters
    ----------
    path : path-like
        The ``.ims`` file.
    level : int, optional
        Resolution level.
    t, c : int, optional
        Select one time point / channel (that axis is dropped; negative counts from the
        end); ``None`` = all.
    **kwargs
        Passed to :class:`ImsReader` (``scene``, ``allow_external_paths``...).

    Returns
    -------
    numpy.ndarray
        ``(T, C, Z, Y, X)`` with ``t`` and/or ``c`` axes dropped when given.
    """
    with ImsReader(path, **kwargs) as reader:
        if t is not None and c is not None:
            return reader.asarray(level=level, t=t, c=c)
        view = reader.level(level)
        key = (slice(None) if t is None else _index(reader, "t", t, 0),
               slice(None) if c is None else _index(reader, "c", c, 1))
        return view[key]


def _index(reader: BaseReader, name: str, value: int, axis: int) -> int:
    return reader._check_index(name, value, reader.shape[axis])


# ---------------------------------------------------------------------------


def _numbered(group: Any, pattern: re.Pattern[str]) -> set[int]:
    """Indices of the children named like ``pattern`` (links are not followed)."""
    if group is None or not hasattr(group, "keys"):
        return set()
    out = set()
    for key in group.keys():
        m = pattern.fullmatch(key)
        if m:
            out.add(int(m.group(1)))
    return out


def _contiguous(ids: set[int]) -> int:
    """Length of the run 0, 1, 2, ... in ``ids``."""
    n = 0
    while n in ids:
        n += 1
    return n


def _voxel(span: float, n: int) -> float:
    return span / n if n > 0 and span > 0 else 1.0


def _floats(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        return []


def _channel_color(group: Any) -> tuple[float, float, float] | None:
    """``Color`` "r g b", else the brightest entry of ``ColorTable``; 0..1 floats."""
    mode = (read_attr_str(group, "ColorMode") or "").lower()
    rgb = _floats(read_attr_str(group, "Color"))
    table = _floats(read_attr_str(group, "ColorTable"))
    if (mode in ("tablecolor", "colortable") or len(rgb) != 3) and len(table) >= 3:
        rgb = table[len(table) // 3 * 3 - 3 : len(table) // 3 * 3]
        if max(rgb) > 1.0:  # some writers store 0..255
            rgb = [v / 255.0 for v in rgb]
    if len(rgb) != 3:
        return None
    return (rgb[0], rgb[1], rgb[2])
