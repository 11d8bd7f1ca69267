"""Resolution pyramid and HDF5 chunk layout of an Imaris (.ims) file.

This reproduces, bit for bit, the layout ImarisWriter (the official C++ writer,
``writer/bpOptimalBlockLayout.cxx``) chooses, so that a fastims file has the same
level sizes and chunk shapes as one written by Imaris' own tools:

* **Levels** (``GetOptimalImagePyramid``): while the current level holds more than
  ``1 MiB / itemsize`` voxels, halve (floor) every dimension that is not thinner than
  a tenth of the geometric mean of the other two (``(10 n)**2 > product of the
  others``); stop early when no dimension may shrink.
* **Chunks** (``GetOptimalBlockSize(s)``): enumerate power-of-two blocks
  ``(bx, by, bz, bt)`` holding exactly ``2**floor(log2(1 MiB / itemsize))`` voxels,
  3-D images requiring ``bx == by`` and ``bz > 2``, 2-D images ``bz == 1`` and ``bx``,
  ``by`` within a factor 4.  Rank them by the number of blocks the three mid-slices
  touch, then by block surface, then by wasted memory (padding in X, Y, Z *and* T,
  ``bt`` absorbing whatever the XYZ block leaves of the voxel budget).  The winner is
  replaced by the best candidate wasting at most 2x if it wastes more.  From level 1
  on, each block dimension must be at least the previous level's (halved where the
  image dimension was halved), so one high-resolution chunk feeds exactly one
  low-resolution chunk.

The ranking is done in float32 and the candidates are ordered with an emulation of
libstdc++'s (unstable) ``std::sort``, because exact ties between candidates do occur
(e.g. 2-D blocks 1024x512 vs 512x1024) and ImarisWriter's choice between them is
whatever that sort leaves first.

All shapes in this module's API are in HDF5 order ``(Z, Y, X)``; internally the
computation runs in ImarisWriter's ``(X, Y, Z)`` order.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BLOCK_BYTES", "ImsLevel", "imaris_levels"]

#: ImarisWriter's block budget and last-level size limit, in bytes (1 MiB).
BLOCK_BYTES = 1024 * 1024

#: The voxel types ImarisWriter (and so the .ims format) supports.
_SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.float32)

#: ImarisWriter gives up on a candidate list with this much padding (2x).
_MAX_MEMORY_COST = np.float32(2.0)

#: libstdc++'s introsort hands ranges of at most this size to insertion sort.
_SORT_THRESHOLD = 16

_Vec3 = tuple[int, int, int]


@dataclass(frozen=True)
class ImsLevel:
    """One resolution level of an Imaris file.

    Attributes
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` true size of this level's image.
    chunks : tuple of int
        ``(Z, Y, X)`` HDF5 chunk shape (ImarisWriter's in-memory block shape).
    factors : tuple of int
        ``(fz, fy, fx)`` downsampling factors relative to the previous level, each 1
        or 2; ``(1, 1, 1)`` for level 0.
    """

    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    factors: tuple[int, int, int]

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` shape of the HDF5 ``Data`` dataset: ``shape`` rounded up to
        whole chunks (ImarisWriter stores the zero padding explicitly)."""
        return tuple(  # type: ignore[return-value]
            -(-n // c) * c for n, c in zip(self.shape, self.chunks)
        )

    @property
    def chunk_grid(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` number of chunks along each axis."""
        return tuple(  # type: ignore[return-value]
            -(-n // c) for n, c in zip(self.shape, self.chunks)
        )


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------


def imaris_levels(
    shape: Sequence[int],
    dtype: Any,
    *,
    ntimepoints: int = 1,
    force_z1: bool = False,
) -> list[ImsLevel]:
    """Compute ImarisWriter's resolution pyramid and chunk shapes.

    Parameters
    ----------
    shape : sequence of 3 int
        ``(Z, Y, X)`` size of the full-resolution image (one channel, one time point).
    dtype : dtype-like
        Voxel type: ``uint8``, ``uint16``, ``uint32`` or ``float32`` (byte order is
        irrelevant to the layout).
    ntimepoints : int, optional
        Number of time points ``T``.  ImarisWriter counts padding along T in its
        wasted-memory cost, so ``T`` can change the chunk shape (usually it does not).
    force_z1 : bool, optional
        ImarisWriter's ``mForceFileBlockSizeZ1``: never halve Z (the aspect test then
        ignores Z as well) and give every level chunks with Z = 1.

    Returns
    -------
    list of ImsLevel
        Level 0 (full resolution) first.

    Raises
    ------
    TypeError
        If ``shape`` is not a sequence of three integers, ``ntimepoints`` is not an
        integer, ``force_z1`` is not a bool, or ``dtype`` is not a supported type.
    ValueError
        If a size or ``ntimepoints`` is smaller than 1.

    Examples
    --------
    >>> [(lv.shape, lv.chunks) for lv in imaris_levels((33, 130, 260), "uint16")]
    [((33, 130, 260), (32, 128, 128)), ((16, 65, 130), (16, 128, 128))]
    """
    size_zyx = _validate_shape(shape)
    itemsize = _validate_dtype(dtype)
    if isinstance(ntimepoints, bool):
        raise TypeError("ntimepoints must be an int, not bool")
    try:
        ntime = operator.index(ntimepoints)
    except TypeError:
        raise TypeError(
            f"ntimepoints must be an int, not {type(ntimepoints).__name__}"
        ) from None
    if ntime < 1:
        raise ValueError(f"ntimepoints must be >= 1, got {ntime}")
    if not isinstance(force_z1, (bool, np.bool_)):
        raise TypeError(f"force_z1 must be a bool, not {type(force_z1).__name__}")

    budget = BLOCK_BYTES // itemsize
    z, y, x = size_zyx
    sizes = _pyramid((x, y, z), budget, reduce_z=not force_z1)
    blocks = _block_sizes(budget, sizes, ntime)
    if force_z1:
        # ImarisWriter computes the regular 3-D blocks first and only then flattens
        # them, so the XY block sizes are those of the 3-D layout.
        blocks = [(bx, by, 1) for bx, by, _ in blocks]

    levels: list[ImsLevel] = []
    for i, ((sx, sy, sz), (bx, by, bz)) in enumerate(zip(sizes, blocks)):
        if i == 0:
            factors = (1, 1, 1)
        else:
            # A dimension shrank iff it equals floor(previous / 2) (a 3 -> 1 step is
            # still a factor-2 box with the odd plane dropped).
            px, py, pz = sizes[i - 1]
            factors = (
                2 if pz // 2 == sz else 1,
                2 if py // 2 == sy else 1,
                2 if px // 2 == sx else 1,
            )
        levels.append(ImsLevel(shape=(sz, sy, sx), chunks=(bz, by, bx), factors=factors))
    return levels


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def _validate_shape(shape: Sequence[int]) -> _Vec3:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)):
        raise TypeError(f"shape must be a sequence of 3 ints (Z, Y, X), got {shape!r}")
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 entries (Z, Y, X), got {len(shape)}")
    out = []
    for n in shape:
        if isinstance(n, (bool, np.bool_)):
            raise TypeError(f"shape entries must be ints, got {shape!r}")
        try:
            out.append(operator.index(n))
        except TypeError:
            raise TypeError(f"shape entries must be ints, got {shape!r}") from None
    if min(out) < 1:
        raise ValueError(f"every size in shape must be >= 1, got {tuple(out)}")
    return out[0], out[1], out[2]


