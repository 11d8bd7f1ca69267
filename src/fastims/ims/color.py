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
so the result matches ImarisWriter's text to the last printed digit. fastims departs from it
only where ImarisWriter's result is unusable:

* when a float32 step overflows (histogram ranges wider than about FLT_MAX / nbins, data
  near +-FLT_MAX), steps 3-5 are redone in float64 (ImarisWriter would get inf or NaN);
* the integer truncation of step 4 does not wrap at 32 bits (``static_cast<bpInt32>`` of a
  larger value is undefined);
* when the result is not a valid range as written (``max > min`` at the 3 decimals of
  ``ColorRange``), which happens for float data below 1 (the truncation drops the max to
  0) and for constant data, the un-truncated max is used if that is valid, else
  ``[min, min + w]`` with ``w = max(1, |min| / 2**20)`` (``[min - w, min]`` when that would
  pass FLT_MAX). See :func:`auto_color_range`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from fastims.histogram import Histogram
from fastims.ims.attrs import format_float

__all__ = [
    "DEFAULT_COLORS",
    "auto_color_range",
    "color_values",
    "deriche_gauss",
    "format_color",
    "format_color_range",
    "format_color_table",
    "merge_time_histograms",
    "time_point_histogram",
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
_FLT_MAX = float(np.finfo(np.float32).max)


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
    """ImarisWriter's automatic ``ColorRange`` for one channel, made valid where it is not.

    Parameters
    ----------
    hist : numpy.ndarray
        Bin counts of the channel histogram (at most 1024 bins in ImarisWriter: the
        level-0 ``Histogram1024`` of time point 0 when T == 1, else the output of
        :func:`merge_time_histograms`).
    hmin, hmax : float
        Value range of the histogram (``HistogramMin1024`` / ``HistogramMax1024``; pass the
        builder's float values rather than the 3-decimal text when they differ). Both must
        be finite float32 values.

    Returns
    -------
    (float, float)
        (range min, range max), both float32 values, with ``max > min`` also in the
        3-decimal text of ``ColorRange``. This is ImarisWriter's result (the max an integer)
        whenever that is such a range. Otherwise (float data below 1, where the truncation
        makes the max 0; constant data; data finer than 0.001) the first valid one of:

        1. ``(min, max)`` with the max not truncated to an integer;
        2. ``(min, min + w)``, ``w = max(1, |min| / 2**20)``, or ``(min - w, min)`` when
           ``min + w`` would pass FLT_MAX.

        When ImarisWriter's float32 arithmetic overflows (histogram ranges near the float32
        limits) the same formulas are evaluated in float64 first.

    Raises
    ------
    ValueError
        If `hist` is not a non-empty 1-D array, or `hmin` / `hmax` are not finite float32
        values.

    Examples
    --------
    For the fixture ``u16_z33_y130_x260_shufflegzip2.ims`` (level-0 ``Histogram1024`` over
    0..3905) this gives (129.658203125, 3163.0), written as ``"129.658 3163.000"``.
    """
    counts = np.asarray(hist)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("hist must be a non-empty 1-D array of counts")
    with np.errstate(over="ignore"):
        lo, hi = _f32(hmin), _f32(hmax)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"the histogram range must be finite float32 values, got {hmin!r}, {hmax!r}")
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

    vmin, vmax = _range_steps(lo, hi, size, first_mode, high, np.float32)
    if not (math.isfinite(vmin) and math.isfinite(vmax)):
        vmin, vmax = _range_steps(lo, hi, size, first_mode, high, np.float64)
    imaris = (vmin, float(_f32(math.trunc(vmax))))  # static_cast<bpInt32>, without the wrap
    if _written_valid(*imaris):
        return imaris
    if _written_valid(vmin, vmax):
        return vmin, vmax
    width = max(1.0, abs(vmin) * 2.0**-20)  # a float32 step even for huge values
    if vmin + width <= _FLT_MAX:
        return vmin, float(_f32(vmin + width))
    return float(_f32(vmin - width)), vmin


def _range_steps(lo: float, hi: float, size: int, first_mode: int, high: int, ft: type) -> tuple[float, float]:
    """Steps 3-5 in `ft` (``np.float32`` or ``np.float64``), rounded to float32.

    In float32, as ImarisWriter, a step may overflow to inf or NaN (the caller checks); in
    float64 none does for finite float32 `lo`, `hi`, and the monotonic rounding keeps
    ``vmin <= vmax <= hi``.
    """
    lo, hi = ft(lo), ft(hi)
    with np.errstate(over="ignore", invalid="ignore"):
        span = hi - lo
        vmin = lo + span * ft(first_mode) / ft(size)
        vmax = lo + span * ft(high) / ft(size)
        vmax = vmax + (vmax - vmin) * ft(0.2)
    vmax = min(vmax, hi)  # as std::min(vmax, hi): a NaN stays NaN
    return float(_f32(vmin)), float(_f32(vmax))


def _written_valid(vmin: float, vmax: float) -> bool:
    """Whether ``max > min`` still holds in the 3-decimal ``ColorRange`` text."""
    return float(format_float(vmax)) > float(format_float(vmin))


