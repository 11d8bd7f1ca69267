"""Build and save SpimData XML documents (BigDataViewer / BigStitcher dataset descriptions).

Only writing lives here; :mod:`fastims.bdv.spimdata` parses. The element names and order
follow what spimdata's ``XmlIo*`` classes and bdv-core's ``XmlIoHdf5ImageLoader`` write (facts
and sources: ``shared/spec/bdv.md`` section 2):

* ``<SpimData version="0.2">`` with ``<BasePath type="relative">.</BasePath>``;
* ``<SequenceDescription>``: ``<ImageLoader format="bdv.hdf5">`` (``<hdf5>`` and optional
  ``<partition>`` entries), ``<ViewSetups>`` (``<ViewSetup>`` then one ``<Attributes>`` block
  per attribute kind), ``<Timepoints>`` (``range`` when the ids are contiguous, else ``list``),
  ``<MissingViews>``;
* ``<ViewRegistrations>``: per view a list of named ``<ViewTransform type="affine">``, the
  first listed applied last, 12 row-packed numbers mapping (x, y, z, 1) to world coordinates.

Extra elements BDV ignores and BigStitcher tolerates (npy2bdv writes the same ones):
``<generatedBy>`` under the root (library, microscope, user, free-form metadata) and
``<camera>`` inside a ``<ViewSetup>`` (camera name, exposure time and unit). An incomplete
dataset also names its zero-filled planes there, ``<generatedBy><zeroFilledPlanes><view
timepoint="0" setup="0" z="3-7"/>`` (:func:`set_zero_filled_element`), as its HDF5 file does.

Numbers are written with Python's shortest round-trip ``repr``, which Java's
``Double.parseDouble`` reads back exactly. Files are written atomically: a temporary file in
the same folder, fsync'd, then renamed over the target (:func:`write_xml`).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastims._version import __version__

__all__ = [
    "ATTRIBUTE_KINDS",
    "Document",
    "PartitionEntry",
    "SetupEntry",
    "affine_text",
    "attribute_entity_element",
    "build_spimdata",
    "calibration_transforms",
    "check_metadata_key",
    "format_number",
    "generated_by",
    "length_in_meters",
    "set_metadata_element",
    "set_zero_filled_element",
    "setup_element",
    "timepoints_element",
    "to_bytes",
    "transform_element",
    "write_xml",
    "zero_filled_views",
]

#: attribute kinds of a BigStitcher view setup, in setup-id order
ATTRIBUTE_KINDS = ("illumination", "channel", "tile", "angle")

#: metres per unit for the length units whose voxel sizes can be compared across views
_UNIT_METERS = {
    "m": 1.0, "meter": 1.0, "metre": 1.0,
    "cm": 1e-2, "mm": 1e-3,
    "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6, "micrometer": 1e-6,
    "nm": 1e-9, "nanometer": 1e-9,
    "pm": 1e-12, "a": 1e-10, "å": 1e-10, "angstrom": 1e-10,
}

_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass
class SetupEntry:
    """One ``<ViewSetup>``.

    Attributes
    ----------
    id : int
    name : str
    size : tuple of int
        (Z, Y, X) full-resolution size.
    voxel_size : tuple of float
        (z, y, x) voxel size in `unit`.
    unit : str
    attributes : dict of str to int
        Attribute kind -> id (every kind of :data:`ATTRIBUTE_KINDS`).
    camera : str or None
        Camera name for ``<camera><name>``.
    exposure_time : float or None
    exposure_unit : str
    """

    id: int
    name: str
    size: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    unit: str
    attributes: dict[str, int]
    camera: str | None = None
    exposure_time: float | None = None
    exposure_unit: str = "s"


@dataclass
class PartitionEntry:
    """One ``<partition>`` of the ``bdv.hdf5`` loader (ids are not remapped)."""

    path: str
    timepoints: list[int]
    setups: list[int]


@dataclass
class Document:
    """Everything :func:`build_spimdata` writes.

    Attributes
    ----------
    h5_path : str
        ``<hdf5>`` text, relative to the XML's folder.
    setups : dict of int to SetupEntry
    attribute_labels : dict of str to dict of int to str
        Kind -> id -> name of every entity of the ``<Attributes>`` blocks.
    tile_locations : dict of int to tuple of float
        Tile id -> (x, y, z) location in physical units (``<Tile><location>``).
    timepoints : list of int
    registrations : dict of (int, int) to list of (str, ndarray)
        (timepoint, setup) -> transforms (name, 3x4 matrix), first listed applied last.
    missing : set of (int, int)
        (timepoint, setup) views without data.
    partitions : list of PartitionEntry
    metadata : dict of str to str
        ``microscope``, ``microscope_version``, ``user`` and free-form keys for
        ``<generatedBy>``.
    zero_filled : dict of (int, int) to str
        (timepoint, setup) -> planes never written and stored as zeros, as ranges text
        (``"3-7,12"``), for ``<generatedBy><zeroFilledPlanes>``.
    """

    h5_path: str
    setups: dict[int, SetupEntry] = field(default_factory=dict)
    attribute_labels: dict[str, dict[int, str]] = field(default_factory=dict)
    tile_locations: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    timepoints: list[int] = field(default_factory=lambda: [0])
    registrations: dict[tuple[int, int], list[tuple[str, np.ndarray]]] = field(default_factory=dict)
    missing: set[tuple[int, int]] = field(default_factory=set)
    partitions: list[PartitionEntry] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    zero_filled: dict[tuple[int, int], str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# small formatting helpers
# ---------------------------------------------------------------------------------------


def format_number(value: float) -> str:
    """Shortest text that reads back as the same double (integers keep a ``.0``)."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"cannot write the non-finite number {value!r} to a SpimData XML")
    if v == 0.0:
        v = 0.0  # no "-0.0"
    return repr(v)


