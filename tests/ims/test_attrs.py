"""Imaris attribute encoding and number/date text, checked against real ImarisWriter files."""

from __future__ import annotations

import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastims.ims.attrs import (
    format_datetime,
    format_extent,
    format_float,
    parse_datetime,
    read_attr_float,
    read_attr_int,
    read_attr_str,
    write_attr_str,
    write_attr_u32,
)

IW_FILE = "ims/imariswriter/u16_z33_y130_x260_shufflegzip2.ims"
MINIMAL_FILE = "ims/Minimal_IMS_File.ims"


def _encoding(obj: h5py.HLObject, name: str) -> dict:
    """Low-level description of an attribute: type class, size, pad, cset, dataspace."""
    aid = h5py.h5a.open(obj.id, name.encode())
    tid = aid.get_type()
    space = aid.get_space()
    info = {
        "class": tid.get_class(),
        "size": tid.get_size(),
        "space_type": space.get_simple_extent_type(),
        "shape": space.shape,
    }
    if tid.get_class() == h5py.h5t.STRING:
        info["strpad"] = tid.get_strpad()
        info["cset"] = tid.get_cset()
        info["vlen"] = tid.is_variable_str()
    return info


def _raw(obj: h5py.HLObject, name: str) -> bytes:
    """Attribute bytes as stored, read with the file type (no string conversion)."""
    aid = h5py.h5a.open(obj.id, name.encode())
    tid = aid.get_type()
    buf = np.zeros(aid.shape, dtype=f"S{tid.get_size()}")
    aid.read(buf, mtype=tid)
    return buf.tobytes()


def _string_attrs(f: h5py.File) -> list[tuple[str, str]]:
    """(object path, attribute name) of every string attribute in a file."""
    found: list[tuple[str, str]] = []

    def visit(path: str, obj: h5py.HLObject) -> None:
        for key in obj.attrs:
            aid = h5py.h5a.open(obj.id, key.encode())
            if aid.get_type().get_class() == h5py.h5t.STRING:
                found.append((path, key))

    visit("/", f)
    f.visititems(visit)
    return found


@pytest.fixture
def h5file(tmp_path: Path):
    with h5py.File(tmp_path / "attrs.h5", "w") as f:
        yield f


# ----------------------------------------------------------------------------- encoding


def test_write_matches_imariswriter_encoding(fixtures_dir: Path, h5file: h5py.File) -> None:
    with h5py.File(fixtures_dir / IW_FILE, "r") as ref:
        pairs = _string_attrs(ref)
        assert len(pairs) > 40
        for path, key in pairs:
            obj = ref[path]
            text = read_attr_str(obj, key)
            group = h5file.require_group(path)
            write_attr_str(group, key, text)
            expected = _encoding(obj, key)
            assert expected["class"] == h5py.h5t.STRING
            assert expected["size"] == 1
            assert expected["strpad"] == h5py.h5t.STR_NULLTERM
            assert expected["cset"] == h5py.h5t.CSET_ASCII
            assert expected["vlen"] is False
            assert expected["space_type"] == h5py.h5s.SIMPLE
            assert _encoding(group, key) == expected, (path, key)
            assert _raw(group, key) == _raw(obj, key), (path, key)


def test_write_u32_matches_imariswriter(fixtures_dir: Path, h5file: h5py.File) -> None:
    write_attr_u32(h5file, "NumberOfDataSets", 1)
    with h5py.File(fixtures_dir / IW_FILE, "r") as ref:
        ref_id = h5py.h5a.open(ref.id, b"NumberOfDataSets")
        ours = h5py.h5a.open(h5file.id, b"NumberOfDataSets")
        assert ours.get_type().dtype == ref_id.get_type().dtype == np.dtype("<u4")
        assert ours.get_space().shape == ref_id.get_space().shape == (1,)
        assert h5file.attrs["NumberOfDataSets"].tolist() == ref.attrs["NumberOfDataSets"].tolist()


def test_write_on_dataset_and_file_root(h5file: h5py.File) -> None:
    ds = h5file.create_dataset("d", data=np.zeros(3, np.uint8))
    write_attr_str(ds, "Name", "abc")
    write_attr_str(h5file, "ImarisVersion", "5.5.0")
    assert read_attr_str(ds, "Name") == "abc"
    assert read_attr_str(h5file, "ImarisVersion") == "5.5.0"
    assert _encoding(ds, "Name")["strpad"] == h5py.h5t.STR_NULLTERM


