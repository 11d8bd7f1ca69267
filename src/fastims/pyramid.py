"""Block-mean downsampling for resolution pyramids, with Imaris' and BigDataViewer's rules.

Two rules, both bit-exact ports (sources and arithmetic in :mod:`fastims._reference.downsample`):

``"imaris"`` (ImarisWriter, ``bpMultiresolutionImsImage.cxx``)
    Output size ``n // f`` per axis: the trailing planes, rows and columns that do not fill a
    whole box are dropped. Each output voxel is the float32 sum of its box divided by the box
    size, cast back to the dtype by truncation toward zero.

``"bdv"`` (BigDataViewer >= 10.6.2, imglib2-algorithm ``Downsample``)
    Output size ``ceil(n / f)`` per axis; a partial edge box is filled by repeating the last
    plane, row or column. The mean is computed separably (X, then Y, then Z) in float32
    (float64 for uint32) and rounded half up for integer dtypes.

Both work on any block, including a slab of ``fz`` planes at a time, which gives one output
plane; under ``"bdv"`` a final slab of fewer than ``fz`` planes also gives one plane.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from fastims import _dispatch
from fastims._validate import native

__all__ = ["RULES", "SUPPORTED_DTYPES", "downsample", "downsampled_shape"]

Rule = Literal["imaris", "bdv"]

#: Names accepted by the ``rule`` option.
RULES: tuple[str, ...] = ("imaris", "bdv")

#: Dtypes the kernels accept (native byte order).
SUPPORTED_DTYPES: tuple[np.dtype, ...] = (
    np.dtype(np.uint8),
    np.dtype(np.uint16),
    np.dtype(np.uint32),
    np.dtype(np.float32),
)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def _check_factors(factors: Sequence[int]) -> tuple[int, int, int]:
    message = f"factors must be 3 positive integers (z, y, x), got {factors!r}"
    try:
        values = tuple(factors)
        # operator.index accepts Python and NumPy integers, not floats or strings
        ints = [operator.index(f) for f in values if not isinstance(f, (bool, np.bool_))]
    except TypeError:
        raise ValueError(message) from None
    if len(values) != 3 or len(ints) != 3 or min(ints) < 1:
        raise ValueError(message)
    return ints[0], ints[1], ints[2]


def downsampled_shape(
    shape: Sequence[int], factors: Sequence[int], *, rule: Rule = "imaris"
) -> tuple[int, int, int]:
    """Shape of a (Z, Y, X) block after block-mean downsampling by `factors`.

    Parameters
    ----------
    shape : sequence of 3 int
        (Z, Y, X) shape of the input block.
    factors : sequence of 3 int
        Positive (z, y, x) downsampling factors.
    rule : {"imaris", "bdv"}, keyword-only
        ``"imaris"`` drops the remainder (``n // f``); ``"bdv"`` keeps a partial edge box
        (``ceil(n / f)``).

    Returns
    -------
    tuple of 3 int
        The output (Z, Y, X) shape; under ``"imaris"`` an axis shorter than its factor is 0.

    Raises
    ------
    ValueError
        If `shape` is not 3 non-negative integers, `factors` are not 3 positive integers, or
        `rule` is unknown.

    Examples
    --------
    >>> from fastims.pyramid import downsampled_shape
    >>> downsampled_shape((33, 130, 261), (2, 2, 2))
    (16, 65, 130)
    >>> downsampled_shape((33, 130, 261), (2, 2, 2), rule="bdv")
    (17, 65, 131)
    """
    _check_rule(rule)
    fz, fy, fx = _check_factors(factors)
    try:
        dims = tuple(operator.index(n) for n in shape)
    except TypeError:
        dims = ()
    if len(dims) != 3 or min(dims) < 0:
        raise ValueError(f"shape must be 3 non-negative integers (Z, Y, X), got {shape!r}")
    nz, ny, nx = dims
    if rule == "imaris":
        return nz // fz, ny // fy, nx // fx
    return -(-nz // fz), -(-ny // fy), -(-nx // fx)


def downsample(
    block: npt.ArrayLike,
    factors: Sequence[int],
    *,
    rule: Rule = "imaris",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Block-mean downsample a (Z, Y, X) or (Y, X) block by integer `factors`.

    Parameters
    ----------
    block : array_like
        A 3-D (Z, Y, X) or 2-D (Y, X) array of uint8, uint16, uint32 or float32. A 2-D
        block is treated as one plane (Z = 1) and gives a 2-D result. Non-contiguous or
        non-native-byte-order input is copied first.
    factors : sequence of 3 int
        Positive (z, y, x) factors, e.g. ``(2, 2, 2)`` or ``(1, 2, 2)``; also for 2-D input.
    rule : {"imaris", "bdv"}, keyword-only
        ``"imaris"``: ImarisWriter's truncating mean, output ``n // f`` per axis.
        ``"bdv"``: BigDataViewer's edge-replicated mean rounded half up, output
        ``ceil(n / f)`` per axis. See the module docstring.
    out : numpy.ndarray, optional, keyword-only
        Preallocated C-contiguous, writeable result of the block's dtype and of the output
        shape (2-D for 2-D input). Reusing one buffer avoids page faults when streaming.

    Returns
    -------
    numpy.ndarray
        The downsampled block (`out` itself when given), same dtype as `block`.

    Raises
    ------
    TypeError
        If the dtype is not supported, or `out` is not an ndarray of the block's dtype.
    ValueError
        If `block` is not 2-D or 3-D, `factors` are not 3 positive integers, `rule` is
        unknown, the result would be empty (e.g. an axis shorter than its factor under
        ``"imaris"``), or `out` has the wrong shape, is not C-contiguous and writeable, or
        overlaps `block`.

    See Also
    --------
    downsampled_shape : the output shape without computing anything.

    Examples
    --------
    >>> import numpy as np
    >>> from fastims import downsample
    >>> block = np.array([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]], dtype=np.uint16)
    >>> downsample(block, (1, 2, 2))  # (1 + 2 + 4 + 5) / 4 = 3; row 3 and column 3 dropped
    array([[[3]]], dtype=uint16)
    >>> downsample(block, (1, 2, 2), rule="bdv")  # edges replicated; 4.5 and 7.5 round up
    array([[[3, 5],
            [8, 9]]], dtype=uint16)
    >>> downsample(block[0], (1, 3, 3))  # 2-D in, 2-D out
    array([[5]], dtype=uint16)
    """
    _check_rule(rule)
    fz, fy, fx = _check_factors(factors)
    arr = np.asarray(block)
    if arr.ndim not in (2, 3):
        raise ValueError(f"block must be 2-D (Y, X) or 3-D (Z, Y, X), got {arr.ndim}-D")
    dtype = native(arr.dtype)
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"unsupported dtype {arr.dtype}; expected one of {names}")
    src = np.ascontiguousarray(arr, dtype=dtype)
    src3 = src if src.ndim == 3 else src[np.newaxis]

    shape3 = downsampled_shape(src3.shape, (fz, fy, fx), rule=rule)
    if 0 in shape3:
        raise ValueError(
            f"downsampling a block of shape {src3.shape} by {(fz, fy, fx)} under rule "
            f"{rule!r} gives the empty shape {shape3}"
        )
    result_shape = shape3 if arr.ndim == 3 else shape3[1:]

    if out is None:
        out = np.empty(result_shape, dtype=dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected {dtype}")
        if out.shape != result_shape:
            raise ValueError(f"out has shape {out.shape}, expected {result_shape}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        if np.may_share_memory(out, src):
            raise ValueError("out must not overlap block")

    out3 = out.reshape(shape3)  # a view: out is C-contiguous
    _dispatch.kernel(f"downsample_{rule}")(src3, out3, fz, fy, fx)
    return out