def _validate_dtype(dtype: Any) -> int:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype {dtype!r} is not a NumPy dtype") from None
    if dt.type not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"Imaris files hold uint8, uint16, uint32 or float32 voxels, not {dt}"
        )
    return dt.itemsize


# ---------------------------------------------------------------------------
# level sizes (GetOptimalImagePyramid)
# ---------------------------------------------------------------------------


def _pyramid(size_xyz: _Vec3, max_voxels: int, *, reduce_z: bool) -> list[_Vec3]:
    sizes = [size_xyz]
    x, y, z = size_xyz
    while x * y * z > max_voxels:
        # With Z pinned the aspect test sees a flat image (Z counts as 1), while the
        # stop rule above still counts every plane.
        zt = z if reduce_z else 1
        rx = x > 1 and (10 * x) ** 2 > y * zt
        ry = y > 1 and (10 * y) ** 2 > x * zt
        rz = zt > 1 and (10 * zt) ** 2 > x * y
        if not (rx or ry or rz):
            break
        x, y, z = (x // 2 if rx else x), (y // 2 if ry else y), (z // 2 if rz else z)
        sizes.append((x, y, z))
    return sizes


# ---------------------------------------------------------------------------
# block sizes (GetOptimalBlockSizes / GetOptimalBlockSize)
# ---------------------------------------------------------------------------


def _block_sizes(budget: int, sizes: list[_Vec3], ntime: int) -> list[_Vec3]:
    blocks: list[_Vec3] = []
    for i, size in enumerate(sizes):
        if i == 0:
            minimum = (1, 1, 1)
        else:
            prev_size, prev_block = sizes[i - 1], blocks[i - 1]
            minimum = tuple(  # type: ignore[assignment]
                b // 2 if p // 2 == s else b
                for p, s, b in zip(prev_size, size, prev_block)
            )
        blocks.append(_optimal_block(budget, size, ntime, minimum))
    return blocks


def _optimal_block(budget: int, size: _Vec3, ntime: int, minimum: _Vec3) -> _Vec3:
    # ImarisWriter rounds the budget down to a power of two; ours already is one.
    total = 1 << (budget.bit_length() - 1)
    sx, sy, sz = size
    mx, my, mz = minimum
    is_2d = sz == 1

    cand: list[tuple[int, int, int, int]] = []
    bx = 1
    while bx <= total:
        by = 1
        while by * bx <= total:
            bz = 1
            while bz * by * bx <= total:
                if is_2d:
                    ok = bz == 1 and bx <= 4 * by and by <= 4 * bx
                else:
                    ok = bx == by and bz > 2
                if ok and bx >= mx and by >= my and bz >= mz:
                    cand.append((bx, by, bz, total // (bx * by * bz)))
                bz *= 2
            by *= 2
        bx *= 2

    if not cand:
        # ImarisWriter's "paranoid" fallback: split log2(budget) over Z, Y, X.
        lg = (budget - 1).bit_length()
        lz = lg // 3
        ly = (lg - lz) // 2
        return 1 << (lg - lz - ly), 1 << ly, 1 << lz

    keys = _costs(cand, (sx, sy, sz, ntime))
    order = list(range(len(cand)))
    _libstdcxx_sort(order, lambda a, b: keys[a] < keys[b])

    best = order[0]
    if keys[best][2] > _MAX_MEMORY_COST:
        for j in order:
            if keys[j][2] <= _MAX_MEMORY_COST:
                best = j
                break
    bx, by, bz, _ = cand[best]
    return bx, by, bz


def _costs(
    cand: list[tuple[int, int, int, int]], size: tuple[int, int, int, int]
) -> list[tuple[float, float, float]]:
    """(slice, surface, memory) costs, evaluated in float32 exactly as the C++ does.

    Python floats compare float32 values exactly, so the returned keys rank the
    candidates as ImarisWriter's ``bpCBlockLayoutCostLess`` does, ties included.
    """
    b = np.array(cand, dtype=np.uint64)  # columns bx, by, bz, bt
    s = np.array(size, dtype=np.uint64)
    n = (s - 1) // b + 1  # blocks per axis
    nx, ny, nz = n[:, 0], n[:, 1], n[:, 2]
    f32 = np.float32

    # 1 + nx*ny + nx*nz + ny*nz - nx - ny - nz, left to right, each term converted
    # to float before the float32 addition (the usual arithmetic conversions).
    slice_cost = np.full(len(cand), 1.0, dtype=f32)
    for term, sign in ((nx * ny, 1), (nx * nz, 1), (ny * nz, 1), (nx, -1), (ny, -1), (nz, -1)):
        t = term.astype(f32)
        slice_cost = slice_cost + t if sign > 0 else slice_cost - t

    bx, by, bz = b[:, 0], b[:, 1], b[:, 2]
    surface = (bx * by + bx * bz + by * bz).astype(f32)

    padded = (n * b).prod(axis=1)  # uint64, as in the C++
    volume = int(s.prod())
    memory = padded.astype(f32) / f32(volume)

    return list(zip(slice_cost.tolist(), surface.tolist(), memory.tolist()))


# ---------------------------------------------------------------------------
# libstdc++ std::sort (introsort + final insertion sort), for its tie order
# ---------------------------------------------------------------------------


def _libstdcxx_sort(a: list[int], less: Callable[[int, int], bool]) -> None:
    """Sort ``a`` in place exactly as GCC's ``std::sort`` would, including the
    (unstable) order it leaves equal elements in."""
    n = len(a)
    if n > 1:
        _introsort_loop(a, 0, n, 2 * (n.bit_length() - 1), less)
        _final_insertion_sort(a, 0, n, less)


def _introsort_loop(
    a: list[int], first: int, last: int, depth: int, less: Callable[[int, int], bool]
) -> None:
    while last - first > _SORT_THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last, less)
            return
        depth -= 1
        cut = _partition_pivot(a, first, last, less)
        _introsort_loop(a, cut, last, depth, less)
        last = cut


def _partition_pivot(
    a: list[int], first: int, last: int, less: Callable[[int, int], bool]
) -> int:
    mid = first + (last - first) // 2
    _move_median_to_first(a, first, first + 1, mid, last - 1, less)
    # Unguarded Hoare partition of [first+1, last) around the pivot now at first.
    pivot = a[first]
    lo, hi = first + 1, last
    while True:
        while less(a[lo], pivot):
            lo += 1
        hi -= 1
        while less(pivot, a[hi]):
            hi -= 1
        if lo >= hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


def _move_median_to_first(
    a: list[int], result: int, i: int, j: int, k: int, less: Callable[[int, int], bool]
) -> None:
    if less(a[i], a[j]):
        if less(a[j], a[k]):
            m = j
        elif less(a[i], a[k]):
            m = k
        else:
            m = i
    elif less(a[i], a[k]):
        m = i
    elif less(a[j], a[k]):
        m = k
    else:
        m = j
    a[result], a[m] = a[m], a[result]


def _final_insertion_sort(
    a: list[int], first: int, last: int, less: Callable[[int, int], bool]
) -> None:
    if last - first > _SORT_THRESHOLD:
        _insertion_sort(a, first, first + _SORT_THRESHOLD, less)
        # The first 16 hold the minimum, so the rest needs no lower-bound check.
        for i in range(first + _SORT_THRESHOLD, last):
            _linear_insert(a, i, less)
    else:
        _insertion_sort(a, first, last, less)


def _insertion_sort(
    a: list[int], first: int, last: int, less: Callable[[int, int], bool]
) -> None:
    for i in range(first + 1, last):
        val = a[i]
        if less(val, a[first]):
            a[first + 1 : i + 1] = a[first:i]
            a[first] = val
        else:
            _linear_insert(a, i, less)


def _linear_insert(a: list[int], last: int, less: Callable[[int, int], bool]) -> None:
    val = a[last]
    nxt = last - 1
    while less(val, a[nxt]):
        a[last] = a[nxt]
        last = nxt
        nxt -= 1
    a[last] = val


def _heap_sort(
    a: list[int], first: int, last: int, less: Callable[[int, int], bool]
) -> None:
    # std::partial_sort(first, last, last): make_heap then sort_heap.
    length = last - first
    if length >= 2:
        parent = (length - 2) // 2
        while True:
            _adjust_heap(a, first, parent, length, a[first + parent], less)
            if parent == 0:
                break
            parent -= 1
    while last - first > 1:
        last -= 1
        val = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, val, less)


def _adjust_heap(
    a: list[int], first: int, hole: int, length: int, val: int,
    less: Callable[[int, int], bool],
) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if less(a[first + child], a[first + child - 1]):
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    # push_heap back up towards top
    parent = (hole - 1) // 2
    while hole > top and less(a[first + parent], val):
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = val
