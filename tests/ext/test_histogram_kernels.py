"""Histogram kernels (Cython ``_histogram``, numba ``_histogram_nb``) against their NumPy twins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastims._reference import histogram as ref

cy = pytest.importorskip("fastims._ext._histogram", reason="Cython module _histogram not built")
nb = pytest.importorskip("fastims._ext._histogram_nb", reason="numba kernels unavailable")

SETTINGS = settings(max_examples=40, deadline=None)
# lengths around the unrolling (4) and the direct-count thresholds (1 << 10 for u8, 1 << 17 for
# u16) of the Cython kernels
LENGTHS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 129, 1023, 1024, 1025]),
    st.integers(0, 3000),
)
BIG_U16 = [(1 << 17) - 1, 1 << 17, (1 << 17) + 3, 300_001]


def _bits(x: float) -> bytes:
    return np.float64(x).tobytes()


def _same_tuple(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(
        _bits(x) == _bits(y) if isinstance(x, float) or isinstance(y, float) else x == y
        for x, y in zip(a, b)
    )


# ----------------------------------------------------------------------------- hist_u8/u16


@SETTINGS
@given(n=LENGTHS, seed=st.integers(0, 2**32 - 1), narrow=st.booleans())
def test_hist_u8_matches_twin(n: int, seed: int, narrow: bool) -> None:
    rng = np.random.default_rng(seed)
    hi = 8 if narrow else 256  # narrow: many repeats, the store-forwarding worst case
    src = rng.integers(0, hi, size=n, dtype=np.uint8)
    start = rng.integers(0, 1000, size=256, dtype=np.uint64)  # accumulates, never resets
    got, want = start.copy(), start.copy()
    cy.hist_u8(src, got)
    ref.hist_u8(src, want)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want - start, np.bincount(src, minlength=256))


@SETTINGS
@given(n=LENGTHS, seed=st.integers(0, 2**32 - 1), narrow=st.booleans())
def test_hist_u16_matches_twin(n: int, seed: int, narrow: bool) -> None:
    rng = np.random.default_rng(seed)
    hi = 40 if narrow else 65536
    src = rng.integers(0, hi, size=n, dtype=np.uint16)
    start = rng.integers(0, 1000, size=65536, dtype=np.uint64)
    got, want = start.copy(), start.copy()
    cy.hist_u16(src, got)
    ref.hist_u16(src, want)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", BIG_U16)
def test_hist_u16_sub_histogram_path(n: int, rng: np.random.Generator) -> None:
    # long inputs go through the interleaved uint32 sub-histograms and the flush
    src = rng.integers(0, 65536, size=n, dtype=np.uint16)
    src[: n // 2] = 7  # one hot bin, as on a dark camera background
    got = np.full(65536, 2**40, dtype=np.uint64)
    want = got.copy()
    cy.hist_u16(src, got)
    ref.hist_u16(src, want)
    np.testing.assert_array_equal(got, want)
    assert int(got[7] - 2**40) >= n // 2


def test_hist_u16_scratch_reused_across_calls_and_threads() -> None:
    """The kept sub-histograms come back zeroed: every call counts only its own values.

    Consecutive large calls of disjoint value ranges, and threads counting at once (more
    threads than the free list keeps), each compared with NumPy's bincount.
    """
    import threading

    rng = np.random.default_rng(11)
    arrays = [rng.integers(lo, lo + 500, 200_000, dtype=np.uint16) for lo in (0, 20_000, 60_000, 100)]
    for a in arrays:  # a scratch left dirty would add the previous call's values here
        counts = np.zeros(65536, np.uint64)
        cy.hist_u16(a, counts)
        np.testing.assert_array_equal(counts, np.bincount(a, minlength=65536))
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(6):
                a = arrays[(k + i) % len(arrays)]
                counts = np.zeros(65536, np.uint64)
                cy.hist_u16(a, counts)
                np.testing.assert_array_equal(counts, np.bincount(a, minlength=65536))
        except AssertionError as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_hist_u8_long_input(rng: np.random.Generator) -> None:
    src = rng.integers(0, 256, size=1_000_003, dtype=np.uint8)
    got = np.zeros(256, np.uint64)
    cy.hist_u8(src, got)
    np.testing.assert_array_equal(got, np.bincount(src, minlength=256))


@pytest.mark.parametrize(
    ("name", "dtype", "nbins"), [("hist_u8", np.uint8, 256), ("hist_u16", np.uint16, 65536)]
)
def test_hist_exact_accepts_read_only_input(name: str, dtype: type, nbins: int) -> None:
    src = np.arange(300, dtype=dtype)
    src.flags.writeable = False
    got = np.zeros(nbins, np.uint64)
    getattr(cy, name)(src, got)
    want = np.zeros(nbins, np.uint64)
    getattr(ref, name)(src, want)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("impl", [cy, ref], ids=["cython", "reference"])
@pytest.mark.parametrize(
    ("name", "dtype", "nbins"), [("hist_u8", np.uint8, 256), ("hist_u16", np.uint16, 65536)]
)
def test_hist_exact_rejects_wrong_counts_length(
    impl: object, name: str, dtype: type, nbins: int
) -> None:
    with pytest.raises(ValueError, match="bins"):
        getattr(impl, name)(np.zeros(4, dtype), np.zeros(nbins - 1, np.uint64))


# ----------------------------------------------------------------------------- numba kernels

FLOAT32_VALUES = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38]),
)


def _float32_arrays() -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, LENGTHS.filter(lambda n: n <= 400), elements=FLOAT32_VALUES)


def _uint32_arrays() -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.uint32, LENGTHS.filter(lambda n: n <= 400))


def _grid_for(src: np.ndarray) -> tuple[int, int, int]:
    """(k, lo, nbins) that fastims.histogram would use for `src`."""
    from fastims.histogram import _grid_k

    vmin, vmax, n_fin, *_ = ref.minmax_finite(src)
    if n_fin == 0:
        return 0, 0, 1
    k = _grid_k(src.dtype, vmin, vmax)
    lo = math.floor(math.ldexp(vmin, -k))
    return k, lo, math.floor(math.ldexp(vmax, -k)) - lo + 1


@SETTINGS
@given(src=st.one_of(_float32_arrays(), _uint32_arrays()))
def test_minmax_finite_matches_twin(src: np.ndarray) -> None:
    got = nb.minmax_finite(src)
    want = ref.minmax_finite(src)
    assert _same_tuple(tuple(got), want), (got, want)
    vmin, vmax, n_fin, n_nan, n_neg, n_pos = want
    assert n_fin + n_nan + n_neg + n_pos == src.size
    finite = src[np.isfinite(src)]
    if finite.size:
        assert vmin == finite.min() and vmax == finite.max()
        assert math.copysign(1.0, vmin) == 1.0 or vmin < 0  # -0.0 is reported as 0.0
    else:
        assert (vmin, vmax) == (math.inf, -math.inf)


@SETTINGS
@given(src=st.one_of(_float32_arrays(), _uint32_arrays()))
def test_hist_binned_matches_twin_on_its_grid(src: np.ndarray) -> None:
    k, lo, nbins = _grid_for(src)
    assert nbins <= 1024
    start = np.arange(1024, dtype=np.uint64)
    got, want = start.copy(), start.copy()
    nb.hist_binned(src, got, k, lo)
    ref.hist_binned(src, want, k, lo)
    np.testing.assert_array_equal(got, want)
    # independent check: every finite value is in bin floor(v / 2**k) - lo
    finite = src[np.isfinite(src)].astype(np.float64)
    expect = np.zeros(1024, np.uint64)
    for v in finite.tolist():
        expect[math.floor(v / 2.0**k) - lo] += 1
    np.testing.assert_array_equal(want - start, expect)


@SETTINGS
@given(
    src=st.one_of(_float32_arrays(), _uint32_arrays()),
    k=st.integers(-160, 140),
    lo=st.integers(-(2**40), 2**40),
    nbins=st.integers(1, 50),
)
def test_hist_binned_clamps_like_twin_on_any_grid(
    src: np.ndarray, k: int, lo: int, nbins: int
) -> None:
    got = np.zeros(nbins, np.uint64)
    want = np.zeros(nbins, np.uint64)
    nb.hist_binned(src, got, k, lo)
    ref.hist_binned(src, want, k, lo)
    np.testing.assert_array_equal(got, want)


def test_binned_special_values() -> None:
    src = np.array(
        [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 2.5, np.nan], dtype=np.float32
    )
    want = (-1.401298464324817e-45, 2.5, 5, 2, 1, 1)
    assert _same_tuple(tuple(nb.minmax_finite(src)), want)
    assert _same_tuple(ref.minmax_finite(src), want)
    negzero = np.array([-0.0], np.float32)
    assert _same_tuple(tuple(nb.minmax_finite(negzero)), (0.0, 0.0, 1, 0, 0, 0))
    counts = np.zeros(4, np.uint64)
    nb.hist_binned(src, counts, 0, -1)  # bins [-1, 0), [0, 1), [1, 2), [2, 3)
    assert counts.tolist() == [1, 3, 0, 1]


def test_warmup_compiles_both_dtypes() -> None:
    for dt in ("uint32", "float32", "uint16"):
        nb.warmup(np.dtype(dt))
    if not hasattr(nb.minmax_finite, "signatures"):
        pytest.skip("numba JIT disabled (NUMBA_DISABLE_JIT=1)")
    assert len(nb.minmax_finite.signatures) >= 4  # 2 dtypes x (writeable, read-only)
    assert len(nb.hist_binned.signatures) >= 4
