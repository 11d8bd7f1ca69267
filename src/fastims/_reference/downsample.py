"""Pure-NumPy twins of the block-mean downsampling kernels (``fastims._ext._downsample``).

These functions *define* the two rules; the compiled kernels must match them bit for bit.
Both take a C-contiguous (Z, Y, X) ``src`` of uint8, uint16, uint32 or float32 and write into
a preallocated ``out`` of the same dtype.

``downsample_imaris`` — ImarisWriter (``bpMultiresolutionImsImage.cxx``, ``ResampleBlockT``)
    ``out.shape == (Z // fz, Y // fy, X // fx)``: the trailing planes, rows and columns that do
    not fill a whole box are dropped. Each output voxel is a float32 sum that starts at 0.0 and
    adds the box voxels (each converted to float32) in the order dz, then dy, then dx (the
    nesting of ImarisWriter's loops), is divided by the float32 box size, and is cast back to
    the dtype, which truncates toward zero. fastims clamps that cast to the dtype's maximum
    (only reachable for uint32, whose float32 sum can round up to 2**32).

``downsample_bdv`` — BigDataViewer >= 10.6.2 (imglib2-algorithm ``blocks/downsample``)
    ``out.shape == (ceil(Z / fz), ceil(Y / fy), ceil(X / fx))``: a partial edge box is filled
    by repeating the last plane, row or column (BDV exports from a border-extended source).
    What imglib2-algorithm's ``Downsample.downsample(int[] factors)`` computes (read from
    ``Downsample.java``, ``AbstractDownsample.compute``, ``DownsampleBlockProcessors``
    ``AvgBlockFloat``/``AvgBlockDouble`` and ``util/ConvertScalars``):

    * The computation type is float32 for u8/u16/f32 and float64 for u32 (``ComputationType.AUTO``:
      float when the primitive type is FLOAT or narrower than 4 bytes).
    * It is **separable**: one pass per axis with a factor > 1 (axes with factor 1 are skipped),
      in imglib2's dimension order X, then Y, then Z. Each pass writes its result into a
      float32 (float64) temporary, so every intermediate is rounded to the computation type.
    * Within a pass, the f input values of a box are summed sequentially (``d = v0; d += v1;
      ...``) and the sum is multiplied (not divided) by ``scale = (float)(1.0 / f)``: the
      reciprocal computed in double and rounded to the computation type. For f == 2 the code
      takes the ``0.5f * (a + b)`` half-pixel path, which is the same arithmetic.
    * The result is converted back with ``Math.round`` (floor(x + 1/2), ties up) for integer
      types and cast without clamping (``ClampType.NONE``); a mean of in-range values is in
      range, so fastims' clamp never changes a value. float32 output is the plain float mean.

    Older BDV (<= 10.6.1) used floor-sized levels and a double sum times 1/prod(f); for
    power-of-two factors and u8/u16 data both versions give round-half-up of the exact mean.
"""

from __future__ import annotations

import numpy as np

__all__ = ["downsample_bdv", "downsample_imaris"]

_SUPPORTED = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.float32))


def _check(src: np.ndarray, out: np.ndarray, factors: tuple[int, int, int], *, ceil: bool) -> None:
    # the kernels raise the same errors, so a caller sees one behaviour for both backends
    if src.dtype not in _SUPPORTED or out.dtype != src.dtype:
        raise ValueError(f"unsupported dtypes src={src.dtype}, out={out.dtype}")
    if src.ndim != 3 or out.ndim != 3:
        raise ValueError("src and out must be 3-D (Z, Y, X)")
    if min(factors) < 1:
        raise ValueError(f"factors must be positive, got {factors}")
    if ceil:
        expected = tuple(-(-n // f) for n, f in zip(src.shape, factors))
    else:
        expected = tuple(n // f for n, f in zip(src.shape, factors))
    if out.shape != expected:
        raise ValueError(f"out has shape {out.shape}, expected {expected}")


def downsample_imaris(src: np.ndarray, out: np.ndarray, fz: int, fy: int, fx: int) -> None:
    """Write ImarisWriter's truncating block mean of `src` into `out` (see module docstring)."""
    _check(src, out, (fz, fy, fx), ceil=False)
    if out.size == 0:
        return
    oz, oy, ox = out.shape
    acc = np.zeros(out.shape, dtype=np.float32)
    with np.errstate(all="ignore"):  # inf/NaN in float32 data are legitimate input
        for dz in range(fz):
            for dy in range(fy):
                for dx in range(fx):
                    part = src[dz : oz * fz : fz, dy : oy * fy : fy, dx : ox * fx : fx]
                    # explicit cast: float32 + uint32 would otherwise add in float64
                    acc += part.astype(np.float32)
        acc /= np.float32(fz * fy * fx)
    if src.dtype.kind == "f":
        out[...] = acc
        return
    # truncation toward zero; clamp first because a float32 sum can round past the maximum
    top = np.float32(np.iinfo(src.dtype).max + 1)
    over = acc >= top
    acc[over] = 0
    res = acc.astype(src.dtype)
    res[over] = np.iinfo(src.dtype).max
    out[...] = res


def _avg_axis(a: np.ndarray, axis: int, f: int) -> np.ndarray:
    """One imglib2 ``AvgBlock`` pass along `axis`: edge-replicate, sequential sum, times 1/f."""
    n = a.shape[axis]
    m = -(-n // f)
    if m * f != n:
        a = np.take(a, np.minimum(np.arange(m * f), n - 1), axis=axis)
    a = a.reshape(a.shape[:axis] + (m, f) + a.shape[axis + 1 :])
    lead = (slice(None),) * (axis + 1)
    s = a[lead + (0,)].copy()
    for i in range(1, f):
        s += a[lead + (i,)]
    # scale is (float)(1.0 / f) in Java: the double reciprocal rounded to the computation type
    s *= a.dtype.type(1.0 / f)
    return s


def downsample_bdv(src: np.ndarray, out: np.ndarray, fz: int, fy: int, fx: int) -> None:
    """Write BigDataViewer's (>= 10.6.2) edge-replicated, rounded block mean of `src` into `out`.

    See the module docstring for the exact arithmetic.
    """
    _check(src, out, (fz, fy, fx), ceil=True)
    if out.size == 0:
        return
    ctype = np.float64 if src.dtype == np.uint32 else np.float32
    a = src.astype(ctype)
    with np.errstate(all="ignore"):  # inf/NaN in float32 data are legitimate input
        # imglib2 dimension order: X (axis 2), then Y (axis 1), then Z (axis 0)
        for axis, f in ((2, fx), (1, fy), (0, fz)):
            if f > 1:
                a = _avg_axis(a, axis, f)
    if src.dtype.kind == "f":
        out[...] = a
        return
    # Java Math.round: floor(x + 1/2) evaluated exactly (x + 0.5 itself could round up)
    r = np.floor(a)
    r += a - r >= 0.5
    np.clip(r, 0, np.iinfo(src.dtype).max, out=r)
    out[...] = r.astype(src.dtype)