def affine_text(matrix: np.ndarray) -> str:
    """The 12 row-packed numbers of a 3x4 (or 4x4) affine, as ``<affine>`` text."""
    m = np.asarray(matrix, dtype=np.float64)
    return " ".join(format_number(v) for v in m[:3, :4].reshape(-1))


def length_in_meters(unit: str) -> float | None:
    """Metres per `unit` for known length units, None otherwise (pixels, unknown names)."""
    return _UNIT_METERS.get(unit.strip().lower().replace(" ", ""))


def calibration_transforms(
    voxel_size: Sequence[float],
    unit: str,
    smallest: float | Sequence[float],
    *,
    smallest_unit: str | None = None,
    tile_location: Sequence[float] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """BigStitcher's default registration of a view (``DatasetCreationUtils``).

    ``calibration`` scales voxel coordinates by ``voxel size / smallest``, where `smallest` is
    the smallest voxel dimension over all views (so world units are that voxel size); a tile
    location adds a ``Translation`` by ``location / smallest`` listed before it (applied after
    it). Voxel sizes in different known length units are compared in metres.

    Parameters
    ----------
    voxel_size : sequence of float
        (z, y, x) voxel size of the view in `unit`.
    unit : str
    smallest : float or sequence of 3 floats
        Smallest voxel dimension of all views, in `smallest_unit`; or the (z, y, x) length of
        one world unit per axis (a file calibrated otherwise, e.g. pybdv's identity affines).
    smallest_unit : str, optional
        Unit of `smallest` (default `unit`).
    tile_location : sequence of float, optional
        (z, y, x) tile position in `unit`.

    Returns
    -------
    list of (str, ndarray)
        ``[("Translation", T)]`` (when located) followed by ``("calibration", C)``.
    """
    scale = 1.0
    if smallest_unit is not None and smallest_unit != unit:
        a, b = length_in_meters(unit), length_in_meters(smallest_unit)
        if a is not None and b is not None:
            scale = a / b
    vz, vy, vx = (float(v) * scale for v in voxel_size)
    sz, sy, sx = (float(smallest),) * 3 if np.ndim(smallest) == 0 else (float(v) for v in smallest)  # type: ignore[arg-type]
    cal = np.zeros((3, 4))
    cal[0, 0], cal[1, 1], cal[2, 2] = vx / sx, vy / sy, vz / sz
    out: list[tuple[str, np.ndarray]] = []
    if tile_location is not None:
        lz, ly, lx = (float(v) * scale for v in tile_location)
        shift = np.eye(3, 4)
        shift[:, 3] = (lx / sx, ly / sy, lz / sz)
        out.append(("Translation", shift))
    out.append(("calibration", cal))
    return out


# ---------------------------------------------------------------------------------------
# elements
# ---------------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    elem = ET.SubElement(parent, tag, attrib)
    if text is not None:
        elem.text = text
    return elem


def setup_element(entry: SetupEntry) -> ET.Element:
    """A ``<ViewSetup>`` element (id, name, size, voxelSize, camera, attributes)."""
    vs = ET.Element("ViewSetup")
    _sub(vs, "id", str(entry.id))
    _sub(vs, "name", entry.name)
    nz, ny, nx = entry.size
    _sub(vs, "size", f"{nx} {ny} {nz}")
    vox = _sub(vs, "voxelSize")
    _sub(vox, "unit", entry.unit)
    vz, vy, vx = entry.voxel_size
    _sub(vox, "size", " ".join(format_number(v) for v in (vx, vy, vz)))
    if entry.camera is not None or entry.exposure_time is not None:
        cam = _sub(vs, "camera")
        _sub(cam, "name", entry.camera if entry.camera is not None else "default")
        if entry.exposure_time is not None:
            _sub(cam, "exposureTime", format_number(entry.exposure_time))
            _sub(cam, "exposureUnits", entry.exposure_unit)
    attrs = _sub(vs, "attributes")
    for kind in ATTRIBUTE_KINDS:
        if kind in entry.attributes:
            _sub(attrs, kind, str(entry.attributes[kind]))
    for kind, value in entry.attributes.items():
        if kind not in ATTRIBUTE_KINDS:
            _sub(attrs, kind, str(value))
    return vs


def attribute_entity_element(
    kind: str, eid: int, name: str, *, location: Sequence[float] | None = None
) -> ET.Element:
    """One entity of an ``<Attributes>`` block: ``<Channel><id/><name/></Channel>`` etc.

    `location` is a tile's (x, y, z) position (``<Tile><location>``).
    """
    ent = ET.Element(kind[:1].upper() + kind[1:])
    _sub(ent, "id", str(eid))
    _sub(ent, "name", name)
    if location is not None:
        _sub(ent, "location", " ".join(format_number(v) for v in location))
    return ent


def timepoints_element(ids: Iterable[int]) -> ET.Element:
    """``<Timepoints>``: ``type="range"`` for contiguous ids, else ``type="list"``."""
    tps = sorted(set(int(t) for t in ids))
    if not tps:
        raise ValueError("a SpimData document needs at least one timepoint")
    elem = ET.Element("Timepoints")
    if tps == list(range(tps[0], tps[-1] + 1)):
        elem.set("type", "range")
        _sub(elem, "first", str(tps[0]))
        _sub(elem, "last", str(tps[-1]))
    else:
        elem.set("type", "list")
        for t in tps:
            tp = _sub(elem, "Timepoint")
            _sub(tp, "id", str(t))
            _sub(tp, "name", str(t))
    return elem


def transform_element(name: str, matrix: np.ndarray) -> ET.Element:
    """``<ViewTransform type="affine"><Name/><affine/></ViewTransform>``."""
    vt = ET.Element("ViewTransform", {"type": "affine"})
    _sub(vt, "Name", name)
    _sub(vt, "affine", affine_text(matrix))
    return vt


# characters XML 1.0 forbids (escaping cannot help): parsers, BDV and Fiji refuse the file
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def check_xml_text(what: str, text: str) -> str:
    """Return `text`, or raise ValueError when it has a character XML 1.0 cannot hold."""
    bad = _XML_INVALID.search(text)
    if bad is not None:
        raise ValueError(f"{what} {text!r} has {bad.group()!r}, a character XML 1.0 cannot hold")
    return text


def check_tree_text(root: ET.Element) -> None:
    """Raise ValueError when any text or attribute of the tree cannot be stored in XML 1.0."""
    for elem in root.iter():
        for what, text in ((f"<{elem.tag}> text", elem.text), (f"<{elem.tag}> tail", elem.tail),
                           *((f"<{elem.tag} {k}=...>", v) for k, v in elem.attrib.items())):
            if text:
                check_xml_text(what, text)


def check_metadata_key(key: str) -> None:
    """Raise ValueError unless `key` can be an XML element name (free-form metadata keys)."""
    if not isinstance(key, str) or not _XML_NAME.match(key) or key.lower().startswith("xml"):
        raise ValueError(f"metadata key {key!r} is not a valid XML element name")


#: metadata keys with a place of their own (``<camera>``, ``<generatedBy><microscope>``)
NAMED_METADATA = ("camera", "microscope", "microscope_version", "user")


def check_metadata(metadata: Mapping[str, str | None]) -> None:
    """Raise ValueError for a free-form key that is no XML name, or a value XML cannot hold.

    Everything is checked before a writer keeps any of it; None values (removals) pass.
    """
    for key, value in metadata.items():
        if key not in NAMED_METADATA:
            check_metadata_key(key)
        if value is not None:
            check_xml_text(f"metadata {key}", value)


def set_metadata_element(root: ET.Element, metadata: Mapping[str, str | None]) -> ET.Element:
    """Create or update ``<generatedBy>`` (right after ``<BasePath>``) with `metadata`.

    Keys ``microscope``, ``microscope_version`` and ``user`` go to
    ``<microscope><name|version|user>`` (npy2bdv's layout); any other key ``k`` to
    ``<metadata><k>``. A value of None removes the entry. ``camera`` is per view setup and is
    not handled here.
    """
    gen = root.find("generatedBy")
    if gen is None:
        gen = ET.Element("generatedBy")
        base = root.find("BasePath")
        index = list(root).index(base) + 1 if base is not None else 0
        root.insert(index, gen)
    lib = gen.find("library")
    if lib is None:
        lib = ET.Element("library")
        gen.insert(0, lib)
    lib.text = "fastims"
    lib.set("version", __version__)
    micro = gen.find("microscope")
    for key, tag in (("microscope", "name"), ("microscope_version", "version"), ("user", "user")):
        if key not in metadata:
            continue
        value = metadata[key]
        if micro is None:
            micro = _sub(gen, "microscope")
        elem = micro.find(tag)
        if value is None:
            if elem is not None:
                micro.remove(elem)
            continue
        if elem is None:
            elem = _sub(micro, tag)
        elem.text = str(value)
    extra = {k: v for k, v in metadata.items() if k not in ("microscope", "microscope_version", "user")}
    if extra:
        block = gen.find("metadata")
        if block is None:
            block = _sub(gen, "metadata")
        for key, value in extra.items():
            check_metadata_key(key)
            elem = block.find(key)
            if value is None:
                if elem is not None:
                    block.remove(elem)
                continue
            if elem is None:
                elem = _sub(block, key)
            elem.text = str(value)
    return gen


def set_zero_filled_element(root: ET.Element, records: Mapping[tuple[int, int], str | None]) -> None:
    """Create or update ``<generatedBy><zeroFilledPlanes>``: the planes stored as zeros.

    One ``<view timepoint="t" setup="s" z="3-7"/>`` per incomplete view, sorted; `records`
    maps (timepoint, setup) to ranges text of full-resolution planes, None (or "") removing
    a view's entry. The block is removed when it lists no view. It lives in ``<generatedBy>``,
    the extension element BigDataViewer and BigStitcher are known to skip (``spec/bdv.md``
    section 2.1), so readers of the format are not affected.
    """
    gen = root.find("generatedBy")
    if gen is None:
        if not any(records.values()):
            return
        gen = set_metadata_element(root, {})
    block = gen.find("zeroFilledPlanes")
    current = zero_filled_views(root)
    for key, text in records.items():
        if text:
            current[key] = str(text)
        else:
            current.pop(key, None)
    if block is not None:
        gen.remove(block)
    if current:
        block = _sub(gen, "zeroFilledPlanes")
        for (t, s), text in sorted(current.items()):
            _sub(block, "view", timepoint=str(t), setup=str(s), z=text)


def zero_filled_views(root: ET.Element) -> dict[tuple[int, int], str]:
    """The ``<generatedBy><zeroFilledPlanes>`` records: (timepoint, setup) -> ranges text."""
    out: dict[tuple[int, int], str] = {}
    block = root.find("generatedBy/zeroFilledPlanes")
    if block is None:
        return out
    for view in block.findall("view"):
        try:
            key = (int(view.get("timepoint", "").strip()), int(view.get("setup", "").strip()))
        except ValueError:
            continue  # a damaged entry names nothing usable; the HDF5 attribute still does
        text = (view.get("z") or "").strip()
        if text:
            out[key] = text
    return out


def build_spimdata(doc: Document) -> ET.Element:
    """The ``<SpimData>`` element of `doc`.

    ViewSetups are written in id order, ``<Attributes>`` blocks for every kind of
    :data:`ATTRIBUTE_KINDS` (plus any other kind with labels), MissingViews sorted, and
    registrations for every (timepoint, setup) that has one and is not missing.
    """
    root = ET.Element("SpimData", {"version": "0.2"})
    _sub(root, "BasePath", ".", type="relative")
    set_metadata_element(root, doc.metadata)
    set_zero_filled_element(root, doc.zero_filled)
    seq = _sub(root, "SequenceDescription")
    loader = _sub(seq, "ImageLoader", format="bdv.hdf5")
    _sub(loader, "hdf5", doc.h5_path, type="relative")
    for part in doc.partitions:
        pe = _sub(loader, "partition")
        _sub(pe, "path", part.path, type="relative")
        _sub(pe, "timepoints", " ".join(str(t) for t in part.timepoints))
        _sub(pe, "setups", " ".join(str(s) for s in part.setups))
    setups = _sub(seq, "ViewSetups")
    for sid in sorted(doc.setups):
        setups.append(setup_element(doc.setups[sid]))
    kinds = list(ATTRIBUTE_KINDS) + sorted(k for k in doc.attribute_labels if k not in ATTRIBUTE_KINDS)
    for kind in kinds:
        labels = dict(doc.attribute_labels.get(kind, {}))
        for entry in doc.setups.values():
            if kind in entry.attributes:
                labels.setdefault(entry.attributes[kind], str(entry.attributes[kind]))
        if not labels:
            continue
        block = _sub(setups, "Attributes", name=kind)
        for eid in sorted(labels):
            loc = doc.tile_locations.get(eid) if kind == "tile" else None
            block.append(attribute_entity_element(kind, eid, labels[eid], location=loc))
    seq.append(timepoints_element(doc.timepoints))
    missing = _sub(seq, "MissingViews")
    for t, s in sorted(doc.missing):
        _sub(missing, "MissingView", timepoint=str(t), setup=str(s))
    regs = _sub(root, "ViewRegistrations")
    for (t, s) in sorted(doc.registrations):
        if (t, s) in doc.missing or s not in doc.setups:
            continue
        reg = _sub(regs, "ViewRegistration", timepoint=str(t), setup=str(s))
        for name, matrix in doc.registrations[(t, s)]:
            reg.append(transform_element(name, matrix))
    return root


# ---------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------


def to_bytes(root: ET.Element) -> bytes:
    """Indented UTF-8 XML with declaration.

    Raises ValueError, before anything is written, for text no XML parser would read back.
    """
    check_tree_text(root)
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_xml(path: str | os.PathLike, root: ET.Element, *, backup: str | os.PathLike | None = None) -> None:
    """Write `root` to `path` atomically (temporary file + fsync + rename).

    Parameters
    ----------
    path : path-like
        Target XML file.
    root : xml.etree.ElementTree.Element
        The document.
    backup : path-like, optional
        Copy the existing `path` here first (when it exists).
    """
    path = Path(path)
    data = to_bytes(root)
    if backup is not None and path.exists():
        shutil.copy2(path, backup)
    # os.open with 0o666 honours the umask (mkstemp would leave the XML private, 0o600)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if path.exists():
            os.chmod(fd, path.stat().st_mode & 0o7777)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def generated_by(root: ET.Element) -> dict[str, str]:
    """The ``<generatedBy>`` metadata of a SpimData tree (microscope, version, user, others)."""
    gen = root.find("generatedBy")
    out: dict[str, str] = {}
    if gen is None:
        return out
    micro = gen.find("microscope")
    if micro is not None:
        for key, tag in (("microscope", "name"), ("microscope_version", "version"), ("user", "user")):
            text = micro.findtext(tag)
            if text is not None:
                out[key] = text.strip()
    block = gen.find("metadata")
    if block is not None:
        for child in block:
            out[child.tag] = (child.text or "").strip()
    return out