@pytest.mark.parametrize(
    "text",
    ["ImarisDataSet", "1.000 0.000 0.000", "2021-03-04 05:06:07.890", "x", " a b ", "a/b%c"],
)
def test_roundtrip(h5file: h5py.File, text: str) -> None:
    write_attr_str(h5file, "attr", text)
    assert _encoding(h5file, "attr")["shape"] == (len(text),)
    assert _raw(h5file, "attr") == text.encode()
    # surrounding whitespace is stripped by the tolerant reader
    assert read_attr_str(h5file, "attr") == text.strip()
    # h5py's high-level reader still sees one character per element
    assert b"".join(h5file.attrs["attr"].tolist()) == text.encode()


def test_empty_string_is_one_nul_element(h5file: h5py.File) -> None:
    write_attr_str(h5file, "RecordingDate", "")
    assert _encoding(h5file, "RecordingDate")["shape"] == (1,)
    assert _raw(h5file, "RecordingDate") == b"\x00"
    assert read_attr_str(h5file, "RecordingDate") == ""


def test_replaces_existing_attribute(h5file: h5py.File) -> None:
    h5file.attrs["Unit"] = "a variable-length str"
    write_attr_str(h5file, "Unit", "um")
    assert _encoding(h5file, "Unit")["strpad"] == h5py.h5t.STR_NULLTERM
    assert read_attr_str(h5file, "Unit") == "um"
    write_attr_str(h5file, "Unit", "nm")
    assert read_attr_str(h5file, "Unit") == "nm"
    assert list(h5file.attrs).count("Unit") == 1
    write_attr_u32(h5file, "N", 3)
    write_attr_u32(h5file, "N", 7)
    assert h5file.attrs["N"].tolist() == [7]


def test_long_value_to_dataset(h5file: h5py.File) -> None:
    table = "1.000 0.000 0.000 " * 100
    group = h5file.create_group("Channel 0")
    write_attr_str(group, "ColorTable", table, long_to_dataset=True)
    assert "ColorTable" not in group.attrs
    ds = group["ColorTable"]
    assert ds.shape == (len(table),)
    assert ds.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
    assert read_attr_str(group, "ColorTable") == table.strip()
    # short values stay attributes, and '/' is encoded only in dataset names
    write_attr_str(group, "ColorTableLength", "100", long_to_dataset=True)
    assert read_attr_str(group, "ColorTableLength") == "100"
    write_attr_str(group, "a/b", "x" * 1100, long_to_dataset=True)
    assert "a%sb" in group
    assert read_attr_str(group, "a/b") == "x" * 1100


