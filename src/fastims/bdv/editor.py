"""Edit an existing BigDataViewer (HDF5 + XML) dataset in place.

:class:`BdvEditor` opens a dataset written by fastims, npy2bdv, pybdv, BigDataViewer or
BigStitcher and

* crops a view in place, for every time point and level (the pyramid is recomputed from the
  cropped full resolution while streaming, the datasets are resized, the XML size updated and,
  by default, a translation keeps the cropped data where it was in world space);
* appends and reads named affine transforms;
* adds views — a new channel, tile or time point — streamed through the same engine as
  :class:`fastims.BdvWriter` (pyramid, compression, dtype convention of the file);
* stores metadata in the XML.

The XML is edited as a tree, so elements fastims does not model (BigStitcher's interest
points, bounding boxes, stitching results...) are kept. It is rewritten atomically (temporary
file + rename) when the editor closes, and the previous version is kept as ``name.xml~1``.
All HDF5 access runs in the engine's single HDF5 thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastims.bdv import xmlwrite
from fastims.bdv.layout import BdvLevel, loopback_sources, plan_levels, write_chunks
from fastims.bdv.spimdata import _parse_transform, compose_affines, parse_spimdata
from fastims.bdv.writer import (
    COMPRESSIONS,
    _affine3x4,
    _keys_text,
    _Setup,
    _View,
    _ViewStreamer,
    cells_path,
    pair_paths,
    read_zero_filled,
    setup_group,
    write_setup_tables,
    write_zero_filled,
)
from fastims.bdv.xmlwrite import ATTRIBUTE_KINDS
from fastims.compression import FILTER_DEFLATE, FILTER_LZ4, FILTER_SHUFFLE, Codec
from fastims.engine import DatasetRef, Engine, LevelSpec, ranges_text
from fastims.errors import FormatError, UnsupportedFormatError, WriterStateError
from fastims.pyramid import SUPPORTED_DTYPES

__all__ = ["BdvEditor"]

logger = logging.getLogger("fastims")

_CROP_SUFFIX = "cells~new"
_BACKUP_SUFFIX = "~1"


class BdvEditor(_ViewStreamer):
    """Edit a BigDataViewer HDF5/XML dataset: crop views, add transforms, views and metadata.

    Parameters
    ----------
    path : str or os.PathLike
        The dataset's ``.xml`` (its ``<hdf5>`` names the data file) or its ``.h5`` (the
        ``.xml`` beside it).
    compression : {"auto", None, "gzip", "lz4"}
        Codec of views added with :meth:`add_view`; "auto" uses the codec of the file's first
        view when fastims can reproduce it (none, gzip, shuffle, lz4), else none.
    compression_level : int, optional
        gzip level (default: the file's, else 6).
    shuffle : bool, optional
        Byte shuffle for added views (default: the file's).
    dtype_mode : {None, "legacy", "typed"}
        Dtype convention of added setups; None follows the file (typed when any setup has a
        ``dataType`` attribute).
    factors, chunks
        Levels and chunks of added setups, as for :class:`fastims.BdvWriter`.
    max_workers, memory_limit : int, optional
        Engine options, as for :class:`fastims.BdvWriter`.
    allow_incomplete : bool
        Accept added views with missing planes at close (warning instead of error).
    backup : bool
        Keep the XML as it was before the first save as ``name.xml~1``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from fastims import BdvEditor, write_bdv
    >>> path = os.path.join(tempfile.mkdtemp(), "a.xml")
    >>> write_bdv(path, np.arange(4 * 64 * 64, dtype=np.uint16).reshape(4, 64, 64))
    >>> with BdvEditor(path) as ed:
    ...     ed.append_affine(np.eye(3, 4), "registration")
    ...     ed.crop_view(((8, -8), (0, 32), None))
    (4, 32, 48)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        compression: str | None = "auto",
        compression_level: int | None = None,
        shuffle: bool | None = None,
        dtype_mode: str | None = None,
        factors: Sequence[Sequence[int]] | None = None,
        chunks: Any = None,
        max_workers: int | None = None,
        memory_limit: int | None = None,
        allow_incomplete: bool = False,
        backup: bool = True,
    ) -> None:
        p = Path(os.fspath(path))
        if p.suffix.lower() == ".xml":
            self.xml_path = p
        else:
            self.xml_path, _ = pair_paths(p)
        if not self.xml_path.is_file():
            raise FileNotFoundError(2, "BigDataViewer XML not found", str(self.xml_path))
        sd = parse_spimdata(self.xml_path)
        if sd.image_loader.format != "bdv.hdf5" or sd.image_loader.hdf5 is None:
            raise UnsupportedFormatError(
                f"{self.xml_path}: image loader {sd.image_loader.format!r} is not bdv.hdf5 (HDF5)"
            )
        self.h5_path = sd.image_loader.hdf5
        if not self.h5_path.is_file():
            raise FileNotFoundError(2, "BigDataViewer HDF5 file not found", str(self.h5_path))
        self._tree = ET.parse(self.xml_path)
        self._root = self._tree.getroot()
        self._backup = bool(backup)
        self._backed_up = False
        self._dirty = False
        self.allow_incomplete = bool(allow_incomplete)
        self._timepoints = list(sd.timepoints)
        self._xml_setups = dict(sd.setups)
        self._missing = set(sd.missing_views)
        self._new_ids: dict[tuple[int, ...], int] = {}
        self._applied: set[tuple[int, int]] = set()
        self._camera: str | None = None
        self._file = None
        # options are checked before anything is opened: a failed constructor leaves no engine
        # threads, no open file and nothing registered for the interpreter-exit hook
        if dtype_mode not in (None, "legacy", "typed"):
            raise ValueError(f"dtype_mode must be None, 'legacy' or 'typed', got {dtype_mode!r}")
        if compression != "auto" and compression not in COMPRESSIONS:
            raise ValueError(f"compression must be 'auto' or one of {COMPRESSIONS}, got {compression!r}")
        self._engine = Engine(max_workers=max_workers, memory_limit=memory_limit)
        try:
            self._engine.call(self._open_file)
            info = self._engine.call(self._inspect_file)
            typed_file = info["typed"]
            self.dtype_mode = dtype_mode if dtype_mode is not None else ("typed" if typed_file else "legacy")
            if compression == "auto":
                file_codec = info["codec"]
                compression = file_codec.compression if file_codec is not None else None
                if shuffle is None and file_codec is not None:
                    shuffle = file_codec.shuffle
                if compression_level is None and file_codec is not None and file_codec.compression == "gzip":
                    compression_level = file_codec.level
            with warnings.catch_warnings():
                if info["codec"] is not None and info["codec"].compression == "lz4":
                    warnings.simplefilter("ignore", UserWarning)  # the file already uses LZ4
                self._init_streaming(
                    factors=factors, chunks=chunks, compression=compression,
                    compression_level=6 if compression_level is None else compression_level,
                    shuffle=bool(shuffle),
                )
        except BaseException:
            try:
                if self._file is not None:
                    self._engine.call(self._file.close)
            finally:
                self._engine.close()
            raise
        # registered for the exit hook only once complete (it reads _closed, _engine...)
        self._opened()

    # -- reading -----------------------------------------------------------------------

    @property
    def timepoints(self) -> list[int]:
        """Time point ids of the dataset."""
        return sorted(set(self._timepoints) | {t for t, _ in self._views})

    @property
    def setup_ids(self) -> list[int]:
        """View setup ids of the dataset."""
        return sorted(set(self._xml_setups) | set(self._setups))

    def setup_id(self, *, illumination: int = 0, channel: int = 0, tile: int = 0, angle: int = 0) -> int:
        """Id of the setup with these attribute ids (KeyError when there is none)."""
        keys = {"illumination": illumination, "channel": channel, "tile": tile, "angle": angle}
        sid = self._setup_id(keys, create=False)
        if sid is None:
            raise KeyError(f"no view setup with {_keys_text(keys)}")
        return sid

    def read_view(
        self,
        *,
        time: int = 0,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
        level: int = 0,
    ) -> np.ndarray:
        """A whole (Z, Y, X) level of a view, in its data type (legacy int16 reads as uint16).

        Raises
        ------
        KeyError
            If the view, or the level, is not in the file.
        """
        self._check_open()
        self._engine.wait()
        sid = self.setup_id(illumination=illumination, channel=channel, tile=tile, angle=angle)
        path = cells_path(int(time), sid, int(level))
        return self._engine.call(self._read_dataset, sid, path)

    def transforms(
        self, *, time: int = 0, illumination: int = 0, channel: int = 0, tile: int = 0, angle: int = 0
    ) -> list[tuple[str, np.ndarray]]:
        """The view's transforms as (name, 3x4 matrix), first listed (applied last) first."""
        sid = self.setup_id(illumination=illumination, channel=channel, tile=tile, angle=angle)
        reg = self._registration_elem(int(time), sid)
        if reg is None:
            raise KeyError(f"no ViewRegistration for time={time} setup={sid}")
        return [(tr.name or "", tr.affine) for tr in self._affine_transforms(reg)]

    def read_affine(
        self,
        *,
        time: int = 0,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
        index: int = 0,
        name: str | None = None,
    ) -> np.ndarray:
        """One transform of a view as a 3x4 matrix (on BDV's x, y, z voxel coordinates).

        Parameters
        ----------
        index : int
            Position in the view's list; 0 is the first listed (applied last, the one
            :meth:`append_affine` adds).
        name : str, optional
            Select the first transform with this name instead of by index.
        """
        trs = self.transforms(time=time, illumination=illumination, channel=channel, tile=tile, angle=angle)
        if name is not None:
            for n, m in trs:
                if n == name:
                    return m
            raise KeyError(f"no transform named {name!r}; the view has {[n for n, _ in trs]}")
        if not -len(trs) <= index < len(trs):
            raise IndexError(f"transform index {index} out of range for {len(trs)} transforms")
        return trs[index][1]

    # -- editing -----------------------------------------------------------------------

    def append_affine(
        self,
        matrix: Any,
        name: str,
        *,
        time: int | None = 0,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
    ) -> None:
        """Add a named affine on top of a view's transforms (applied after all others).

        Parameters
        ----------
        matrix : array_like
            3x4, 4x4 (last row 0 0 0 1) or 12 row-packed numbers, on x, y, z coordinates.
        name : str
            Transform name (``<Name>``).
        time : int or None
            Time point, or None for every time point of the view.
        """
        self._check_open()
        m = _affine3x4(matrix)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        xmlwrite.check_xml_text("transform name", name)
        sid = self.setup_id(illumination=illumination, channel=channel, tile=tile, angle=angle)
        times = [t for t in self.timepoints if self._registration_elem(t, sid) is not None] if time is None else [int(time)]
        if not times:
            raise KeyError(f"setup {sid} has no ViewRegistration")
        for t in times:
            reg = self._registration_elem(t, sid)
            if reg is None:
                raise KeyError(f"no ViewRegistration for time={t} setup={sid}")
            first = next((i for i, c in enumerate(reg) if c.tag == "ViewTransform"), len(reg))
            reg.insert(first, xmlwrite.transform_element(name, m))
        self._dirty = True

    def set_metadata(self, **metadata: Any) -> None:
        """Store metadata in the XML.

        ``camera`` sets every setup's ``<camera><name>``; ``microscope``,
        ``microscope_version`` and ``user`` go to ``<generatedBy><microscope>``; other keys
        (valid XML names) to ``<generatedBy><metadata>``. A value of None removes the entry.
        """
        self._check_open()
        values = {k: (None if v is None else str(v)) for k, v in metadata.items()}
        xmlwrite.check_metadata(values)
        if "camera" in values:
            camera = self._camera = values.pop("camera")
            for vs in self._root.iter("ViewSetup"):
                cam = vs.find("camera")
                if camera is None:
                    if cam is not None and cam.find("name") is not None:
                        cam.remove(cam.find("name"))  # type: ignore[arg-type]
                    continue
                if cam is None:
                    cam = ET.Element("camera")
                    attrs = vs.find("attributes")
                    vs.insert(list(vs).index(attrs) if attrs is not None else len(vs), cam)
                elem = cam.find("name")
                if elem is None:
                    elem = ET.Element("name")
                    cam.insert(0, elem)
                elem.text = camera
        if values:
            xmlwrite.set_metadata_element(self._root, values)
        self._dirty = True

    def metadata(self) -> dict[str, str]:
        """The ``<generatedBy>`` metadata (microscope, microscope_version, user, other keys)."""
        return xmlwrite.generated_by(self._root)

    def set_attribute_labels(self, kind: str, labels: Mapping[int, str] | Sequence[str]) -> None:
        """Names of attribute entities (e.g. channel names), by id (mapping) or in id order."""
        self._check_open()
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be an attribute name, got {kind!r}")
        items = dict(labels) if isinstance(labels, Mapping) else dict(enumerate(labels))
        for label in items.values():
            xmlwrite.check_xml_text(f"{kind} label", str(label))
        for eid, label in items.items():
            self._set_label(kind, int(eid), str(label))
        self._dirty = True

    def crop_view(
        self,
        bbox_xyz: Sequence[Sequence[int | None] | None],
        *,
        illumination: int = 0,
        channel: int = 0,
        tile: int = 0,
        angle: int = 0,
        keep_position: bool = True,
    ) -> tuple[int, int, int]:
        """Crop a view in place, at every time point and level.

        Level 0 is cropped, every other level recomputed from it while streaming (BDV's
        rule, with its loopback sources), the datasets are resized, ``<size>`` updated and,
        when `keep_position`, a ``crop offset`` translation (applied first) keeps the data at
        its world position. Datasets whose codec fastims reproduces (none, gzip, shuffle, lz4)
        and whose chunks suit streaming are rewritten in place; others (e.g. BDV's
        scale-offset filter) are replaced by new datasets (gzip when the old ones were
        deflated), which leaves their old space unused in the file until ``h5repack``.

        Parameters
        ----------
        bbox_xyz : sequence of 3 (start, stop) pairs or None
            Crop range per axis in (x, y, z) order, each used like a Python slice of
            full-resolution voxels (negative values count from the end, None keeps the axis).
        keep_position : bool
            Append a translation so the cropped voxels stay where they were.

        Returns
        -------
        tuple of int
            The new (Z, Y, X) size.
        """
        self._check_open()
        self._engine.wait()
        sid = self.setup_id(illumination=illumination, channel=channel, tile=tile, angle=angle)
        if any(s == sid and (t, s) not in self._applied for t, s in self._views):
            raise WriterStateError(f"setup {sid} has views being added; save() or close the editor before cropping it")
        present = [t for t in self._timepoints if (t, sid) not in self._missing]
        infos = [self._engine.call(self._view_datasets, t, sid) for t in present]
        views = [(t, info) for t, info in zip(present, infos) if info is not None]
        if not views:
            raise KeyError(f"setup {sid} has no view with data")
        shape0 = views[0][1]["shapes"][0]
        if any(info["shapes"][0] != shape0 for _, info in views):
            raise FormatError(f"setup {sid} has views of different sizes; crop them one by one")
        box = _crop_box(bbox_xyz, shape0)
        new0 = tuple(b - a for a, b in box)
        factors = self._factors(sid, len(views[0][1]["shapes"]))
        sources = loopback_sources(factors)
        new_shapes = [tuple(-(-n // f) for n, f in zip(new0, fac)) for fac in factors]
        for t, _ in views:
            own = self._engine.call(self._own_dataset_of, t, sid)
            if own is not None:
                raise ValueError(
                    f"setup {sid} is stored in {own.with_suffix('.h5').name}, a BDV dataset of its own "
                    f"({own.name}, e.g. a tile of link_bdv); crop it there: cropping through this "
                    f"file would leave {own.name} describing the old size"
                )
        # every view's region is read (decoded) once before anything is rewritten: a damaged
        # chunk then fails the crop with the file untouched, not after earlier time points
        # were cropped (the XML has one size per setup)
        step = views[0][1]["chunks"][0][0]
        (z0, z1), (y0, y1), (x0, x1) = box
        for t, _ in views:
            for z in range(z0, z1, step):
                try:
                    self._engine.call(self._read_region, t, sid, (z, min(z + step, z1), y0, y1, x0, x1))
                except OSError as exc:
                    raise FormatError(f"{self.h5_path}: {cells_path(t, sid, 0)} planes {z}.. cannot be read "
                                      f"({exc}); nothing was cropped") from exc
        chunks = None
        done: list[int] = []
        for t, info in views:
            try:
                chunks = self._crop_one(t, sid, info, box, factors, sources, new_shapes)  # type: ignore[arg-type]
            except BaseException as exc:
                if done:
                    exc.add_note(f"time points {done} of setup {sid} were cropped already; the XML "
                                 f"still gives the old size")
                raise
            done.append(t)
        data_type = self._engine.call(self._setup_data_type, sid)
        self._engine.call(
            lambda: write_setup_tables(self._file, sid, factors=factors, chunks=chunks, data_type=data_type)
        )
        # zero-filled planes recorded for an incomplete view move (or go) with the crop
        for t, _ in views:
            planes = self._engine.call(self._crop_zero_filled, t, sid, box[0])
            if planes is not None:
                xmlwrite.set_zero_filled_element(self._root, {(t, sid): ranges_text(planes)})
        # the XML: size and, optionally, a translation that keeps the data in place
        for vs in self._root.iter("ViewSetup"):
            if (vs.findtext("id") or "").strip() == str(sid):
                size = vs.find("size")
                if size is None:
                    size = ET.SubElement(vs, "size")
                size.text = f"{new0[2]} {new0[1]} {new0[0]}"
        # the editor's own view of the setup follows: views added later match its new size
        # (a new channel of that size takes its levels) and a new time point of this setup is
        # planned from the cropped file, not from the streaming description made before
        if sid in self._xml_setups:
            self._xml_setups[sid] = dataclasses.replace(self._xml_setups[sid], size=new0)
        self._setups.pop(sid, None)
        offset = (box[2][0], box[1][0], box[0][0])  # x, y, z
        if keep_position and any(offset):
            shift = np.eye(3, 4)
            shift[:, 3] = offset
            for t in self.timepoints:
                reg = self._registration_elem(t, sid)
                if reg is not None:
                    reg.append(xmlwrite.transform_element("crop offset", shift))
        self._dirty = True
        return new0  # type: ignore[return-value]

    # -- closing -----------------------------------------------------------------------

    def save(self) -> None:
        """Store pending data and rewrite the XML (atomically, keeping a backup)."""
        self._check_open()
        self._engine.wait()
        self._engine.call(self._file.flush)
        self._apply_views_to_xml()
        self._write_xml()

    def close(self) -> None:
        """Finish added views, rewrite the XML when it changed, and close the files.

        Raises
        ------
        WriterStateError
            When added views have missing planes (unless ``allow_incomplete=True``); the
            dataset is still completed.
        """
        self._close(raising=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<BdvEditor {str(self.xml_path)!r} setups={len(self.setup_ids)} ({state})>"

    # -- streaming hooks ---------------------------------------------------------------

    def _check_time(self, time: Any) -> int:
        if not isinstance(time, (int, np.integer)) or isinstance(time, bool) or time < 0:
            raise IndexError(f"time must be a non-negative integer, got {time!r}")
        return int(time)

    def _setup_id(self, keys: Mapping[str, int], *, create: bool) -> int | None:  # type: ignore[override]
        for kind, value in keys.items():
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise IndexError(f"{kind} must be a non-negative integer, got {value!r}")
        wanted = tuple(int(keys[k]) for k in ATTRIBUTE_KINDS)
        for sid, vs in self._xml_setups.items():
            if tuple(int(vs.attributes.get(k, 0)) for k in ATTRIBUTE_KINDS) == wanted:
                return sid
        sid = self._new_ids.get(wanted)
        if sid is not None or not create:
            return sid
        sid = self._new_setup_id(wanted)
        self._new_ids[wanted] = sid
        return sid

    def _new_setup_id(self, wanted: tuple[int, ...]) -> int:
        """npy2bdv's grid index when it agrees with every existing setup, else the next free id."""
        known = {sid: tuple(int(vs.attributes.get(k, 0)) for k in ATTRIBUTE_KINDS) for sid, vs in self._xml_setups.items()}
        known.update({sid: key for key, sid in self._new_ids.items()})
        counts = [max([a[i] for a in known.values()] + [wanted[i]]) + 1 for i in range(len(ATTRIBUTE_KINDS))]

        def grid(a: tuple[int, ...]) -> int:
            sid = 0
            for v, n in zip(a, counts):
                sid = sid * n + v
            return sid

        candidate = grid(wanted)
        if all(grid(a) == sid for sid, a in known.items()) and candidate not in known:
            return candidate
        return max(known, default=-1) + 1

    def _ensure_setup(self, sid: int) -> bool:
        if sid not in self._setups and sid in self._xml_setups:
            self._setups[sid] = self._existing_setup(sid)
        return sid in self._setups

    def _view(self, time: Any, keys: Mapping[str, int]) -> _View:
        t = self._check_time(time)
        sid = self._setup_id(keys, create=False)
        if sid is not None and (t, sid) not in self._views and self._holds_data(t, sid):
            raise ValueError(f"view time={t} {_keys_text(keys)} already holds data")
        return super()._view(t, keys)

    def _holds_data(self, t: int, sid: int) -> bool:
        return sid in self._xml_setups and t in self._timepoints and (t, sid) not in self._missing

    def add_view(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Declare a view to add: a new setup (e.g. a new channel) or a new time point.

        Takes the keyword arguments of :meth:`fastims.BdvWriter.add_view`. A view of an
        existing setup must match its shape, dtype and voxel size and reuses its levels and
        chunks; a view already holding data cannot be added again.
        """
        self._check_open()
        keys = {k: kwargs.get(k, 0) for k in ATTRIBUTE_KINDS}
        t = self._check_time(kwargs.get("time", 0))
        sid = self._setup_id(keys, create=False)
        if sid is not None and sid in self._xml_setups:
            if self._holds_data(t, sid):
                raise ValueError(f"view time={t} {_keys_text(keys)} already holds data")
            self._ensure_setup(sid)
        super().add_view(**kwargs)

    def _plan_levels(self, dims: tuple[int, int, int], itemsize: int, vox: tuple[float, ...]) -> list[BdvLevel]:
        """A new setup of an existing one's size gets its levels (and chunks when they stream).

        The default rule gave a new channel other levels than the file's setups, and a
        reader's levels are those every setup has: the whole dataset lost its pyramid.
        """
        if self.factors is None and self.chunks is None:
            for sid, vs in sorted(self._xml_setups.items()):
                if vs.size is None or tuple(vs.size) != tuple(dims):
                    continue
                try:
                    info = self._engine.call(self._setup_info, sid)
                except (FormatError, KeyError):
                    continue
                try:
                    return plan_levels(dims, itemsize=itemsize, voxel_size=vox, factors=info["factors"],
                                       chunks=info["chunks"])
                except ValueError:  # chunks fastims cannot stream into (z depth vs factors)
                    return plan_levels(dims, itemsize=itemsize, voxel_size=vox, factors=info["factors"])
        return super()._plan_levels(dims, itemsize, vox)

    def _setup_declared(self, setup: _Setup) -> None:
        if setup.id not in self._xml_setups:
            super()._setup_declared(setup)

    def _existing_setup(self, sid: int) -> _Setup:
        """A streaming description of a setup already in the file (its levels and chunks)."""
        vs = self._xml_setups[sid]
        info = self._engine.call(self._setup_info, sid)
        storage = info["storage"]
        if info["typed"]:
            dt, stream_dtype, typed = storage, storage, True
        elif storage == np.dtype(np.int16):
            dt, stream_dtype, typed = np.dtype(np.uint16), np.dtype(np.uint16), False
        else:
            raise FormatError(
                f"setup {sid} stores {storage} without a dataType attribute, which BigDataViewer cannot read "
                "correctly; fastims does not add views to it"
            )
        factors = info["factors"]
        chunks = info["chunks"]
        sources = loopback_sources(factors)
        shape = vs.size if vs.size is not None else info["shape"]
        levels = []
        for li, (fac, (src, rel)) in enumerate(zip(factors, sources)):
            for lj, (s2, r2) in enumerate(sources):
                if s2 == li and chunks[li][0] % r2[0]:
                    raise ValueError(
                        f"setup {sid}: chunk depth {chunks[li][0]} of level {li} is not a multiple of the z factor "
                        f"{r2[0]} of level {lj}; fastims cannot stream views into this setup"
                    )
            levels.append(BdvLevel(fac, tuple(-(-n // f) for n, f in zip(shape, fac)), chunks[li], src, rel))  # type: ignore[arg-type]
        if stream_dtype not in SUPPORTED_DTYPES and len(levels) > 1:
            raise TypeError(f"setup {sid} is {stream_dtype}, which fastims cannot downsample")
        codec = info["codec"] or self._codec(storage)
        return _Setup(
            id=sid, attributes={k: int(vs.attributes.get(k, 0)) for k in ATTRIBUTE_KINDS}, shape=tuple(shape),  # type: ignore[arg-type]
            dtype=dt, storage=storage, stream_dtype=stream_dtype, typed=typed,
            voxel_size=tuple(vs.voxel_size or (1.0, 1.0, 1.0)), unit=vs.unit or "", name=vs.name or f"setup {sid}",  # type: ignore[arg-type]
            exposure_time=None, exposure_unit="s", levels=levels, codec=codec,
        )

    # -- internals (caller thread) -----------------------------------------------------

    def _registration_elem(self, time: int, sid: int) -> ET.Element | None:
        regs = self._root.find("ViewRegistrations")
        if regs is None:
            return None
        for reg in regs.findall("ViewRegistration"):
            if reg.get("timepoint", "").strip() == str(time) and reg.get("setup", "").strip() == str(sid):
                return reg
        return None

    def _factors(self, sid: int, nlevels: int) -> list[tuple[int, int, int]]:
        res = self._engine.call(self._read_resolutions, sid)
        if res is None:
            return [(1, 1, 1)]
        out = []
        for row in res[:nlevels]:
            if not all(float(v).is_integer() and v >= 1 for v in row):
                raise FormatError(f"setup {sid} has non-integer downsampling factors {row.tolist()}")
            x, y, z = (int(v) for v in row)
            out.append((z, y, x))
        return out

    def _crop_one(
        self,
        t: int,
        sid: int,
        info: dict[str, Any],
        box: tuple[tuple[int, int], ...],
        factors: list[tuple[int, int, int]],
        sources: list[tuple[int | None, tuple[int, int, int]]],
        new_shapes: list[tuple[int, ...]],
    ) -> list[tuple[int, int, int]]:
        storage: np.dtype = info["storage"]
        stream_dtype = np.dtype(np.uint16) if storage == np.dtype(np.int16) else storage
        if len(factors) > 1 and stream_dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"setup {sid} is {storage}, which fastims cannot downsample")
        chunks: list[tuple[int, int, int]] = info["chunks"]
        codec: Codec | None = info["codec"]
        in_place = codec is not None and all(
            src is None or chunks[src][0] % rel[0] == 0 for src, rel in sources
        )
        if not in_place:
            z_mult = [1] * len(factors)
            for src, rel in sources[1:]:
                if src is not None:
                    z_mult[src] = int(np.lcm(z_mult[src], rel[0]))
            chunks = write_chunks(new_shapes, z_mult, storage.itemsize)
            codec = Codec.create("gzip" if info["deflate"] else None, level=info["deflate"] or 6,
                                 dtype=storage, shuffle_rule="always")
        refs = [DatasetRef() for _ in factors]
        self._engine.call(self._prepare_crop, t, sid, refs, new_shapes, chunks, codec, storage, in_place)
        specs = [LevelSpec(tuple(s), c, src, rel) for s, c, (src, rel) in zip(new_shapes, chunks, sources)]  # type: ignore[arg-type]
        stream = self._engine.open_stream(("crop", t, sid), dtype=stream_dtype, levels=specs, datasets=refs,
                                          codec=codec, rule="bdv", histograms=False)  # type: ignore[arg-type]
        (z0, z1), (y0, y1), (x0, x1) = box
        step = chunks[0][0]
        for z in range(z0, z1, step):
            n = min(step, z1 - z)
            block = self._engine.call(self._read_region, t, sid, (z, z + n, y0, y1, x0, x1))
            self._engine.write(stream, z - z0, block.view(stream_dtype))
        self._engine.wait()
        self._engine.call(self._commit_crop, t, sid, len(factors), new_shapes, in_place)
        return chunks

    def _apply_views_to_xml(self) -> None:
        """Describe added views (setups, attributes, time points, registrations) in the tree."""
        streamed = {key: view for key, view in self._views.items()
                    if view.stream is not None and key not in self._applied}
        declared = dict(self._views)
        if not declared:
            return
        seq = self._root.find("SequenceDescription")
        setups_elem = seq.find("ViewSetups") if seq is not None else None
        if seq is None or setups_elem is None:
            raise FormatError(f"{self.xml_path}: no SequenceDescription/ViewSetups")
        all_setups = self._setups_for_calibration()
        smallest = self._world_unit() or _smallest(all_setups)
        new_setups = [s for sid, s in sorted(self._setups.items()) if sid not in self._xml_setups]
        # kinds the file's setups use (BDV's own files often name only the channel)
        kinds = {k for vs in self._xml_setups.values() for k in vs.attributes} or set(ATTRIBUTE_KINDS)
        for setup in new_setups:
            attributes = {k: v for k, v in setup.attributes.items() if k in kinds or v != 0}
            entry = xmlwrite.SetupEntry(
                id=setup.id, name=setup.name, size=setup.shape, voxel_size=setup.voxel_size, unit=setup.unit,
                attributes=attributes, camera=self._camera, exposure_time=setup.exposure_time,
                exposure_unit=setup.exposure_unit,
            )
            last = max((i for i, c in enumerate(setups_elem) if c.tag == "ViewSetup"), default=-1)
            setups_elem.insert(last + 1, xmlwrite.setup_element(entry))
            for kind, eid in attributes.items():
                self._set_label(kind, eid, None)
            for tile, loc in self._tile_locations.items():
                self._set_tile_location(tile, loc)
            self._xml_setups[setup.id] = _xml_setup_stub(setup)
        # time points
        times = sorted(set(self._timepoints) | {t for t, _ in declared})
        if times != sorted(self._timepoints):
            old = seq.find("Timepoints")
            index = list(seq).index(old) if old is not None else len(seq)
            if old is not None:
                seq.remove(old)
            seq.insert(index, xmlwrite.timepoints_element(times))
            for t in times:
                if t not in self._timepoints:
                    self._missing.update((t, s) for s in self._xml_setups)
            self._timepoints = times
        for setup in new_setups:
            self._missing.update((t, setup.id) for t in times)
        self._missing.difference_update(streamed)
        self._write_missing(seq)
        # registrations of the added views
        regs = self._root.find("ViewRegistrations")
        if regs is None:
            regs = ET.SubElement(self._root, "ViewRegistrations")
        for (t, sid), view in sorted(streamed.items()):
            if self._registration_elem(t, sid) is not None:
                continue
            transforms = self._template_registration(sid, view, smallest)
            reg = ET.SubElement(regs, "ViewRegistration", {"timepoint": str(t), "setup": str(sid)})
            for tname, m in transforms:
                reg.append(xmlwrite.transform_element(tname, m))
        self._applied.update(streamed)
        self._dirty = True

    def _template_registration(self, sid: int, view: _View, smallest: tuple[Any, str]) -> list[tuple[str, np.ndarray]]:
        """A new view of an existing setup copies that setup's registration; others get calibration."""
        if view.affine is None:
            for t in sorted(self._timepoints):
                reg = self._registration_elem(t, sid)
                if reg is not None:
                    return [(tr.name or "", tr.affine) for tr in self._affine_transforms(reg)]
        return super()._registration(view, smallest)

    def _affine_transforms(self, reg: ET.Element) -> list[Any]:
        """A registration's affine ViewTransforms, parsed as the reader parses them."""
        parsed = [_parse_transform(vt, str(self.xml_path)) for vt in reg.findall("ViewTransform")]
        return [tr for tr in parsed if tr.affine is not None]

    def _world_unit(self) -> tuple[tuple[float, float, float], str] | None:
        """The (z, y, x) length one world unit stands for in the file's own registrations.

        BigStitcher calibrates views to the smallest voxel (a world unit is that voxel on
        every axis), pybdv to the physical unit, or to the voxel itself (identity affines): new
        setups must follow the file, or a channel added to a pybdv file is drawn 2.5x too
        large. Read from an existing setup's composed registration: each axis's voxel size
        over the length of that axis in world units.
        """
        for sid, vs in sorted(self._xml_setups.items()):
            if not vs.voxel_size:
                continue
            for t in sorted(self._timepoints):
                reg = self._registration_elem(t, sid)
                if reg is None:
                    continue
                composed = compose_affines(self._affine_transforms(reg))
                lengths = np.linalg.norm(composed[:, :3], axis=0)[::-1]  # z, y, x
                if np.all(lengths > 0) and np.all(np.isfinite(lengths)):
                    per_axis = tuple(float(v / n) for v, n in zip(vs.voxel_size, lengths))
                    return per_axis, vs.unit or "um"  # type: ignore[return-value]
        return None

    def _setups_for_calibration(self) -> list[tuple[tuple[float, ...], str]]:
        out = [(tuple(vs.voxel_size), vs.unit or "") for vs in self._xml_setups.values() if vs.voxel_size]
        out += [(s.voxel_size, s.unit) for s in self._setups.values()]
        return out

    def _write_missing(self, seq: ET.Element) -> None:
        old = seq.find("MissingViews")
        index = list(seq).index(old) if old is not None else len(seq)
        if old is not None:
            seq.remove(old)
        elem = ET.Element("MissingViews")
        for t, s in sorted(self._missing):
            ET.SubElement(elem, "MissingView", {"timepoint": str(t), "setup": str(s)})
        seq.insert(index, elem)

    def _attributes_block(self, kind: str) -> ET.Element:
        setups_elem = self._root.find("SequenceDescription/ViewSetups")
        if setups_elem is None:
            raise FormatError(f"{self.xml_path}: no SequenceDescription/ViewSetups")
        for block in setups_elem.findall("Attributes"):
            if block.get("name") == kind:
                return block
        return ET.SubElement(setups_elem, "Attributes", {"name": kind})

    def _entity(self, kind: str, eid: int) -> ET.Element | None:
        for ent in self._attributes_block(kind):
            if (ent.findtext("id") or "").strip() == str(eid):
                return ent
        return None

    def _set_label(self, kind: str, eid: int, label: str | None) -> None:
        ent = self._entity(kind, eid)
        if ent is None:
            block = self._attributes_block(kind)
            ent = xmlwrite.attribute_entity_element(kind, eid, label if label is not None else str(eid))
            after = max((i for i, c in enumerate(block) if int((c.findtext("id") or "-1").strip()) < eid), default=-1)
            block.insert(after + 1, ent)
        elif label is not None:
            name = ent.find("name")
            if name is None:
                name = ET.SubElement(ent, "name")
            name.text = label

    def _set_tile_location(self, tile: int, loc_zyx: Sequence[float]) -> None:
        ent = self._entity("tile", tile)
        if ent is None:
            return
        elem = ent.find("location")
        if elem is None:
            elem = ET.SubElement(ent, "location")
        elem.text = " ".join(xmlwrite.format_number(v) for v in (loc_zyx[2], loc_zyx[1], loc_zyx[0]))

    def _write_xml(self) -> None:
        if not self._dirty:
            return
        backup = None
        if self._backup and not self._backed_up:
            backup = self.xml_path.with_name(self.xml_path.name + _BACKUP_SUFFIX)
            self._backed_up = True
        xmlwrite.write_xml(self.xml_path, self._root, backup=backup)
        self._dirty = False

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and not self._closed:
            # an exception in the block: the views it was adding are dropped with their partial
            # data; edits already made (crops, transforms, metadata) are kept and saved
            self.abort()
            return
        super().__exit__(exc_type, exc, tb)

    def _finish(self) -> BaseException | None:
        incomplete: dict[tuple[int, int], str] = {}
        if self._engine.error is None:
            incomplete = self._finish_streams()
        if self._engine.aborted:
            with contextlib.suppress(BaseException):  # the abort's own error, once the tasks are done
                self._engine.wait()
            pending = [key for key in self._views if key not in self._applied]
            self._engine.call(self._remove_views, pending)
            for key in pending:
                del self._views[key]
                self._zero_filled.pop(key, None)
            for sid in {sid for _, sid in pending} - set(self._xml_setups):
                self._setups.pop(sid, None)
        else:
            self._engine.wait()
            if self._zero_filled:
                # added views closed incomplete: their zero-filled planes are named in both files
                self._engine.call(self._record_zero_filled)
                xmlwrite.set_zero_filled_element(
                    self._root, {key: ranges_text(planes) for key, planes in self._zero_filled.items()}
                )
                self._dirty = True
        self._apply_views_to_xml()
        self._write_xml()
        return self._report_incomplete(incomplete)

    def _close_files(self) -> None:
        if self._file is not None:
            self._close_fds()
            self._file.close()

    # -- writer thread: HDF5 only here -------------------------------------------------

    def _open_file(self) -> None:
        import h5py

        self._file = h5py.File(self.h5_path, "r+")

    def _inspect_file(self) -> dict[str, Any]:
        f = self._file
        typed = any("dataType" in f[name].attrs for name in f if name.startswith("s") and name[1:].isdigit())
        codec = None
        # the codec of the first view with data
        for sid in sorted(self._xml_setups):
            paths = [cells_path(t, sid, 0) for t in self._timepoints if (t, sid) not in self._missing]
            found = [p for p in paths if p in f]
            if found:
                codec = _codec_of(f[found[0]])
                break
        return {"typed": typed, "codec": codec}

    def _setup_data_type(self, sid: int) -> str | None:
        grp = self._file.get(setup_group(sid))
        if grp is None or "dataType" not in grp.attrs:
            return None
        value = grp.attrs["dataType"]
        return value.decode() if isinstance(value, bytes) else str(value)

    def _storage_dtype(self, sid: int, ds: Any) -> np.dtype:
        name = self._setup_data_type(sid)
        return np.dtype(name) if name is not None else ds.dtype

    def _read_resolutions(self, sid: int) -> np.ndarray | None:
        grp = self._file.get(setup_group(sid))
        if grp is None or "resolutions" not in grp:
            return None
        return np.asarray(grp["resolutions"][()], dtype=np.float64).reshape(-1, 3)

    def _setup_info(self, sid: int) -> dict[str, Any]:
        f = self._file
        res = self._read_resolutions(sid)
        if res is None:
            raise FormatError(f"setup {sid} has no {setup_group(sid)}/resolutions")
        factors = []
        for row in res:
            x, y, z = (int(v) for v in row)
            factors.append((z, y, x))
        sub = f[setup_group(sid)].get("subdivisions")
        chunks = [tuple(int(v) for v in reversed(row)) for row in sub[()]] if sub is not None else None
        shape = None
        codec = None
        storage = None
        for t in self._timepoints:
            if cells_path(t, sid, 0) in f:
                dsets = [f[cells_path(t, sid, li)] for li in range(len(factors))]
                chunks = [tuple(d.chunks) if d.chunks else c for d, c in zip(dsets, chunks or [None] * len(dsets))]
                shape = dsets[0].shape
                codec = _codec_of(dsets[0])
                storage = dsets[0].dtype
                break
        if chunks is None:
            raise FormatError(f"setup {sid}: no chunk shape known")
        data_type = self._setup_data_type(sid)
        typed = data_type is not None
        if storage is None:
            storage = np.dtype(data_type) if typed else np.dtype(np.int16)
        elif typed:
            storage = np.dtype(data_type)
        return {"factors": factors, "chunks": chunks, "shape": shape, "codec": codec, "storage": np.dtype(storage),
                "typed": typed}

    def _read_dataset(self, sid: int, path: str) -> np.ndarray:
        if path not in self._file:
            raise KeyError(f"{path} is not in {self.h5_path}")
        ds = self._file[path]
        data = ds[()]
        if self._setup_data_type(sid) is None and data.dtype == np.int16:
            data = data.view(np.uint16)
        return data

    def _view_datasets(self, t: int, sid: int) -> dict[str, Any] | None:
        f = self._file
        if cells_path(t, sid, 0) not in f:
            return None
        res = self._read_resolutions(sid)
        nlevels = 1 if res is None else len(res)
        dsets = []
        for li in range(nlevels):
            path = cells_path(t, sid, li)
            if path not in f:
                raise FormatError(f"{self.h5_path}: {path} is missing")
            dsets.append(f[path])
        codecs = [_codec_of(d) for d in dsets]
        deflate = 0
        for d in dsets:
            plist = d.id.get_create_plist()
            for i in range(plist.get_nfilters()):
                code, _flags, values, _name = plist.get_filter(i)
                if code == FILTER_DEFLATE:
                    deflate = int(values[0]) if values else 6
        storage = self._storage_dtype(sid, dsets[0])
        same_codec = all(c is not None and c == codecs[0] for c in codecs)
        resizable = all(d.maxshape is not None and all(m is None for m in d.maxshape) for d in dsets)
        return {
            "shapes": [tuple(d.shape) for d in dsets],
            "chunks": [tuple(d.chunks) if d.chunks else (1, 1, 1) for d in dsets],
            "codec": codecs[0] if same_codec and resizable and all(d.chunks for d in dsets) else None,
            "deflate": deflate,
            "storage": storage,
        }

    def _prepare_crop(self, t: int, sid: int, refs: list[DatasetRef], shapes: list[tuple[int, ...]],
                      chunks: list[tuple[int, int, int]], codec: Codec, storage: np.dtype, in_place: bool) -> None:
        f = self._file
        for li, ref in enumerate(refs):
            ds = f[cells_path(t, sid, li)]
            if in_place:
                # grow first when the new rule gives a level larger than the old one (floor vs ceil)
                grow = tuple(max(a, b) for a, b in zip(ds.shape, shapes[li]))
                if grow != ds.shape:
                    ds.resize(grow)
                ref.id = ds.id
            else:
                parent = ds.parent  # the real group, also behind an external link
                if _CROP_SUFFIX in parent:
                    del parent[_CROP_SUFFIX]
                new = codec.create_dataset(parent, _CROP_SUFFIX, shape=shapes[li], dtype=ds.dtype,
                                           chunks=chunks[li], maxshape=(None, None, None))
                ref.id = new.id

    def _own_dataset_of(self, t: int, sid: int) -> Path | None:
        """The XML of another BDV dataset whose .h5 holds this view (a linked tile), if any."""
        stored = Path(self._file[cells_path(t, sid, 0)].file.filename)
        xml = stored.with_suffix(".xml")
        if stored.resolve() == Path(self.h5_path).resolve() or not xml.is_file():
            return None
        try:
            loader = ET.parse(xml).getroot().find("SequenceDescription/ImageLoader/hdf5")
        except ET.ParseError:
            return None
        named = (loader.text or "").strip() if loader is not None else ""
        return xml if named and (xml.parent / named).resolve() == stored.resolve() else None

    def _remove_views(self, keys: list[tuple[int, int]]) -> None:
        """Delete what views being added had written (their groups, and new setups' tables)."""
        f = self._file
        for t, sid in keys:
            for path in (f"t{t:05d}/s{sid:02d}", *([setup_group(sid)] if sid not in self._xml_setups else [])):
                if f.get(path, getlink=True) is not None:
                    del f[path]
            group = f"t{t:05d}"
            if t not in self._timepoints and group in f and not len(f[group]):
                del f[group]

    def _crop_zero_filled(self, t: int, sid: int, z_range: tuple[int, int]) -> list[int] | None:
        """Shift a cropped view's zero-filled planes by the crop (None: it had none recorded)."""
        grp = self._file[cells_path(t, sid, 0)].parent.parent  # the real group, also behind a link
        planes = read_zero_filled(grp)
        if not planes:
            return None
        z0, z1 = z_range
        kept = [z - z0 for z in planes if z0 <= z < z1]
        write_zero_filled(grp, kept)
        return kept

    def _read_region(self, t: int, sid: int, region: tuple[int, ...]) -> np.ndarray:
        z0, z1, y0, y1, x0, x1 = region
        return self._file[cells_path(t, sid, 0)][z0:z1, y0:y1, x0:x1]

    def _commit_crop(self, t: int, sid: int, nlevels: int, shapes: list[tuple[int, ...]], in_place: bool) -> None:
        f = self._file
        for li in range(nlevels):
            ds = f[cells_path(t, sid, li)]
            if in_place:
                ds.resize(tuple(shapes[li]))
            else:
                parent = ds.parent
                del parent["cells"]
                parent.move(_CROP_SUFFIX, "cells")
        f.flush()


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _codec_of(ds: Any) -> Codec | None:
    """A codec whose direct-chunk output this dataset's filter pipeline decodes, if any."""
    if ds.chunks is None:
        return None
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]
    shuffle = False
    compression = None
    level = None
    for i, (code, _flags, values) in enumerate(filters):
        if code == FILTER_SHUFFLE and i == 0:
            shuffle = True
        elif code == FILTER_DEFLATE and i == len(filters) - 1:
            compression, level = "gzip", int(values[0]) if values else 6
        elif code == FILTER_LZ4 and i == len(filters) - 1:
            if values and int(values[0]) != (1 << 30):
                return None
            compression = "lz4"
        else:
            return None
    if level is not None and not 1 <= level <= 9:
        return None
    return Codec.create(compression, level=level, shuffle=shuffle, dtype=ds.dtype, shuffle_rule="always")  # type: ignore[arg-type]


def _crop_box(bbox_xyz: Sequence[Any], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(z, y, x) (start, stop) of a crop given as (x, y, z) slice pairs."""
    try:
        items = list(bbox_xyz)
    except TypeError:
        raise TypeError(f"bbox_xyz must be 3 (start, stop) pairs or None, got {bbox_xyz!r}") from None
    if len(items) != 3:
        raise ValueError(f"bbox_xyz must be 3 (start, stop) pairs or None in x, y, z order, got {bbox_xyz!r}")
    out = []
    for axis, item, n in zip("xyz", items, reversed(shape)):
        if item is None:
            out.append((0, n))
            continue
        pair = list(item)
        if len(pair) != 2 or not all(v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)) for v in pair):
            raise ValueError(f"crop range of {axis} must be (start, stop) integers or None, got {item!r}")
        start, stop, _ = slice(*pair).indices(n)
        if stop <= start:
            raise ValueError(f"crop range {tuple(pair)} of {axis} is empty for size {n}")
        out.append((start, stop))
    return tuple(reversed(out))


def _smallest(setups: Sequence[tuple[tuple[float, ...], str]]) -> tuple[float, str]:
    best: tuple[float, float, str] | None = None
    for vox, unit in setups:
        metres = xmlwrite.length_in_meters(unit) or 1.0
        for v in vox:
            if best is None or v * metres < best[0]:
                best = (v * metres, v, unit)
    return (1.0, "um") if best is None else (best[1], best[2])


def _xml_setup_stub(setup: _Setup) -> Any:
    from fastims.bdv.spimdata import ViewSetup

    return ViewSetup(id=setup.id, name=setup.name, size=setup.shape, voxel_size=setup.voxel_size,  # type: ignore[arg-type]
                     unit=setup.unit, attributes=dict(setup.attributes))

