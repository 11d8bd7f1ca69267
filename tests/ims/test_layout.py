"""ImarisWriter's pyramid and chunk layout (``fastims.ims.layout``).

The expected values are ImarisWriter's own: the 17 rows of
``shared/spec/imaris-layout.md`` (computed by its GetOptimalImagePyramid and
GetOptimalBlockSizes), the examples of ``shared/spec/imaris.md`` §10 (files it wrote),
and the chunk shapes stored in two real files it wrote.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastims.ims import layout
from fastims.ims.layout import BLOCK_BYTES, ImsLevel, imaris_levels

_DTYPE_OF_BYTES = {1: "uint8", 2: "uint16", 4: "float32"}


_Vec3 = tuple[int, int, int]
_Stored = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _xyz(text: str) -> list[tuple[int, ...]]:
    """'2048×2048×100 → 1024×1024×100' -> [(2048, 2048, 100), (1024, 1024, 100)]."""
    return [tuple(int(v) for v in part.split("×")) for part in text.split(" → ")]


# imaris-layout.md, verbatim (X×Y×Z): image, T, bytes, force Z=1, level sizes, chunks.
IMARISWRITER_TABLE = [
    ("128×128×1", 1, 2, False, "128×128×1", "128×128×1"),
    ("1024×1024×1", 1, 2, False, "1024×1024×1 → 512×512×1", "1024×512×1 → 512×512×1"),
    (
        "10000×8000×1", 1, 2, False,
        "10000×8000×1 → 5000×4000×1 → 2500×2000×1 → 1250×1000×1 → 625×500×1",
        "1024×512×1 → 512×1024×1 → 512×1024×1 → 512×1024×1 → 1024×512×1",
    ),
    (
        "2048×2048×100", 1, 1, False,
        "2048×2048×100 → 1024×1024×100 → 512×512×100 → 256×256×50 → 128×128×25",
        "256×256×16 → 256×256×16 → 256×256×16 → 128×128×64 → 128×128×32",
    ),
    (
        "2048×2048×100", 1, 2, False,
        "2048×2048×100 → 1024×1024×100 → 512×512×100 → 256×256×50 → 128×128×25",
        "256×256×8 → 256×256×8 → 128×128×32 → 128×128×32 → 128×128×32",
    ),
    (
        "2048×2048×100", 1, 4, False,
        "2048×2048×100 → 1024×1024×100 → 512×512×100 → 256×256×50 → 128×128×25 → 64×64×12",
        "256×256×4 → 128×128×16 → 128×128×16 → 128×128×16 → 128×128×16 → 64×64×16",
    ),
    (
        "2048×2048×128", 1, 2, False,
        "2048×2048×128 → 1024×1024×128 → 512×512×64 → 256×256×32 → 128×128×16",
        "256×256×8 → 128×128×32 → 128×128×32 → 128×128×32 → 128×128×16",
    ),
    (
        "2048×2048×1000", 1, 2, False,
        "2048×2048×1000 → 1024×1024×500 → 512×512×250 → 256×256×125 → 128×128×62 → 64×64×31",
        "128×128×32 → 128×128×32 → 128×128×32 → 128×128×32 → 128×128×32 → 64×64×32",
    ),
    (
        "2304×2304×500", 1, 2, False,
        "2304×2304×500 → 1152×1152×250 → 576×576×125 → 288×288×62 → 144×144×31 → 72×72×15",
        "128×128×32 → 128×128×32 → 128×128×32 → 128×128×32 → 128×128×32 → 128×128×16",
    ),
    (
        "2048×2048×128", 10, 2, False,
        "2048×2048×128 → 1024×1024×128 → 512×512×64 → 256×256×32 → 128×128×16",
        "256×256×8 → 128×128×32 → 128×128×32 → 128×128×32 → 128×128×16",
    ),
    (
        "2048×2048×128", 100, 2, False,
        "2048×2048×128 → 1024×1024×128 → 512×512×64 → 256×256×32 → 128×128×16",
        "256×256×8 → 128×128×32 → 128×128×32 → 128×128×32 → 128×128×16",
    ),
    (
        "512×512×64", 1000, 2, False,
        "512×512×64 → 256×256×32 → 128×128×16",
        "128×128×32 → 128×128×32 → 128×128×16",
    ),
    (
        "34664×22043×23", 1, 2, False,
        "34664×22043×23 → 17332×11021×23 → 8666×5510×23 → 4333×2755×23 → 2166×1377×23"
        " → 1083×688×23 → 541×344×23 → 270×172×23 → 135×86×11",
        "256×256×8 → 256×256×8 → 256×256×8 → 256×256×8 → 256×256×8 → 256×256×8"
        " → 128×128×32 → 128×128×32 → 128×128×16",
    ),
    (
        "4096×4096×1", 1, 1, False,
        "4096×4096×1 → 2048×2048×1 → 1024×1024×1",
        "1024×1024×1 → 1024×1024×1 → 1024×1024×1",
    ),
    (
        "100×100×10000", 1, 2, False,
        "100×100×10000 → 100×100×5000 → 50×50×2500 → 25×25×1250 → 12×12×625",
        "16×16×2048 → 16×16×2048 → 16×16×2048 → 16×16×2048 → 16×16×1024",
    ),
    (
        "5000×40×40", 1, 2, False,
        "5000×40×40 → 2500×40×40 → 1250×20×20",
        "64×64×64 → 64×64×64 → 128×128×32",
    ),
    (
        "2048×2048×128", 1, 2, True,
        "2048×2048×128 → 1024×1024×128 → 512×512×128 → 256×256×128 → 128×128×128 → 64×64×128",
        "256×256×1 → 128×128×1 → 128×128×1 → 128×128×1 → 64×64×1 → 64×64×1",
    ),
]


def _row_id(row: tuple) -> str:
    image, t, nbytes, z1, _, _ = row
    return f"{image}-T{t}-{nbytes}B" + ("-z1" if z1 else "")


@pytest.mark.parametrize("row", IMARISWRITER_TABLE, ids=[_row_id(r) for r in IMARISWRITER_TABLE])
def test_imariswriter_table(row: tuple) -> None:
    image, ntime, nbytes, force_z1, sizes, chunks = row
    (x, y, z), = _xyz(image)
    levels = imaris_levels(
        (z, y, x), _DTYPE_OF_BYTES[nbytes], ntimepoints=ntime, force_z1=force_z1
    )
    assert [lv.shape[::-1] for lv in levels] == _xyz(sizes)
    assert [lv.chunks[::-1] for lv in levels] == _xyz(chunks)


def test_table_has_all_17_rows() -> None:
    assert len(IMARISWRITER_TABLE) == 17


# imaris.md §10: (Z, Y, X), dtype, T -> [(level shape, chunks)] in (Z, Y, X), as
# observed in files ImarisWriter wrote or from its own functions.
SPEC_EXAMPLES = [
    # T enlarges the wasted-memory cost: 300×200×16 gets 256,256,8 for T=1 ...
    ((16, 200, 300), "uint16", 1,
     [((16, 200, 300), (8, 256, 256)), ((16, 100, 150), (16, 128, 128))]),
    # ... but 128,128,16 for T=2 (a bt=2 candidate passes the <= 2x waste fallback).
    ((16, 200, 300), "uint16", 2,
     [((16, 200, 300), (16, 128, 128)), ((16, 100, 150), (16, 128, 128))]),
    # Images smaller than one block: bt absorbs the remainder even for T=1.
    ((5, 64, 64), "uint16", 1, [((5, 64, 64), (8, 64, 64))]),
    ((3, 100, 100), "uint16", 1, [((3, 100, 100), (4, 128, 128))]),
    ((32, 256, 256), "uint8", 1,
     [((32, 256, 256), (16, 256, 256)), ((16, 128, 128), (16, 128, 128))]),
]


@pytest.mark.parametrize(("shape", "dtype", "ntime", "expected"), SPEC_EXAMPLES)
def test_spec_examples(shape, dtype, ntime, expected) -> None:
    levels = imaris_levels(shape, dtype, ntimepoints=ntime)
    assert [(lv.shape, lv.chunks) for lv in levels] == expected


@pytest.mark.parametrize(
    ("shape", "dtype", "nlevels"),
    [((64, 256, 256), "uint8", 2), ((5, 64, 64), "uint16", 1), ((128, 2048, 2048), "uint16", 5)],
)
def test_spec_level_counts(shape, dtype, nlevels) -> None:
    assert len(imaris_levels(shape, dtype)) == nlevels


def test_spec_z_halved_only_at_last_step() -> None:
    # 200×300×20 f32 -> 3 levels, with Z halved only at the last step (imaris.md §10.1).
    levels = imaris_levels((20, 300, 200), "float32")
    assert [lv.factors for lv in levels] == [(1, 1, 1), (1, 2, 2), (2, 2, 2)]


@pytest.mark.parametrize("shape", [(1, 1024, 1024), (1, 1000, 2000), (1, 700, 900)])
def test_2d_level0_chunk_is_wide(shape) -> None:
    # imaris.md §10.2: real 2-D files have level-0 chunk X=1024, Y=512.
    assert imaris_levels(shape, "uint16")[0].chunks == (1, 512, 1024)


# ---------------------------------------------------------------------------
# real files written by ImarisWriter
# ---------------------------------------------------------------------------


def _stored_levels(path: Path) -> list[_Stored]:
    """[(true (Z,Y,X) size, chunks, Data shape)] for every level, channel 0, time 0."""
    import h5py

    def size_attr(group: h5py.Group, name: str) -> int:
        return int(group.attrs[name].tobytes().rstrip(b"\0").decode("ascii"))

    out = []
    with h5py.File(path, "r") as f:
        nlevels = len([k for k in f["DataSet"] if k.startswith("ResolutionLevel ")])
        for r in range(nlevels):
            chan = f[f"DataSet/ResolutionLevel {r}/TimePoint 0/Channel 0"]
            size = tuple(size_attr(chan, f"ImageSize{a}") for a in "ZYX")
            out.append((size, chan["Data"].chunks, chan["Data"].shape))
    return out


def _computed(levels: list[ImsLevel]) -> list[_Stored]:
    return [(lv.shape, lv.chunks, lv.padded_shape) for lv in levels]


def test_real_imariswriter_file(fixtures_dir: Path) -> None:
    path = fixtures_dir / "ims" / "imariswriter" / "u16_z33_y130_x260_shufflegzip2.ims"
    stored = _stored_levels(path)
    assert stored == [
        ((33, 130, 260), (32, 128, 128), (64, 256, 384)),
        ((16, 65, 130), (16, 128, 128), (16, 128, 256)),
    ]
    assert _computed(imaris_levels((33, 130, 260), np.uint16)) == stored


def test_real_minimal_file(fixtures_dir: Path) -> None:
    stored = _stored_levels(fixtures_dir / "ims" / "Minimal_IMS_File.ims")
    assert stored == [((1, 128, 128), (1, 128, 128), (1, 128, 128))]
    assert _computed(imaris_levels((1, 128, 128), "uint16")) == stored


# ---------------------------------------------------------------------------
# invariants
# ---------------------------------------------------------------------------


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _can_shrink(shape: _Vec3, force_z1: bool) -> bool:
    z, y, x = shape
    zt = 1 if force_z1 else z
    return (
        (x > 1 and (10 * x) ** 2 > y * zt)
        or (y > 1 and (10 * y) ** 2 > x * zt)
        or (zt > 1 and (10 * zt) ** 2 > x * y)
    )


@settings(max_examples=60, deadline=None, database=None)
@given(
    z=st.one_of(st.just(1), st.integers(1, 40), st.integers(1, 5000)),
    y=st.integers(1, 30000),
    x=st.integers(1, 30000),
    dtype=st.sampled_from(["uint8", "uint16", "uint32", "float32"]),
    ntime=st.sampled_from([1, 2, 3, 7, 100]),
    force_z1=st.booleans(),
)
def test_invariants(z: int, y: int, x: int, dtype: str, ntime: int, force_z1: bool) -> None:
    levels = imaris_levels((z, y, x), dtype, ntimepoints=ntime, force_z1=force_z1)
    budget = BLOCK_BYTES // np.dtype(dtype).itemsize

    assert levels[0].shape == (z, y, x)
    assert levels[0].factors == (1, 1, 1)
    # Level-count rule: every level but the last is above the budget; the last is
    # within it unless no dimension may shrink any more.
    for lv in levels[:-1]:
        assert math.prod(lv.shape) > budget
    last = levels[-1]
    assert math.prod(last.shape) <= budget or not _can_shrink(last.shape, force_z1)

    for lv in levels:
        cz, cy, cx = lv.chunks
        assert all(_is_pow2(c) for c in lv.chunks)
        assert math.prod(lv.chunks) <= budget
        if z == 1:  # 2-D rules, whatever force_z1 says
            assert cz == 1 and cx <= 4 * cy and cy <= 4 * cx
        elif force_z1:  # 3-D block, flattened afterwards
            assert cz == 1 and cy == cx
        else:
            assert cy == cx and cz > 2
        padded = lv.padded_shape
        for n, c, p, g in zip(lv.shape, lv.chunks, padded, lv.chunk_grid):
            assert p % c == 0 and n <= p < n + c and g * c == p

    for prev, cur in zip(levels, levels[1:]):
        assert all(f in (1, 2) for f in cur.factors)
        assert cur.factors != (1, 1, 1)
        for p, c, f in zip(prev.shape, cur.shape, cur.factors):
            assert c == (p // 2 if f == 2 else p) and c >= 1
        if force_z1:
            assert cur.factors[0] == 1 and cur.shape[0] == z
        # One high-res chunk maps into exactly one low-res chunk.
        for pc, cc, f in zip(prev.chunks, cur.chunks, cur.factors):
            assert cc >= pc // f
            assert cc % max(pc // f, 1) == 0


def test_chunk_mapping_is_one_to_one_on_a_deep_stack() -> None:
    levels = imaris_levels((1000, 2048, 2048), "uint16")
    for prev, cur in zip(levels, levels[1:]):
        # The low-res chunk index of every high-res chunk origin is a single chunk.
        for pc, cc, f, n in zip(prev.chunks, cur.chunks, cur.factors, prev.shape):
            starts = range(0, n, pc)
            ends = [min(s + pc, n) // f for s in starts]
            for s, e in zip(starts, ends):
                if e > s // f:
                    assert (s // f) // cc == (e - 1) // cc


def test_ntimepoints_can_change_the_chunk() -> None:
    a = imaris_levels((16, 200, 300), "uint16", ntimepoints=1)[0].chunks
    b = imaris_levels((16, 200, 300), "uint16", ntimepoints=2)[0].chunks
    assert a != b


def test_force_z1_keeps_all_planes() -> None:
    levels = imaris_levels((128, 2048, 2048), "uint16", force_z1=True)
    assert {lv.shape[0] for lv in levels} == {128}
    assert {lv.chunks[0] for lv in levels} == {1}


def test_dtype_forms_and_byte_order() -> None:
    ref = imaris_levels((33, 130, 260), "uint16")
    assert imaris_levels((33, 130, 260), np.uint16) == ref
    assert imaris_levels((33, 130, 260), np.dtype(">u2")) == ref
    assert imaris_levels(np.array([33, 130, 260]), "<u2") == ref
    # float32 and uint32 have the same voxel size, hence the same layout.
    f32 = imaris_levels((100, 2048, 2048), "float32")
    assert f32 == imaris_levels((100, 2048, 2048), "uint32")


def test_padded_shape_and_grid() -> None:
    lv = ImsLevel(shape=(33, 130, 260), chunks=(32, 128, 128), factors=(1, 1, 1))
    assert lv.padded_shape == (64, 256, 384)
    assert lv.chunk_grid == (2, 2, 3)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int16", "float64", "uint64", np.int8, "bool", "complex64"])
def test_rejects_unsupported_dtype(dtype) -> None:
    with pytest.raises(TypeError, match="uint8, uint16, uint32 or float32"):
        imaris_levels((1, 10, 10), dtype)


def test_rejects_non_dtype() -> None:
    with pytest.raises(TypeError):
        imaris_levels((1, 10, 10), "not-a-dtype")


@pytest.mark.parametrize("shape", [(0, 10, 10), (1, -1, 10), (1, 10, 0)])
def test_rejects_nonpositive_sizes(shape) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        imaris_levels(shape, "uint16")


@pytest.mark.parametrize("shape", [(10, 10), (1, 1, 10, 10)])
def test_rejects_wrong_rank(shape) -> None:
    with pytest.raises(ValueError, match="3 entries"):
        imaris_levels(shape, "uint16")


@pytest.mark.parametrize("shape", [(1.0, 10, 10), (True, 10, 10), "abc", 5, None])
def test_rejects_non_integer_shape(shape) -> None:
    with pytest.raises(TypeError):
        imaris_levels(shape, "uint16")


@pytest.mark.parametrize(
    ("ntime", "exc"), [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_rejects_bad_ntimepoints(ntime, exc) -> None:
    with pytest.raises(exc):
        imaris_levels((1, 10, 10), "uint16", ntimepoints=ntime)


def test_rejects_bad_force_z1() -> None:
    with pytest.raises(TypeError, match="force_z1"):
        imaris_levels((1, 10, 10), "uint16", force_z1="yes")  # type: ignore[arg-type]


def test_keyword_only_options() -> None:
    with pytest.raises(TypeError):
        imaris_levels((1, 10, 10), "uint16", 2)  # type: ignore[misc]


# ---------------------------------------------------------------------------
# internals that the table cannot reach
# ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.integers(0, 6), min_size=0, max_size=120))
def test_libstdcxx_sort_sorts(keys: list[int]) -> None:
    order = list(range(len(keys)))
    layout._libstdcxx_sort(order, lambda a, b: keys[a] < keys[b])
    assert sorted(order) == list(range(len(keys)))
    assert [keys[i] for i in order] == sorted(keys)


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.integers(0, 20), min_size=0, max_size=60))
def test_heap_sort_path_sorts(keys: list[int]) -> None:
    # Reached by introsort only after too many bad pivots; exercise it directly.
    order = list(range(len(keys)))
    layout._heap_sort(order, 0, len(order), lambda a, b: keys[a] < keys[b])
    assert [keys[i] for i in order] == sorted(keys)


def test_libstdcxx_tie_order_picks_wide_2d_block() -> None:
    # (1024, 512) and (512, 1024) tie on every cost for a 1024×1024 image; a stable
    # sort would keep generation order and return X=512, ImarisWriter returns X=1024.
    assert layout._optimal_block(2**19, (1024, 1024, 1), 1, (1, 1, 1)) == (1024, 512, 1)


def test_paranoid_fallback_when_no_candidate() -> None:
    # No 2-D candidate has bz >= 8: ImarisWriter splits log2(budget) = 19 as 7/6/6.
    assert layout._optimal_block(2**19, (100, 100, 1), 1, (1, 1, 8)) == (128, 64, 64)
