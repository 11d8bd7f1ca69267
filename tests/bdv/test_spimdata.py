"""SpimData XML parsing in isolation (no HDF5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastims import FormatError, UnsupportedFormatError
from fastims.bdv.spimdata import (
    ViewTransform,
    compose_affines,
    parse_integer_pattern,
    parse_spimdata,
)

FULL = """<?xml version="1.0" encoding="UTF-8"?>
<!-- written by hand: comments and odd whitespace everywhere -->
<SpimData version="0.2">
  <!-- base path -->
  <BasePath type="relative">  .  </BasePath>
  <SequenceDescription>
    <ViewSetups>
      <ViewSetup>
        <id> 1 </id>
        <name>
            tile 1 green
        </name>
        <size>30 20 10</size>
        <voxelSize>
          <unit>µm</unit>
          <size>0.65 0.65 2.0</size>
        </voxelSize>
        <attributes>
          <illumination>0</illumination>
          <channel>1</channel>
          <tile>1</tile>
          <angle>0</angle>
        </attributes>
        <camera><name>cam</name><exposureTime>10</exposureTime></camera>
      </ViewSetup>
      <ViewSetup>
        <id>0</id>
        <attributes>
          <illumination>0</illumination>
          <channel>0</channel>
          <tile>0</tile>
          <angle>0</angle>
        </attributes>
      </ViewSetup>
      <Attributes name="illumination"><Illumination><id>0</id><name>0</name></Illumination></Attributes>
      <Attributes name="channel">
        <Channel><id>0</id><name>488</name></Channel>
        <Channel><id>1</id><name>561</name></Channel>
      </Attributes>
      <Attributes name="tile">
        <Tile><id>0</id><name>0</name><location>0 0 0</location></Tile>
        <Tile><id>1</id><name>1</name><location>100.0 0 0</location></Tile>
      </Attributes>
      <Attributes name="angle"><Angle><id>0</id><name>0</name><axis>0 1 0</axis><degrees>0</degrees></Angle></Attributes>
    </ViewSetups>
    <Timepoints type="list">
      <Timepoint><id>7</id><name>seven</name></Timepoint>
      <Timepoint><id>3</id><name>three</name></Timepoint>
    </Timepoints>
    <MissingViews>
      <MissingView timepoint="7" setup="0" />
    </MissingViews>
    <ImageLoader format="bdv.hdf5">
      <hdf5 type="relative">data/dataset.h5</hdf5>
      <partition>
        <path type="relative">dataset-00-00.h5</path>
        <timepoints>3 7</timepoints>
        <setups>0</setups>
      </partition>
      <partition>
        <path type="relative">dataset-00-01.h5</path>
        <timepoints>3 7</timepoints>
        <timepointsMapped>0 1</timepointsMapped>
        <setups>1</setups>
        <setupsMapped>0</setupsMapped>
      </partition>
    </ImageLoader>
  </SequenceDescription>
  <ViewRegistrations>
    <ViewRegistration timepoint="3" setup="1">
      <ViewTransform type="affine">
        <Name>Translation</Name>
        <affine>1 0 0 10 0 1 0 20 0 0 1 30</affine>
      </ViewTransform>
      <ViewTransform type="affine">
        <Name>calibration</Name>
        <affine>
          1.0 0.0 0.0 0.0
          0.0 1.0 0.0 0.0
          0.0 0.0 3.0769 0.0
        </affine>
      </ViewTransform>
    </ViewRegistration>
  </ViewRegistrations>
  <ViewInterestPoints />
  <BoundingBoxes />
