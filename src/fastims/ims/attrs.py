"""Imaris attribute encoding: NULLTERM one-character string arrays, numbers and dates as text.

Every "string" attribute of an .ims file is a 1-D array of N one-byte fixed-length strings
(class STRING, size 1, strpad ``H5T_STR_NULLTERM``, cset ASCII, dataspace ``(N,)``), one
character per element and no terminating NUL. h5py's high-level ``attrs`` cannot produce
this encoding (it writes NULLPAD for ``S1`` arrays and variable-length UTF-8 for ``str``),
and Imaris refuses NULLPAD strings, so :func:`write_attr_str` uses the low-level API.

Numbers are written as decimal text the way ImarisWriter prints them: every value passes
through ``float`` (float32) and ``std::fixed`` notation, 3 decimals by default and 9 for
the image extents. The readers accept every variant seen in real files (NULLPAD, trailing
NULs, scalar strings, variable-length strings, numeric attributes).

See ``spec/imaris.md`` sections 1.0, 1.3 and 10.1.
"""

from __future__ import annotations

import datetime
import logging
import math
import re
from typing import Any

import h5py
import numpy as np

__all__ = [
    "write_attr_str",
    "write_attr_u32",
    "read_attr_str",
    "read_attr_float",
    "read_attr_int",
    "format_float",
    "format_extent",
    "format_datetime",
    "parse_datetime",
    "encode_name",
]

logger = logging.getLogger("fastims")

#: ImarisWriter stores DataSetInfo values longer than this as a dataset, not an attribute.
LONG_ATTRIBUTE_LENGTH = 1024


def _nullterm_s1() -> h5py.h5t.TypeID:
    """A fresh copy of H5T_C_S1 with size 1 and NULLTERM padding (cset stays ASCII)."""
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    tid.set_cset(h5py.h5t.CSET_ASCII)
    return tid


def _ascii_bytes(value: str | bytes, name: str) -> bytes:
    if isinstance(value, bytes):
        data = value
        try:
            data.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"attribute {name!r}: value {value!r} is not ASCII") from None
    elif not isinstance(value, str):
        raise TypeError(f"attribute {name!r}: expected str, got {type(value).__name__}")
    else:
        try:
            data = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"attribute {name!r}: value {value!r} is not ASCII; Imaris strings are ASCII only"
            ) from None
    # NULLTERM: Imaris stops at the first NUL, so text after one would be stored but unseen
    if b"\x00" in data.rstrip(b"\x00"):
        raise ValueError(f"attribute {name!r}: value {value!r} has a NUL inside; Imaris reads a string up to its first NUL")
    return data


def encode_name(name: str) -> str:
    """Encode a DataSetInfo name as ImarisWriter does: ``%`` -> ``%p``, then ``/`` -> ``%s``."""
    return name.replace("%", "%p").replace("/", "%s")


def write_attr_str(
    obj: h5py.Group | h5py.Dataset,
    name: str,
    value: str,
    *,
    long_to_dataset: bool = False,
) -> None:
    """Write `value` as an Imaris string attribute of `obj`, replacing any existing one.

    The attribute is a 1-D array of ``len(value)`` one-byte NULLTERM ASCII strings, one
    character per element, exactly as ImarisWriter writes it (``H5T_C_S1`` with the length of
    the string as the dataspace size). An empty string becomes a 1-element attribute holding
    a NUL byte (ImarisWriter writes the C string's terminator in that case).

    Parameters
    ----------
    obj : h5py.Group or h5py.Dataset
        Object that receives the attribute.
    name : str
        Attribute name.
    value : str
        ASCII text.
    long_to_dataset : bool, optional
        Mimic ImarisWriter's ``DataSetInfo`` rule: a value longer than 1024 characters is
        written as a child *dataset* of the same encoding (name passed through
        :func:`encode_name`) instead of an attribute. Only valid when `obj` is a group.

    Raises
    ------
    ValueError
        If `value` is not ASCII, or has a NUL before other characters (trailing NULs are
        terminators and allowed).
    TypeError
        If `value` is neither ``str`` nor ``bytes``.
    """
    data = _ascii_bytes(value, name)
    bname = name.encode("utf-8")
    if not data:
        data = b"\x00"
    tid = _nullterm_s1()
    space = h5py.h5s.create_simple((len(data),))
    buf = np.frombuffer(data, dtype="S1")
    if long_to_dataset and len(data) > LONG_ATTRIBUTE_LENGTH:
        if not isinstance(obj, h5py.Group):
            raise TypeError("long_to_dataset needs a group to hold the dataset")
        dname = encode_name(name)
        if dname in obj:
            del obj[dname]
        if h5py.h5a.exists(obj.id, bname):
            h5py.h5a.delete(obj.id, bname)
        did = h5py.h5d.create(obj.id, dname.encode("utf-8"), tid, space)
        # mtype = the file type, so HDF5 performs no NULLPAD -> NULLTERM conversion (which
        # would replace every character of a size-1 NULLTERM string by its terminator)
        did.write(h5py.h5s.ALL, h5py.h5s.ALL, buf, mtype=tid)
        return
    if h5py.h5a.exists(obj.id, bname):
        h5py.h5a.delete(obj.id, bname)
    aid = h5py.h5a.create(obj.id, bname, tid, space)
    aid.write(buf, mtype=tid)


