"""Resolution levels and chunk shapes of a BigDataViewer HDF5 dataset.

Two separate choices live here (facts and sources: ``shared/spec/bdv.md`` section 3):

* **Which levels** — :func:`propose_mipmaps` is BigDataViewer's own rule
  (``bdv.export.ProposeMipmaps.proposeMipmaps`` with ``suggestPoTBlockSize``, as in
  bigdataviewer-core since 2021): halve every axis whose relative voxel size is at most 2 until
  the largest level dimension is at most 256. It also returns BDV's 8 KiB viewing blocks, which
  fastims reports but does not use for writing.
* **Which chunks** — :func:`write_chunks` picks chunk shapes for writing at camera speed
  (about 1 MiB, up to 256 x 256 in Y and X), deep enough in Z for the engine: a level's chunk
  depth must be a multiple of the z factor of every level computed from it.

:func:`loopback_sources` reproduces BDV's ``DefaultLoopbackHeuristic``: a level is computed
from the nearest earlier level whose factors divide its own when that saves at least 8x pixel
accesses over computing it from full resolution, otherwise from full resolution.
:func:`plan_levels` combines the three into the per-level plan the writer streams.

Axis order: BDV's tables (``resolutions``, ``subdivisions``, XML sizes) are (x, y, z);
:func:`propose_mipmaps` and :func:`suggest_pot_block_size` take and return (x, y, z) like their
Java originals. Everything else in this module is (z, y, x), fastims' order.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "BdvLevel",
    "MipmapInfo",
    "loopback_sources",
    "plan_levels",
    "propose_mipmaps",
    "suggest_pot_block_size",
    "write_chunks",
]

#: BDV's ``maxNumElements`` for viewing blocks (8 KiB of 16-bit voxels)
BDV_BLOCK_ELEMENTS = 4096
#: largest level dimension at which BDV stops adding levels
BDV_MAX_LEVEL_SIZE = 256
#: target size of a write chunk
DEFAULT_CHUNK_BYTES = 1 << 20
#: largest Y and X chunk extent
MAX_CHUNK_YX = 256
#: shallowest and deepest default chunk depth (before the z-factor requirement)
MIN_CHUNK_Z = 4
MAX_CHUNK_Z = 32
#: loopback is used when it saves at least this factor of pixel accesses (BDV's heuristic)
LOOPBACK_SAVING = 8


@dataclass(frozen=True)
class MipmapInfo:
    """BigDataViewer's proposal for one setup, in BDV's (x, y, z) order.

    Attributes
    ----------
    resolutions : tuple of (int, int, int)
        Absolute (x, y, z) downsampling factors of each level.
    subdivisions : tuple of (int, int, int)
        (x, y, z) viewing block size of each level.
    """

    resolutions: tuple[tuple[int, int, int], ...]
    subdivisions: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class BdvLevel:
    """One resolution level as fastims writes it, in (z, y, x) order.

    Attributes
    ----------
    factors : tuple of int
        Absolute downsampling factors relative to full resolution.
    shape : tuple of int
        Level size: ``ceil(full size / factors)`` (BDV >= 10.6.2).
    chunks : tuple of int
        HDF5 chunk shape; ``subdivisions`` is this reversed.
    source : int or None
        Level this one is computed from (None for level 0).
    relative : tuple of int
        Factors relative to `source`.
    """

    factors: tuple[int, int, int]
    shape: tuple[int, int, int]
    chunks: tuple[int, int, int]
    source: int | None
    relative: tuple[int, int, int]


# ---------------------------------------------------------------------------------------
# BigDataViewer's proposeMipmaps
# ---------------------------------------------------------------------------------------


def _normalize(scale: list[float]) -> None:
    """Divide by the smallest entry (``ProposeMipmaps.normalizeVoxelSize``)."""
    smallest = min(scale)
    for d in range(len(scale)):
        scale[d] /= smallest


def _java_int(value: float) -> int:
    """Java's ``(int)`` cast of a double: truncation, NaN -> 0, saturation at the int range."""
    if math.isnan(value):
        return 0
    if value >= 2**31 - 1:
        return 2**31 - 1
    if value <= -(2**31):
        return -(2**31)
    return int(value)