def test_invalid_values(h5file: h5py.File) -> None:
    with pytest.raises(ValueError, match="ASCII"):
        write_attr_str(h5file, "Name", "µm")
    with pytest.raises(ValueError, match="NUL inside"):
        write_attr_str(h5file, "Name", "GFP\x00junk")
    write_attr_str(h5file, "Trailing", "GFP\x00")  # a terminator, as Minimal_IMS_File has
    assert read_attr_str(h5file, "Trailing") == "GFP"
    with pytest.raises(TypeError):
        write_attr_str(h5file, "Name", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        write_attr_u32(h5file, "N", -1)
    with pytest.raises(ValueError):
        write_attr_u32(h5file, "N", 2**32)
    with pytest.raises(TypeError):
        write_attr_u32(h5file, "N", 1.5)  # type: ignore[arg-type]
    assert "Name" not in h5file.attrs


# ----------------------------------------------------------------------------- reading


def test_read_minimal_file_trailing_nuls(fixtures_dir: Path) -> None:
    with h5py.File(fixtures_dir / MINIMAL_FILE, "r") as f:
        image = f["DataSetInfo/Image"]
        assert h5py.h5a.open(image.id, b"ExtMin0").shape == (11,)
        assert _raw(image, "ExtMin0").endswith(b"\x00")
        assert read_attr_str(image, "ExtMin0") == "3.00000000"
        assert read_attr_str(image, "ExtMax2") == "0.100000000"
        assert read_attr_float(image, "ExtMin0") == 3.0
        assert read_attr_float(image, "ExtMax2") == pytest.approx(0.1)
        level0 = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        assert read_attr_int(level0, "ImageSizeX") == 128
        assert read_attr_int(f, "NumberOfDataSets") == 1
        assert read_attr_str(f, "NumberOfDataSets") == "1"


def test_read_every_fixture_attribute(fixtures_dir: Path) -> None:
    with h5py.File(fixtures_dir / IW_FILE, "r") as f:
        for path, key in _string_attrs(f):
            text = read_attr_str(f[path], key)
            assert text == _raw(f[path], key).decode()
        info = f["DataSetInfo/Channel 0"]
        assert read_attr_str(info, "ColorRange") == "129.658 3163.000"
        assert read_attr_float(info, "ColorRange") is None
        assert read_attr_float(info, "GammaCorrection") == 1.0
        level0 = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        assert read_attr_float(level0, "HistogramMax1024") == 3905.0
        assert read_attr_int(level0, "ImageSizeZ") == 33


def test_read_variants(h5file: h5py.File) -> None:
    attrs = h5file.attrs
    attrs["nullpad"] = np.frombuffer(b"255.000", "S1")  # h5py high level: NULLPAD
    assert _encoding(h5file, "nullpad")["strpad"] == h5py.h5t.STR_NULLPAD
    attrs["vlen"] = "hello world "
    attrs["scalar_bytes"] = np.bytes_(b"12.5")
    attrs["fixed_array"] = np.array([b"0.5"], dtype="S8")
    attrs["u32"] = np.array([128], dtype="<u4")
    attrs["f32"] = np.float32(0.1)
    attrs["pair"] = np.array([0, 247], dtype=np.int32)
    attrs["empty"] = h5py.Empty("S1")
    # NULLTERM array with a trailing NUL element, as in Minimal_IMS_File
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    aid = h5py.h5a.create(h5file.id, b"nul", tid, h5py.h5s.create_simple((4,)))
    aid.write(np.frombuffer(b"3.0\x00", "S1"), mtype=tid)
    # a NUL inside: Imaris (C strings) stops there; the characters after it are not the value
    aid = h5py.h5a.create(h5file.id, b"inner_nul", tid, h5py.h5s.create_simple((8,)))
    aid.write(np.frombuffer(b"GFP\x00junk", "S1"), mtype=tid)

    assert read_attr_str(h5file, "nullpad") == "255.000"
    assert read_attr_str(h5file, "vlen") == "hello world"
    assert read_attr_str(h5file, "scalar_bytes") == "12.5"
    assert read_attr_str(h5file, "fixed_array") == "0.5"
    assert read_attr_str(h5file, "u32") == "128"
    assert read_attr_str(h5file, "f32") == "0.1"
    assert read_attr_str(h5file, "pair") == "0 247"
    assert read_attr_str(h5file, "empty") == ""
    assert read_attr_str(h5file, "nul") == "3.0"
    assert read_attr_str(h5file, "inner_nul") == "GFP"
    assert read_attr_str(h5file, "missing") is None
    assert read_attr_str(h5file, "missing", "dflt") == "dflt"

    assert read_attr_float(h5file, "nullpad") == 255.0
    assert read_attr_float(h5file, "scalar_bytes") == 12.5
    assert read_attr_float(h5file, "u32") == 128.0
    assert read_attr_float(h5file, "f32") == pytest.approx(0.1)
    assert read_attr_float(h5file, "pair") is None
    assert read_attr_float(h5file, "pair", -1.0) == -1.0
    assert read_attr_float(h5file, "vlen", 2.0) == 2.0
    assert read_attr_float(h5file, "missing", 5.0) == 5.0
    assert read_attr_float(h5file, "nul") == 3.0

    assert read_attr_int(h5file, "u32") == 128
    assert read_attr_int(h5file, "nullpad") == 255
    assert read_attr_int(h5file, "scalar_bytes") is None
    assert read_attr_int(h5file, "missing", 7) == 7


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("255.000", 255.0),
        ("1e-3", 1e-3),
        ("-2.5E+2", -250.0),
        (".5", 0.5),
        ("7.", 7.0),
        ("  42 ", 42.0),
        ("255,500", 255.5),
        ("0 247", None),
        ("abc", None),
        ("1_000", None),
        ("", None),
    ],
)
def test_read_float_formats(h5file: h5py.File, text: str, value: float | None) -> None:
    write_attr_str(h5file, "v", text)
    assert read_attr_float(h5file, "v") == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("128", 128), ("128.000", 128), ("-3", -3), ("1e3", 1000), ("128.5", None), ("x", None),
     ("18446744073709551615", 2**64 - 1)],
)
def test_read_int_formats(h5file: h5py.File, text: str, value: int | None) -> None:
    write_attr_str(h5file, "v", text)
    assert read_attr_int(h5file, "v") == value


