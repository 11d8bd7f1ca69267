"""Compiled downsampling kernels (``fastims._ext._downsample``) vs their NumPy twins, bitwise."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastims._reference import downsample as ref

ext = pytest.importorskip("fastims._ext._downsample", reason="compiled _downsample not built")

DTYPES = [np.uint8, np.uint16, np.uint32, np.float32]
RULES = ["imaris", "bdv"]
SHAPES = [(1, 1, 1), (2, 3, 5), (3, 7, 129), (7, 2, 9), (4, 33, 130), (9, 8, 8), (17, 16, 18)]
FACTORS = [
    (1, 1, 1),
    (2, 2, 2),
    (1, 2, 2),
    (2, 1, 1),
    (1, 1, 2),
    (3, 3, 3),
    (4, 4, 4),
    (8, 8, 8),  # box 512: the float32 path for uint16 (512 * 65535 >= 2**24)
    (1, 4, 4),
    (2, 8, 8),
    (3, 2, 5),
    (5, 3, 1),
    (16, 1, 16),
]


def out_shape(shape, factors, rule):
    if rule == "imaris":
        return tuple(n // f for n, f in zip(shape, factors, strict=True))
    return tuple(-(-n // f) for n, f in zip(shape, factors, strict=True))


def make_block(rng: np.random.Generator, shape, dtype, kind: str = "uniform") -> np.ndarray:
    """Test data: full-range uniform, values near the maximum, or camera-like."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if kind == "camera":
            return rng.normal(100.0, 5.0, size=shape).astype(dtype)
        # wide dynamic range so the float32 summation order shows in the last bits
        mag = 10.0 ** rng.uniform(-3, 7, size=shape)
        return (rng.standard_normal(shape) * mag).astype(dtype)
    top = int(np.iinfo(dtype).max)
    if kind == "high":
        return rng.integers(max(top - 4096, 0), top, size=shape, dtype=dtype, endpoint=True)
    if kind == "camera":
        return rng.integers(90, min(top, 4000), size=shape, dtype=dtype, endpoint=True)
    return rng.integers(0, top, size=shape, dtype=dtype, endpoint=True)


def run(impl, rule: str, src: np.ndarray, factors) -> np.ndarray:
    out = np.full(out_shape(src.shape, factors, rule), 7, dtype=src.dtype)
    getattr(impl, f"downsample_{rule}")(src, out, *factors)
    return out


def assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_twin_grid(rule, dtype, shape, rng):
    for kind in ("uniform", "high", "camera"):
        src = make_block(rng, shape, dtype, kind)
        for factors in FACTORS:
            assert_bits_equal(run(ext, rule, src, factors), run(ref, rule, src, factors))


@settings(max_examples=80, deadline=None)
@given(
    rule=st.sampled_from(RULES),
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 20), st.integers(1, 70)),
    factors=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    kind=st.sampled_from(["uniform", "high", "camera"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernel_matches_twin_hypothesis(rule, dtype, shape, factors, kind, seed):
    src = make_block(np.random.default_rng(seed), shape, dtype, kind)
    assert_bits_equal(run(ext, rule, src, factors), run(ref, rule, src, factors))


@pytest.mark.parametrize("rule", RULES)
def test_uint8_float_path_large_box(rule, rng):
    # box 64 * 32 * 33 = 67584: 67584 * 255 >= 2**24, so uint8 leaves the exact integer path
    src = make_block(rng, (64, 33, 34), np.uint8, "high")
    for factors in [(64, 32, 33), (64, 16, 17)]:
        assert_bits_equal(run(ext, rule, src, factors), run(ref, rule, src, factors))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (3, 2, 2), (4, 3, 5)], ids=str)
def test_slab_by_slab_equals_whole_block(rule, dtype, factors, rng):
    src = make_block(rng, (11, 37, 41), dtype)
    fz = factors[0]
    for impl in (ext, ref):
        whole = run(impl, rule, src, factors)
        # the streaming writers hand over fz planes at a time; bdv also gets the short last slab
        stop = src.shape[0] if rule == "bdv" else (src.shape[0] // fz) * fz
        planes = [run(impl, rule, src[z : z + fz], factors) for z in range(0, stop, fz)]
        assert all(p.shape[0] == 1 for p in planes)
        assert_bits_equal(np.concatenate(planes), whole)


@pytest.mark.parametrize("rule", RULES)
def test_float32_nan_inf(rule, rng):
    src = make_block(rng, (6, 10, 14), np.float32)
    flat = src.reshape(-1)
    idx = rng.choice(flat.size, size=40, replace=False)
    flat[idx[:10]] = np.nan
    flat[idx[10:20]] = np.inf
    flat[idx[20:30]] = -np.inf
    flat[idx[30:]] = np.finfo(np.float32).max  # sums overflow to inf
    for factors in [(2, 2, 2), (1, 3, 3), (3, 1, 4)]:
        got, want = run(ext, rule, src, factors), run(ref, rule, src, factors)
        assert np.isnan(got).any()
        np.testing.assert_array_equal(got, want)  # NaN == NaN here, inf compared exactly


@pytest.mark.parametrize("rule", RULES)
def test_extreme_uint32_clamps(rule):
    top = np.iinfo(np.uint32).max
    src = np.full((2, 2, 2), top, np.uint32)
    for impl in (ext, ref):
        # Imaris: float32(2**32 - 1) == 2**32, so the mean rounds past the maximum and is clamped
        assert run(impl, rule, src, (2, 2, 2)).item() == top


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("impl", [ext, ref], ids=["ext", "ref"])
def test_wrong_out_shape_or_factor_raises(rule, impl):
    src = np.zeros((4, 6, 8), np.uint16)
    fn = getattr(impl, f"downsample_{rule}")
    with pytest.raises(ValueError):
        fn(src, np.zeros((2, 3, 5), np.uint16), 2, 2, 2)
    with pytest.raises(ValueError):
        fn(src, np.zeros((4, 6, 8), np.uint16), 0, 1, 1)
    with pytest.raises(ValueError):
        fn(src, np.zeros((2, 3, 4), np.uint8), 2, 2, 2)


def test_kernel_accepts_readonly_source():
    src = np.arange(2 * 4 * 4, dtype=np.uint16).reshape(2, 4, 4)
    src.flags.writeable = False
    out = np.zeros((1, 2, 2), np.uint16)
    ext.downsample_imaris(src, out, 2, 2, 2)
    assert out.tolist() == [[[10, 12], [18, 20]]]


def test_kernels_are_thread_safe(rng):
    src = make_block(rng, (8, 256, 256), np.uint16)
    want = {rule: run(ext, rule, src, (2, 2, 2)) for rule in RULES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(run, ext, rule, src, (2, 2, 2)) for rule in RULES * 8]
        results = [(rule, job.result()) for rule, job in zip(RULES * 8, jobs, strict=True)]
    for rule, got in results:
        assert_bits_equal(got, want[rule])