</SpimData>
"""


def test_full_document(tmp_path: Path) -> None:
    xml = tmp_path / "dataset.xml"
    xml.write_text(FULL, encoding="utf-8")
    spim = parse_spimdata(xml)
    assert spim.version == "0.2"
    assert spim.base_path == tmp_path
    assert list(spim.setups) == [0, 1]  # id order, not document order
    s1 = spim.setups[1]
    assert s1.name == "tile 1 green"
    assert s1.size == (10, 20, 30)  # (Z, Y, X)
    assert s1.voxel_size == (2.0, 0.65, 0.65)
    assert s1.unit == "µm"
    assert s1.attributes == {"illumination": 0, "channel": 1, "tile": 1, "angle": 0}
    s0 = spim.setups[0]
    assert s0.name is None and s0.size is None and s0.voxel_size is None and s0.unit is None
    assert spim.attribute_values["channel"][1].name == "561"
    assert spim.attribute_values["tile"][1].extra == {"location": "100.0 0 0"}
    assert spim.attribute_values["angle"][0].extra == {"axis": "0 1 0", "degrees": "0"}
    assert spim.timepoints_type == "list"
    assert spim.timepoints == [3, 7]
    assert spim.timepoint_names == {3: "three", 7: "seven"}
    assert spim.missing_views == frozenset({(7, 0)})
    loader = spim.image_loader
    assert loader.format == "bdv.hdf5"
    assert loader.hdf5 == tmp_path / "data" / "dataset.h5"
    assert [p.path for p in loader.partitions] == [
        tmp_path / "dataset-00-00.h5",
        tmp_path / "dataset-00-01.h5",
    ]
    p0, p1 = loader.partitions
    assert p0.timepoints_mapped == (3, 7) and p0.setups_mapped == (0,)
    assert p1.contains(7, 1) and not p1.contains(7, 0)
    assert p1.map(7, 1) == (1, 0)
    # model = T[0] @ T[1]: the calibration (listed last) is applied first
    expected = np.array([[1, 0, 0, 10], [0, 1, 0, 20], [0, 0, 3.0769, 30]], dtype=float)
    np.testing.assert_allclose(spim.model(3, 1), expected)
    names = [t.name for t in spim.registrations[(3, 1)]]
    assert names == ["Translation", "calibration"]
    with pytest.raises(KeyError, match="timepoint 7, setup 1"):
        spim.model(7, 1)
    d = spim.to_dict()
    assert d["setups"][1]["voxel_size"] == [2.0, 0.65, 0.65]
    assert d["missing_views"] == [(7, 0)]
    assert d["timepoints"]["names"] == ["three", "seven"]


def test_composition_order_is_not_commutative() -> None:
    scale = ViewTransform("scale", np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]]))
    shift = ViewTransform("shift", np.array([[1.0, 0, 0, 5], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
    # shift listed first -> applied last: x' = 2x + 5
    np.testing.assert_allclose(compose_affines([shift, scale])[0], [2, 0, 0, 5])
    # scale listed first -> applied last: x' = 2(x + 5)
    np.testing.assert_allclose(compose_affines([scale, shift])[0], [2, 0, 0, 10])
    np.testing.assert_array_equal(compose_affines([]), np.eye(3, 4))
    with pytest.raises(UnsupportedFormatError, match="generic"):
        compose_affines([ViewTransform("x", None, "generic")])


HDF5_LOADER = '<ImageLoader format="bdv.hdf5"><hdf5 type="relative">a.h5</hdf5></ImageLoader>'
RELATIVE_BASE = '<BasePath type="relative">.</BasePath>'


def _minimal(timepoints: str, loader: str = HDF5_LOADER, base: str = RELATIVE_BASE) -> str:
    return f"""<SpimData version="0.2">{base}
      <SequenceDescription>{loader}
        <ViewSetups><ViewSetup><id>0</id></ViewSetup></ViewSetups>
        {timepoints}
      </SequenceDescription>
      <ViewRegistrations/>
    </SpimData>"""


@pytest.mark.parametrize(
    ("timepoints", "ids"),
    [
        ('<Timepoints type="range"><first>2</first><last>5</last></Timepoints>', [2, 3, 4, 5]),
        ('<Timepoints type="pattern"><integerpattern>0</integerpattern></Timepoints>', [0]),
        ('<Timepoints type="pattern"><integerpattern>0-30:10, 35</integerpattern></Timepoints>', [0, 10, 20, 30, 35]),
        ('<Timepoints type="pattern"><integerpattern></integerpattern></Timepoints>', [0]),
        ('<Timepoints type="list"><Timepoint><id>4</id><name>4</name></Timepoint></Timepoints>', [4]),
    ],
)
def test_timepoint_kinds(tmp_path: Path, timepoints: str, ids: list[int]) -> None:
    spim = parse_spimdata(tmp_path / "x.xml", text=_minimal(timepoints))
    assert spim.timepoints == ids
    assert spim.xml_path is None


def test_integer_pattern() -> None:
    assert parse_integer_pattern("1,3,5") == [1, 3, 5]
    assert parse_integer_pattern("4-6") == [4, 5, 6]
    assert parse_integer_pattern("6-4") == [6, 5, 4]
    assert parse_integer_pattern("0-30:10") == [0, 10, 20, 30]
    assert parse_integer_pattern(" 1 - 3 ") == [1, 2, 3]
    assert parse_integer_pattern(None) == [0]
    with pytest.raises(FormatError, match="cannot parse"):
        parse_integer_pattern("a-b")
    with pytest.raises(FormatError):
        parse_integer_pattern("0-10:0")


def test_base_path_absolute_and_relative(tmp_path: Path) -> None:
    spim = parse_spimdata(
        tmp_path / "x.xml",
        text=_minimal(
            '<Timepoints type="range"><first>0</first><last>0</last></Timepoints>',
            base=f'<BasePath type="absolute">{tmp_path / "elsewhere"}</BasePath>',
        ),
    )
    assert spim.base_path == tmp_path / "elsewhere"
    assert spim.image_loader.hdf5 == tmp_path / "elsewhere" / "a.h5"
    spim = parse_spimdata(
        tmp_path / "x.xml",
        text=_minimal(
            '<Timepoints type="range"><first>0</first><last>0</last></Timepoints>',
            base='<BasePath type="relative">sub/../other</BasePath>',
            loader='<ImageLoader format="bdv.hdf5"><hdf5 type="absolute">/data/b.h5</hdf5></ImageLoader>',
        ),
    )
    assert spim.base_path == tmp_path / "other"
    assert spim.image_loader.hdf5 == Path("/data/b.h5")


def test_no_base_path_means_xml_folder(tmp_path: Path) -> None:
    spim = parse_spimdata(
        tmp_path / "x.xml",
        text=_minimal('<Timepoints type="range"><first>0</first><last>0</last></Timepoints>', base=""),
    )
    assert spim.base_path == tmp_path
    assert spim.image_loader.hdf5 == tmp_path / "a.h5"


@pytest.mark.parametrize(
    ("loader", "fmt", "key"),
    [
        ('<ImageLoader format="bdv.n5" version="1.0"><n5 type="relative">d.n5</n5></ImageLoader>', "bdv.n5", "n5"),
        ('<ImageLoader format="bdv.multimg.zarr" version="3.0"><zarr type="absolute">s3://b/d.zarr</zarr><zgroups><zgroup setup="0" tp="0" path="s0-t0.zarr" indicies="0 0"/></zgroups></ImageLoader>', "bdv.multimg.zarr", "zarr"),
        ('<ImageLoader format="bdv.ome.zarr" version="0.2"><ome.zarr type="relative">d.ome.zarr</ome.zarr></ImageLoader>', "bdv.ome.zarr", "ome.zarr"),
        ('<ImageLoader class="viewer.hdf5.Hdf5ImageLoader"><hdf5 type="relative">a.h5</hdf5></ImageLoader>', "bdv.hdf5", "hdf5"),
    ],
)
def test_other_loaders(tmp_path: Path, loader: str, fmt: str, key: str) -> None:
    spim = parse_spimdata(
        tmp_path / "x.xml",
        text=_minimal('<Timepoints type="range"><first>0</first><last>0</last></Timepoints>', loader=loader),
    )
    assert spim.image_loader.format == fmt
    assert key in spim.image_loader.paths


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<notxml", "not well-formed"),
        ("<Project><a/></Project>", "not a SpimData XML"),
        ("<SpimData/>", "SequenceDescription"),
        (_minimal('<Timepoints type="weird"/>'), "unknown <Timepoints> type"),
        (_minimal('<Timepoints type="range"><first>x</first><last>0</last></Timepoints>'), "not an integer"),
        (_minimal('<Timepoints type="range"><first>3</first><last>0</last></Timepoints>'), "last 0 < first 3"),
        (_minimal("").replace("<ViewSetups>", "<ViewSetupsX>").replace("</ViewSetups>", "</ViewSetupsX>"), "ViewSetups"),
        (_minimal("<Timepoints type='range'><first>0</first><last>0</last></Timepoints>").replace(
            "<ViewRegistrations/>",
            '<ViewRegistrations><ViewRegistration timepoint="0" setup="0"><ViewTransform type="affine"><affine>1 2 3</affine></ViewTransform></ViewRegistration></ViewRegistrations>',
        ), "expected 12"),
        (_minimal("<Timepoints type='range'><first>0</first><last>0</last></Timepoints>").replace(
            "<id>0</id></ViewSetup>", "<id>0</id><size>1 2</size></ViewSetup>"
        ), "3 numbers"),
    ],
)
def test_malformed(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        parse_spimdata(tmp_path / "x.xml", text=text)


def test_missing_xml_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        parse_spimdata(tmp_path / "none.xml")


def test_fixture_xmls(fixtures_dir: Path) -> None:
    mri = parse_spimdata(fixtures_dir / "bdv" / "mri-stack" / "mri-stack.xml")
    assert mri.setups[0].voxel_size == (10.0, 1.0, 1.0)
    assert mri.setups[0].unit == "cm"
    np.testing.assert_array_equal(mri.model(0, 0), np.diag([1.0, 1.0, 10.0, 0.0])[:3])
    ex = parse_spimdata(fixtures_dir / "bdv" / "pybdv" / "example.xml")
    assert ex.setups[0].unit is None  # <unit />
    assert ex.setups[0].size == (6, 512, 512)
    assert ex.image_loader.hdf5 == fixtures_dir / "bdv" / "pybdv" / "example.h5"


def test_zero_filled_records_in_generated_by(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from fastims.bdv import xmlwrite

    doc = xmlwrite.Document(h5_path="d.h5", zero_filled={(1, 0): "4-7", (0, 2): "0,3"})
    doc.setups[0] = xmlwrite.SetupEntry(id=0, name="a", size=(4, 8, 8), voxel_size=(1.0, 1.0, 1.0), unit="um",
                                        attributes={k: 0 for k in xmlwrite.ATTRIBUTE_KINDS})
    root = xmlwrite.build_spimdata(doc)
    block = root.find("generatedBy/zeroFilledPlanes")
    assert [(v.get("timepoint"), v.get("setup"), v.get("z")) for v in block] == [("0", "2", "0,3"), ("1", "0", "4-7")]
    assert xmlwrite.zero_filled_views(root) == {(0, 2): "0,3", (1, 0): "4-7"}
    assert [parse_integer_pattern(t) for t in ("0,3", "4-7")] == [[0, 3], [4, 5, 6, 7]]
    # the SpimData parser (like BDV's) reads the document as if the record were absent
    path = tmp_path / "d.xml"
    xmlwrite.write_xml(path, root)
    sd = parse_spimdata(path)
    assert sorted(sd.setups) == [0] and sd.missing_views == set()
    # updates replace, "" or None removes, and an empty block goes away
    xmlwrite.set_zero_filled_element(root, {(1, 0): "5", (0, 2): None})
    assert xmlwrite.zero_filled_views(root) == {(1, 0): "5"}
    xmlwrite.set_zero_filled_element(root, {(1, 0): ""})
    assert root.find("generatedBy/zeroFilledPlanes") is None
    # another tool's <generatedBy> keeps its library entry
    other = ET.fromstring('<SpimData><generatedBy><library version="1">npy2bdv</library></generatedBy></SpimData>')
    xmlwrite.set_zero_filled_element(other, {(0, 0): "1-2"})
    assert other.findtext("generatedBy/library") == "npy2bdv"
    assert xmlwrite.zero_filled_views(other) == {(0, 0): "1-2"}
    bare = ET.fromstring("<SpimData/>")
    xmlwrite.set_zero_filled_element(bare, {(0, 0): None})
    assert bare.find("generatedBy") is None


def test_text_xml_cannot_hold_is_refused_before_writing(tmp_path: Path) -> None:
    """A tree holding a control character is never saved: no parser (BDV, Fiji) would read it."""
    import xml.etree.ElementTree as ET

    from fastims.bdv import xmlwrite

    path = tmp_path / "d.xml"
    path.write_text("<SpimData/>")
    for text, attrib in (("GFP\x01", {}), ("ok", {"name": "a\x1fb"})):
        root = ET.Element("SpimData")
        ET.SubElement(root, "name", attrib).text = text
        with pytest.raises(ValueError, match="XML 1.0 cannot hold"):
            xmlwrite.write_xml(path, root)
        assert path.read_text() == "<SpimData/>"  # the earlier file is untouched
    root = ET.Element("SpimData")
    ET.SubElement(root, "name").text = "tab\tnewline\ncr\r µm ✓"  # allowed characters pass
    xmlwrite.write_xml(path, root)
    assert ET.parse(path).getroot().find("name").text == "tab\tnewline\ncr\n µm ✓"
