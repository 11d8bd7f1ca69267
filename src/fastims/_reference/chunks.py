"""Pure-NumPy twins of :mod:`fastims._ext._chunks`: chunk gather/pad and HDF5 byte shuffle.

Same names, signatures and results as the compiled kernels; they are the test oracle.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["gather_chunk", "shuffle", "unshuffle"]

# dtypes the compiled gather_chunk is specialised for (it only moves bytes; other dtypes of
# these widths are passed as a view of the unsigned type)
_GATHER_DTYPES = frozenset(
    np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64, np.float32)
)


def _overlap(origin: int, length: int, size: int) -> tuple[int, int]:
    """In-bounds source range ``[a, b)`` of ``[origin, origin + length)`` within ``[0, size)``."""
    a = max(origin, 0)
    b = min(origin + length, size)
    return a, max(a, b)


def gather_chunk(src: np.ndarray, z0: int, y0: int, x0: int, out: np.ndarray) -> None:
    """Copy ``src[z0:z0+cz, y0:y0+cy, x0:x0+cx]`` into `out`, zero-padding beyond `src`.

    Parameters
    ----------
    src : ndarray, shape (Z, Y, X), C-contiguous
        Source slab; uint8, uint16, uint32, uint64 or float32.
    z0, y0, x0 : int
        Chunk origin in `src` coordinates; chunk voxels outside `src` (negative coordinates
        included) become zeros.
    out : ndarray, shape (cz, cy, cx), C-contiguous, same dtype as `src`
        Destination chunk; every element is written.
    """
    # exception types follow the compiled kernel's typed-memoryview checks
    for name, arr in (("src", src), ("out", out)):
        if arr.ndim != 3 or arr.dtype not in _GATHER_DTYPES:
            raise TypeError(f"{name} must be 3-D uint8/16/32/64 or float32, got {arr.dtype}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    if src.dtype != out.dtype:
        raise ValueError(f"dtype mismatch: src {src.dtype}, out {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    ranges = [
        _overlap(o, c, s) for o, c, s in zip((z0, y0, x0), out.shape, src.shape, strict=True)
    ]
    out[...] = 0
    if any(b <= a for a, b in ranges):
        return
    src_sl = tuple(slice(a, b) for a, b in ranges)
    out_sl = tuple(
        slice(a - o, b - o) for (a, b), o in zip(ranges, (z0, y0, x0), strict=True)
    )
    out[out_sl] = src[src_sl]


def _check_shuffle_args(src: np.ndarray, itemsize: int, out: np.ndarray) -> None:
    for name, arr in (("src", src), ("out", out)):
        if arr.ndim != 1 or arr.dtype != np.uint8 or not arr.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous 1-D uint8 array")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if itemsize < 1:
        raise ValueError(f"itemsize must be >= 1, got {itemsize}")
    if out.shape[0] < src.shape[0]:
        raise ValueError(
            f"out has {out.shape[0]} bytes, fewer than the {src.shape[0]} bytes of src"
        )


def shuffle(src: np.ndarray, itemsize: int, out: np.ndarray) -> None:
    """Byte-shuffle `src` into ``out[:len(src)]`` as HDF5's shuffle filter (id 2) encodes.

    Byte ``b`` of element ``i`` goes to ``out[b * n + i]`` with ``n = len(src) // itemsize``;
    the ``len(src) % itemsize`` trailing bytes are copied unchanged to the end. With
    ``itemsize == 1`` or fewer than two whole elements the bytes are copied unchanged
    (``H5Z_filter_shuffle`` leaves such buffers alone).
    """
    _check_shuffle_args(src, itemsize, out)
    nbytes = src.shape[0]
    n = nbytes // itemsize
    if itemsize <= 1 or n <= 1:
        out[:nbytes] = src
        return
    body = n * itemsize
    out[:body] = src[:body].reshape(n, itemsize).T.reshape(-1)
    out[body:nbytes] = src[body:]


def unshuffle(src: np.ndarray, itemsize: int, out: np.ndarray) -> None:
    """Invert :func:`shuffle` (HDF5 shuffle filter, read direction) into ``out[:len(src)]``."""
    _check_shuffle_args(src, itemsize, out)
    nbytes = src.shape[0]
    n = nbytes // itemsize
    if itemsize <= 1 or n <= 1:
        out[:nbytes] = src
        return
    body = n * itemsize
    out[:body] = src[:body].reshape(itemsize, n).T.reshape(-1)
    out[body:nbytes] = src[body:]


def pwrite_chunk(
    fd: int, src: np.ndarray, z0: int, y0: int, x0: int, cz: int, cy: int, cx: int, offset: int,
    scratch: np.ndarray,
) -> None:
    """Write the zero-padded chunk ``src[z0:z0+cz, y0:y0+cy, x0:x0+cx]`` at file `offset`.

    `src` is a (Z, Y, X * itemsize) uint8 view of the slab; `x0` and `cx` count bytes. The
    chunk is gathered into ``scratch[:cz*cy*cx]`` first.
    """
    if cz < 1 or cy < 1 or cx < 1 or offset < 0 or z0 < 0 or y0 < 0 or x0 < 0:
        raise ValueError("chunk extents must be positive, origin and offset non-negative")
    nbytes = cz * cy * cx
    if scratch.shape[0] < nbytes:
        raise ValueError(f"scratch holds {scratch.shape[0]} bytes, the chunk needs {nbytes}")
    chunk = scratch[:nbytes].reshape(cz, cy, cx)
    gather_chunk(np.ascontiguousarray(src), z0, y0, x0, chunk)
    data = memoryview(chunk).cast("B")
    while data:
        written = os.pwrite(fd, data, offset)
        data = data[written:]
        offset += written
