"""numba kernels for the min/max-tracking binned histogram of uint32 and float32 data.

The grid is described in :mod:`fastims.histogram`: bins of width ``2**k`` anchored at 0, so a
value ``v`` falls into global bin ``floor(v * 2**-k)``; a ``counts`` array holds the bins
``lo, lo + 1, ...``. Both kernels are serial and ``nogil`` (parallelism is a thread pool
over chunks, one level only) and are compiled lazily per input dtype, cached on disk.

This module is the only one in fastims that imports numba; :mod:`fastims._dispatch` loads it
on first use. The pure-NumPy twins live in :mod:`fastims._reference.histogram`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["hist_binned", "minmax_finite", "warmup"]


@njit(cache=True, nogil=True)
def minmax_finite(src):  # type: ignore[no-untyped-def]
    """Scan `src` once for its finite range and its non-finite counts.

    Parameters
    ----------
    src : numpy.ndarray
        C-contiguous 1-D uint32 or float32 array.

    Returns
    -------
    tuple
        ``(vmin, vmax, n_finite, n_nan, n_neginf, n_posinf)``: `vmin`/`vmax` are floats over
        the finite values (``+inf``/``-inf`` when there is none; ``-0.0`` is reported as
        ``0.0`` so that the result does not depend on the scan order), the rest are ints.
    """
    vmin = np.inf
    vmax = -np.inf
    n_nan = 0
    n_neginf = 0
    n_posinf = 0
    n = src.shape[0]
    for i in range(n):
        x = np.float64(src[i])
        if math.isfinite(x):
            if x < vmin:
                vmin = x
            if x > vmax:
                vmax = x
        elif math.isnan(x):
            n_nan += 1
        elif x > 0.0:
            n_posinf += 1
        else:
            n_neginf += 1
    n_finite = n - n_nan - n_neginf - n_posinf
    # + 0.0 turns -0.0 into 0.0 (and leaves +-inf alone)
    return vmin + 0.0, vmax + 0.0, n_finite, n_nan, n_neginf, n_posinf


@njit(cache=True, nogil=True)
def hist_binned(src, counts, k, lo):  # type: ignore[no-untyped-def]
    """Add the finite values of `src` into the power-of-two grid `counts` (in place).

    Value ``v`` goes to ``counts[floor(v * 2**-k) - lo]``; the product and the floor are exact
    in float64. NaN and +-inf are skipped (:func:`minmax_finite` counts them). Indices
    outside ``counts`` are clamped to its ends; callers size the grid from
    :func:`minmax_finite`, so that never happens in fastims.

    Parameters
    ----------
    src : numpy.ndarray
        C-contiguous 1-D uint32 or float32 array.
    counts : numpy.ndarray
        uint64 bins, accumulated in place.
    k : int
        log2 of the bin width.
    lo : int
        Global index of ``counts[0]``.
    """
    scale = math.ldexp(1.0, -k)
    flo = np.float64(lo)
    last = np.float64(counts.shape[0] - 1)
    for i in range(src.shape[0]):
        x = np.float64(src[i]) * scale
        if math.isfinite(x):
            y = np.floor(x) - flo
            if y < 0.0:
                y = 0.0
            elif y > last:
                y = last
            counts[np.int64(y)] += 1


def warmup(dtype: np.dtype) -> None:
    """Compile (or load from numba's cache) the kernel signatures used for `dtype`.

    Both writeable and read-only inputs are prepared, since numba types them apart.

    Parameters
    ----------
    dtype : numpy.dtype
        ``uint32`` or ``float32``; other dtypes do not use these kernels and are ignored.
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint32), np.dtype(np.float32)):
        return
    counts = np.zeros(4, dtype=np.uint64)
    src = np.zeros(2, dtype=dt)
    frozen = src.copy()
    frozen.flags.writeable = False
    for a in (src, frozen):
        minmax_finite(a)
        hist_binned(a, counts, 0, 0)