def suggest_pot_block_size(
    voxel_size: Sequence[float],
    size: Sequence[int] | None = None,
    max_num_elements: int = BDV_BLOCK_ELEMENTS,
) -> tuple[int, ...]:
    """BigDataViewer's power-of-two block size (``ProposeMipmaps.suggestPoTBlockSize``).

    Every side is a power of two, the block holds at most `max_num_elements` voxels, and,
    scaled by the voxel size, it is as close to a cube as those two constraints allow. When
    `size` is given, no side exceeds the next power of two of that dimension. Ties go to x,
    then y, then z (a 0.01 * (n - d) bias).

    Parameters
    ----------
    voxel_size : sequence of float
        (x, y, z) relative voxel size.
    size : sequence of int, optional
        (x, y, z) image size limiting the bits spent per dimension.
    max_num_elements : int
        Upper bound of the block's element count.

    Returns
    -------
    tuple of int
        (x, y, z) block size.

    Examples
    --------
    >>> suggest_pot_block_size((1.0, 1.0, 1.0))
    (16, 16, 16)
    >>> suggest_pot_block_size((1.0, 1.0, 3.0769), (2048, 2048, 400))
    (32, 16, 8)
    """
    n = len(voxel_size)
    bias = [0.01 * (n - d) for d in range(n)]
    shape = [1.0 / float(v) for v in voxel_size]
    shape_vol = math.prod(shape)
    m = math.pow(max_num_elements / shape_vol, 1.0 / n)
    sum_num_bits = math.log(max_num_elements) / math.log(2)
    num_bits = [math.log(m * shape[d]) / math.log(2) for d in range(n)]
    int_bits = [max(0, _java_int(b)) for b in num_bits]
    full_bits = [0] * n
    if size is not None:
        for d in range(n):
            # bits needed to hold the whole dimension (log(0) = -inf for a size of 1)
            s = int(size[d]) - 1
            lg = math.log(s) / math.log(2) if s > 0 else -math.inf
            full_bits[d] = max(0, _java_int(lg) + 1) if s > 0 else 0
            int_bits[d] = min(int_bits[d], full_bits[d])
    total = sum(int_bits)
    while total + 1 <= sum_num_bits:
        best = -math.inf
        best_dim = 0
        for d in range(n):
            if size is not None and int_bits[d] >= full_bits[d]:
                continue
            diff = num_bits[d] - int_bits[d] + bias[d]
            if diff > best:
                best = diff
                best_dim = d
        int_bits[best_dim] += 1
        total += 1
    return tuple(1 << b for b in int_bits)


