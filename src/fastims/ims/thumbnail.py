"""The ``Thumbnail/Data`` image of an Imaris file, built as ImarisWriter builds it.

ImarisWriter (``bpThumbnailBuilder``) makes an RGBA thumbnail at Finish:

* it reads the lowest-resolution level whose X and Y are both still >= 256
  (:func:`thumbnail_level`);
* the thumbnail keeps the physical XY aspect ratio with its longest side 256 pixels
  (:func:`thumbnail_shape`), also when that means up-sampling a small image;
* each thumbnail pixel takes the nearest-lower source pixel, ``x = ix * X // W``;
* it computes both the maximum-intensity projection over Z and the middle plane
  (``Z // 2``) of time point 0, colours each channel with its colour, colour range and
  gamma, combines the channels by per-component maximum, and keeps whichever of the two
  images scores higher on a luminance "quality" measure (the middle plane on a tie);
* the dataset is uint8 of shape ``(H, 4 * W)``: rows of interleaved R, G, B, A.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastims.ims.color import color_values

__all__ = ["thumbnail_level", "thumbnail_shape", "make_thumbnail", "thumbnail_quality", "Projection"]

THUMBNAIL_SIZE = 256

_f32 = np.float32

# Bound the memory of the sampled Z stack (planes x H x W) while taking the projection.
_SLAB_VOXELS = 1 << 24


def thumbnail_level(
    level_shapes_zyx: list[tuple[int, int, int]], *, size: int = THUMBNAIL_SIZE
) -> int:
    """Index of the resolution level ImarisWriter samples the thumbnail from.

    The lowest-resolution level whose X and Y are both still >= `size`; level 0 when even
    level 0 is smaller.

    Parameters
    ----------
    level_shapes_zyx : list of (int, int, int)
        Unpadded (Z, Y, X) size of every level, level 0 first.
    size : int, optional
        Thumbnail size (ImarisWriter's ``mThumbnailSizeXY``, 256).
    """
    if not level_shapes_zyx:
        raise ValueError("no resolution levels")
    r = len(level_shapes_zyx) - 1
    while r > 0 and (level_shapes_zyx[r][2] < size or level_shapes_zyx[r][1] < size):
        r -= 1
    return r


def _extents(
    size_yx: tuple[int, int],
    voxel_size_yx: tuple[float, float],
    extent_yx: tuple[float, float] | None,
) -> tuple[np.float32, np.float32]:
    if extent_yx is not None:
        ey, ex = _f32(extent_yx[0]), _f32(extent_yx[1])
    else:
        ey = _f32(float(voxel_size_yx[0]) * size_yx[0])
        ex = _f32(float(voxel_size_yx[1]) * size_yx[1])
    if not (ex > 0 and ey > 0 and math.isfinite(ex) and math.isfinite(ey)):
        raise ValueError("voxel sizes / extents must be positive and finite")
    return ey, ex


def thumbnail_shape(
    size_yx: tuple[int, int],
    *,
    voxel_size_yx: tuple[float, float] = (1.0, 1.0),
    extent_yx: tuple[float, float] | None = None,
    size: int = THUMBNAIL_SIZE,
) -> tuple[int, int]:
    """(height, width) in pixels of the thumbnail of an image of `size_yx` voxels.

    ImarisWriter's ``bpComputeThumbnailSizeXY`` in float32: make the pixels isotropic by
    stretching the axis with the larger voxel size, then scale the longer side to `size`
    and round the other (``int(n * factor + 0.5)``, at least 1).

    Parameters
    ----------
    size_yx : (int, int)
        Y and X size of the sampled level.
    voxel_size_yx : (float, float), optional
        Physical voxel size of that level; ignored when `extent_yx` is given.
    extent_yx : (float, float), optional
        Physical Y and X extent (``ExtMax - ExtMin``), as ImarisWriter uses it.
    size : int, optional
        Longest side.
    """
    ny, nx = int(size_yx[0]), int(size_yx[1])
    if nx < 1 or ny < 1:
        raise ValueError("image size must be >= 1")
    ey, ex = _extents((ny, nx), voxel_size_yx, extent_yx)
    vx = ex / _f32(nx)
    vy = ey / _f32(ny)
    iso_x = int(ex / vy) if vx > vy else nx
    iso_y = int(ey / vx) if vy > vx else ny
    iso_x = max(iso_x, 1)
    iso_y = max(iso_y, 1)
    fx = _f32(size) / _f32(iso_x)
    fy = _f32(size) / _f32(iso_y)
    f = min(fx, fy)
    w = int(_f32(iso_x) * f + _f32(0.5))
    h = int(_f32(iso_y) * f + _f32(0.5))
    return max(h, 1), max(w, 1)


def thumbnail_quality(rgba: np.ndarray) -> float:
    """ImarisWriter's thumbnail "quality" score (``bpComputeThumbnailQuality``).

    The cube root of (how evenly the median luminance splits the luminance range) x (the
    luminance standard deviation / 255), each clamped to 0.001..1.

    Parameters
    ----------
    rgba : numpy.ndarray
        uint8 array of shape (H, W, 4).
    """
    px = np.asarray(rgba, dtype=np.uint8).reshape(-1, 4)
    size = px.shape[0]
    if size == 0:
        raise ValueError("empty thumbnail")
    # (0.299 r + 0.587 g) + 0.114 b in float32, computed in place: the writers build the
    # thumbnail at the end of a stream, where every fresh temporary page costs a page fault
    lum = px[:, 0].astype(np.float32)
    lum *= _f32(0.299)
    tmp = px[:, 1].astype(np.float32)
    tmp *= _f32(0.587)
    lum += tmp
    np.multiply(px[:, 2], _f32(0.114), out=tmp, dtype=np.float32)
    lum += tmp
    # sequential double accumulation of float values and float squares, as in the loop. The
    # values are 0 or >= 0.114 (multiples of 2**-27) and below 256: up to 2**18 of them, every
    # partial sum is exact in a double, so a (faster) pairwise sum gives the same total
    if size <= 1 << 18:
        total = float(np.sum(lum, dtype=np.float64))
    else:
        total = float(np.add.accumulate(lum, dtype=np.float64)[-1])
    np.multiply(lum, lum, out=tmp)
    squares = float(np.add.accumulate(tmp, dtype=np.float64)[-1])
    # the sorted luminances' first, middle and last entries (a partition is enough)
    front, back = lum.min(), lum.max()
    median = np.partition(lum, size // 2)[size // 2]
    q_lum = _f32(0.001)
    delta = back - front
    if delta > 0:
        half = (front + back) / _f32(2.0)
        # fabs and the following arithmetic are double in the original (::fabs(double))
        q = 1.0 - 2.0 * abs(float(median - half)) / float(delta)
        q_lum = min(max(_f32(q), _f32(0.001)), _f32(1.0))
    mean = _f32(total / size)
    var = squares / size - float(mean * mean)
    q_dist = _f32(math.sqrt(max(var, 0.0)) / 255)
    q_dist = min(max(q_dist, _f32(0.001)), _f32(1.0))
    q_grad = _f32(1.0)
    return float(_f32(math.pow(float(q_lum * q_dist * q_grad), float(_f32(1.0) / _f32(3.0)))))


def _as_list(value: Any, n: int, name: str) -> list[Any]:
    items = list(value)
    if len(items) != n:
        raise ValueError(f"{name}: expected {n} entries (one per channel), got {len(items)}")
    return items


class Projection:
    """The Z-MIP and the middle plane of one channel, accumulated while its planes stream by.

    A writer feeds it the planes of the thumbnail level as they are computed, in any order
    and from several threads, so :func:`make_thumbnail` needs no second pass over the file
    at close. Pass it to :func:`make_thumbnail` in place of the (Z, Y, X) volume; the result
    is the same (the MIP starts from zeros, NaN propagates whatever the order).

    Parameters
    ----------
    shape : (int, int, int)
        Unpadded (Z, Y, X) size of the level.
    dtype : dtype-like
        Its element type.
    """

    def __init__(self, shape: tuple[int, int, int], dtype: Any) -> None:
        nz, ny, nx = (int(n) for n in shape)
        if min(nz, ny, nx) < 1:
            raise ValueError(f"Projection: shape must be positive, got {shape}")
        self.shape = (nz, ny, nx)
        self.dtype = np.dtype(dtype)
        self.mip = np.zeros((ny, nx), dtype=self.dtype)
        self.middle = np.zeros((ny, nx), dtype=self.dtype)
        self._seen = np.zeros((nz, ny), dtype=bool)  # rows of planes added
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        """Every row of every plane was added."""
        return bool(self._seen.all())

    def add(self, z0: int, planes: np.ndarray, y0: int = 0) -> None:
        """Add rows ``y0 ..`` of planes ``z0 .. z0 + len(planes)`` (each exactly once).

        `planes` is (n, rows, X) and is not kept.
        """
        planes = np.asarray(planes)
        nz, ny, nx = self.shape
        if planes.ndim != 3 or planes.shape[2] != nx or planes.dtype != self.dtype:
            raise ValueError(f"Projection: expected (n, rows, {nx}) {self.dtype} planes, got {planes.shape} {planes.dtype}")
        n, rows = planes.shape[:2]
        if z0 < 0 or z0 + n > nz or y0 < 0 or y0 + rows > ny:
            raise IndexError(f"Projection: planes {z0}..{z0 + n - 1}, rows {y0}..{y0 + rows - 1} outside "
                             f"{nz} x {ny}")
        if n == 0 or rows == 0:
            return
        top = planes.max(axis=0)  # outside the lock: threads project their slabs at once
        mid = nz // 2
        with self._lock:
            if self._seen[z0 : z0 + n, y0 : y0 + rows].any():
                raise ValueError(f"Projection: planes {z0}..{z0 + n - 1} (rows {y0}..) added twice")
            self._seen[z0 : z0 + n, y0 : y0 + rows] = True
            band = self.mip[y0 : y0 + rows]
            np.maximum(band, top, out=band)
            if z0 <= mid < z0 + n:
                self.middle[y0 : y0 + rows] = planes[mid - z0]


def _sample(volume: Any, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour samples of one channel: (Z-MIP, middle plane), shape (H, W)."""
    pick = np.ix_(ys, xs)
    if isinstance(volume, Projection):
        if not volume.complete:
            raise ValueError("Projection: planes are missing")
        return volume.mip[pick], volume.middle[pick]
    shape = volume.shape
    if len(shape) == 2:
        nz = 1
    elif len(shape) == 3:
        nz = int(shape[0])
    else:
        raise ValueError(f"a volume is (Z, Y, X) or (Y, X), got shape {shape}")
    dtype = np.dtype(volume.dtype)
    mid = nz // 2
    ny, nx = (int(shape[-2]), int(shape[-1]))
    step = max(1, _SLAB_VOXELS // max(1, ny * nx))
    # project first, sample after: the same voxels as sampling every plane, one pass less;
    # the MIP starts from zeros, so negative float values never show in it
    mip = np.zeros((ny, nx), dtype=dtype)
    middle = None
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        slab = np.asarray(volume[z0:z1] if len(shape) == 3 else volume[None])
        if slab.dtype != dtype:
            raise TypeError("volume changed dtype while reading")
        np.maximum(mip, slab.max(axis=0), out=mip)
        if z0 <= mid < z1:
            middle = slab[mid - z0]
    if middle is None:  # pragma: no cover - the slab loop always covers plane `mid`
        raise RuntimeError("middle plane was not sampled")
    return mip[pick], middle[pick]


def _colorize(
    images: Sequence[Sequence[np.ndarray]],
    colors: Sequence[Any],
    ranges: Sequence[tuple[float, float]],
    gammas: Sequence[float],
) -> list[np.ndarray]:
    """Colour each channel, truncate to uint8 and combine by per-component maximum.

    ``images[k][c]`` is channel `c` of output image `k` (the MIP and the middle plane share
    each channel's look-up table).
    """
    h, w = images[0][0].shape
    out = [np.zeros((h, w, 4), dtype=np.uint8) for _ in images]
    for c, (color, crange, gamma) in enumerate(zip(colors, ranges, gammas)):
        planes = [image[c] for image in images]
        lut8 = None
        if planes[0].dtype in (np.uint8, np.uint16):
            # a look-up table, as ImarisWriter's colour cache, over the values that occur only
            # (a uint16 table over all 65536 values took most of the thumbnail's time)
            lo = min(int(p.min()) for p in planes)
            hi = max(int(p.max()) for p in planes)
            lut = color_values(np.arange(lo, hi + 1, dtype=np.float32), color, crange, gamma)
            # one uint32 per RGBA entry: a look-up of whole pixels, not of 4-byte rows
            lut8 = (lut * _f32(255)).astype(np.uint8).view(np.uint32).reshape(-1)
        for rgba, plane in zip(out, planes):
            if lut8 is not None:
                rgb8 = lut8[plane - plane.dtype.type(lo)].view(np.uint8).reshape(h, w, 4)
            else:
                # NaN voxels (kept in float data) are drawn black instead of an undefined cast
                values = np.nan_to_num(color_values(plane, color, crange, gamma), nan=0.0)
                rgb8 = (values * _f32(255)).astype(np.uint8)
            np.maximum(rgba, rgb8, out=rgba)
    return out


def make_thumbnail(
    volumes: Sequence[Any],
    *,
    colors: Sequence[Any],
    color_ranges: Sequence[tuple[float, float]],
    gammas: Sequence[float] | None = None,
    voxel_size_yx: tuple[float, float] = (1.0, 1.0),
    size: int = THUMBNAIL_SIZE,
    extent_yx: tuple[float, float] | None = None,
) -> np.ndarray:
    """Build the ``Thumbnail/Data`` array exactly as ImarisWriter does.

    Parameters
    ----------
    volumes : sequence of array-like or Projection
        One (Z, Y, X) array per channel at time point 0, of the level chosen by
        :func:`thumbnail_level` (unpadded). h5py datasets work too; they are read in
        Z slabs. A (Y, X) array counts as one plane. A complete :class:`Projection` of
        the volume stands for it (what the writers pass: no read-back at close).
    colors : sequence
        Per channel, the base colour ``(r, g, b)`` or ``(r, g, b, a)`` (components 0..1) or
        a colour table of shape (n, 3) / (n, 4).
    color_ranges : sequence of (float, float)
        Per channel ``ColorRange`` (min, max).
    gammas : sequence of float, optional
        Per channel ``GammaCorrection``; 1 by default.
    voxel_size_yx : (float, float), optional
        Physical voxel size (Y, X) of the given level; only the aspect ratio matters.
    size : int, optional
        Longest side of the thumbnail (256).
    extent_yx : (float, float), optional
        Physical extent (Y, X) of the image (``ExtMax - ExtMin``); when given it replaces
        `voxel_size_yx`, reproducing ImarisWriter's float32 sizing exactly.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape (H, 4 * W): rows of interleaved RGBA.

    Notes
    -----
    Reproduces ``Thumbnail/Data`` of an ImarisWriter file bit for bit when given the same
    level, colours and the (float32) colour ranges ImarisWriter used, e.g. those of
    :func:`fastims.ims.color.auto_color_range`.
    """
    vols = list(volumes)
    if not vols:
        raise ValueError("no channels")
    n = len(vols)
    cols = _as_list(colors, n, "colors")
    ranges = [(float(a), float(b)) for a, b in _as_list(color_ranges, n, "color_ranges")]
    gams = [1.0] * n if gammas is None else [float(g) for g in _as_list(gammas, n, "gammas")]
    if size < 1:
        raise ValueError("size must be >= 1")
    shape0 = tuple(vols[0].shape[-2:])
    for v in vols:
        if tuple(v.shape) != tuple(vols[0].shape):
            raise ValueError("all channels must have the same shape")
        if np.dtype(v.dtype) not in (np.uint8, np.uint16, np.uint32, np.float32):
            raise TypeError(f"unsupported dtype {v.dtype}; Imaris has uint8/16/32 and float32")
    ny, nx = int(shape0[0]), int(shape0[1])
    h, w = thumbnail_shape((ny, nx), voxel_size_yx=voxel_size_yx, extent_yx=extent_yx, size=size)
    ys = (np.arange(h, dtype=np.int64) * ny) // h
    xs = (np.arange(w, dtype=np.int64) * nx) // w
    mips: list[np.ndarray] = []
    middles: list[np.ndarray] = []
    for v in vols:
        mip, middle = _sample(v, ys, xs)
        mips.append(mip)
        middles.append(middle)
    rgba_mip, rgba_mid = _colorize([mips, middles], cols, ranges, gams)
    chosen = rgba_mip if thumbnail_quality(rgba_mip) > thumbnail_quality(rgba_mid) else rgba_mid
    return np.ascontiguousarray(chosen.reshape(h, w * 4))
