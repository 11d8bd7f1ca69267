"""Streaming, mergeable histograms and their reduction to Imaris ``Histogram`` datasets.

:class:`Histogram` accumulates the voxels of one (resolution level, time point, channel)
frame by frame; :meth:`Histogram.imaris` turns it into what ImarisWriter writes (see
``spec/imaris.md`` §3 and §10.1, and ``writer/bpHistogram.h`` in imaris/ImarisWriter):

* **uint8**: ``Histogram`` is the exact 256-bin count, ``HistogramMin/Max`` = 0/255, no
  ``Histogram1024``.
* **uint16**: an exact 65536-bin count. ``HistogramMin`` is always 0; ``HistogramMax`` is the
  highest non-empty value but at least 256, giving ``max + 1`` integer bins. These are
  resampled to 1024 bins (source bin ``i`` -> ``i * 1024 // (max + 1)``) when there are more
  than 1024, else kept, and written as ``Histogram1024`` (257..1024 entries); ``Histogram``
  is that resampled again to 256 bins (``i -> i * 256 // n``).
* **uint32 / float32**: ImarisWriter's adaptive 1000-bin builder depends on the order in which
  values arrive; fastims uses an order-free grid instead (below), reduced the same way.

The uint32/float32 grid
-----------------------
Bins have width ``2**k`` and are anchored at 0: value ``v`` belongs to global bin
``floor(v * 2**-k)`` (exact in float64). ``k`` is the smallest integer, not below a floor, for
which the finite data range ``[min, max]`` spans at most 1024 bins. The floor is 0 for uint32
(bins narrower than 1 are useless) and the float32 spacing (ulp) at ``max(|min|, |max|)`` for
float32. ``k`` only grows when the range widens, and growing it merges neighbour bins
pairwise, exactly, so the state is a function of the data *set* alone: merging two
accumulators equals accumulating all frames in one, bit for bit, in any order.

``Histogram1024`` is the occupied bins, padded with empty bins on the right to at least 257
(ImarisWriter never trims below 257 either). Its range is ``[lo * 2**k, (lo + n) * 2**k]`` for
float32 (bin edges, as ImarisWriter's builder) and ``[lo * 2**k, (lo + n) * 2**k - 1]`` for
uint32 (integer bins, as the uint16 convention where ``max + 1`` values make the bins).

Edges are computed in float64, but ``HistogramMin/Max`` are stored as float32 text, so float32
data near +-FLT_MAX need two rules to keep them finite: padding that would put the top edge
beyond the bin holding FLT_MAX goes on the left instead, and an outermost edge beyond
+-FLT_MAX (the edges of the bins holding +-FLT_MAX are +-2**128) is clamped to +-FLT_MAX, so
that one bin is nominally narrower than the others.

Special values and the empty case
---------------------------------
* NaN is never binned; it is counted in :attr:`Histogram.nan_count`.
* +-inf does not widen the range (``min``/``max`` are over finite values); it is counted in
  :attr:`Histogram.inf_count` and folded into the first (-inf) or last (+inf) bin by
  :meth:`Histogram.imaris`, so the Imaris histogram sums to the number of non-NaN voxels.
* ``-0.0`` is binned and reported as ``0.0``.
* With no data (ImarisWriter omits such histograms; fastims always writes them):
  uint8 gives 256 zeros over 0..255; uint16 and uint32 give 257 zeros over 0..256, float32
  257 zeros over 0..257 (width-1 bins from 0), plus any +-inf counts folded in.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fastims import _dispatch
from fastims._validate import native, to_dtype

__all__ = ["Histogram", "ImarisHistogram", "resample_histogram"]

#: capacity of the uint32/float32 grid: the occupied range always fits in this many bins
GRID_BINS = 1024
#: ImarisWriter keeps at least this many bins in ``Histogram1024`` (its trim stops at 257)
MIN_IMARIS_BINS = 257

#: largest finite float32: float32 histogram ranges are clamped to +-FLT_MAX
FLT_MAX = float(np.finfo(np.float32).max)

_SUPPORTED = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "float32"))
_EXACT_BINS = {np.dtype(np.uint8): 256, np.dtype(np.uint16): 65536}
_EXACT_KERNEL = {np.dtype(np.uint8): "hist_u8", np.dtype(np.uint16): "hist_u16"}


@dataclass(frozen=True, eq=False)
class ImarisHistogram:
    """The histogram datasets and attributes of one Imaris ``Channel`` group.

    Attributes
    ----------
    hist256 : numpy.ndarray
        uint64[256], the ``Histogram`` dataset (read-only).
    hist1024 : numpy.ndarray or None
        uint64[n] with 257 <= n <= 1024, the ``Histogram1024`` dataset (read-only); None for
        uint8, where ImarisWriter writes none.
    hmin, hmax : float
        ``HistogramMin`` / ``HistogramMax``.
    hmin1024, hmax1024 : float or None
        ``HistogramMin1024`` / ``HistogramMax1024``; None when `hist1024` is None.
    """

    hist256: npt.NDArray[np.uint64]
    hist1024: npt.NDArray[np.uint64] | None
    hmin: float
    hmax: float
    hmin1024: float | None
    hmax1024: float | None


def resample_histogram(counts: npt.ArrayLike, nbins: int) -> npt.NDArray[np.uint64]:
    """Resample a histogram to `nbins` bins the way ImarisWriter does.

    Source bin ``i`` of ``n`` goes to target bin ``i * nbins // n`` (``bpResampleHistogram``);
    the counts are summed exactly in uint64. When ``n == nbins`` the counts are returned as a
    copy.

    Parameters
    ----------
    counts : array_like
        Source bin counts (non-negative integers).
    nbins : int
        Number of target bins, at least 1.

    Returns
    -------
    numpy.ndarray
        uint64[nbins].

    Examples
    --------
    >>> resample_histogram([1, 2, 3, 4, 5], 2).tolist()
    [6, 9]
    """
    src = np.asarray(counts, dtype=np.uint64).reshape(-1)
    if nbins < 1:
        raise ValueError(f"nbins must be >= 1, got {nbins}")
    n = src.shape[0]
    if n == nbins:
        return src.copy()
    target = (np.arange(n, dtype=np.int64) * nbins) // max(n, 1)
    out = np.zeros(nbins, dtype=np.uint64)
    np.add.at(out, target, src)
    return out


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------- binned grid


def _k_floor(dtype: np.dtype, vmin: float, vmax: float) -> int:
    """Finest allowed bin width (log2): 1 for uint32, the float32 ulp at the magnitude."""
    if dtype.kind == "u":
        return 0
    magnitude = max(abs(vmin), abs(vmax))
    if magnitude == 0.0:
        return -149
    exponent = math.frexp(magnitude)[1] - 1  # floor(log2(magnitude))
    # float32 spacing is 2**(e - 23) for normal numbers and 2**-149 for subnormals
    return max(exponent, -126) - 23


def _span(vmin: float, vmax: float, k: int) -> int:
    return math.floor(math.ldexp(vmax, -k)) - math.floor(math.ldexp(vmin, -k)) + 1


def _grid_k(dtype: np.dtype, vmin: float, vmax: float) -> int:
    """Smallest ``k >= _k_floor`` such that ``[vmin, vmax]`` spans <= GRID_BINS bins.

    Non-decreasing when ``[vmin, vmax]`` widens, which is what makes merges exact.
    """
    k = _k_floor(dtype, vmin, vmax)
    width = vmax - vmin
    if width > 0.0:
        # the answer is >= floor(log2(width)) - 9; start 2 lower to absorb rounding of `width`
        k = max(k, math.frexp(width)[1] - 1 - 11)
    while _span(vmin, vmax, k) > GRID_BINS:
        k += 1
    return k


class _Binned:
    """Accumulator state for uint32/float32: finite range, grid and counts, non-finite counts."""

    __slots__ = ("dtype", "vmin", "vmax", "k", "lo", "counts", "n_finite", "n_nan", "n_neginf",
                 "n_posinf")

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.vmin: float | None = None
        self.vmax: float | None = None
        self.k = 0
        self.lo = 0
        self.counts = np.zeros(GRID_BINS, dtype=np.uint64)
        self.n_finite = 0
        self.n_nan = 0
        self.n_neginf = 0
        self.n_posinf = 0

    @property
    def nbins(self) -> int:
        """Number of occupied-span bins (0 when no finite value was seen)."""
        if self.vmax is None:
            return 0
        return math.floor(math.ldexp(self.vmax, -self.k)) - self.lo + 1

    def copy(self) -> _Binned:
        other = _Binned(self.dtype)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        other.counts = self.counts.copy()
        return other

    @classmethod
    def from_data(cls, dtype: np.dtype, x: np.ndarray) -> _Binned:
        """Accumulate the 1-D contiguous array `x` on its own grid (kernels, no lock)."""
        state = cls(dtype)
        vmin, vmax, n_fin, n_nan, n_neg, n_pos = _dispatch.kernel("minmax_finite")(x)
        state.n_finite, state.n_nan = int(n_fin), int(n_nan)
        state.n_neginf, state.n_posinf = int(n_neg), int(n_pos)
        if n_fin:
            state.vmin, state.vmax = float(vmin), float(vmax)
            state.k = _grid_k(dtype, state.vmin, state.vmax)
            state.lo = math.floor(math.ldexp(state.vmin, -state.k))
            _dispatch.kernel("hist_binned")(x, state.counts, state.k, state.lo)
        return state

    def _rebinned(self, k: int, lo: int) -> np.ndarray:
        """Counts moved onto the coarser-or-equal grid ``(k, lo)``: exact pairwise merges."""
        occupied = np.flatnonzero(self.counts)
        target = ((occupied.astype(np.int64) + self.lo) >> (k - self.k)) - lo
        out = np.zeros(GRID_BINS, dtype=np.uint64)
        np.add.at(out, target, self.counts[occupied])
        return out

    def merge(self, other: _Binned) -> None:
        """Add `other` into self (in place)."""
        self.n_finite += other.n_finite
        self.n_nan += other.n_nan
        self.n_neginf += other.n_neginf
        self.n_posinf += other.n_posinf
        if other.vmin is None or other.vmax is None:
            return
        if self.vmin is None or self.vmax is None:
            self.vmin, self.vmax = other.vmin, other.vmax
            self.k, self.lo = other.k, other.lo
            self.counts = other.counts.copy()
            return
        vmin, vmax = min(self.vmin, other.vmin), max(self.vmax, other.vmax)
        k = _grid_k(self.dtype, vmin, vmax)
        lo = math.floor(math.ldexp(vmin, -k))
        counts = self._rebinned(k, lo)
        counts += other._rebinned(k, lo)
        self.vmin, self.vmax, self.k, self.lo, self.counts = vmin, vmax, k, lo, counts


# --------------------------------------------------------------------------- public class


# Zeroed private counts for updates that find the histogram busy, kept between calls: a new
# 512 KiB np.zeros per update is a fresh mmap (page faults, and an munmap that interrupts the
# other cores) on every band of a stream.
_PRIVATE: dict[int, list[np.ndarray]] = {}
_PRIVATE_LOCK = threading.Lock()
_PRIVATE_KEEP = 8  # per bin count: about one per thread counting at the same time


def _take_private(nbins: int) -> np.ndarray:
    with _PRIVATE_LOCK:
        free = _PRIVATE.get(nbins)
        if free:
            return free.pop()
    return np.zeros(nbins, dtype=np.uint64)


def _give_private(counts: np.ndarray) -> None:
    counts.fill(0)
    with _PRIVATE_LOCK:
        free = _PRIVATE.setdefault(counts.shape[0], [])
        if len(free) < _PRIVATE_KEEP:
            free.append(counts)


class Histogram:
    """Thread-safe, mergeable histogram of one frame stream, reducible to Imaris datasets.

    Parameters
    ----------
    dtype : numpy.dtype or str
        ``uint8``, ``uint16``, ``uint32`` or ``float32``.

    Raises
    ------
    TypeError
        For any other dtype.

    Notes
    -----
    uint8/uint16 keep an exact bincount (256/65536 bins); uint32/float32 keep a grid of at
    most 1024 power-of-two-wide bins plus the exact finite min/max (see the module
    docstring). :meth:`update` may be called from several threads at once: the counting
    kernels run without the GIL and without the lock where possible, and merges are exact,
    so the result never depends on thread timing.

    Examples
    --------
    >>> import numpy as np
    >>> h = Histogram("uint16")
    >>> h.update(np.array([[43, 141], [100, 43]], dtype=np.uint16))
    >>> h.count, h.min, h.max
    (4, 43, 141)
    >>> ims = h.imaris()
    >>> ims.hist1024.shape, ims.hmax, int(ims.hist256[42])
    ((257,), 256.0, 2)
    """

    def __init__(self, dtype: Any) -> None:
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"Histogram: not a dtype: {dtype!r}") from exc
        dt = native(dt)
        if dt not in _SUPPORTED:
            raise TypeError(
                f"Histogram supports uint8, uint16, uint32 and float32, got {np.dtype(dtype)}"
            )
        self._dtype = dt
        self._lock = threading.Lock()
        self._exact = dt in _EXACT_BINS
        if self._exact:
            self._counts = np.zeros(_EXACT_BINS[dt], dtype=np.uint64)
            self._count = 0
        else:
            self._binned = _Binned(dt)

    # ----------------------------------------------------------------- accumulation

    @property
    def dtype(self) -> np.dtype:
        """The data type this histogram accepts."""
        return self._dtype

    def _prepare(self, data: npt.ArrayLike) -> np.ndarray:
        given = np.asarray(data)
        a = to_dtype(given, self._dtype)  # byte-swapped input: same values, native order
        if a is None:
            raise TypeError(f"expected {self._dtype} data, got {given.dtype}")
        return np.ascontiguousarray(a).reshape(-1)

    def update(self, data: npt.ArrayLike) -> None:
        """Add the values of `data` (any shape, this histogram's dtype).

        Parameters
        ----------
        data : array_like
            Values to count; any shape, any memory layout (copied once if not C-contiguous).

        Raises
        ------
        TypeError
            If `data` has another dtype (no silent casts).
        """
        x = self._prepare(data)
        if x.size == 0:
            return
        if not self._exact:
            part = _Binned.from_data(self._dtype, x)
            with self._lock:
                self._binned.merge(part)
            return
        fn = _dispatch.kernel(_EXACT_KERNEL[self._dtype])
        # Count in place when nobody else is; otherwise count privately (GIL released) and
        # add under the lock, so concurrent updates overlap instead of queueing.
        if self._lock.acquire(blocking=False):
            try:
                fn(x, self._counts)
                self._count += int(x.size)
            finally:
                self._lock.release()
            return
        local = _take_private(self._counts.shape[0])
        try:
            fn(x, local)
            with self._lock:
                self._counts += local
                self._count += int(x.size)
        finally:
            _give_private(local)

    def merge(self, other: Histogram) -> None:
        """Add the counts of `other` into this histogram (in place).

        Parameters
        ----------
        other : Histogram
            A histogram of the same dtype; it is not modified.

        Raises
        ------
        TypeError
            If `other` is not a :class:`Histogram` or has another dtype.
        """
        if not isinstance(other, Histogram):
            raise TypeError(f"can only merge a Histogram, got {type(other).__name__}")
        if other._dtype != self._dtype:
            raise TypeError(f"cannot merge a {other._dtype} histogram into a {self._dtype} one")
        # snapshot first: never hold both locks (no lock-order deadlock, a.merge(a) works)
        with other._lock:
            if other._exact:
                counts, n = other._counts.copy(), other._count
            else:
                snapshot = other._binned.copy()
        with self._lock:
            if self._exact:
                self._counts += counts
                self._count += n
            else:
                self._binned.merge(snapshot)

    def __iadd__(self, other: Histogram) -> Histogram:
        self.merge(other)
        return self

    # ----------------------------------------------------------------- summaries

    @property
    def count(self) -> int:
        """Number of finite values counted (NaN and +-inf excluded)."""
        with self._lock:
            return self._count if self._exact else self._binned.n_finite

    @property
    def nan_count(self) -> int:
        """Number of NaN values seen (always 0 for integer dtypes)."""
        if self._exact:
            return 0
        with self._lock:
            return self._binned.n_nan

    @property
    def inf_count(self) -> tuple[int, int]:
        """Numbers of ``-inf`` and ``+inf`` values seen, as ``(neg, pos)``."""
        if self._exact:
            return (0, 0)
        with self._lock:
            return (self._binned.n_neginf, self._binned.n_posinf)

    def _extremes(self) -> tuple[int | float | None, int | float | None]:
        with self._lock:
            if self._exact:
                occupied = np.flatnonzero(self._counts)
                if occupied.size == 0:
                    return None, None
                return int(occupied[0]), int(occupied[-1])
            vmin, vmax = self._binned.vmin, self._binned.vmax
        if vmin is None or vmax is None:
            return None, None
        if self._dtype.kind == "u":
            return int(vmin), int(vmax)
        return vmin, vmax

    @property
    def min(self) -> int | float | None:
        """Smallest finite value seen (int for integer dtypes), None when empty."""
        return self._extremes()[0]

    @property
    def max(self) -> int | float | None:
        """Largest finite value seen (int for integer dtypes), None when empty."""
        return self._extremes()[1]

    def full_counts(self) -> npt.NDArray[np.uint64]:
        """A copy of the raw accumulator.

        Returns
        -------
        numpy.ndarray
            uint64: 256 bins (uint8), 65536 bins (uint16), or for uint32/float32 the occupied
            grid bins from ``floor(min / w)`` to ``floor(max / w)`` with ``w = 2**k`` (empty
            when no finite value was seen; +-inf not included). See :meth:`full_edges`.
        """
        with self._lock:
            if self._exact:
                return self._counts.copy()
            return self._binned.counts[: self._binned.nbins].copy()

    def full_edges(self) -> npt.NDArray[np.float64]:
        """Bin edges of :meth:`full_counts` (one more than its length), as float64.

        Integer bins ``v`` of uint8/uint16 have edges ``v`` and ``v + 1``.
        """
        with self._lock:
            if self._exact:
                return np.arange(self._counts.shape[0] + 1, dtype=np.float64)
            state = self._binned
            n, k, lo = state.nbins, state.k, state.lo
        return np.ldexp(np.arange(lo, lo + n + 1, dtype=np.float64), k)

    # ----------------------------------------------------------------- Imaris reduction

    def imaris(self) -> ImarisHistogram:
        """Reduce to the ``Histogram``/``Histogram1024`` datasets and their attributes.

        Follows ImarisWriter exactly for uint8 and uint16; see the module docstring for the
        rules, the uint32/float32 grid and the empty case.

        Returns
        -------
        ImarisHistogram
        """
        with self._lock:
            if self._exact:
                counts = self._counts.copy()
            else:
                state = self._binned.copy()
        if self._dtype == np.dtype(np.uint8):
            return ImarisHistogram(_frozen(counts), None, 0.0, 255.0, None, None)
        if self._exact:
            occupied = np.flatnonzero(counts)
            top = int(occupied[-1]) if occupied.size else 0
            vmax = max(top, MIN_IMARIS_BINS - 1)
            h1024 = resample_histogram(counts[: vmax + 1], min(vmax + 1, 1024))
            lo_edge, hi_value = 0.0, float(vmax)
        else:
            nocc = state.nbins
            n = max(nocc, MIN_IMARIS_BINS)
            k, lo = (state.k, state.lo) if nocc else (0, 0)
            first = lo  # grid index of the first written bin: padding goes on the right...
            if self._dtype.kind == "f":
                # ...unless it would pass the bin holding FLT_MAX (see the module docstring)
                top = math.floor(math.ldexp(FLT_MAX, -k)) + 1
                first = min(lo, max(top - n, lo - (n - nocc)))
            h1024 = np.zeros(n, dtype=np.uint64)
            h1024[lo - first : lo - first + nocc] = state.counts[:nocc]
            h1024[0] += np.uint64(state.n_neginf)
            h1024[n - 1] += np.uint64(state.n_posinf)
            lo_edge = math.ldexp(float(first), k)
            hi_value = math.ldexp(float(first + n), k)
            if self._dtype.kind == "u":
                hi_value -= 1.0  # integer bins: the last bin's top value, as for uint16
            else:  # the outermost edges of bins holding +-FLT_MAX are +-2**128: not float32
                lo_edge = max(lo_edge, -FLT_MAX)
                hi_value = min(hi_value, FLT_MAX)
        h256 = resample_histogram(h1024, 256)
        return ImarisHistogram(
            _frozen(h256), _frozen(h1024), lo_edge, hi_value, lo_edge, hi_value
        )

    def __repr__(self) -> str:
        lo, hi = self._extremes()
        return f"Histogram(dtype={self._dtype}, count={self.count}, min={lo}, max={hi})"