def propose_mipmaps(
    size: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    max_num_elements: int = BDV_BLOCK_ELEMENTS,
) -> MipmapInfo:
    """BigDataViewer's proposed levels and viewing blocks for one setup.

    Port of ``bdv.export.ProposeMipmaps.proposeMipmaps(BasicViewSetup, int)``: starting from
    factors (1, 1, 1), add a level; stop when the largest level dimension
    (``max(1, size // factor)``) is at most 256; otherwise double the factor of every axis
    whose voxel size relative to the finest axis is at most 2 and whose level size is above 1
    (all axes if none qualifies) and continue.

    Parameters
    ----------
    size : sequence of int
        (x, y, z) image size.
    voxel_size : sequence of float
        (x, y, z) voxel size (any unit; only ratios matter).
    max_num_elements : int
        Element budget of a viewing block (BDV: 4096).

    Returns
    -------
    MipmapInfo
        ``resolutions`` and ``subdivisions`` in (x, y, z) order.

    Examples
    --------
    >>> info = propose_mipmaps((2048, 2048, 400), (0.65, 0.65, 2.0))
    >>> info.resolutions
    ((1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 8, 4))
    >>> info.subdivisions
    ((32, 16, 8), (16, 16, 16), (16, 16, 16), (16, 16, 16))
    """
    dims = _positive_ints("size", size, 3)
    scale = [float(v) for v in voxel_size]
    if len(scale) != 3 or not all(math.isfinite(v) and v > 0 for v in scale):
        raise ValueError(f"voxel_size must be 3 positive finite numbers, got {voxel_size!r}")
    _normalize(scale)
    res = [1, 1, 1]
    resolutions: list[tuple[int, int, int]] = []
    subdivisions: list[tuple[int, int, int]] = []
    while True:
        resolutions.append((res[0], res[1], res[2]))
        level = [max(1, dims[d] // res[d]) for d in range(3)]
        block = suggest_pot_block_size(scale, level, max_num_elements)
        subdivisions.append((block[0], block[1], block[2]))
        if max(level) <= BDV_MAX_LEVEL_SIZE:
            break
        changed = False
        for d in range(3):
            if scale[d] <= 2.0 and level[d] > 1:
                res[d] *= 2
                scale[d] *= 2
                changed = True
        if not changed:
            res = [r * 2 for r in res]
        _normalize(scale)
    return MipmapInfo(tuple(resolutions), tuple(subdivisions))


# ---------------------------------------------------------------------------------------
# fastims' plan: loopback sources and write chunks
# ---------------------------------------------------------------------------------------


def loopback_sources(
    factors: Sequence[Sequence[int]],
) -> list[tuple[int | None, tuple[int, int, int]]]:
    """Source level and relative factors of every level (BDV's ``DefaultLoopbackHeuristic``).

    For level ``l`` BDV looks for the nearest earlier level whose factors divide those of
    ``l`` on every axis; it reads that level back ("loopback") when the product of the
    absolute factors of ``l`` divided by the product of the relative factors is at least 8,
    i.e. when it saves 8x or more pixel accesses, else it downsamples full resolution.

    Parameters
    ----------
    factors : sequence of (int, int, int)
        Absolute factors of every level, level 0 first; any consistent axis order.

    Returns
    -------
    list of (int or None, tuple of int)
        ``(source, relative factors)`` per level; ``(None, (1, 1, 1))`` for level 0.

    Examples
    --------
    >>> loopback_sources([(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)])
    [(None, (1, 1, 1)), (0, (1, 2, 2)), (0, (2, 4, 4)), (2, (2, 2, 2))]
    """
    levels = [tuple(int(v) for v in f) for f in factors]
    out: list[tuple[int | None, tuple[int, int, int]]] = [(None, (1, 1, 1))]
    for li in range(1, len(levels)):
        fac = levels[li]
        previous = None
        relative: tuple[int, ...] = fac
        for lj in range(li - 1, -1, -1):
            prev = levels[lj]
            if all(a % b == 0 for a, b in zip(fac, prev)):
                previous = lj
                relative = tuple(a // b for a, b in zip(fac, prev))
                break
        if previous is not None and previous > 0 and math.prod(fac) // math.prod(relative) >= LOOPBACK_SAVING:
            out.append((previous, relative))  # type: ignore[arg-type]
        else:
            out.append((0, fac))  # type: ignore[arg-type]
    return out


def _floor_pow2(n: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(n)))) if n >= 1 else 1


def write_chunks(
    shapes: Sequence[Sequence[int]],
    z_multiples: Sequence[int],
    itemsize: int,
    *,
    target_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[tuple[int, int, int]]:
    """Chunk shape of every level, sized for writing speed rather than for viewing.

    Y and X extents are ``min(256, size)``; the depth is the power of two that brings the
    chunk closest to `target_bytes` from below (clamped to 4..32 planes and to the level's
    depth rounded up to a power of two), then raised to a multiple of ``z_multiples[l]`` (the
    z factors of the levels computed from level ``l``), which the streaming engine requires.

    Parameters
    ----------
    shapes : sequence of (int, int, int)
        (Z, Y, X) size of every level.
    z_multiples : sequence of int
        Per level, the number its chunk depth must be a multiple of.
    itemsize : int
        Bytes per voxel.
    target_bytes : int
        Wanted chunk size.

    Returns
    -------
    list of (int, int, int)
        (z, y, x) chunk shape per level.

    Examples
    --------
    >>> write_chunks([(400, 2048, 2048), (400, 1024, 1024)], [2, 1], 2)
    [(8, 256, 256), (8, 256, 256)]
    >>> write_chunks([(3, 40, 50)], [4], 4)
    [(4, 40, 50)]
    """
    out = []
    for shape, mult in zip(shapes, z_multiples):
        nz, ny, nx = (int(v) for v in shape)
        cy, cx = max(1, min(MAX_CHUNK_YX, ny)), max(1, min(MAX_CHUNK_YX, nx))
        depth = _floor_pow2(target_bytes / (cy * cx * itemsize))
        depth = min(max(depth, MIN_CHUNK_Z), MAX_CHUNK_Z)
        depth = min(depth, 1 << max(0, math.ceil(math.log2(max(nz, 1)))))
        m = max(1, int(mult))
        cz = -(-depth // m) * m
        out.append((cz, cy, cx))
    return out


def plan_levels(
    shape: Sequence[int],
    *,
    itemsize: int,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    factors: Sequence[Sequence[int]] | None = None,
    chunks: Sequence[int] | Sequence[Sequence[int]] | None = None,
) -> list[BdvLevel]:
    """The levels fastims writes for one setup, in (z, y, x) order.

    Parameters
    ----------
    shape : sequence of int
        (Z, Y, X) full-resolution size.
    itemsize : int
        Bytes per voxel (for the chunk size).
    voxel_size : sequence of float
        (z, y, x) voxel size, used by the default level choice.
    factors : sequence of (int, int, int), optional
        Absolute (z, y, x) factors per level, level 0 being (1, 1, 1). Default:
        :func:`propose_mipmaps`.
    chunks : (int, int, int) or sequence of them, optional
        One (z, y, x) chunk shape for every level, or one per level. Default:
        :func:`write_chunks`.

    Returns
    -------
    list of BdvLevel

    Raises
    ------
    ValueError
        For invalid factors or chunks, including a chunk depth that is not a multiple of the
        z factor of a level computed from that level.

    Examples
    --------
    >>> [lv.factors for lv in plan_levels((400, 2048, 2048), itemsize=2, voxel_size=(2, 0.65, 0.65))]
    [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    """
    full = _positive_ints("shape", shape, 3)
    if factors is None:
        vz, vy, vx = (float(v) for v in voxel_size)
        info = propose_mipmaps((full[2], full[1], full[0]), (vx, vy, vz))
        levels = [(f[2], f[1], f[0]) for f in info.resolutions]
    else:
        levels = _validate_factors(factors)
    sources = loopback_sources(levels)
    shapes = [tuple(-(-n // f) for n, f in zip(full, fac)) for fac in levels]
    # chunk depth of a level must be a multiple of the z factor of each level computed from it
    z_mult = [1] * len(levels)
    for src, rel in sources[1:]:
        if src is not None:
            z_mult[src] = math.lcm(z_mult[src], rel[0])
    if chunks is None:
        chunk_list = write_chunks(shapes, z_mult, itemsize)
    else:
        chunk_list = _validate_chunks(chunks, len(levels))
        for li, (c, m) in enumerate(zip(chunk_list, z_mult)):
            if c[0] % m:
                users = [i for i, (s, r) in enumerate(sources) if s == li and c[0] % r[0]]
                raise ValueError(
                    f"chunk depth {c[0]} of level {li} is not a multiple of the z factor "
                    f"{sources[users[0]][1][0]} of level {users[0]}, which is computed from it "
                    f"(levels are streamed one chunk deep); use a depth that is a multiple of {m}"
                )
    return [
        BdvLevel(
            factors=levels[li],
            shape=shapes[li],  # type: ignore[arg-type]
            chunks=chunk_list[li],
            source=sources[li][0],
            relative=sources[li][1],
        )
        for li in range(len(levels))
    ]


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def _positive_ints(name: str, values: Sequence[int], n: int) -> tuple[int, ...]:
    try:
        out = tuple(operator.index(v) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be {n} positive integers, got {values!r}") from None
    if len(out) != n or min(out) < 1 or any(isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be {n} positive integers, got {values!r}")
    return out


def _validate_factors(factors: Sequence[Sequence[int]]) -> list[tuple[int, int, int]]:
    try:
        levels = [_positive_ints("every level's factors", f, 3) for f in factors]
    except TypeError:
        raise TypeError(f"factors must be a sequence of (z, y, x) integer triples, got {factors!r}") from None
    if not levels:
        raise ValueError("factors must list at least level 0, (1, 1, 1)")
    if levels[0] != (1, 1, 1):
        raise ValueError(f"level 0 must have factors (1, 1, 1), got {levels[0]}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"factors list a level twice: {levels}")
    return levels  # type: ignore[return-value]


def _validate_chunks(
    chunks: Sequence[int] | Sequence[Sequence[int]], nlevels: int
) -> list[tuple[int, int, int]]:
    items = list(chunks)
    if items and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        one = _positive_ints("chunks", items, 3)
        return [one] * nlevels  # type: ignore[list-item]
    per_level = [_positive_ints("chunks of every level", c, 3) for c in items]
    if len(per_level) == 1:
        return per_level * nlevels  # type: ignore[return-value]
    if len(per_level) != nlevels:
        raise ValueError(f"chunks lists {len(per_level)} shapes for {nlevels} levels")
    return per_level  # type: ignore[return-value]