def time_point_histogram(hist: Histogram) -> tuple[np.ndarray, float, float]:
    """One time point's level-0 histogram as ImarisWriter merges it for T > 1.

    ImarisWriter's ``GetHistogram(256 * 256)``: the histogram before the 1024-bin
    resampling. For uint8 the 256 counts over 0..255; for uint16 the ``max + 1`` integer
    bins from 0 (``max`` the highest non-empty value, at least 256). For uint32/float32,
    where fastims' grid replaces ImarisWriter's adaptive builder, the grid's ``Histogram1024``
    and its range (never more than 1024 bins, so the builder's resampling does not apply).

    Parameters
    ----------
    hist : fastims.histogram.Histogram
        Level-0 histogram of one (time point, channel).

    Returns
    -------
    (numpy.ndarray, float, float)
        uint64 counts, range min and range max, as :func:`merge_time_histograms` takes them.
    """
    if not isinstance(hist, Histogram):
        raise TypeError(f"expected a fastims Histogram, got {type(hist).__name__}")
    if hist.dtype == np.dtype(np.uint8):
        return hist.full_counts(), 0.0, 255.0
    if hist.dtype == np.dtype(np.uint16):
        counts = hist.full_counts()
        occupied = np.flatnonzero(counts)
        top = max(int(occupied[-1]) if occupied.size else 0, 256)
        return counts[: top + 1], 0.0, float(top)
    ims = hist.imaris()
    if ims.hist1024 is None or ims.hmin1024 is None or ims.hmax1024 is None:
        raise TypeError(f"no Histogram1024 for {hist.dtype}")  # only uint8, handled above
    return np.array(ims.hist1024), ims.hmin1024, ims.hmax1024


def merge_time_histograms(
    histograms: Sequence[tuple[np.ndarray, float, float]],
) -> tuple[np.ndarray, float, float]:
    """Merge one channel's per-time-point histograms as ImarisWriter does for T > 1.

    ``bpMultiresolutionImsImage::GetChannelHistogram``: the range is the union of the
    ranges; every source bin's value (lower edge) is put into a 65536-bin histogram over
    that range with ``bin = (v - min) * 65536 / (max - min + 1)``; the result is resampled
    to 1024 bins (``j = i * 1024 // 65536``). The arithmetic is float32 as in ImarisWriter;
    where a float32 step overflows (ranges near the float32 limits) it is done in float64.

    Parameters
    ----------
    histograms : sequence of (counts, hmin, hmax)
        Level-0 histogram of each time point *before* the 1024-bin resampling, as
        :func:`time_point_histogram` gives it (for uint16, the full ``max + 1``-bin count
        from 0; for uint8 the 256 bins; for float32 the builder's bins).

    Returns
    -------
    (numpy.ndarray, float, float)
        uint64 counts (1024 bins), range min and range max. A single histogram is returned
        unchanged (as counts of uint64): ImarisWriter does not merge when T == 1.
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
    for counts, lo, hi in histograms:
        c = np.asarray(counts, dtype=np.uint64).ravel()
        values = _bin_values(_f32(lo), _f32(hi), c.size)
        np.add.at(merged, _layout_bins(values, vmin, vmax, nout), c)
    out = merged.reshape(1024, nout // 1024).sum(axis=1, dtype=np.uint64)
    return out, float(vmin), float(vmax)


def _bin_values(lo: np.float32, hi: np.float32, n: int) -> np.ndarray:
    """``bpHistogram::GetBinValue`` of every bin: float32, or float64 if float32 overflows."""
    idx = np.arange(n, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        values = lo + (hi - lo) * idx / _f32(n)
    if np.isfinite(values).all():
        return values
    return float(lo) + (float(hi) - float(lo)) * idx.astype(np.float64) / n


def _layout_bins(values: np.ndarray, vmin: np.float32, vmax: np.float32, nout: int) -> np.ndarray:
    """``bpHistogram::GetBin`` of `values` in an `nout`-bin histogram over ``[vmin, vmax]``."""
    dest = np.empty(values.size, dtype=np.int64)
    low_mask = values <= vmin
    high_mask = values >= vmax
    mid = ~(low_mask | high_mask)
    dest[low_mask] = 0
    dest[high_mask] = nout - 1
    v = values[mid]
    scaled: np.ndarray | None = None
    if v.dtype == np.float32:
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = (v - vmin) * _f32(nout) / (vmax - vmin + _f32(1.0))
        if not np.isfinite(scaled).all():
            scaled = None
    if scaled is None:
        v64, lo64, hi64 = v.astype(np.float64), float(vmin), float(vmax)
        scaled = (v64 - lo64) * nout / (hi64 - lo64 + 1.0)
    # rounding can reach nout when `+ 1` is lost in a wide range (undefined in ImarisWriter)
    dest[mid] = np.minimum(scaled.astype(np.int64), nout - 1)
    return dest


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
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if np.isfinite(hi - lo):
            t = (v[mid] - lo) / (hi - lo)
        else:  # a range wider than FLT_MAX: the float32 span overflows, float64 does not
            t = ((v[mid].astype(np.float64) - float(lo)) / (float(hi) - float(lo))).astype(np.float32)
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
