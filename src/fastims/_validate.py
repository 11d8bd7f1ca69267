"""Argument checks shared by the writers (clear built-in exceptions, never ``assert``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_bool", "check_index", "check_planes", "floats", "int_shape", "native", "to_dtype"]


def check_bool(name: str, value: Any) -> bool:
    """`value` as a bool; TypeError naming the option unless it is a bool or ``numpy.bool_``.

    Options like ``overwrite="no"`` would otherwise be silently true.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def int_shape(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    """`shape` as positive integers, one per letter of `axes` (e.g. ``"TCZYX"``)."""
    n = len(axes)
    names = ", ".join(axes)
    try:
        values = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be {n} integers ({names}), got {shape!r}") from None
    if len(values) != n or any(v != s for v, s in zip(values, shape)) or min(values) < 1:
        raise ValueError(f"shape must be {n} positive integers ({names}), got {shape!r}")
    return values


def floats(name: str, values: Sequence[float], n: int, *, positive: bool) -> tuple[float, ...]:
    """`values` as `n` finite floats (all > 0 when `positive`)."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {n} numbers, got {values!r}") from None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be {n} finite numbers, got {values!r}")
    if positive and min(out) <= 0:
        raise ValueError(f"{name} must be positive, got {values!r}")
    return out


def check_index(name: str, value: Any, n: int) -> None:
    """IndexError naming the valid range unless `value` is an integer in ``0 .. n-1``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < n:
        raise IndexError(f"{name}={value!r} out of range 0..{n - 1}")


def check_planes(z: Any, count: int, n: int) -> None:
    """TypeError unless `z` is an integer; IndexError unless planes ``z .. z+count-1`` are in ``0 .. n-1``."""
    if not isinstance(z, (int, np.integer)) or isinstance(z, bool):
        raise TypeError(f"z must be an integer plane index, got {z!r}")
    if not (0 <= z and z + count <= n):
        raise IndexError(f"planes z={z}..{int(z) + count - 1} out of range 0..{n - 1}")


def native(dtype: np.dtype) -> np.dtype:
    """`dtype` in the machine's byte order (files are written in it; input may be byte-swapped)."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def to_dtype(block: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """`block` as (native) `dtype`: itself, a byte-swapped copy, or None if the types differ."""
    if block.dtype == dtype:
        return block
    if not block.dtype.isnative and native(block.dtype) == dtype:
        return block.astype(dtype)
    return None
