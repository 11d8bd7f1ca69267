"""Lazy reader for BigDataViewer HDF5/XML datasets: :class:`BdvReader` and :func:`read_bdv`.

Layout and conventions (``spec/bdv.md`` sections 1, 2):

* data of view ``(timepoint id, setup id)`` at level ``L``:
  ``t{tp:05d}/s{setup:02d}/{L}/cells``, a ``(Z, Y, X)`` dataset whose shape — not the
  XML ``<size>`` nor ``resolutions`` — gives the level size (floor- or ceil-sized
  pyramids both work);
* ``s{NN}/resolutions`` (absolute x, y, z factors per level) and ``subdivisions``;
* ``s{NN}@dataType`` names the stored type; without it 16-bit data is BDV's legacy
  ``int16`` storage of ``uint16`` values and is reinterpreted bit for bit;
* partitions: the master file links views into partition files with HDF5 external
  links, and the XML lists the partitions (used here to find views the master does not
  link and to name missing files);
* loaders other than ``bdv.hdf5`` (n5, zarr, remote...) keep their XML metadata
  readable; their pixel data raises :class:`~fastims.UnsupportedFormatError`.

The unified ``(T, C, Z, Y, X)`` view enumerates timepoints in id order along T and view
setups in id order along C.  ``t`` arguments are always *indices* into
:attr:`BdvReader.timepoint_ids`; ``setup`` arguments are setup *ids*.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

import numpy as np

from fastims.bdv.spimdata import (
    HDF5_FORMATS,
    ZERO_FILLED_ATTR,
    ImageLoader,
    SpimData,
    ViewSetup,
    parse_integer_pattern,
    parse_spimdata,
)
from fastims.errors import FormatError, UnsupportedFormatError
from fastims.ims.attrs import read_attr_str  # tolerant HDF5 string-attribute decoding
from fastims.reader import BaseReader, ImageLayout, LevelInfo

__all__ = ["BdvReader", "read_bdv"]

#: N5 DataType names BDV writes in ``s{NN}@dataType`` (PR #157) -> NumPy type.
DATA_TYPES: dict[str, np.dtype] = {
    name: np.dtype(name)
    for name in (
        "int8", "uint8", "int16", "uint16", "int32", "uint32",
        "int64", "uint64", "float32", "float64",
    )
}

# BDV formats ids as s%02d and t%05d (minimum widths)
_SETUP_RE = re.compile(r"s(\d{2,})")
_TIME_RE = re.compile(r"t(\d{5,})")


def _view_path(timepoint: int, setup: int, level: int) -> str:
    return f"t{timepoint:05d}/s{setup:02d}/{level}/cells"


def _channel_names(spim: SpimData) -> list[str]:
    """One name per setup, in C order, for :attr:`BdvReader.channel_names`.

    The name of the setup's channel (``<Attributes name="channel">``) when the channel
    carries one; otherwise the setup's ``<name>``, else ``"setup {id}"``.  A channel whose
    name is only its id (``<id>1</id><name>1</name>``, what BigStitcher and the fastims
    writer emit for unnamed channels) carries no name.  A channel name shared by several
    setups (the tiles, angles or illuminations of one channel) gets the setup's own name
    appended, ``"GFP (setup 2)"``, so that the names stay distinct.
    """
    channels = spim.attribute_values.get("channel", {})
    own = [s.name or f"setup {s.id}" for s in spim.setups.values()]
    labels: list[str | None] = []
    for s in spim.setups.values():
        cid = s.attributes.get("channel")
        entity = channels.get(cid) if cid is not None else None
        name = (entity.name or "").strip() if entity is not None else ""
        labels.append(name if name and name != str(cid) else None)
    shared = {n for n, k in Counter(labels).items() if n is not None and k > 1}
    return [
        fallback if label is None else (f"{label} ({fallback})" if label in shared else label)
        for label, fallback in zip(labels, own)
    ]


class _SetupData:
    """What the HDF5 file says about one setup: levels, dtypes, factors."""

    def __init__(
        self,
        shapes: list[tuple[int, int, int]],
        chunks: list[tuple[int, int, int] | None],
        factors: list[tuple[float, float, float]],
        dtype: np.dtype,
        read_dtype: np.dtype,
    ) -> None:
        self.shapes = shapes
        self.chunks = chunks
        self.factors = factors  # (z, y, x) per level
        self.dtype = dtype
        self.read_dtype = read_dtype


class BdvReader(BaseReader):
    """Read a BigDataViewer dataset (``.xml`` + ``.h5``, or the ``.h5`` alone) lazily.

    Parameters
    ----------
    path : path-like
        The SpimData ``.xml`` or the BDV ``.h5`` file.  Without XML the setups,
        timepoints and levels are derived from the ``s{NN}`` and ``t{TTTTT}`` groups
        (no voxel sizes, names or registrations).
    allow_external_paths : bool, optional
        Follow ``BasePath``, ``<hdf5>``, partition paths and external links that
        leave the folder of ``path``.
    chunk_cache_bytes : int, optional
        HDF5 chunk cache per dataset (see :class:`fastims.reader.BaseReader`).

    Notes
    -----
    The unified properties (:attr:`shape`, :attr:`dtype`, :attr:`chunks`,
    :attr:`level_shapes`) describe the first setup with data; :attr:`levels` is the
    smallest level count of all setups.  Setups of another size are read one at a time
    with ``asarray``; a selection spanning setups of different types is returned in
    their common type (``numpy.result_type``).  :attr:`channel_names` has one name per
    setup: its channel's name when the ``channel`` attribute names it, else the setup's
    name (``"GFP (setup 2)"`` when several setups share a channel name).

    Examples
    --------
    >>> with BdvReader("dataset.xml") as r:  # doctest: +SKIP
    ...     r.setups[0].attributes, r.affine(0, 0)
    ...     vol = r.asarray(level=1, t=0, channel=1, tile=3)
    """

    _padded = False  # BDV stores each view at its size: a dataset of another size is an error

    # ------------------------------------------------------------ loading

    def _load(self) -> ImageLayout:
        self._h5: Any = None
        self._setup_data: dict[int, _SetupData] = {}
        self._setup_errors: dict[int, Exception] = {}
        if self._path.suffix.lower() == ".xml":
            spim = parse_spimdata(self._path)
            self._check_inside(spim.base_path, what="BasePath")
            self._spim = spim
            self._from_xml = True
            loader = spim.image_loader
            if loader.format not in HDF5_FORMATS:
                return self._layout_without_data(
                    UnsupportedFormatError(
                        f"{self._path.name}: image loader {loader.format!r} is not supported "
                        "(fastims reads bdv.hdf5); the XML metadata is available, the pixel "
                        "data is not"
                    )
                )
            if loader.hdf5 is None:
                raise FormatError(f"{self._path.name}: bdv.hdf5 image loader without <hdf5> path")
            h5_path = self._check_inside(loader.hdf5, what="<hdf5> path")
            for part in loader.partitions:
                self._check_inside(part.path, what="partition path")
            self._h5 = self._open_h5(h5_path, what="BDV HDF5 file")
        else:
            self._h5 = self._open_h5(self._path)
            self._spim = self._spimdata_from_h5(self._h5)
            self._from_xml = False
        return self._layout_with_data()

    def _spimdata_from_h5(self, f: Any) -> SpimData:
        """A SpimData model derived from the HDF5 groups alone."""
        setup_ids = sorted(
            int(m.group(1)) for k in f.keys() if (m := _SETUP_RE.fullmatch(k))
        )
        time_ids = sorted(int(m.group(1)) for k in f.keys() if (m := _TIME_RE.fullmatch(k)))
        if not setup_ids or not time_ids:
            raise FormatError(
                f"{self._path.name} is not a BigDataViewer HDF5 file: it needs s00.. and "
                f"t00000.. groups (root holds {sorted(f.keys())})"
            )
        missing = set()
        for tp in time_ids:
            group = f[f"t{tp:05d}"]
            for s in setup_ids:
                if group.get(f"s{s:02d}", getlink=True) is None:
                    missing.add((tp, s))
        return SpimData(
            xml_path=None,
            version="0.2",
            base_path=self._root_dir,
            image_loader=ImageLoader(format="bdv.hdf5", hdf5=self._path),
            setups={s: ViewSetup(id=s) for s in setup_ids},
            attribute_values={},
            timepoints=time_ids,
            timepoint_names={t: str(t) for t in time_ids},
            timepoints_type="list",
            registrations={},
            missing_views=frozenset(missing),
        )

    def _common_layout(self) -> dict[str, Any]:
        spim = self._spim
        self._setup_ids = list(spim.setups)
        self._time_ids = list(spim.timepoints)
        first = spim.setups[self._setup_ids[0]] if self._setup_ids else None
        voxel = (first.voxel_size if first is not None else None) or (1.0, 1.0, 1.0)
        names = _channel_names(spim)
        metadata = spim.to_dict()
        metadata["xml"] = None if spim.xml_path is None else str(spim.xml_path)
        return {
            "ntime": len(self._time_ids),
            "nchannels": len(self._setup_ids),
            "voxel_size": tuple(float(v) for v in voxel),
            "unit": None if first is None else first.unit,
            "channel_names": names,
            "channel_colors": None,
            "timepoints": [None] * len(self._time_ids),
            "metadata": metadata,
        }

    def _layout_without_data(self, error: Exception) -> ImageLayout:
        common = self._common_layout()
        sizes = {s.size for s in self._spim.setups.values()}
        shape0 = sizes.pop() if len(sizes) == 1 else None
        return ImageLayout(**common, dtype=None, levels=None, data_error=error, shape0=shape0)

    def _layout_with_data(self) -> ImageLayout:
        common = self._common_layout()
        if not self._setup_ids:
            raise FormatError(f"{self._path.name}: the dataset has no view setup")
        errors: dict[int, Exception] = {}
        for sid in self._setup_ids:
            try:
                self._setup_data[sid] = self._read_setup(sid)
            except (FileNotFoundError, KeyError) as exc:
                # a lost partition file or a never-acquired setup hides that setup only
                errors[sid] = exc
        self._setup_errors = errors
        if not self._setup_data:
            raise next(iter(errors.values()))
        first = next(iter(self._setup_data.values()))
        nlevels = min(len(d.shapes) for d in self._setup_data.values())
        voxel = common["voxel_size"]
        levels = []
        for i in range(nlevels):
            level_voxel: Any = tuple(v * k for v, k in zip(voxel, first.factors[i]))
            levels.append(LevelInfo(first.shapes[i], first.chunks[i], level_voxel))
        return ImageLayout(**common, dtype=first.dtype, levels=levels)

    def _read_setup(self, sid: int) -> _SetupData:
        """Levels, chunks, factors and dtype of one setup, from its first present view."""
        f = self._h5
        group = self._resolve(f, f"s{sid:02d}")
        factors: list[tuple[float, float, float]] = []
        stored_type: str | None = None
        if group is not None:
            res = self._resolve(group, "resolutions")
            if res is not None and hasattr(res, "shape"):
                table = np.asarray(res[()], dtype=np.float64)
                if table.ndim != 2 or table.shape[1] != 3:
                    raise FormatError(
                        f"{self._path.name}: s{sid:02d}/resolutions has shape {table.shape}, "
                        "expected (levels, 3)"
                    )
                factors = [(float(z), float(y), float(x)) for x, y, z in table]
            stored_type = read_attr_str(group, "dataType")
        view_tp = self._first_present_timepoint(sid)
        if view_tp is None:
            raise KeyError(
                f"setup {sid} has no view with data in any timepoint of {self._path.name}"
            )
        nlevels = len(factors)
        if nlevels == 0:  # no resolutions table: count the level groups of a view
            vgroup = self._view_group(view_tp, sid)
            ids = {int(k) for k in vgroup.keys() if k.isdigit()} if vgroup is not None else set()
            while nlevels in ids:
                nlevels += 1
        shapes: list[tuple[int, int, int]] = []
        chunks: list[tuple[int, int, int] | None] = []
        disk_dtype: np.dtype | None = None
        for level in range(nlevels):
            ds = self._view_dataset(view_tp, sid, level)
            if ds is None or not hasattr(ds, "shape"):
                break  # levels missing from the file: expose those present
            if len(ds.shape) != 3:
                raise FormatError(
                    f"{self._path.name}: {ds.name} is {len(ds.shape)}-D, expected 3-D"
                )
            shapes.append(tuple(int(n) for n in ds.shape))  # type: ignore[arg-type]
            chunks.append(None if ds.chunks is None else tuple(ds.chunks))  # type: ignore[arg-type]
            if disk_dtype is None:
                disk_dtype = np.dtype(ds.dtype.newbyteorder("="))
        if not shapes or disk_dtype is None:
            raise FormatError(
                f"{self._path.name}: no data for setup {sid} at level 0 of timepoint {view_tp} "
                f"({_view_path(view_tp, sid, 0)})"
            )
        dtype, read_dtype = self._logical_dtype(sid, stored_type, disk_dtype)
        if not factors:  # no resolutions table: infer the factors from the level sizes
            factors = [
                tuple(float(max(1, round(n0 / max(n, 1)))) for n0, n in zip(shapes[0], shape))
                for shape in shapes
            ]  # type: ignore[misc]
        return _SetupData(shapes, chunks, factors[: len(shapes)], dtype, read_dtype)

    def _logical_dtype(
        self, sid: int, stored_type: str | None, disk: np.dtype
    ) -> tuple[np.dtype, np.dtype]:
        """``(logical dtype, dtype handed to HDF5)`` of a setup."""
        if stored_type:
            key = stored_type.strip().lower()
            if key not in DATA_TYPES:
                raise FormatError(
                    f"{self._path.name}: s{sid:02d}@dataType={stored_type!r} is not one of "
                    f"{sorted(DATA_TYPES)}"
                )
            logical = DATA_TYPES[key]
        else:
            # legacy files: BDV reads 16-bit data as int16 bits of uint16 values
            logical = np.dtype(np.uint16) if disk == np.dtype(np.int16) else disk
        if logical == np.dtype(np.uint16) and disk == np.dtype(np.int16):
            return logical, np.dtype(np.int16)  # reinterpret the bits, never convert
        return logical, logical

    def _first_present_timepoint(self, sid: int) -> int | None:
        for tp in self._time_ids:
            if (tp, sid) not in self._spim.missing_views and self._view_group(tp, sid) is not None:
                return tp
        for tp in self._time_ids:  # only partitions may hold it
            if (tp, sid) not in self._spim.missing_views and self._partition_for(tp, sid):
                return tp
        return None

    def _view_group(self, tp: int, sid: int) -> Any:
        return self._resolve(self._h5, f"t{tp:05d}/s{sid:02d}")

    def _partition_for(self, tp: int, sid: int) -> Any:
        for part in self._spim.image_loader.partitions:
            if part.contains(tp, sid):
                return part
        return None

    def _view_dataset(self, tp: int, sid: int, level: int) -> Any:
        """The ``cells`` dataset of a view: from the master file, else its partition."""
        ds = self._resolve(self._h5, _view_path(tp, sid, level))
        if ds is not None:
            return ds
        part = self._partition_for(tp, sid)
        if part is None:
            return None
        path = self._check_inside(part.path, what="partition path")
        if not path.exists():
            raise FileNotFoundError(
                2,
                f"{self._path.name}: partition file holding timepoint {tp}, setup {sid} not found",
                str(path),
            )
        ptp, psid = part.map(tp, sid)
        partition = self._open_h5(path, what="partition file")
        return self._resolve(partition, _view_path(ptp, psid, level))

    # ------------------------------------------------------------ hooks

    def _setup(self, c: int) -> _SetupData:
        sid = self._setup_ids[c]
        data = self._setup_data.get(sid)
        if data is None:
            err = self._setup_errors[sid]
            if isinstance(err, FileNotFoundError):
                raise FileNotFoundError(err.errno, err.strerror, err.filename)
            raise KeyError(*err.args)
        return data

    def _dataset(self, level: int, t: int, c: int) -> tuple[Any, np.dtype]:
        tp, sid = self._time_ids[t], self._setup_ids[c]
        if (tp, sid) in self._spim.missing_views:
            raise KeyError(
                f"view (timepoint {tp}, setup {sid}) is listed in <MissingViews> of "
                f"{self._path.name}: it has no data"
            )
        data = self._setup(c)
        if level >= len(data.shapes):
            n = len(data.shapes)
            raise IndexError(f"setup {sid} has {n} levels (0..{n - 1})")
        ds = self._view_dataset(tp, sid, level)
        if ds is None or not hasattr(ds, "read_direct"):
            raise KeyError(
                f"view (timepoint {tp}, setup {sid}) has no data at level {level} in "
                f"{self._path.name} ({_view_path(tp, sid, level)} is missing)"
            )
        return ds, data.read_dtype

    def _level_shape(self, level: int, c: int) -> tuple[int, int, int]:
        shapes = self._setup(c).shapes
        if level >= len(shapes):
            raise IndexError(f"setup {self._setup_ids[c]} has {len(shapes)} levels")
        return shapes[level]

    def _channel_dtype(self, c: int) -> np.dtype:
        return self._setup(c).dtype

    def _axis_origin(self, level: int) -> tuple[float, float, float]:
        # BDV mipmap convention: a coarse voxel is centred on the fine voxels it averages
        first = next(iter(self._setup_data.values()))
        voxel = self.voxel_size
        return tuple(  # type: ignore[return-value]
            (f - 1) / 2 * v for f, v in zip(first.factors[level], voxel)
        )

    # ------------------------------------------------------------ BDV surface

    @property
    def setups(self) -> list[ViewSetup]:
        """View setups in id order (C index order): id, name, attributes, size, voxel size, unit."""
        self._info()
        return list(self._spim.setups.values())

    @property
    def setup_ids(self) -> list[int]:
        """Setup ids in C order."""
        self._info()
        return list(self._setup_ids)

    @property
    def timepoint_ids(self) -> list[int]:
        """Timepoint ids in T order."""
        self._info()
        return list(self._time_ids)

    @property
    def missing_views(self) -> list[tuple[int, int]]:
        """``(timepoint id, setup id)`` of the views without data, sorted."""
        self._info()
        return sorted(self._spim.missing_views)

    @property
    def zero_filled(self) -> dict[tuple[int, int], list[int]]:
        """Planes stored as zeros because they were never written, by view.

        ``(timepoint id, setup id)`` -> full-resolution z indices, for the views of a dataset
        closed incomplete (``allow_incomplete=True``, an exception in a ``with`` block, a
        writer finished at interpreter exit); their coarser levels were computed with those
        zeros. Read from the ``zeroFilledPlanes`` attribute fastims puts on the view's
        ``t{tp:05d}/s{setup:02d}`` group; empty for complete datasets and other writers' files.
        Opens every view's group, so it is read on each access rather than at open.
        """
        self._info()
        out: dict[tuple[int, int], list[int]] = {}
        if self._h5 is None:
            return out
        for tp in self._time_ids:
            for sid in self._setup_ids:
                if (tp, sid) in self._spim.missing_views:
                    continue
                try:
                    ds = self._view_dataset(tp, sid, 0)
                except (OSError, KeyError, FormatError):  # no data to describe
                    continue
                if ds is None or not hasattr(ds, "read_direct"):
                    continue
                # the group holding the data: in the partition file when linked there
                text = read_attr_str(ds.parent.parent, ZERO_FILLED_ATTR)
                if text:
                    out[(tp, sid)] = parse_integer_pattern(text)
        return out

    @property
    def attribute_values(self) -> dict[str, dict[int, Any]]:
        """The ``<Attributes>`` blocks: kind -> id -> entity.

        Entities are :class:`~fastims.bdv.spimdata.AttributeValue`.
        """
        self._info()
        return {k: dict(v) for k, v in self._spim.attribute_values.items()}

    @property
    def spimdata(self) -> SpimData:
        """The parsed XML model (derived from the HDF5 groups when opened without XML)."""
        self._info()
        return self._spim

    @property
    def image_loader_format(self) -> str:
        """``ImageLoader@format`` of the XML (``"bdv.hdf5"`` for a bare HDF5 file)."""
        self._info()
        return self._spim.image_loader.format

    def affine(self, t: int = 0, setup: int = 0) -> np.ndarray:
        """Composed 3x4 affine of a view (``T[0] @ T[1] @ ...``), mapping x, y, z voxels to world.

        Parameters
        ----------
        t : int
            Timepoint *index* (see :attr:`timepoint_ids`).
        setup : int
            Setup *id*.

        Returns
        -------
        numpy.ndarray
            3x4 float64; the identity when opened without XML.

        Raises
        ------
        IndexError
            If ``t`` is out of range.
        KeyError
            If ``setup`` is not a setup id or the XML has no registration for the view.
        """
        self._info()
        t = self._check_index("t", t, len(self._time_ids))
        sid = self._check_setup(setup)
        if not self._from_xml:
            return np.eye(3, 4)
        return self._spim.model(self._time_ids[t], sid)

    def _check_setup(self, setup: Any) -> int:
        if isinstance(setup, (bool, np.bool_)) or not isinstance(setup, (int, np.integer)):
            raise TypeError(f"setup must be an int id, not {type(setup).__name__}")
        if int(setup) not in self._spim.setups:
            raise KeyError(f"setup id {setup} does not exist; setup ids are {self._setup_ids}")
        return int(setup)

    def select_setup(self, **attributes: int) -> int:
        """Setup id of the single setup matching the attribute ids (``channel=1, tile=3``).

        Attributes the setups do not declare count as id 0 (BigStitcher's default).

        Raises
        ------
        KeyError
            If an attribute kind is unknown, or no setup or several setups match
            (the message lists the valid values).
        """
        self._info()
        kinds = {k for s in self._spim.setups.values() for k in s.attributes}
        unknown = set(attributes) - kinds
        if unknown:
            raise KeyError(
                f"unknown attribute(s) {sorted(unknown)}; this dataset's setups have "
                f"{sorted(kinds) or 'no attributes'}"
            )
        matches = [
            s.id
            for s in self._spim.setups.values()
            if all(s.attributes.get(k, 0) == v for k, v in attributes.items())
        ]
        if len(matches) == 1:
            return matches[0]
        valid = {
            k: sorted({s.attributes.get(k, 0) for s in self._spim.setups.values()})
            for k in sorted(kinds)
        }
        if not matches:
            raise KeyError(f"no setup has attributes {attributes}; valid values: {valid}")
        raise KeyError(
            f"setups {matches} all match {attributes}; add more attributes to pick one "
            f"(valid values: {valid})"
        )

    def asarray(  # type: ignore[override]
        self,
        *,
        level: int = 0,
        t: int = 0,
        c: int | None = None,
        out: np.ndarray | None = None,
        setup: int | None = None,
        **attributes: int,
    ) -> np.ndarray:
        """Read one ``(Z, Y, X)`` view.

        The view's setup is chosen by ``c`` (index into :attr:`setups`), ``setup``
        (setup id) or attribute ids (``channel=1, tile=3``) — one of the three.

        Raises
        ------
        IndexError
            If ``level``, ``t`` or ``c`` is out of range.
        KeyError
            If the setup does not exist, the attributes do not pick exactly one setup,
            or the view is missing.
        UnsupportedFormatError
            If the XML's image loader is not ``bdv.hdf5``.
        """
        given = sum(x is not None for x in (c, setup)) + bool(attributes)
        if given > 1:
            raise TypeError("select the setup with only one of c=, setup= or attribute ids")
        level = self._check_level(level)
        t = self._check_index("t", t, len(self._time_ids))
        if setup is not None:
            c = self._setup_ids.index(self._check_setup(setup))
        elif attributes:
            c = self._setup_ids.index(self.select_setup(**attributes))
        else:
            c = self._check_index("c", 0 if c is None else c, len(self._setup_ids))
        return self._read_volume(level, t, c, out)


def read_bdv(
    path: str | os.PathLike[str],
    *,
    level: int = 0,
    t: int | None = None,
    c: int | None = None,
    allow_external_paths: bool = False,
    **attribute_selection: int,
) -> np.ndarray:
    """Read a BigDataViewer dataset (or part of it) into a NumPy array in one call.

    Parameters
    ----------
    path : path-like
        ``.xml`` or ``.h5``.
    level : int, optional
        Resolution level.
    t : int, optional
        Timepoint index (axis dropped); ``None`` = all.
    c : int, optional
        Setup index (axis dropped); ``None`` = all.
    allow_external_paths : bool, optional
        See :class:`BdvReader`.
    **attribute_selection
        Attribute ids (``channel=1, tile=3``) selecting exactly one setup instead
        of ``c``.

    Returns
    -------
    numpy.ndarray
        ``(T, C, Z, Y, X)`` with the ``t``/``c`` axes dropped when selected.
    """
    with BdvReader(path, allow_external_paths=allow_external_paths) as reader:
        if attribute_selection:
            if c is not None:
                raise TypeError("select the setup with c= or with attribute ids, not both")
            c = reader.setup_ids.index(reader.select_setup(**attribute_selection))
        if t is not None and c is not None:
            return reader.asarray(level=level, t=t, c=c)
        view = reader.level(level)
        key = (
            slice(None) if t is None else reader._check_index("t", t, reader.shape[0]),
            slice(None) if c is None else reader._check_index("c", c, reader.shape[1]),
        )
        return view[key]

