"""BigDataViewer's level rule (ProposeMipmaps), BDV's loopback heuristic and fastims' write chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastims.bdv.layout import (
    loopback_sources,
    plan_levels,
    propose_mipmaps,
    suggest_pot_block_size,
    write_chunks,
)

# spec/bdv.md section 3.1: (x, y, z) size, voxel size -> resolutions, subdivisions
SPEC_TABLE = [
    ((2048, 2048, 400), (0.65, 0.65, 2.0),
     [[1, 1, 1], [2, 2, 1], [4, 4, 2], [8, 8, 4]], [[32, 16, 8]] + [[16, 16, 16]] * 3),
    ((2048, 2048, 1000), (1, 1, 1),
     [[1, 1, 1], [2, 2, 2], [4, 4, 4], [8, 8, 8]], [[16, 16, 16]] * 4),
    ((2304, 2304, 500), (0.406, 0.406, 1.0),
     [[1, 1, 1], [2, 2, 1], [4, 4, 2], [8, 8, 4], [16, 16, 8]], [[32, 16, 8]] + [[16, 16, 16]] * 4),
    ((2048, 2048, 615), (3.26, 3.26, 10),
     [[1, 1, 1], [2, 2, 1], [4, 4, 2], [8, 8, 4]], [[32, 16, 8]] + [[16, 16, 16]] * 3),
]


@pytest.mark.parametrize(("size", "voxel", "resolutions", "subdivisions"), SPEC_TABLE)
def test_propose_mipmaps_reproduces_spec_table(size, voxel, resolutions, subdivisions):
    info = propose_mipmaps(size, voxel)
    assert [list(r) for r in info.resolutions] == resolutions
    assert [list(s) for s in info.subdivisions] == subdivisions


def _fixture_tables(h5_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(h5_path, "r") as f:
        return f["s00/resolutions"][()], f["s00/subdivisions"][()], f["t00000/s00/0/cells"].shape


@pytest.mark.parametrize(
    ("name", "voxel"),
    [("pybdv/example", (1.0, 1.0, 1.0)), ("mri-stack/mri-stack", (1.0, 1.0, 10.0))],
)
def test_propose_mipmaps_reproduces_real_bdv_files(fixtures_dir, name, voxel):
    # voxel sizes are the fixtures' XML <voxelSize> values (x, y, z)
    res, sub, shape = _fixture_tables(fixtures_dir / "bdv" / f"{name}.h5")
    info = propose_mipmaps(tuple(reversed(shape)), voxel)
    np.testing.assert_array_equal(np.array(info.resolutions), res)
    np.testing.assert_array_equal(np.array(info.subdivisions), sub)


def test_suggest_block_respects_size_and_budget():
    assert suggest_pot_block_size((1.0, 1.0, 1.0)) == (16, 16, 16)
    # a 1-plane image spends no bit on z; the z bits go to x first
    assert suggest_pot_block_size((1.0, 1.0, 1.0), (580, 397, 1)) == (64, 64, 1)
    # a 3-plane level caps z at 4
    block = suggest_pot_block_size((1.0, 1.0, 1.0), (1000, 1000, 3))
    assert block[2] == 4 and math.prod(block) <= 4096
    for vox in [(1, 1, 1), (0.3, 0.3, 1.7), (2.0, 1.0, 5.0)]:
        b = suggest_pot_block_size(vox, (4096, 4096, 4096), 4096)
        assert math.prod(b) == 4096
        assert all(v & (v - 1) == 0 for v in b)


def test_propose_mipmaps_stops_at_256_and_halves_fine_axes_first():
    info = propose_mipmaps((257, 100, 3))
    assert info.resolutions == ((1, 1, 1), (2, 2, 2))
    assert propose_mipmaps((256, 256, 256)).resolutions == ((1, 1, 1),)
    # z voxels 4x larger: z is halved once its relative voxel size is <= 2
    info = propose_mipmaps((4096, 4096, 100), (1.0, 1.0, 4.0))
    assert info.resolutions[:4] == ((1, 1, 1), (2, 2, 1), (4, 4, 2), (8, 8, 4))
    # when no axis qualifies (x, y too coarse, z a single plane) BDV doubles every axis
    assert propose_mipmaps((4096, 4096, 1)).resolutions == (
        (1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 8, 2), (16, 16, 4)
    )


def test_loopback_follows_bdv_heuristic():
    # BDV reads a previous level back only when it saves >= 8x pixel accesses
    assert loopback_sources([(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]) == [
        (None, (1, 1, 1)), (0, (1, 2, 2)), (0, (2, 4, 4)), (2, (2, 2, 2))
    ]
    assert loopback_sources([(1, 1, 1), (2, 2, 2), (4, 4, 4)]) == [
        (None, (1, 1, 1)), (0, (2, 2, 2)), (1, (2, 2, 2))
    ]
    # factors that are not multiples of the previous level come from full resolution
    assert loopback_sources([(1, 1, 1), (2, 2, 2), (3, 3, 3), (6, 6, 6)]) == [
        (None, (1, 1, 1)), (0, (2, 2, 2)), (0, (3, 3, 3)), (2, (2, 2, 2))
    ]


def test_write_chunks_are_write_sized_and_z_aligned():
    chunks = write_chunks([(400, 2048, 2048), (400, 1024, 1024), (200, 512, 512)], [2, 1, 4], 2)
    for c in chunks:
        assert c[1:] == (256, 256)
        assert 0.5 * 2**20 <= math.prod(c) * 2 <= 2**20
    assert chunks[0][0] % 2 == 0 and chunks[2][0] % 4 == 0
    # small levels: chunks no larger than the level (rounded up to a power of two in z)
    assert write_chunks([(3, 40, 50)], [1], 2) == [(4, 40, 50)]
    assert write_chunks([(1, 99, 145)], [1], 2) == [(1, 99, 145)]
    # a z factor of 8 forces a depth of 8 even for a 1-plane level
    assert write_chunks([(1, 64, 64)], [8], 2)[0][0] == 8


def test_plan_levels_default_and_explicit():
    levels = plan_levels((400, 2048, 2048), itemsize=2, voxel_size=(2.0, 0.65, 0.65))
    assert [lv.factors for lv in levels] == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    assert [lv.shape for lv in levels] == [(400, 2048, 2048), (400, 1024, 1024), (200, 512, 512), (100, 256, 256)]
    assert [lv.source for lv in levels] == [None, 0, 0, 2]
    for lv in levels[1:]:
        assert levels[lv.source].chunks[0] % lv.relative[0] == 0
    # ceil-sized levels
    levels = plan_levels((5, 33, 17), itemsize=1, factors=[(1, 1, 1), (2, 4, 4)])
    assert levels[1].shape == (3, 9, 5)
    one = plan_levels((10, 10, 10), itemsize=2, factors=[(1, 1, 1), (2, 2, 2)], chunks=(4, 8, 8))
    assert [lv.chunks for lv in one] == [(4, 8, 8), (4, 8, 8)]


@pytest.mark.parametrize(
    ("factors", "chunks", "match"),
    [
        ([(1, 1, 1), (2, 2, 2)], (3, 64, 64), "not a multiple of the z factor 2"),
        ([(2, 2, 2)], None, "level 0 must have factors"),
        ([(1, 1, 1), (1, 1, 1)], None, "twice"),
        ([(1, 1, 1), (0, 2, 2)], None, "positive integers"),
        ([(1, 1, 1)], (4, 64), "3 positive integers"),
        ([(1, 1, 1), (2, 2, 2)], [(4, 8, 8)] * 3, "3 shapes for 2 levels"),
    ],
)
def test_plan_levels_rejects_bad_options(factors, chunks, match):
    with pytest.raises(ValueError, match=match):
        plan_levels((10, 10, 10), itemsize=2, factors=factors, chunks=chunks)
