"""Channel colours for Imaris files: defaults, text encoding and ImarisWriter's automatic range.

``DataSetInfo/Channel c`` holds ``Color`` ("r g b", 3 decimals), ``ColorRange`` ("min max")
and ``GammaCorrection``. ImarisWriter can choose the colour range itself
(``Finish(..., autoAdjustColorRange=true)``, ``bpImageConverterImpl::AdjustColorRange``):

1. take the channel's level-0 histogram with at most 1024 bins (for T > 1 the time points
   are first merged on 65536 bins, see :func:`merge_time_histograms`);
2. smooth the bin counts with a recursive Deriche Gaussian of width ``5 * nbins / 256``;
3. min = value of the first local maximum of the smoothed counts;
4. max = value of the first bin where the smoothed cumulative sum exceeds 99.8 %, plus 20 %
   of (max - min), capped at the histogram maximum and truncated to an integer;
5. a bin's value is ``hmin + (hmax - hmin) * bin / nbins`` (its lower edge).

Everything runs in float32 in the original, and is emulated operation by operation here,
so the result matches ImarisWriter's text to the last printed digit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from fastims.ims.attrs import format_float

__all__ = [
    "DEFAULT_COLORS",
    "auto_color_range",
    "merge_time_histograms",
    "deriche_gauss",
    "format_color",
    "format_color_table",
    "format_color_range",
    "color_values",
]

#: Default base colour per channel index (use ``DEFAULT_COLORS[c % len(DEFAULT_COLORS)]``).
#: Channel 0 is red like PyImarisWriter's ``Color()`` default (and the reference fixture);
#: then green, blue, magenta, cyan, yellow and white, the usual fluorescence order.
#: (ImarisWriter's C++ default is black for every channel, which renders nothing.)
DEFAULT_COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, 1.0),
    (1.0, 1.0, 0.0),
    (1.0, 1.0, 1.0),
)

_f32 = np.float32


def format_color(rgb: Sequence[float]) -> str:
    """Text of a ``Color`` attribute: ``"r g b"`` with 3 decimals (an alpha is ignored).

    Examples
    --------
    >>> format_color((1, 0, 0))
    '1.000 0.000 0.000'
    """
    if len(rgb) not in (3, 4):
        raise ValueError(f"a colour has 3 (or 4) components, got {len(rgb)}")
    return " ".join(format_float(v) for v in rgb[:3])


def format_color_table(table: Iterable[Sequence[float]]) -> str:
    """Text of a ``ColorTable`` attribute: ``"r g b "`` per entry, with a trailing space."""
    return "".join(format_color(rgb) + " " for rgb in table)


def format_color_range(vmin: float, vmax: float) -> str:
    """Text of a ``ColorRange`` attribute: ``"min max"`` with 3 decimals."""
    return f"{format_float(vmin)} {format_float(vmax)}"


# ----------------------------------------------------------------------------- smoothing


def deriche_gauss(values: np.ndarray, sigma: float) -> np.ndarray:
    """ImarisWriter's recursive Gaussian (``bpDeriche::FilterGauss``), bit-exact in float32.

    A causal plus an anti-causal second-order recursion with Deriche's coefficients for
    ``alpha = 1.695 / sigma``; both passes start from a steady state that replicates the
    border value. Each arithmetic step is rounded to float32 in the original's order.

    Parameters
    ----------
    values : numpy.ndarray
        1-D input (converted to float32).
    sigma : float
        Filter width (converted to float32).

    Returns
    -------
    numpy.ndarray
        float32 array of the same length.
    """
    x = np.ascontiguousarray(values, dtype=np.float32).ravel()
    n = x.size
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    sigma32 = _f32(sigma)
    if not sigma32 > 0:
        raise ValueError("sigma must be > 0")
    one = _f32(1.0)
    two = _f32(2.0)
    alpha = _f32(1.695) / sigma32
    # exp is evaluated in double and rounded, like static_cast<float>(exp(-alpha))
    e = _f32(math.exp(-float(alpha)))
    e2 = _f32(math.exp(float(-2 * alpha)))
    norm = (one - e) * (one - e) / (one + two * alpha * e - e2)
    d1 = two * e
    d2 = -e2
    xs = [_f32(v) for v in x.tolist()]
    res: list[np.float32] = [_f32(0.0)] * n

    # forward (causal) pass
    n0 = norm
    n1 = norm * (alpha - one) * e
    n2 = _f32(0.0)
    in1 = in2 = xs[0]
    out1 = out2 = (n2 + n1 + n0) * in1 / (one - d1 - d2)
    for i in range(n):
        in0 = xs[i]
        out0 = n2 * in2 + n1 * in1 + n0 * in0 + d1 * out1 + d2 * out2
        in2, in1 = in1, in0
        out2, out1 = out1, out0
        res[i] = out0

    # backward (anti-causal) pass, added onto the forward result
    n0 = _f32(0.0)
    n1 = norm * (alpha + one) * e
    n2 = -norm * e2
    in1 = in2 = xs[n - 1]
    out1 = out2 = (n2 + n1 + n0) * in1 / (one - d1 - d2)
    for i in range(n - 1, -1, -1):
        in0 = xs[i]
        out0 = n2 * in2 + n1 * in1 + n0 * in0 + d1 * out1 + d2 * out2
        in2, in1 = in1, in0
        out2, out1 = out1, out0
        res[i] = res[i] + out0
    out[:] = res
    return out


def _u64_add(total: int, value: np.float32) -> int:
    """``bpUInt64 += float``: convert to float, add in float, truncate back to uint64."""
    s = _f32(total) + value
    if not s > 0:  # NaN or negative: clamp (the C++ conversion would be undefined)
        return 0
    return int(s)


# ----------------------------------------------------------------------------- auto range


def auto_color_range(hist: np.ndarray, hmin: float, hmax: float) -> tuple[float, float]:
    """ImarisWriter's automatic ``ColorRange`` for one channel.

    Parameters
    ----------
    hist : numpy.ndarray
        Bin counts of the channel histogram (at most 1024 bins in ImarisWriter: the
        level-0 ``Histogram1024`` of time point 0 when T == 1, else the output of
        :func:`merge_time_histograms`).
    hmin, hmax : float
        Value range of the histogram (``HistogramMin1024`` / ``HistogramMax1024``; pass the
        builder's float values rather than the 3-decimal text when they differ).

    Returns
    -------
    (float, float)
        (range min, range max), both float32 values; the max is an integer.

    Examples
    --------
    For the fixture ``u16_z33_y130_x260_shufflegzip2.ims`` (level-0 ``Histogram1024`` over
    0..3905) this gives (129.658203125, 3163.0), written as ``"129.658 3163.000"``.
    """
    counts = np.asarray(hist)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("hist must be a non-empty 1-D array of counts")
    size = counts.size
    # ImarisWriter converts the uint64 counts to float before filtering
    sigma = _f32(5.0) * _f32(size) / _f32(256)
    bins = deriche_gauss(counts.astype(np.float32), sigma).tolist()
    b = [_f32(v) for v in bins]

    # first local maximum (a rising edge followed by a drop); bin 0 if none
    first_mode = 0
    previous = _f32(-1.0)
    for i in range(size - 1):
        if b[i] > previous and b[i] > b[i + 1]:
            first_mode = i
            break
        previous = b[i]

    # first bin where the (float-accumulated, uint64-truncated) cumulative sum > 99.8 %
    high = size - 1
    total = 0
    for v in b:
        total = _u64_add(total, v)
    if total > 0:
        total32 = _f32(total)
        threshold = _f32(0.998)
        running = 0
        for i, v in enumerate(b):
            running = _u64_add(running, v)
            if _f32(running) / total32 > threshold:
                high = i
                break

    lo = _f32(hmin)
    hi = _f32(hmax)
    span = hi - lo
    nbins = _f32(size)

    def bin_value(k: int) -> np.float32:
        return lo + span * _f32(k) / nbins

    vmin = bin_value(first_mode)
    vmax = bin_value(high)
    vmax = vmax + (vmax - vmin) * _f32(0.2)
    vmax = min(vmax, hi)
    vmax = _f32(math.trunc(float(vmax)))  # static_cast<bpInt32>
    return float(vmin), float(vmax)


def merge_time_histograms(
    histograms: Sequence[tuple[np.ndarray, float, float]],
) -> tuple[np.ndarray, float, float]:
    """Merge one channel's per-time-point histograms as ImarisWriter does for T > 1.

    ``bpMultiresolutionImsImage::GetChannelHistogram``: the range is the union of the
    ranges; every source bin's value (lower edge) is put into a 65536-bin histogram over
    that range with ``bin = (v - min) * 65536 / (max - min + 1)``; the result is resampled
    to 1024 bins (``j = i * 1024 // 65536``).

    Parameters
    ----------
    histograms : sequence of (counts, hmin, hmax)
        Level-0 histogram of each time point *before* the 1024-bin resampling (for uint16,
        the full ``max + 1``-bin count from 0; for uint8 the 256 bins; for float32 the
        adaptive builder's bins).

    Returns
    -------
    (numpy.ndarray, float, float)
        uint64 counts (1024 bins), range min and range max. A single histogram is returned
        unchanged (ImarisWriter uses its 1024-bin version directly when T == 1).
    """
    if not histograms:
        raise ValueError("no histograms to merge")
    if len(histograms) == 1:
        counts, lo, hi = histograms[0]
        return np.asarray(counts, dtype=np.uint64), float(lo), float(hi)
    vmin = min(_f32(h[1]) for h in histograms)
    vmax = max(_f32(h[2]) for h in histograms)
    nout = 256 * 256
    merged = np.zeros(nout, dtype=np.uint64)
    denom = vmax - vmin + _f32(1.0)
    for counts, lo, hi in histograms:
        c = np.asarray(counts, dtype=np.uint64).ravel()
        n = c.size
        lo32, hi32 = _f32(lo), _f32(hi)
        idx = np.arange(n, dtype=np.float32)
        values = lo32 + (hi32 - lo32) * idx / _f32(n)
        dest = np.empty(n, dtype=np.int64)
        low_mask = values <= vmin
        high_mask = values >= vmax
        mid = ~(low_mask | high_mask)
        dest[low_mask] = 0
        dest[high_mask] = nout - 1
        dest[mid] = ((values[mid] - vmin) * _f32(nout) / denom).astype(np.int64)
        np.add.at(merged, dest, c)
    out = np.zeros(1024, dtype=np.uint64)
    np.add.at(out, np.arange(nout) * 1024 // nout, merged)
    return out, float(vmin), float(vmax)


# ----------------------------------------------------------------------------- colour ramp


def color_values(
    values: np.ndarray,
    color: Sequence[float] | np.ndarray,
    color_range: tuple[float, float],
    gamma: float = 1.0,
) -> np.ndarray:
    """Colour data values as ImarisWriter's ``cColorInfo::GetColor`` (float32 RGBA in 0..1).

    Base-colour mode (`color` is ``(r, g, b)`` or ``(r, g, b, a)``): values ``<= min`` are
    opaque black, values ``>= max`` the base colour (with its alpha), values between get
    ``t = ((v - min) / (max - min)) ** (1 / gamma)`` times the base colour and alpha 1.
    Table mode (`color` is an ``(n, 3|4)`` array): the entry ``int(t * (n - 1))``.

    Parameters
    ----------
    values : numpy.ndarray
        Data values (any shape; converted to float32).
    color : sequence of float or numpy.ndarray
        Base colour or colour table, components in 0..1.
    color_range : (float, float)
        ``ColorRange`` min and max.
    gamma : float, optional
        ``GammaCorrection``.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``values.shape + (4,)``.
    """
    v = np.asarray(values, dtype=np.float32)
    col = np.asarray(color, dtype=np.float32)
    if col.ndim == 2:
        if col.shape[0] == 0 or col.shape[1] not in (3, 4):
            raise ValueError("a colour table has shape (n, 3) or (n, 4), n >= 1")
        if col.shape[1] == 3:
            col = np.concatenate([col, np.ones((col.shape[0], 1), np.float32)], axis=1)
    elif col.shape in ((3,), (4,)):
        if col.shape == (3,):
            col = np.append(col, _f32(1.0))
    else:
        raise ValueError(f"a colour has 3 or 4 components, got shape {col.shape}")
    if not (np.all(col >= 0) and np.all(col <= 1)):
        raise ValueError("colour components must be within 0..1")
    lo, hi = _f32(color_range[0]), _f32(color_range[1])
    g = _f32(gamma)
    if not g > 0:
        raise ValueError("gamma must be > 0")
    below = v <= lo
    above = (v >= hi) & ~below
    mid = ~(below | above)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (v[mid] - lo) / (hi - lo)
        if g != _f32(1.0):
            t = np.power(t, _f32(1.0) / g)
    out = np.empty(v.shape + (4,), dtype=np.float32)
    if col.ndim == 1:
        out[below] = (0.0, 0.0, 0.0, 1.0)
        out[above] = col
        out[mid, :3] = t[:, None] * col[None, :3]
        out[mid, 3] = 1.0
    else:
        n = col.shape[0]
        out[below] = col[0]
        out[above] = col[n - 1]
        idx = (t * _f32(n - 1)).astype(np.int64)
        out[mid] = col[np.clip(idx, 0, n - 1)]
    return out