def write_attr_u32(obj: h5py.Group | h5py.Dataset, name: str, value: int) -> None:
    """Write `value` as a little-endian uint32 attribute of shape (1,), like ``NumberOfDataSets``.

    Raises
    ------
    TypeError
        If `value` is not an integer.
    ValueError
        If `value` does not fit in uint32.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"attribute {name!r}: expected an integer, got {type(value).__name__}")
    if not 0 <= int(value) < 2**32:
        raise ValueError(f"attribute {name!r}: {value} does not fit in uint32")
    if name in obj.attrs:
        del obj.attrs[name]
    obj.attrs.create(name, np.array([int(value)], dtype="<u4"))


# ----------------------------------------------------------------------------- reading


def _number_text(value: np.generic) -> str:
    if isinstance(value, (np.bool_, bool)):
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    if isinstance(value, np.floating):
        # shortest round-trip text for the stored precision (float32 0.1 -> "0.1")
        return np.format_float_positional(value, trim="-")
    return str(value)


def _to_text(value: Any) -> str:
    """Turn whatever h5py returned for an attribute into text."""
    if isinstance(value, h5py.Empty):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "S":
            if value.dtype.itemsize == 1:
                # Imaris's one-character elements: keep their NULs, so _clean stops at the first
                # one as Imaris does (numpy would drop each NUL element and join what follows)
                return value.tobytes().decode("utf-8", errors="replace")
            # numpy drops the trailing NULs of each fixed-length element
            return b"".join(value.ravel().tolist()).decode("utf-8", errors="replace")
        if value.dtype.kind == "U":
            return "".join(value.ravel().tolist())
        if value.dtype.kind == "O":
            parts = [_to_text(v) for v in value.ravel().tolist()]
            return "".join(parts)
        if value.dtype.kind in "biuf":
            return " ".join(_number_text(v) for v in value.ravel())
        raise TypeError(f"unsupported attribute dtype {value.dtype}")
    if isinstance(value, np.generic):
        if isinstance(value, np.bytes_):
            return bytes(value).decode("utf-8", errors="replace")
        if isinstance(value, np.str_):
            return str(value)
        return _number_text(value)
    if isinstance(value, (int, float)):
        return str(value)
    raise TypeError(f"unsupported attribute value of type {type(value).__name__}")


def _clean(text: str, strip: bool = True) -> str:
    # a NUL ends a C string: anything after it is padding
    nul = text.find("\x00")
    if nul >= 0:
        text = text[:nul]
    return text.strip() if strip else text


def read_attr_str(
    obj: h5py.Group | h5py.Dataset, name: str, default: str | None = None, *, strip: bool = True
) -> str | None:
    """Read an attribute as text, whatever its encoding; `default` when it is missing.

    Accepts 1-D ``S1`` arrays (NULLTERM or NULLPAD, with or without trailing NULs),
    fixed-length byte scalars or arrays, variable-length strings and numeric attributes
    (returned as decimal text, elements separated by a space). The text is cut at the first
    NUL and, with `strip` (the default), stripped of surrounding whitespace. When `obj` is a group with no such
    attribute but a 1-D string dataset of that (encoded) name, as ImarisWriter writes for
    values longer than 1024 characters, the dataset is read instead.

    Returns
    -------
    str or None
    """
    try:
        exists = name in obj.attrs
    except (KeyError, OSError):  # pragma: no cover - unreadable attribute table
        exists = False
    if exists:
        try:
            value = obj.attrs[name]
        except (OSError, TypeError, ValueError) as exc:
            logger.debug("attribute %r of %r unreadable: %s", name, obj.name, exc)
            return default
        return _clean(_to_text(value), strip)
    if isinstance(obj, h5py.Group):
        for dname in (name, encode_name(name)):
            child = obj.get(dname)
            if isinstance(child, h5py.Dataset) and child.dtype.kind in "SOU":
                return _clean(_to_text(child[()]), strip)
    return default


_FLOAT_RE = re.compile(
    r"""^[+-]?(?:
        (?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?
        |inf(?:inity)?|nan
    )$""",
    re.VERBOSE | re.IGNORECASE,
)


def _parse_float(text: str) -> float | None:
    text = text.strip()
    if _FLOAT_RE.match(text):
        return float(text)
    # a decimal comma (locale-dependent writers): "255,000"
    if text.count(",") == 1 and "." not in text and _FLOAT_RE.match(text.replace(",", ".")):
        return float(text.replace(",", "."))
    return None


def read_attr_float(
    obj: h5py.Group | h5py.Dataset, name: str, default: float | None = None
) -> float | None:
    """Read a number written as text (``"255.000"``, ``"1e-3"``, ``"3.0\\0"``) or as a number.

    Returns `default` when the attribute is missing or is not a single number (``"0 247"``
    is two numbers, not a float).
    """
    text = read_attr_str(obj, name)
    if text is None:
        return default
    value = _parse_float(text)
    if value is None:
        logger.debug("attribute %r = %r of %r is not a number", name, text, obj.name)
        return default
    return value


def read_attr_int(
    obj: h5py.Group | h5py.Dataset, name: str, default: int | None = None
) -> int | None:
    """Read an integer written as text (``"128"``, ``"128.000"``) or as a number (uint32[1]).

    Returns `default` when the attribute is missing, is not a number, or is not integral.
    """
    text = read_attr_str(obj, name)
    if text is None:
        return default
    value = _parse_float(text)
    if value is None or not math.isfinite(value) or value != math.floor(value):
        logger.debug("attribute %r = %r of %r is not an integer", name, text, obj.name)
        return default
    if re.fullmatch(r"[+-]?\d+", text.strip()):
        return int(text)  # exact even beyond 2**53
    return int(value)


# ----------------------------------------------------------------------------- formatting


def format_float(value: float, decimals: int = 3, *, float32: bool = True) -> str:
    """Format a number as ImarisWriter's ``bpFloatToString`` does (fixed notation).

    Parameters
    ----------
    value : float
        The number.
    decimals : int, optional
        Digits after the decimal point (3 by default, as ImarisWriter writes histogram
        ranges, colours, colour ranges, opacity and gamma).
    float32 : bool, optional
        Round `value` to float32 first, as ImarisWriter does (it prints ``bpFloat``).
        Set to False to print the double value.

    Examples
    --------
    >>> format_float(255)
    '255.000'
    >>> format_float(12.8, 9)
    '12.800000191'
    """
    if decimals < 0:
        raise ValueError("decimals must be >= 0")
    if float32:
        with np.errstate(over="ignore"):  # beyond float32 range prints "inf", as in C++
            v = float(np.float32(value))
    else:
        v = float(value)
    # Python's fixed formatting rounds the exact binary value like glibc's printf/iostreams,
    # and also keeps the sign of tiny negatives ("-0.000")
    return f"{v:.{decimals}f}"


def format_extent(value: float) -> str:
    """Format an ``ExtMin*``/``ExtMax*`` value: rounded to float32, then 9 decimals.

    Examples
    --------
    >>> format_extent(16 * 0.8)
    '12.800000191'
    """
    return format_float(value, 9)


def _pad(value: int, width: int) -> str:
    # ImarisWriter's ToString(value, decimals, leadingZeros=true): zero-pad to a minimum width
    return str(value).zfill(width)


def format_datetime(dt: datetime.datetime) -> str:
    """Format a time stamp as ImarisWriter writes ``RecordingDate`` / ``TimePoint<n>``.

    The format is ``"YYYY-MM-DD HH:MM:SS.mmm"``; milliseconds are always written (also
    ``.000``, as in ImarisWriter's own output) and are truncated, not rounded, from the
    microseconds. The wall-clock time is written; a time zone is ignored.

    Examples
    --------
    >>> format_datetime(datetime.datetime(2021, 3, 4, 5, 6, 7, 890123))
    '2021-03-04 05:06:07.890'
    """
    if not isinstance(dt, datetime.datetime):
        if isinstance(dt, datetime.date):
            dt = datetime.datetime(dt.year, dt.month, dt.day)
        else:
            raise TypeError(f"expected datetime.datetime, got {type(dt).__name__}")
    date = f"{_pad(dt.year, 2)}-{_pad(dt.month, 2)}-{_pad(dt.day, 2)}"
    time = f"{_pad(dt.hour, 2)}:{_pad(dt.minute, 2)}:{_pad(dt.second, 2)}"
    return f"{date} {time}.{_pad(dt.microsecond // 1000, 3)}"


_DATETIME_RE = re.compile(
    r"""^\s*(\d{1,4})-(\d{1,2})-(\d{1,2})
        (?:[ T]+(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:[.,](\d+))?)?)?\s*$""",
    re.VERBOSE,
)


def parse_datetime(text: str) -> datetime.datetime | None:
    """Parse an Imaris time stamp; None for an empty or unparsable string.

    Accepts ``"YYYY-MM-DD HH:MM:SS"`` with or without a fractional part of any length
    (``.mmm``, ``.SSSSSS``, nanoseconds are truncated to microseconds), a ``T`` separator,
    a date alone, and trailing NULs.

    Examples
    --------
    >>> parse_datetime("2021-03-04 05:06:07.890")
    datetime.datetime(2021, 3, 4, 5, 6, 7, 890000)
    >>> parse_datetime("") is None
    True
    """
    if text is None:
        return None
    text = _clean(str(text))
    if not text:
        return None
    m = _DATETIME_RE.match(text)
    if m is None:
        logger.debug("not an Imaris time stamp: %r", text)
        return None
    year, month, day, hour, minute, second, frac = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        return datetime.datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            micro,
        )
    except ValueError:
        logger.debug("not a valid date/time: %r", text)
        return None
