"""Thumbnail: ImarisWriter's level choice, size, sampling, colouring and MIP/middle choice."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from fastims.ims import thumbnail as thumb_mod
from fastims.ims.attrs import read_attr_float
from fastims.ims.color import auto_color_range
from fastims.ims.thumbnail import (
    Projection,
    make_thumbnail,
    thumbnail_level,
    thumbnail_quality,
    thumbnail_shape,
)

IW_BASE = "ims/imariswriter/u16_z33_y130_x260_shufflegzip2"


def test_reproduces_imariswriter_thumbnail(fixtures_dir: Path) -> None:
    volume = np.load(fixtures_dir / f"{IW_BASE}.npy")
    with h5py.File(fixtures_dir / f"{IW_BASE}.ims", "r") as f:
        expected = f["Thumbnail/Data"][()]
        level0 = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0"]
        hist = level0["Histogram1024"][()]
        hmax = read_attr_float(level0, "HistogramMax1024")
        shapes = [
            tuple(f[f"DataSet/ResolutionLevel {r}/TimePoint 0/Channel 0/Data"].shape)
            for r in range(2)
        ]
        image = f["DataSetInfo/Image"]
        ext = (read_attr_float(image, "ExtMax1"), read_attr_float(image, "ExtMax0"))
    # level 1 (65 x 130) is smaller than 256, so ImarisWriter samples level 0
    level_shapes = [(33, 130, 260), (16, 65, 130)]
    assert [s[0] for s in shapes] == [64, 16]  # padded Data extents of the two levels
    assert thumbnail_level(level_shapes) == 0
    color_range = auto_color_range(hist, 0.0, hmax)
    got = make_thumbnail(
        [volume], colors=[(1.0, 0.0, 0.0)], color_ranges=[color_range], gammas=[1.0]
    )
    assert got.dtype == np.uint8
    assert got.shape == expected.shape == (128, 1024)
    np.testing.assert_array_equal(got, expected)
    # the extent-based sizing gives the same result
    same = make_thumbnail(
        [volume], colors=[(1.0, 0.0, 0.0)], color_ranges=[color_range], extent_yx=ext
    )
    np.testing.assert_array_equal(same, expected)


@pytest.mark.parametrize(
    ("x", "y", "dataset_shape"),
    [
        (1023, 515, (129, 1024)),
        (900, 700, (199, 1024)),
        (200, 300, (256, 684)),
        (256, 256, (256, 1024)),
        (64, 64, (256, 1024)),
        (260, 130, (128, 1024)),
    ],
)
def test_shapes_seen_in_imariswriter_files(x: int, y: int, dataset_shape: tuple[int, int]) -> None:
    h, w = thumbnail_shape((y, x))
    assert (h, 4 * w) == dataset_shape
    vol = np.zeros((1, y, x), np.uint16)
    vol[0, y // 3 :, x // 2 :] = 1000
    out = make_thumbnail([vol], colors=[(0.0, 1.0, 0.0)], color_ranges=[(0.0, 1000.0)])
    assert out.shape == dataset_shape
    rgba = out.reshape(h, w, 4)
    assert (rgba[..., 3] == 255).all()
    assert (rgba[..., 0] == 0).all() and (rgba[..., 2] == 0).all()
    # nearest sampling: source x = ix * X // W, y = iy * Y // H
    sx = np.arange(w) * x // w
    sy = np.arange(h) * y // h
    bright = (sy[:, None] >= y // 3) & (sx[None, :] >= x // 2)
    np.testing.assert_array_equal(rgba[..., 1], np.where(bright, 255, 0))


def test_anisotropic_voxels() -> None:
    # Y voxels twice as large as X: the image is physically 200 x 100 (Y x X)
    assert thumbnail_shape((100, 100), voxel_size_yx=(2.0, 1.0)) == (256, 128)
    assert thumbnail_shape((100, 100), voxel_size_yx=(1.0, 4.0)) == (64, 256)
    assert thumbnail_shape((100, 100), extent_yx=(50.0, 200.0)) == (64, 256)
    assert thumbnail_shape((1, 5000)) == (1, 256)
    assert thumbnail_shape((130, 260), size=128) == (64, 128)
    with pytest.raises(ValueError):
        thumbnail_shape((0, 5))
    with pytest.raises(ValueError):
        thumbnail_shape((5, 5), voxel_size_yx=(0.0, 1.0))


def test_thumbnail_level() -> None:
    # the lowest-resolution level with X and Y still >= 256
    assert thumbnail_level([(37, 515, 1023), (37, 257, 511), (18, 128, 255)]) == 1
    assert thumbnail_level([(100, 1024, 1024), (50, 512, 512), (25, 256, 256), (12, 128, 128)]) == 2
    assert thumbnail_level([(1, 64, 64)]) == 0
    assert thumbnail_level([(10, 200, 4000), (5, 100, 2000)]) == 0
    assert thumbnail_level([(128, 2048, 2048), (64, 1024, 1024)]) == 1
    assert thumbnail_level([(1, 300, 300), (1, 150, 150)], size=128) == 1
    with pytest.raises(ValueError):
        thumbnail_level([])


def _ramp_volume() -> np.ndarray:
    """A volume whose middle plane is a ramp and whose other planes saturate everywhere."""
    vol = np.full((5, 40, 60), 4000, np.uint16)
    vol[2] = np.linspace(0, 1000, 60, dtype=np.uint16)[None, :]
    return vol


def test_middle_plane_wins_when_mip_is_flat() -> None:
    vol = _ramp_volume()
    out = make_thumbnail([vol], colors=[(1, 1, 1)], color_ranges=[(0, 1000)])
    h, w = thumbnail_shape((40, 60))
    rgba = out.reshape(h, w, 4)
    sx = np.arange(w) * 60 // w
    ramp = vol[2, 0, sx].astype(np.float32)
    expected = (np.clip(ramp / np.float32(1000), 0, 1) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(rgba[0, :, 0], expected)
    assert rgba[..., 0].min() == 0


def test_mip_wins_when_it_has_structure() -> None:
    vol = np.zeros((7, 50, 50), np.uint16)
    vol[1, :, :25] = 800  # not the middle plane (3): only the MIP sees it
    out = make_thumbnail([vol], colors=[(1, 0, 0)], color_ranges=[(0, 800)])
    rgba = out.reshape(256, 256, 4)
    assert rgba[:, :128, 0].min() == 255 and rgba[:, 128:, 0].max() == 0
    # quality: a flat image scores low, a half/half image scores higher
    flat = np.zeros((10, 10, 4), np.uint8)
    half = flat.copy()
    half[:, :5, 0] = 255
    assert thumbnail_quality(half) > thumbnail_quality(flat)
    assert thumbnail_quality(flat) == pytest.approx(0.001 ** (2 / 3), rel=1e-5)


def test_channels_combine_by_maximum() -> None:
    a = np.zeros((3, 20, 20), np.uint16)
    b = np.zeros((3, 20, 20), np.uint16)
    a[1, :10] = 500  # top half, channel 0 (red), half range
    b[1, 5:] = 1000  # rows 5.., channel 1 (yellow), full range
    out = make_thumbnail(
        [a, b], colors=[(1, 0, 0), (1, 1, 0)], color_ranges=[(0, 1000), (0, 1000)]
    ).reshape(256, 256, 4)
    sy = np.arange(256) * 20 // 256
    row_a = sy < 10
    row_b = sy >= 5
    half = int(np.float32(0.5) * np.float32(255))
    np.testing.assert_array_equal(out[:, 0, 0], np.where(row_b, 255, np.where(row_a, half, 0)))
    np.testing.assert_array_equal(out[:, 0, 1], np.where(row_b, 255, 0))
    assert (out[..., 2] == 0).all() and (out[..., 3] == 255).all()


def _quality_reference(rgba: np.ndarray) -> float:
    """ImarisWriter's quality loop written out plainly: float32 luminance, doubles summed in
    order, the median from a full sort (the oracle for the faster thumbnail_quality)."""
    f32 = np.float32
    px = rgba.reshape(-1, 4)
    lum = (f32(0.299) * px[:, 0].astype(f32) + f32(0.587) * px[:, 1].astype(f32)) + f32(0.114) * px[:, 2].astype(f32)
    total = float(np.add.accumulate(lum.astype(np.float64))[-1])
    squares = float(np.add.accumulate((lum * lum).astype(np.float64))[-1])
    srt = np.sort(lum)
    q_lum = f32(0.001)
    if srt[-1] - srt[0] > 0:
        half = (srt[0] + srt[-1]) / f32(2.0)
        q = 1.0 - 2.0 * abs(float(srt[srt.size // 2] - half)) / float(srt[-1] - srt[0])
        q_lum = min(max(f32(q), f32(0.001)), f32(1.0))
    mean = f32(total / srt.size)
    q_dist = f32(np.sqrt(max(squares / srt.size - float(mean * mean), 0.0)) / 255)
    q_dist = min(max(q_dist, f32(0.001)), f32(1.0))
    return float(f32(float(q_lum * q_dist) ** float(f32(1.0) / f32(3.0))))


@pytest.mark.parametrize("kind", ["uniform", "dark", "few", "flat", "colour"])
@pytest.mark.parametrize("side", [1, 7, 256, 520])  # 520**2 > 2**18: the ordered sum path
def test_quality_equals_the_plain_loop_bit_for_bit(kind: str, side: int) -> None:
    rng = np.random.default_rng(side)
    rgba = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    if kind == "dark":  # mostly black, a few bright pixels: the smallest luminances
        rgba[..., :3] = np.where(rng.random((side, side, 1)) < 0.99, rng.integers(0, 2, (side, side, 3)), 255)
    elif kind == "few":
        rgba[..., :3] = rng.choice(np.array([0, 1, 77, 254], np.uint8), (side, side, 1))
    elif kind == "flat":
        rgba[..., :3] = 9
    elif kind == "colour":  # a red and a green channel combined, as make_thumbnail does
        rgba[..., 2] = 0
    rgba[..., 3] = 255
    assert thumbnail_quality(rgba) == _quality_reference(rgba)


@pytest.mark.parametrize("gamma", [1.0, 0.6])
def test_colour_table_covers_only_the_values_present_and_matches_direct_colouring(gamma: float) -> None:
    from fastims.ims.color import color_values

    rng = np.random.default_rng(5)
    # values around 40 000 and 0 (the table spans the sampled min..max, not all 65 536)
    vol = rng.integers(39_000, 41_000, (5, 64, 64), dtype=np.uint16)
    vol[2, :8] = 0
    out = make_thumbnail([vol], colors=[(0.2, 1.0, 0.5)], color_ranges=[(39_500.0, 40_700.0)],
                         gammas=[gamma]).reshape(256, 256, 4)
    mip, mid = vol.max(axis=0), vol[2]
    sy = np.arange(256) * 64 // 256
    pick = np.ix_(sy, sy)
    rgb = [(color_values(p[pick], (0.2, 1.0, 0.5), (39_500.0, 40_700.0), gamma) * np.float32(255)).astype(np.uint8)
           for p in (mip, mid)]
    assert any(np.array_equal(out, x) for x in rgb)


def test_float_volume_table_and_gamma() -> None:
    vol = np.linspace(-1.0, 1.0, 4 * 30 * 30, dtype=np.float32).reshape(4, 30, 30)
    table = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.float32)
    out = make_thumbnail([vol], colors=[table], color_ranges=[(0.0, 1.0)], gammas=[2.0])
    assert out.shape == (256, 1024)
    rgba = out.reshape(256, 256, 4)
    # every pixel is one of the table entries (times 255)
    colours = {tuple(p) for p in rgba[..., :3].reshape(-1, 3).tolist()}
    assert colours <= {(0, 0, 255), (0, 255, 0), (255, 0, 0)}
    u32 = make_thumbnail([vol.view(np.uint32)], colors=[(1, 1, 1)], color_ranges=[(0, 2**32)])
    assert u32.shape == (256, 1024)


def test_h5py_input_and_slabs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 3000, (9, 70, 90), dtype=np.uint16)
    ref = make_thumbnail([vol], colors=[(0, 1, 1)], color_ranges=[(100, 2500)])
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["v"] = vol
        monkeypatch.setattr(thumb_mod, "_SLAB_VOXELS", 1)  # one plane per read
        got = make_thumbnail([f["v"]], colors=[(0, 1, 1)], color_ranges=[(100, 2500)])
    np.testing.assert_array_equal(got, ref)
    flat = make_thumbnail([vol[4]], colors=[(0, 1, 1)], color_ranges=[(100, 2500)])
    assert flat.shape == ref.shape


def test_validation() -> None:
    vol = np.zeros((2, 8, 8), np.uint16)
    with pytest.raises(ValueError):
        make_thumbnail([], colors=[], color_ranges=[])
    with pytest.raises(ValueError):
        make_thumbnail([vol], colors=[(1, 0, 0), (0, 1, 0)], color_ranges=[(0, 1)])
    with pytest.raises(ValueError):
        make_thumbnail([vol, vol[:1]], colors=[(1, 0, 0)] * 2, color_ranges=[(0, 1)] * 2)
    with pytest.raises(TypeError):
        make_thumbnail([vol.astype(np.int16)], colors=[(1, 0, 0)], color_ranges=[(0, 1)])
    with pytest.raises(ValueError):
        make_thumbnail([vol[None]], colors=[(1, 0, 0)], color_ranges=[(0, 1)])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_projection_in_any_order_equals_the_volume(dtype: str) -> None:
    """Planes added out of order, in uneven runs and from threads give the volume's thumbnail."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(3)
    vol = (rng.random((11, 300, 280)) * 200).astype(dtype)
    if dtype == "float32":
        vol[3, 10, 20] = np.nan  # kept in data: drawn black, propagates through the MIP
        vol[7] -= 150.0  # negative values never show in the MIP (it starts from zeros)
    proj = Projection(vol.shape, vol.dtype)
    runs = [(0, 3), (3, 4), (4, 9), (9, 11)]
    rng.shuffle(runs)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: proj.add(r[0], vol[r[0] : r[1]]), runs))
    assert proj.complete
    opts = {"colors": [(0.2, 1.0, 0.5)], "color_ranges": [(5.0, 150.0)], "extent_yx": (300.0, 280.0)}
    np.testing.assert_array_equal(make_thumbnail([proj], **opts), make_thumbnail([vol], **opts))
    # the middle plane wins for an image whose MIP saturates: both images are kept
    np.testing.assert_array_equal(proj.middle, vol[5])


def test_projection_rejects_wrong_planes() -> None:
    proj = Projection((4, 8, 8), np.uint16)
    proj.add(0, np.ones((2, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="added twice"):
        proj.add(1, np.ones((1, 8, 8), np.uint16))
    with pytest.raises(IndexError):
        proj.add(3, np.ones((2, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="expected"):
        proj.add(2, np.ones((1, 8, 9), np.uint16))
    with pytest.raises(ValueError, match="expected"):
        proj.add(2, np.ones((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="missing"):
        make_thumbnail([proj], colors=[(1.0, 1.0, 1.0)], color_ranges=[(0.0, 1.0)])
    with pytest.raises(ValueError, match="positive"):
        Projection((0, 8, 8), np.uint16)