# ----------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (255, 3, "255.000"),
        (0, 3, "0.000"),
        (129.658203125, 3, "129.658"),
        (3163.0, 3, "3163.000"),
        (0.0025, 3, "0.002"),  # float32(0.0025) = 0.0024999999; the double gives "0.003"
        (0.1, 9, "0.100000001"),
        (-0.25, 2, "-0.25"),
        (1e-4, 3, "0.000"),
        (260, 9, "260.000000000"),
    ],
)
def test_format_float(value: float, decimals: int, text: str) -> None:
    assert format_float(value, decimals) == text


def test_format_float_double_and_errors() -> None:
    assert format_float(0.1, 9, float32=False) == "0.100000000"
    assert format_float(16777217, 0) == "16777216"  # float32 rounding, as ImarisWriter
    assert format_float(16777217, 0, float32=False) == "16777217"
    with pytest.raises(ValueError):
        format_float(1.0, -1)


def test_format_extent(fixtures_dir: Path) -> None:
    assert format_extent(16 * 0.8) == "12.800000191"
    assert format_extent(0) == "0.000000000"
    with h5py.File(fixtures_dir / IW_FILE, "r") as f:
        image = f["DataSetInfo/Image"]
        for key, value in [("ExtMax0", 260), ("ExtMax1", 130), ("ExtMax2", 33), ("ExtMin0", 0)]:
            assert format_extent(value) == read_attr_str(image, key)


def test_format_datetime(fixtures_dir: Path) -> None:
    dt = datetime.datetime(2021, 3, 4, 5, 6, 7, 890000)
    assert format_datetime(dt) == "2021-03-04 05:06:07.890"
    with h5py.File(fixtures_dir / IW_FILE, "r") as f:
        assert format_datetime(dt) == read_attr_str(f["DataSetInfo/Image"], "RecordingDate")
        assert format_datetime(dt) == read_attr_str(f["DataSetInfo/TimeInfo"], "TimePoint1")
    # milliseconds always written, truncated from microseconds
    dt0 = datetime.datetime(2020, 12, 31, 23, 59, 59)
    assert format_datetime(dt0) == "2020-12-31 23:59:59.000"
    dt1 = datetime.datetime(2020, 1, 2, 3, 4, 5, 999999)
    assert format_datetime(dt1) == "2020-01-02 03:04:05.999"
    tz = datetime.timezone(datetime.timedelta(hours=2))
    dt2 = datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=tz)
    assert format_datetime(dt2) == "2020-01-02 03:04:05.000"
    with pytest.raises(TypeError):
        format_datetime("2020-01-01")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-03-04 05:06:07.890", datetime.datetime(2021, 3, 4, 5, 6, 7, 890000)),
        ("2021-03-04 05:06:07", datetime.datetime(2021, 3, 4, 5, 6, 7)),
        ("2021-03-04 05:06:07.123456789", datetime.datetime(2021, 3, 4, 5, 6, 7, 123456)),
        ("2021-03-04T05:06:07.5", datetime.datetime(2021, 3, 4, 5, 6, 7, 500000)),
        ("2021-03-04 05:06", datetime.datetime(2021, 3, 4, 5, 6)),
        ("2021-03-04", datetime.datetime(2021, 3, 4)),
        ("2021-03-04 05:06:07.890\x00", datetime.datetime(2021, 3, 4, 5, 6, 7, 890000)),
        ("", None),
        ("   ", None),
        ("yesterday", None),
        ("2021-13-04 05:06:07", None),
    ],
)
def test_parse_datetime(text: str, expected: datetime.datetime | None) -> None:
    assert parse_datetime(text) == expected


def test_datetime_roundtrip() -> None:
    dt = datetime.datetime(1999, 12, 31, 23, 59, 58, 7000)
    assert parse_datetime(format_datetime(dt)) == dt
