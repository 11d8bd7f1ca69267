"""Channel colours: ImarisWriter's automatic colour range, merging, text and colour ramp."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

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
