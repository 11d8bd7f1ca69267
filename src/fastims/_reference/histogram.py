"""Pure-NumPy twins of the histogram kernels (:mod:`fastims._ext._histogram` and
:mod:`fastims._ext._histogram_nb`): same names, signatures and results, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["hist_binned", "hist_u8", "hist_u16", "minmax_finite"]


def _check_counts(counts: np.ndarray, nbins: int) -> None:
    if counts.shape != (nbins,):
        raise ValueError(f"counts must have {nbins} bins, got shape {counts.shape}")


def hist_u8(src: np.ndarray, counts: np.ndarray) -> None:
    """Add the bincount of `src` (1-D uint8) into `counts` (uint64[256]), in place."""
    _check_counts(counts, 256)
    counts += np.bincount(src, minlength=256).astype(np.uint64)


def hist_u16(src: np.ndarray, counts: np.ndarray) -> None:
    """Add the bincount of `src` (1-D uint16) into `counts` (uint64[65536]), in place."""
    _check_counts(counts, 65536)
    counts += np.bincount(src, minlength=65536).astype(np.uint64)


def minmax_finite(src: np.ndarray) -> tuple[float, float, int, int, int, int]:
    """Finite range and non-finite counts of `src` (1-D uint32 or float32).

    Returns
    -------
    tuple
        ``(vmin, vmax, n_finite, n_nan, n_neginf, n_posinf)``; `vmin`/`vmax` are
        ``+inf``/``-inf`` when no value is finite, and ``-0.0`` is reported as ``0.0``.
    """
    x = src.astype(np.float64)
    finite = np.isfinite(x)
    xf = x[finite]
    n_nan = int(np.count_nonzero(np.isnan(x)))
    n_posinf = int(np.count_nonzero(x == np.inf))
    n_neginf = int(np.count_nonzero(x == -np.inf))
    if xf.size == 0:
        vmin, vmax = math.inf, -math.inf
    else:
        vmin, vmax = float(xf.min()) + 0.0, float(xf.max()) + 0.0
    return vmin, vmax, int(xf.size), n_nan, n_neginf, n_posinf


def hist_binned(src: np.ndarray, counts: np.ndarray, k: int, lo: int) -> None:
    """Add the finite values of `src` into ``counts[floor(v * 2**-k) - lo]``, in place.

    NaN and +-inf are skipped; out-of-grid indices are clamped to the ends of `counts`.
    """
    y = np.floor(src.astype(np.float64) * math.ldexp(1.0, -k))
    y = y[np.isfinite(y)] - np.float64(lo)
    idx = np.clip(y, 0.0, np.float64(counts.shape[0] - 1)).astype(np.intp)
    counts += np.bincount(idx, minlength=counts.shape[0]).astype(np.uint64)
