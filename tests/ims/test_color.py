"""Channel colours: ImarisWriter's automatic colour range, merging, text and colour ramp."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastims.histogram import Histogram
from fastims.ims.attrs import read_attr_str
from fastims.ims.color import (
    DEFAULT_COLORS,
    auto_color_range,
    color_values,
    deriche_gauss,
    format_color,
    format_color_range,
    format_color_table,
    merge_time_histograms,
    time_point_histogram,
)

IW_FILE = "ims/imariswriter/u16_z33_y130_x260_shufflegzip2.ims"
CHANNEL = "DataSet/ResolutionLevel {r}/TimePoint 0/Channel 0"


def _deriche_float64(x: np.ndarray, sigma: float) -> np.ndarray:
    """Independent float64 version of Deriche's smoothing recursion (the oracle's shape)."""
    a = 1.695 / sigma
    e, e2 = math.exp(-a), math.exp(-2 * a)
    k = (1 - e) ** 2 / (1 + 2 * a * e - e2)
    b1, b2 = 2 * e, -e2
    fwd_a = (k, k * (a - 1) * e, 0.0)  # weights of x[i], x[i-1], x[i-2]
    bwd_a = (0.0, k * (a + 1) * e, -k * e2)  # weights of x[i], x[i+1], x[i+2]
    n = len(x)
    y1 = np.zeros(n)
    prev = [x[0], x[0]]
    o = [sum(fwd_a) * x[0] / (1 - b1 - b2)] * 2
    for i in range(n):
        v = fwd_a[0] * x[i] + fwd_a[1] * prev[0] + fwd_a[2] * prev[1] + b1 * o[0] + b2 * o[1]
        prev = [x[i], prev[0]]
        o = [v, o[0]]
        y1[i] = v
    y2 = np.zeros(n)
    prev = [x[-1], x[-1]]
    o = [sum(bwd_a) * x[-1] / (1 - b1 - b2)] * 2
    for i in range(n - 1, -1, -1):
        v = bwd_a[0] * x[i] + bwd_a[1] * prev[0] + bwd_a[2] * prev[1] + b1 * o[0] + b2 * o[1]
        prev = [x[i], prev[0]]
        o = [v, o[0]]
        y2[i] = v
    return y1 + y2


# ----------------------------------------------------------------------------- fixture


def test_auto_color_range_reproduces_fixture(fixtures_dir: Path) -> None:
    with h5py.File(fixtures_dir / IW_FILE, "r") as f:
        level0 = f[CHANNEL.format(r=0)]
        hist = level0["Histogram1024"][()]
        hmin = float(read_attr_str(level0, "HistogramMin1024"))
        hmax = float(read_attr_str(level0, "HistogramMax1024"))
        expected = read_attr_str(f["DataSetInfo/Channel 0"], "ColorRange")
        lo, hi = auto_color_range(hist, hmin, hmax)
        assert expected == "129.658 3163.000"
        assert format_color_range(lo, hi) == expected
        # the min is the lower edge of bin 34 in float32; the max is an integer
        assert lo == float(np.float32(3905.0) * np.float32(34) / np.float32(1024))
        assert hi == 3163.0
        # ImarisWriter uses level 0: the level-1 histogram gives a different answer
        level1 = f[CHANNEL.format(r=1)]
        other = auto_color_range(level1["Histogram1024"][()], 0.0, 3613.0)
        assert format_color_range(*other) != expected


def test_fixture_color_text(fixtures_dir: Path) -> None:
    with h5py.File(fixtures_dir / IW_FILE, "r") as f:
        info = f["DataSetInfo/Channel 0"]
        assert format_color(DEFAULT_COLORS[0]) == read_attr_str(info, "Color")


# ----------------------------------------------------------------------------- smoothing


def test_deriche_matches_float64_recursion(rng: np.random.Generator) -> None:
    x = rng.integers(0, 5000, 300).astype(np.float32)
    for sigma in (0.5, 5.0, 20.0):
        got = deriche_gauss(x, sigma)
        assert got.dtype == np.float32
        want = _deriche_float64(x.astype(np.float64), sigma)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2)


def test_deriche_is_a_normalised_smoother() -> None:
    const = deriche_gauss(np.full(50, 7.0, np.float32), 4.0)
    np.testing.assert_allclose(const, 7.0, rtol=1e-5)
    impulse = np.zeros(201, np.float32)
    impulse[100] = 1.0
    out = deriche_gauss(impulse, 10.0)
    assert int(np.argmax(out)) == 100
    assert out.sum() == pytest.approx(1.0, rel=1e-3)
    np.testing.assert_allclose(out[100 - 30 : 100], out[101 : 131][::-1], atol=1e-6)
    # the width follows sigma: about 68 % of the mass within +-sigma
    assert out[90:111].sum() == pytest.approx(0.68, abs=0.05)
    with pytest.raises(ValueError):
        deriche_gauss(impulse, 0.0)
    assert deriche_gauss(np.zeros(0, np.float32), 1.0).size == 0


# ----------------------------------------------------------------------------- auto range


def test_auto_range_gaussian_peak() -> None:
    bins = np.arange(1024)
    hist = (1e6 * np.exp(-0.5 * ((bins - 200) / 15.0) ** 2)).astype(np.uint64)
    lo, hi = auto_color_range(hist, 0.0, 4095.0)
    # independent float64 oracle: smooth (width 5 * 1024 / 256 = 20 bins), first mode,
    # first bin whose cumulative share exceeds 99.8 %, + 20 % of the span, truncated
    smooth = _deriche_float64(hist.astype(np.float64), 20.0)
    mode = next(
        i for i in range(1, 1023) if smooth[i] > smooth[i - 1] and smooth[i] > smooth[i + 1]
    )
    high = int(np.argmax(np.cumsum(smooth) / smooth.sum() > 0.998))
    assert mode == 200
    assert lo == pytest.approx(mode * 4095 / 1024, rel=1e-6)
    v = high * 4095 / 1024
    assert hi == pytest.approx(math.trunc(v + 0.2 * (v - lo)), abs=1.0)
    assert hi == int(hi)
    # the smoothing's exponential tails put the 99.8 % point well beyond 2.9 sd of the peak
    assert high > 200 + 2.9 * math.hypot(15.0, 20.0)


def test_auto_range_edge_cases() -> None:
    # decreasing histogram: bin 0 is the first mode
    dec = np.linspace(1000, 0, 300).astype(np.uint64)
    lo, hi = auto_color_range(dec, 10.0, 310.0)
    assert lo == 10.0
    assert 10.0 < hi <= 310.0
    # empty histogram: no division warnings (pytest turns them into errors), max capped
    lo, hi = auto_color_range(np.zeros(256, np.uint64), 0.0, 255.0)
    assert (lo, hi) == (0.0, 255.0)
    # cap at the histogram max: all counts in the top bin
    top = np.zeros(257, np.uint64)
    top[-1] = 100
    lo, hi = auto_color_range(top, 0.0, 256.0)
    assert hi == 256.0
    # the max is truncated towards zero after the cap
    # (static_cast<int>), so it can exceed a negative histogram max, as in ImarisWriter
    lo, hi = auto_color_range(np.ones(300, np.uint64), -100.5, -0.5)
    assert lo == -100.5 and hi == 0.0
    with pytest.raises(ValueError):
        auto_color_range(np.zeros(0), 0.0, 1.0)


FLT_MAX = float(np.finfo(np.float32).max)


def _auto_range_of(data: np.ndarray) -> tuple[float, float]:
    """auto_color_range of `data` as the writer computes it for T == 1."""
    h = Histogram(data.dtype)
    h.update(data)
    ims = h.imaris()
    if ims.hist1024 is None:
        return auto_color_range(ims.hist256, ims.hmin, ims.hmax)
    return auto_color_range(ims.hist1024, ims.hmin1024, ims.hmax1024)


def _written(lo: float, hi: float) -> tuple[float, float]:
    a, b = format_color_range(lo, hi).split()
    return float(a), float(b)


@pytest.mark.parametrize(
    "data",
    [
        np.full(64, FLT_MAX, np.float32),
        np.full(64, -FLT_MAX, np.float32),
        np.array([-FLT_MAX, FLT_MAX] * 8, np.float32),
        (np.random.default_rng(1).random(4096, dtype=np.float32) * 2 - 1) * np.float32(3e38),
        np.random.default_rng(2).random(4096, dtype=np.float32) * np.float32(3.4e38),
    ],
    ids=["flt_max", "minus_flt_max", "both_ends", "uniform_pm3e38", "uniform_3.4e38"],
)
def test_auto_range_near_float32_limits_is_finite_and_valid(data: np.ndarray) -> None:
    # ImarisWriter's float32 steps overflow here (inf/NaN, then an int cast of NaN)
    lo, hi = _auto_range_of(data)
    assert math.isfinite(lo) and math.isfinite(hi)
    assert np.float32(lo) == lo and np.float32(hi) == hi  # float32 values, as written
    wlo, whi = _written(lo, hi)
    assert wlo < whi
    assert -FLT_MAX <= lo and hi <= FLT_MAX
    assert lo <= float(data.max())


def test_auto_range_float64_steps_follow_the_same_rule() -> None:
    # a flat histogram over [-3e38, 3e38]: first mode bin 0 -> min = hmin; the 99.8 % bin
    # and its +20 % are evaluated in float64 (span * bin overflows float32) and capped
    hist = np.full(1024, 100, np.uint64)
    lo, hi = auto_color_range(hist, -3e38, 3e38)
    assert lo == float(np.float32(-3e38))
    high = 1022  # an independent check: the smoothed flat histogram crosses 99.8 % here
    span = float(np.float32(3e38)) - float(np.float32(-3e38))
    v = float(np.float32(-3e38)) + span * high / 1024
    expected = min(v + (v - lo) * 0.2, float(np.float32(3e38)))
    assert hi == pytest.approx(expected, rel=1e-6)
    assert hi <= float(np.float32(3e38))


def test_auto_range_keeps_imariswriter_results_that_are_valid() -> None:
    # integer data and ranges above 1: unchanged (the max is ImarisWriter's integer)
    assert _auto_range_of(np.full(100, 100, np.uint8)) == (99.609375, 111.0)
    lo, hi = auto_color_range(np.ones(300, np.uint64), -100.5, -0.5)
    assert (lo, hi) == (-100.5, 0.0)  # truncated towards zero above the histogram max: valid


def test_auto_range_float_below_one_uses_the_untruncated_max() -> None:
    data = 0.2 + np.random.default_rng(0).random(20000, dtype=np.float32) * np.float32(0.5)
    lo, hi = _auto_range_of(data)
    # ImarisWriter's integer cast would give (about 0.2, 0.0): min above max
    assert math.trunc(hi) == 0 < lo
    assert 0.19 < lo < 0.3 and 0.69 < hi <= 0.71
    assert hi == np.float32(hi) and hi != int(hi)
    assert _written(lo, hi)[0] < _written(lo, hi)[1]


@pytest.mark.parametrize(
    ("data", "low"),
    [
        (np.full(500, 3.5, np.float32), 3.5),  # ImarisWriter: (3.5, 3.0)
        (np.zeros(500, np.float32), 0.0),  # ImarisWriter: (0.0, 0.0)
        # finer than the 3 decimals of ColorRange: "0.000 0.000" as written, even untruncated
        (np.random.default_rng(0).random(500, dtype=np.float32) * np.float32(1e-4), None),
    ],
    ids=["const_3.5", "zeros", "tiny"],
)
def test_auto_range_constant_or_too_fine_data_gets_width_one(data, low) -> None:
    lo, hi = _auto_range_of(data)
    if low is not None:
        assert lo == low
    assert 0.0 <= lo < 1e-4 or lo == low
    assert hi == float(np.float32(lo + 1.0))


def test_auto_range_degenerate_histogram_ranges() -> None:
    # min == max as the histogram range: [min, min + 1], or [min - w, min] at FLT_MAX
    assert auto_color_range(np.zeros(10, np.uint64), 5.0, 5.0) == (5.0, 6.0)
    lo, hi = auto_color_range(np.zeros(10, np.uint64), FLT_MAX, FLT_MAX)
    assert hi == FLT_MAX and lo == float(np.float32(FLT_MAX - FLT_MAX * 2.0**-20))
    big = 3e30
    lo, hi = auto_color_range(np.zeros(10, np.uint64), big, big)
    assert lo == float(np.float32(big)) and hi == float(np.float32(lo + lo * 2.0**-20))
    with pytest.raises(ValueError, match="finite"):
        auto_color_range(np.ones(10, np.uint64), 0.0, math.inf)
    with pytest.raises(ValueError, match="finite"):
        auto_color_range(np.ones(10, np.uint64), 0.0, 1e39)  # not a float32


# ----------------------------------------------------------------------------- merging


def test_merge_time_histograms() -> None:
    a = np.zeros(1000, np.uint64)  # uint16 histogram 0..999
    a[500] = 3
    b = np.zeros(2000, np.uint64)  # 0..1999
    b[1500] = 5
    b[0] = 1
    merged, lo, hi = merge_time_histograms([(a, 0.0, 999.0), (b, 0.0, 1999.0)])
    assert merged.dtype == np.uint64 and merged.shape == (1024,)
    assert (lo, hi) == (0.0, 1999.0)
    assert int(merged.sum()) == 9
    # a bin's value is min + (max - min) * bin / nbins: a[500] -> 999 * 500 / 1000 = 499.5
    # -> int(499.5 * 65536 / 2000) = 16367 -> 16367 // 64 = 255; b[1500] -> 1499.25 -> 49127
    # -> 767
    assert merged[255] == 3 and merged[767] == 5 and merged[0] == 1
    single, lo1, hi1 = merge_time_histograms([(a, 0.0, 999.0)])
    np.testing.assert_array_equal(single, a)
    assert (lo1, hi1) == (0.0, 999.0)
    with pytest.raises(ValueError):
        merge_time_histograms([])


def test_merge_time_histograms_float_ranges_near_float32_limits() -> None:
    # bin values and the layout's (v - min) * 65536 overflow float32 here
    a = np.zeros(257, np.uint64)
    a[0], a[256] = 4, 6
    b = np.zeros(300, np.uint64)
    b[150] = 5
    merged, lo, hi = merge_time_histograms([(a, -FLT_MAX, FLT_MAX), (b, -1e38, 2e38)])
    assert (lo, hi) == (-FLT_MAX, FLT_MAX)
    assert merged.shape == (1024,) and int(merged.sum()) == 15
    assert merged[0] == 4  # the minimum
    # a[256] = -FLT_MAX + 2 * FLT_MAX * 256 / 257, about 0.992 * FLT_MAX -> bin 1019
    assert merged[int((256 / 257) * 1024)] == 6
    # b[150] = -1e38 + 3e38 * 150 / 300 = 5e37 -> (5e37 + FLT_MAX) / (2 * FLT_MAX) of the way
    assert merged[int((5e37 + FLT_MAX) / (2 * FLT_MAX) * 1024)] == 5


@pytest.mark.parametrize("top", [3e7, 1e8, 1e30])
def test_merge_time_histograms_wide_range_stays_in_bounds(top: float) -> None:
    # over [-top, top] the + 1 of ``max - min + 1`` is lost in float32, and the value just
    # below the max rounds up to ``max - min``: bin 65536, one past the end (IndexError)
    hi = float(np.float32(top))
    below = float(np.nextafter(np.float32(hi), np.float32(0)))
    one = np.ones(1, np.uint64)
    merged, lo, top_ = merge_time_histograms([(3 * one, below, hi), (one, -hi, hi)])
    assert (lo, top_) == (-hi, hi)
    assert merged[-1] == 3 and merged[0] == 1 and int(merged.sum()) == 4


def test_time_point_histogram_per_dtype() -> None:
    u8 = Histogram("uint8")
    u8.update(np.array([3, 3, 200], np.uint8))
    counts, lo, hi = time_point_histogram(u8)
    assert counts.shape == (256,) and (lo, hi) == (0.0, 255.0) and counts[3] == 2
    u16 = Histogram("uint16")
    u16.update(np.array([5, 3905], np.uint16))
    counts, lo, hi = time_point_histogram(u16)
    # the max + 1 integer bins, not Histogram1024's 1024
    assert counts.shape == (3906,) and (lo, hi) == (0.0, 3905.0) and counts[5] == counts[3905] == 1
    u16.update(np.array([7], np.uint16))
    small = Histogram("uint16")
    small.update(np.array([7], np.uint16))
    counts, lo, hi = time_point_histogram(small)
    assert counts.shape == (257,) and hi == 256.0  # never below 256, as ImarisWriter
    f32 = Histogram("float32")
    f32.update(np.array([0.5, 1.5], np.float32))
    counts, lo, hi = time_point_histogram(f32)
    ims = f32.imaris()
    np.testing.assert_array_equal(counts, ims.hist1024)
    assert (lo, hi) == (ims.hmin1024, ims.hmax1024)
    with pytest.raises(TypeError):
        time_point_histogram(np.zeros(3))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- text


def test_color_text() -> None:
    assert format_color((1, 0, 0)) == "1.000 0.000 0.000"
    assert format_color((0.5, 0.25, 1.0, 0.3)) == "0.500 0.250 1.000"
    assert format_color_table([(0, 0, 0), (1, 1, 1)]) == "0.000 0.000 0.000 1.000 1.000 1.000 "
    assert format_color_range(0, 255) == "0.000 255.000"
    with pytest.raises(ValueError):
        format_color((1, 0))


def test_default_colors() -> None:
    assert DEFAULT_COLORS[0] == (1.0, 0.0, 0.0)
    assert DEFAULT_COLORS[1] == (0.0, 1.0, 0.0)
    assert DEFAULT_COLORS[2] == (0.0, 0.0, 1.0)
    assert len(set(DEFAULT_COLORS)) == len(DEFAULT_COLORS) >= 4
    for rgb in DEFAULT_COLORS:
        assert len(rgb) == 3 and all(0.0 <= v <= 1.0 for v in rgb) and max(rgb) == 1.0


# ----------------------------------------------------------------------------- colour ramp


def test_color_values_base_color() -> None:
    v = np.array([0, 100, 150, 200, 300], np.float32)
    out = color_values(v, (1.0, 0.5, 0.0, 0.8), (100, 200))
    assert out.shape == (5, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], [0, 0, 0, 1])  # below: opaque black
    np.testing.assert_array_equal(out[1], [0, 0, 0, 1])  # == min counts as below
    np.testing.assert_allclose(out[2], [0.5, 0.25, 0, 1])
    expected = np.float32([1.0, 0.5, 0.0, 0.8])
    np.testing.assert_array_equal(out[3], expected)  # >= max: the colour and its alpha
    np.testing.assert_array_equal(out[4], expected)
    gam = color_values(np.float32([125.0]), (1, 1, 1), (100, 200), gamma=2.0)
    np.testing.assert_allclose(gam[0, :3], np.sqrt(0.25), rtol=1e-6)


def test_color_values_table_and_errors() -> None:
    table = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    out = color_values(np.float32([-1, 0.5, 0.6, 2.0]), table, (0.0, 1.0))
    np.testing.assert_array_equal(out[:, :3], table[[0, 1, 1, 3]])  # int(0.5*3)=1, int(0.6*3)=1
    assert (out[:, 3] == 1).all()
    with pytest.raises(ValueError):
        color_values(np.zeros(2), (1, 0), (0, 1))
    with pytest.raises(ValueError):
        color_values(np.zeros(2), (2, 0, 0), (0, 1))
    with pytest.raises(ValueError):
        color_values(np.zeros(2), (1, 0, 0), (0, 1), gamma=0)


def test_color_values_range_wider_than_flt_max() -> None:
    # hi - lo overflows float32: the ramp is computed in float64 instead of giving NaN
    v = np.array([-FLT_MAX, 0.0, FLT_MAX / 2, FLT_MAX], np.float32)
    out = color_values(v, (1.0, 1.0, 1.0), (-FLT_MAX, FLT_MAX))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], [0, 0, 0, 1])
    np.testing.assert_allclose(out[1, :3], 0.5, rtol=1e-6)
    np.testing.assert_allclose(out[2, :3], 0.75, rtol=1e-6)
    np.testing.assert_array_equal(out[3], [1, 1, 1, 1])
