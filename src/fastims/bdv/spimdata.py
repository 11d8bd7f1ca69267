"""SpimData XML (BigDataViewer / BigStitcher dataset description): model and parser.

This module only reads XML; it never opens HDF5 files.  It follows the schema that
``bigdataviewer/spimdata`` (``XmlIoSpimData``, ``XmlIoViewSetups``, ``XmlIoTimePoints``,
``XmlIoMissingViews``, ``XmlIoViewRegistrations``) and bdv-core's
``XmlIoHdf5ImageLoader`` read; see ``spec/bdv.md`` section 2.

Conventions of the model:

* Sizes and voxel sizes are given in fastims' axis order ``(Z, Y, X)``, i.e. *reversed*
  from the XML's ``x y z`` text.
* Affine transforms are kept exactly as the XML has them: 3x4 matrices acting on
  ``(x, y, z, 1)`` voxel coordinates.  A view's model is the product of its transforms
  in listed order, ``T[0] @ T[1] @ ... @ T[n-1]`` (the last listed is applied first).
* Paths are resolved as the Java reader does: ``BasePath`` against the XML's folder,
  loader paths against ``BasePath``.  Whether a path may leave the dataset folder is
  the reader's decision, not the parser's.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastims.errors import FormatError

__all__ = [
    "ZERO_FILLED_ATTR",
    "AttributeValue",
    "ImageLoader",
    "Partition",
    "SpimData",
    "ViewSetup",
    "ViewTransform",
    "compose_affines",
    "parse_integer_pattern",
    "parse_spimdata",
]

#: Loader formats whose data lives in one HDF5 file (plus optional partitions).
HDF5_FORMATS = frozenset({"bdv.hdf5"})

#: fastims' record of an incomplete view: an ASCII attribute of its ``t{tp:05d}/s{setup:02d}``
#: group naming the full-resolution planes that were never written and hold zeros, as plane
#: ranges (``"3-7,12"``, read with :func:`parse_integer_pattern`). BigDataViewer, pybdv and
#: npy2bdv ignore attributes there; the XML repeats it in ``<generatedBy><zeroFilledPlanes>``.
ZERO_FILLED_ATTR = "zeroFilledPlanes"

_IDENTITY_3X4 = np.eye(3, 4)


@dataclass(frozen=True)
class AttributeValue:
    """One entity of an ``<Attributes name="...">`` block (a channel, tile, angle...).

    Attributes
    ----------
    kind : str
        Attribute name as used in ``<attributes>`` of a view setup (``"channel"``).
    id : int
        Entity id.
    name : str or None
        Entity name (``<name>``).
    extra : dict of str to str
        Other child elements, as text (``location`` of a tile, ``axis``/``degrees`` of
        an angle...).
    """

    kind: str
    id: int
    name: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ViewSetup:
    """A BigDataViewer view setup (one channel x angle x tile x illumination).

    Attributes
    ----------
    id : int
        Setup id (``s{id:02d}`` in the HDF5 file).
    name : str or None
        ``<name>``, if present.
    size : tuple of int or None
        ``(Z, Y, X)`` size from ``<size>``, if present.
    voxel_size : tuple of float or None
        ``(Z, Y, X)`` voxel size from ``<voxelSize><size>``, if present.
    unit : str or None
        ``<voxelSize><unit>``; ``None`` when absent or empty.
    attributes : dict of str to int
        Attribute kind -> entity id, e.g. ``{"channel": 1, "tile": 3}``.
    """

    id: int
    name: str | None = None
    size: tuple[int, int, int] | None = None
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    attributes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ViewTransform:
    """One ``<ViewTransform>`` of a view registration.

    Attributes
    ----------
    name : str or None
        ``<Name>`` of the transform (``"calibration"``, ``"Translation"``...).
    affine : numpy.ndarray or None
        3x4 float64 matrix (row-packed in the XML); ``None`` for a non-affine
        (``type="generic"``) transform.
    type : str
        The ``type`` attribute (``"affine"`` or ``"generic"``).
    """

    name: str | None
    affine: np.ndarray | None
    type: str = "affine"


@dataclass(frozen=True)
class Partition:
    """One ``<partition>`` of a ``bdv.hdf5`` loader: a file holding a subset of views.

    Attributes
    ----------
    path : pathlib.Path
        Partition file, resolved against ``BasePath``.
    timepoints, setups : tuple of int
        Timepoint and setup ids of the full sequence held in the file.
    timepoints_mapped, setups_mapped : tuple of int
        The ids those views have *inside* the partition file (same as above unless
        remapped).
    """

    path: Path
    timepoints: tuple[int, ...]
    setups: tuple[int, ...]
    timepoints_mapped: tuple[int, ...]
    setups_mapped: tuple[int, ...]

    def contains(self, timepoint: int, setup: int) -> bool:
        """Whether the view (sequence ids) is stored in this partition."""
        return timepoint in self.timepoints and setup in self.setups

    def map(self, timepoint: int, setup: int) -> tuple[int, int]:
        """Ids of the view inside the partition file."""
        return (
            self.timepoints_mapped[self.timepoints.index(timepoint)],
            self.setups_mapped[self.setups.index(setup)],
        )


@dataclass(frozen=True)
class ImageLoader:
    """The ``<ImageLoader>`` element.

    Attributes
    ----------
    format : str
        ``format`` attribute (``"bdv.hdf5"``, ``"bdv.n5"``, ``"bdv.multimg.zarr"``...).
        Pre-0.2 files name a Java class instead; a ``class`` ending in
        ``Hdf5ImageLoader`` is reported as ``"bdv.hdf5"``.
    version : str or None
        ``version`` attribute.
    hdf5 : pathlib.Path or None
        The ``<hdf5>`` file, resolved against ``BasePath`` (HDF5 loaders only).
    partitions : tuple of Partition
        ``<partition>`` entries.
    paths : dict of str to pathlib.Path
        Every path-like child (elements with a ``type`` attribute of ``relative`` or
        ``absolute``), resolved; lets callers name the n5/zarr container of loaders
        fastims does not read.
    """

    format: str
    version: str | None = None
    hdf5: Path | None = None
    partitions: tuple[Partition, ...] = ()
    paths: Mapping[str, Path] = field(default_factory=dict)


@dataclass
class SpimData:
    """A parsed SpimData document.

    Attributes
    ----------
    xml_path : pathlib.Path or None
        The file that was parsed (``None`` when parsed from a string).
    version : str
        ``<SpimData version>`` (``"0.2"`` when absent).
    base_path : pathlib.Path
        ``<BasePath>`` resolved against the XML's folder.
    image_loader : ImageLoader
    setups : dict of int to ViewSetup
        In ascending id order.
    attribute_values : dict of str to dict of int to AttributeValue
        The ``<Attributes name=...>`` blocks: kind -> id -> entity.
    timepoints : list of int
        Timepoint ids in ascending order.
    timepoint_names : dict of int to str
        Timepoint id -> name.
    timepoints_type : str
        ``"range"``, ``"list"`` or ``"pattern"``.
    registrations : dict of (int, int) to tuple of ViewTransform
        ``(timepoint id, setup id)`` -> transforms in listed order.
    missing_views : frozenset of (int, int)
        ``(timepoint id, setup id)`` pairs listed in ``<MissingViews>``.
    """

    xml_path: Path | None
    version: str
    base_path: Path
    image_loader: ImageLoader
    setups: dict[int, ViewSetup]
    attribute_values: dict[str, dict[int, AttributeValue]]
    timepoints: list[int]
    timepoint_names: dict[int, str]
    timepoints_type: str
    registrations: dict[tuple[int, int], tuple[ViewTransform, ...]]
    missing_views: frozenset[tuple[int, int]]

    def model(self, timepoint: int, setup: int) -> np.ndarray:
        """Composed 3x4 affine of a view (``T[0] @ T[1] @ ...``), for timepoint/setup ids.

        Raises
        ------
        KeyError
            If the document has no registration for the view.
        UnsupportedFormatError
            If one of the view's transforms is not affine.
        """
        try:
            transforms = self.registrations[(timepoint, setup)]
        except KeyError:
            raise KeyError(
                f"no ViewRegistration for timepoint {timepoint}, setup {setup}"
            ) from None
        return compose_affines(transforms)

    def to_dict(self) -> dict[str, Any]:
        """The document as plain nested dicts/lists (for ``reader.metadata``)."""
        loader = self.image_loader
        return {
            "version": self.version,
            "base_path": str(self.base_path),
            "image_loader": {
                "format": loader.format,
                "version": loader.version,
                "hdf5": None if loader.hdf5 is None else str(loader.hdf5),
                "partitions": [
                    {
                        "path": str(p.path),
                        "timepoints": list(p.timepoints),
                        "setups": list(p.setups),
                        "timepoints_mapped": list(p.timepoints_mapped),
                        "setups_mapped": list(p.setups_mapped),
                    }
                    for p in loader.partitions
                ],
                "paths": {k: str(v) for k, v in loader.paths.items()},
            },
            "setups": [
                {
                    "id": s.id,
                    "name": s.name,
                    "size": None if s.size is None else list(s.size),
                    "voxel_size": None if s.voxel_size is None else list(s.voxel_size),
                    "unit": s.unit,
                    "attributes": dict(s.attributes),
                }
                for s in self.setups.values()
            ],
            "attributes": {
                kind: {
                    i: {"name": v.name, **dict(v.extra)} for i, v in values.items()
                }
                for kind, values in self.attribute_values.items()
            },
            "timepoints": {
                "type": self.timepoints_type,
                "ids": list(self.timepoints),
                "names": [self.timepoint_names[t] for t in self.timepoints],
            },
            "registrations": {
                f"{t} {s}": [
                    {
                        "name": tr.name,
                        "type": tr.type,
                        "affine": None if tr.affine is None else tr.affine.tolist(),
                    }
                    for tr in trs
                ]
                for (t, s), trs in self.registrations.items()
            },
            "missing_views": sorted(self.missing_views),
        }


# ---------------------------------------------------------------------------
# helpers shared with the reader
# ---------------------------------------------------------------------------


def compose_affines(transforms: Iterable[ViewTransform]) -> np.ndarray:
    """Compose view transforms in listed order: ``T[0] @ T[1] @ ... @ T[n-1]``.

    Parameters
    ----------
    transforms : iterable of ViewTransform

    Returns
    -------
    numpy.ndarray
        3x4 float64 matrix; the identity when there are no transforms.

    Raises
    ------
    UnsupportedFormatError
        If a transform is not affine.
    """
    from fastims.errors import UnsupportedFormatError

    model = np.eye(4)
    for tr in transforms:
        if tr.affine is None:
            raise UnsupportedFormatError(
                f"view transform {tr.name!r} has type {tr.type!r}; only affine "
                "transforms can be composed"
            )
        m = np.eye(4)
        m[:3] = tr.affine
        model = model @ m
    return model[:3].copy()


def parse_integer_pattern(text: str | None) -> list[int]:
    """Parse a SpimData integer pattern (``"0"``, ``"0-10"``, ``"0-30:10"``, ``"1,3,5"``).

    Follows ``mpicbg.spim.data.sequence.IntegerPattern.parseIntegerString``: comma
    separated entries, each a number, an inclusive range ``a-b`` or a stepped range
    ``a-b:s`` (descending when ``b < a``); an empty pattern means ``[0]``.

    Raises
    ------
    FormatError
        If the pattern cannot be parsed.
    """
    if text is None or not text.strip():
        return [0]
    out: list[int] = []
    try:
        for entry in text.split(","):
            entry = entry.replace(" ", "").strip()
            # a leading '-' is a negative number, not a range separator
            dash = entry.find("-", 1)
            if dash < 0:
                out.append(int(entry))
                continue
            start = int(entry[:dash])
            rest = entry[dash + 1 :]
            if ":" in rest:
                end_text, step_text = rest.split(":", 1)
                end, step = int(end_text), int(step_text)
            else:
                end, step = int(rest), 1
            if step <= 0:
                raise ValueError("step must be positive")
            if end > start:
                out.extend(range(start, end + 1, step))
            else:
                out.extend(range(start, end - 1, -step))
    except ValueError as exc:
        raise FormatError(f"cannot parse integer pattern {text!r}: {exc}") from None
    return out


# ---------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------


def parse_spimdata(source: str | os.PathLike[str], *, text: str | bytes | None = None) -> SpimData:
    """Parse a SpimData XML file.

    Parameters
    ----------
    source : path-like
        The XML file.  Relative paths inside it resolve against its folder.
    text : str or bytes, optional
        XML content to parse instead of reading ``source`` (``source`` still gives
        the folder that relative paths resolve against).

    Returns
    -------
    SpimData

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist (and ``text`` is not given).
    FormatError
        If the document is not well-formed XML, is not a ``<SpimData>`` document, or
        an element holds a value of the wrong kind.
    """
    xml_path = Path(source)
    if text is None:
        if not xml_path.is_file():
            raise FileNotFoundError(2, "SpimData XML not found", str(xml_path))
        data: str | bytes = xml_path.read_bytes()
    else:
        data = text
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FormatError(f"{xml_path}: not well-formed XML ({exc})") from None
    if _local(root.tag) != "SpimData":
        raise FormatError(
            f"{xml_path}: not a SpimData XML (root element is <{_local(root.tag)}>, "
            "expected <SpimData>)"
        )
    where = str(xml_path)
    xml_dir = Path(os.path.abspath(xml_path)).parent
    base_path = _load_path(_child(root, "BasePath"), xml_dir, default=xml_dir)

    seq = _child(root, "SequenceDescription")
    if seq is None:
        raise FormatError(f"{where}: <SpimData> has no <SequenceDescription>")
    loader_elem = _child(seq, "ImageLoader")
    if loader_elem is None:
        raise FormatError(f"{where}: <SequenceDescription> has no <ImageLoader>")
    loader = _parse_loader(loader_elem, base_path, where)

    setups_elem = _child(seq, "ViewSetups")
    if setups_elem is None:
        raise FormatError(f"{where}: <SequenceDescription> has no <ViewSetups>")
    setups, attribute_values = _parse_setups(setups_elem, where)

    tp_elem = _child(seq, "Timepoints")
    if tp_elem is None:
        raise FormatError(f"{where}: <SequenceDescription> has no <Timepoints>")
    tp_type, timepoints, tp_names = _parse_timepoints(tp_elem, where)

    missing: set[tuple[int, int]] = set()
    mv_elem = _child(seq, "MissingViews")
    if mv_elem is not None:
        for mv in _children(mv_elem, "MissingView"):
            missing.add(
                (
                    _int(mv.get("timepoint"), where, "MissingView@timepoint"),
                    _int(mv.get("setup"), where, "MissingView@setup"),
                )
            )

    registrations: dict[tuple[int, int], tuple[ViewTransform, ...]] = {}
    regs_elem = _child(root, "ViewRegistrations")
    if regs_elem is not None:
        for reg in _children(regs_elem, "ViewRegistration"):
            key = (
                _int(reg.get("timepoint"), where, "ViewRegistration@timepoint"),
                _int(reg.get("setup"), where, "ViewRegistration@setup"),
            )
            registrations[key] = tuple(
                _parse_transform(tr, where) for tr in _children(reg, "ViewTransform")
            )

    return SpimData(
        xml_path=xml_path if text is None else None,
        version=(root.get("version") or "0.2").strip(),
        base_path=base_path,
        image_loader=loader,
        setups=setups,
        attribute_values=attribute_values,
        timepoints=timepoints,
        timepoint_names=tp_names,
        timepoints_type=tp_type,
        registrations=registrations,
        missing_views=frozenset(missing),
    )


def _parse_loader(elem: ET.Element, base_path: Path, where: str) -> ImageLoader:
    fmt = (elem.get("format") or "").strip()
    if not fmt:
        cls = (elem.get("class") or "").strip()
        if cls.endswith("Hdf5ImageLoader"):
            fmt = "bdv.hdf5"  # pre-0.2 documents name the Java class
        elif cls:
            fmt = cls
        else:
            raise FormatError(f"{where}: <ImageLoader> has no format attribute")
    paths: dict[str, Path] = {}
    for child in elem:
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions
        if child.get("type") in ("relative", "absolute") and (child.text or "").strip():
            paths[_local(child.tag)] = _load_path(child, base_path)
    partitions: list[Partition] = []
    for part in _children(elem, "partition"):
        path_elem = _child(part, "path")
        if path_elem is None or not (path_elem.text or "").strip():
            raise FormatError(f"{where}: <partition> without <path>")
        tps = _int_list(_text(part, "timepoints"), where, "partition/timepoints")
        sps = _int_list(_text(part, "setups"), where, "partition/setups")
        tps_m = _int_list(_text(part, "timepointsMapped"), where, "partition/timepointsMapped")
        sps_m = _int_list(_text(part, "setupsMapped"), where, "partition/setupsMapped")
        tps_m = tps_m or tps
        sps_m = sps_m or sps
        if len(tps_m) != len(tps) or len(sps_m) != len(sps):
            raise FormatError(f"{where}: <partition> mapped id lists differ in length")
        partitions.append(
            Partition(
                path=_load_path(path_elem, base_path),
                timepoints=tuple(tps),
                setups=tuple(sps),
                timepoints_mapped=tuple(tps_m),
                setups_mapped=tuple(sps_m),
            )
        )
    hdf5_elem = _child(elem, "hdf5")
    hdf5 = None
    if hdf5_elem is not None and (hdf5_elem.text or "").strip():
        hdf5 = _load_path(hdf5_elem, base_path)
    version = elem.get("version")
    return ImageLoader(
        format=fmt,
        version=None if version is None else version.strip(),
        hdf5=hdf5,
        partitions=tuple(partitions),
        paths=paths,
    )


def _parse_setups(
    elem: ET.Element, where: str
) -> tuple[dict[int, ViewSetup], dict[str, dict[int, AttributeValue]]]:
    setups: dict[int, ViewSetup] = {}
    for vs in _children(elem, "ViewSetup"):
        sid = _int(_text(vs, "id"), where, "ViewSetup/id")
        if sid in setups:
            raise FormatError(f"{where}: duplicate ViewSetup id {sid}")
        size = None
        size_text = _text(vs, "size")
        if size_text:
            size = tuple(reversed(_int_list(size_text, where, f"ViewSetup {sid}/size")))
            if len(size) != 3:
                raise FormatError(f"{where}: ViewSetup {sid} <size> needs 3 numbers")
        voxel_size = None
        unit = None
        vox = _child(vs, "voxelSize")
        if vox is not None:
            unit = _text(vox, "unit") or None
            vs_text = _text(vox, "size")
            if vs_text:
                values = _float_list(vs_text, where, f"ViewSetup {sid}/voxelSize/size")
                if len(values) != 3:
                    raise FormatError(
                        f"{where}: ViewSetup {sid} <voxelSize><size> needs 3 numbers"
                    )
                voxel_size = tuple(reversed(values))
        attributes: dict[str, int] = {}
        attrs_elem = _child(vs, "attributes")
        if attrs_elem is not None:
            for a in attrs_elem:
                if isinstance(a.tag, str):
                    attributes[_local(a.tag)] = _int(
                        (a.text or "").strip(), where, f"ViewSetup {sid}/attributes/{a.tag}"
                    )
        setups[sid] = ViewSetup(
            id=sid,
            name=_text(vs, "name") or None,
            size=size,  # type: ignore[arg-type]
            voxel_size=voxel_size,  # type: ignore[arg-type]
            unit=unit,
            attributes=attributes,
        )

    attribute_values: dict[str, dict[int, AttributeValue]] = {}
    for block in _children(elem, "Attributes"):
        kind = (block.get("name") or "").strip()
        if not kind:
            raise FormatError(f"{where}: <Attributes> without a name")
        values = attribute_values.setdefault(kind, {})
        for entity in block:
            if not isinstance(entity.tag, str):
                continue
            eid = _int(_text(entity, "id"), where, f"Attributes {kind}/id")
            extra = {
                _local(c.tag): (c.text or "").strip()
                for c in entity
                if isinstance(c.tag, str) and _local(c.tag) not in ("id", "name")
            }
            values[eid] = AttributeValue(
                kind=kind, id=eid, name=_text(entity, "name") or None, extra=extra
            )
    return dict(sorted(setups.items())), attribute_values


def _parse_timepoints(elem: ET.Element, where: str) -> tuple[str, list[int], dict[int, str]]:
    tp_type = (elem.get("type") or "").strip()
    names: dict[int, str] = {}
    if tp_type == "range":
        first = _int(_text(elem, "first"), where, "Timepoints/first")
        last = _int(_text(elem, "last"), where, "Timepoints/last")
        if last < first:
            raise FormatError(f"{where}: Timepoints range last {last} < first {first}")
        names = {t: str(t) for t in range(first, last + 1)}
    elif tp_type == "list":
        for tp in _children(elem, "Timepoint"):
            tid = _int(_text(tp, "id"), where, "Timepoint/id")
            names[tid] = _text(tp, "name") or str(tid)
    elif tp_type == "pattern":
        for tid in parse_integer_pattern(_text(elem, "integerpattern")):
            names[tid] = str(tid)
    else:
        raise FormatError(
            f"{where}: unknown <Timepoints> type {tp_type!r} (expected range, list or pattern)"
        )
    if not names:
        raise FormatError(f"{where}: <Timepoints> lists no timepoint")
    ids = sorted(names)
    return tp_type, ids, {t: names[t] for t in ids}


def _parse_transform(elem: ET.Element, where: str) -> ViewTransform:
    kind = (elem.get("type") or "affine").strip()
    # spimdata writes <Name>; pybdv writes <name>
    name = _text(elem, "Name") or _text(elem, "name") or None
    if kind != "affine":
        return ViewTransform(name=name, affine=None, type=kind)
    values = _float_list(_text(elem, "affine"), where, "ViewTransform/affine")
    if len(values) != 12:
        raise FormatError(
            f"{where}: <affine> of transform {name!r} has {len(values)} numbers, expected 12"
        )
    if not all(math.isfinite(v) for v in values):
        raise FormatError(f"{where}: <affine> of transform {name!r} is not finite")
    return ViewTransform(name=name, affine=np.array(values, dtype=np.float64).reshape(3, 4))


# --- small element helpers -------------------------------------------------


def _local(tag: str) -> str:
    """Tag without an XML namespace."""
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element, tag: str) -> list[ET.Element]:
    return [c for c in elem if isinstance(c.tag, str) and _local(c.tag) == tag]


def _child(elem: ET.Element, tag: str) -> ET.Element | None:
    for c in elem:
        if isinstance(c.tag, str) and _local(c.tag) == tag:
            return c
    return None


def _text(elem: ET.Element, tag: str) -> str:
    c = _child(elem, tag)
    return "" if c is None or c.text is None else c.text.strip()


def _int(text: str | None, where: str, what: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise FormatError(f"{where}: {what} is not an integer: {text!r}") from None


_SPLIT = re.compile(r"[\s,]+")


def _int_list(text: str, where: str, what: str) -> list[int]:
    parts = [p for p in _SPLIT.split(text.strip()) if p]
    return [_int(p, where, what) for p in parts]


def _float_list(text: str, where: str, what: str) -> list[float]:
    parts = [p for p in _SPLIT.split(text.strip()) if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise FormatError(f"{where}: {what} is not a list of numbers: {text!r}") from None


def _load_path(elem: ET.Element | None, base: Path, *, default: Path | None = None) -> Path:
    """Resolve a path element as spimdata's ``XmlHelpers.loadPath`` does.

    ``type="relative"`` joins the text to ``base``; ``type="absolute"`` takes it as
    is.  A text that is not an absolute path is joined to ``base`` whatever its type
    (Java would resolve it against the working directory, which is never what the
    author meant).  The result is normalised lexically (``..`` collapsed, symlinks
    untouched).
    """
    if elem is None or not (elem.text or "").strip():
        if default is None:
            raise FormatError("missing path element")
        return default
    text = elem.text.strip()  # type: ignore[union-attr]
    p = Path(text)
    if p.is_absolute():
        return Path(os.path.normpath(p))
    return Path(os.path.normpath(base / p))
