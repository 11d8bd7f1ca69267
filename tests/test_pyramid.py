"""``fastims.pyramid``: the public downsampling wrapper, its rules pinned against real files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import fastims
from fastims import _dispatch
from fastims.pyramid import downsample, downsampled_shape

IMARIS_FIXTURE = "ims/imariswriter/u16_z33_y130_x260_shufflegzip2"
BDV_FIXTURE = "bdv/pybdv/example.h5"


@pytest.fixture(params=["compiled", "reference"])
def backend(request):
    """Run a test with the compiled kernels and again with the NumPy twins."""
    previous = _dispatch.backend() == "reference"
    _dispatch.use_reference(request.param == "reference")
    try:
        yield request.param
    finally:
        _dispatch.use_reference(previous)


def _attr_int(attrs, name: str) -> int:
    # ImarisWriter stores numbers as arrays of 1-character strings
    return int(b"".join(attrs[name]).decode())


# ------------------------------------------------------------------------------------------------
# real files
# ------------------------------------------------------------------------------------------------


def test_imaris_rule_reproduces_imariswriter(fixtures_dir, backend):
    src = np.load(fixtures_dir / f"{IMARIS_FIXTURE}.npy")
    with h5py.File(fixtures_dir / f"{IMARIS_FIXTURE}.ims", "r") as f:
        group = f["DataSet/ResolutionLevel 1/TimePoint 0/Channel 0"]
        size = tuple(_attr_int(group.attrs, f"ImageSize{a}") for a in "ZYX")
        want = group["Data"][: size[0], : size[1], : size[2]]
    assert src.shape == (33, 130, 260)
    assert size == downsampled_shape(src.shape, (2, 2, 2), rule="imaris") == (16, 65, 130)
    got = downsample(src, (2, 2, 2), rule="imaris")
    np.testing.assert_array_equal(got, want)


def test_imaris_rule_streams_like_imariswriter(fixtures_dir, backend):
    # the writers call the kernel on fz planes at a time; the odd last plane is dropped
    src = np.load(fixtures_dir / f"{IMARIS_FIXTURE}.npy")
    with h5py.File(fixtures_dir / f"{IMARIS_FIXTURE}.ims", "r") as f:
        want = f["DataSet/ResolutionLevel 1/TimePoint 0/Channel 0/Data"][:16, :65, :130]
    plane = np.empty((1, 65, 130), np.uint16)
    for zo in range(16):
        downsample(src[2 * zo : 2 * zo + 2], (2, 2, 2), out=plane)
        np.testing.assert_array_equal(plane[0], want[zo])


def test_bdv_rule_reproduces_bigdataviewer_export(fixtures_dir, backend):
    # written by BigDataViewer's own exporter (shipped by pybdv); even sizes and 2x2x2, where
    # every BDV version gives round-half-up of the exact mean
    with h5py.File(fixtures_dir / BDV_FIXTURE, "r") as f:
        src = f["t00000/s00/0/cells"][()]
        want = f["t00000/s00/1/cells"][()]
    got = downsample(src, (2, 2, 2), rule="bdv")
    np.testing.assert_array_equal(got, want)
    # and it differs from the truncating Imaris rule, so the test can tell them apart
    assert not np.array_equal(downsample(src, (2, 2, 2), rule="imaris"), want)


# ------------------------------------------------------------------------------------------------
# rules pinned on hand-computed examples
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_bdv_rounds_half_up_imaris_truncates(dtype, backend):
    block = np.array([[[2, 3, 1, 2, 0, 1, 4, 4]]], dtype=dtype)  # pair means 2.5 1.5 0.5 4
    assert downsample(block, (1, 1, 2), rule="bdv").tolist() == [[[3, 2, 1, 4]]]
    assert downsample(block, (1, 1, 2), rule="imaris").tolist() == [[[2, 1, 0, 4]]]


def test_float32_is_the_plain_mean(backend):
    block = np.array([[[2, 3, 1, 2]]], dtype=np.float32)
    for rule in ("imaris", "bdv"):
        got = downsample(block, (1, 1, 2), rule=rule)
        assert got.dtype == np.float32
        assert got.tolist() == [[[2.5, 1.5]]]


def test_bdv_replicates_edges(backend):
    block = np.array([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]], dtype=np.uint16)
    # X pass then Y pass, last column/row repeated:
    #   [[1 2|3 3]   x -> [[1.5 3]   y -> [[3 4.5]    round -> [[3 5]
    #    [4 5|6 6]         [4.5 6]         [7.5 9]]             [8 9]]
    #    [7 8|9 9]]        [7.5 9]]
    assert downsample(block, (1, 2, 2), rule="bdv").tolist() == [[[3, 5], [8, 9]]]
    # Imaris drops the partial row and column instead
    assert downsample(block, (1, 2, 2), rule="imaris").tolist() == [[[3]]]


def test_bdv_replicates_last_plane(backend):
    block = np.array([1, 2, 4], dtype=np.uint8).reshape(3, 1, 1)
    # planes (1, 2) -> 1.5 -> 2; plane 4 is paired with itself -> 4
    assert downsample(block, (2, 1, 1), rule="bdv").ravel().tolist() == [2, 4]
    assert downsample(block[2:], (2, 1, 1), rule="bdv").ravel().tolist() == [4]
    assert downsample(block, (2, 1, 1), rule="imaris").ravel().tolist() == [1]


def test_bdv_factor_three_weights_the_replicated_edge(backend):
    block = np.array([[[0, 0, 1, 4, 8]]], dtype=np.uint16)
    # boxes [0 0 1] -> 0.33 -> 0; [4 8 8] -> 6.67 -> 7 (the mean of the real voxels would be 6)
    assert downsample(block, (1, 1, 3), rule="bdv").tolist() == [[[0, 7]]]


def test_bdv_uint32_uses_double(backend):
    top = np.iinfo(np.uint32).max
    block = np.array([[[top - 1, top, 16777217, 16777218]]], dtype=np.uint32)
    # float32 could not even hold 16777217; in float64 the means are exact: x.5 rounds up
    assert downsample(block, (1, 1, 2), rule="bdv").tolist() == [[[top, 16777218]]]


def test_imaris_uint32_sums_in_float32(backend):
    block = np.array([[[16777217, 16777217]]], dtype=np.uint32)
    # 2**24 + 1 is not a float32: each converts to 2**24, so the "mean" is 2**24, not 2**24 + 1
    assert downsample(block, (1, 1, 2), rule="imaris").tolist() == [[[16777216]]]


@pytest.mark.parametrize("rule", ["imaris", "bdv"])
def test_downsample_by_one_is_identity(rule, backend, rng):
    block = rng.integers(0, 2**16, size=(3, 5, 7), dtype=np.uint16)
    np.testing.assert_array_equal(downsample(block, (1, 1, 1), rule=rule), block)


# ------------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "factors", "imaris", "bdv"),
    [
        ((33, 130, 260), (2, 2, 2), (16, 65, 130), (17, 65, 130)),
        ((1, 7, 9), (1, 2, 4), (1, 3, 2), (1, 4, 3)),
        ((5, 5, 5), (8, 8, 8), (0, 0, 0), (1, 1, 1)),
        ((27, 226, 186), (2, 2, 2), (13, 113, 93), (14, 113, 93)),
    ],
)
def test_downsampled_shape(shape, factors, imaris, bdv):
    assert downsampled_shape(shape, factors, rule="imaris") == imaris
    assert downsampled_shape(shape, factors, rule="bdv") == bdv
    assert downsampled_shape(shape, factors) == imaris  # the default rule


@pytest.mark.parametrize("rule", ["imaris", "bdv"])
def test_output_shape_matches_downsampled_shape(rule, rng):
    block = rng.integers(0, 255, size=(7, 13, 29), dtype=np.uint8)
    for factors in [(1, 2, 2), (2, 2, 2), (3, 4, 5), (7, 13, 29)]:
        got = downsample(block, factors, rule=rule)
        assert got.shape == downsampled_shape(block.shape, factors, rule=rule)


def test_downsampled_shape_rejects_bad_input():
    with pytest.raises(ValueError):
        downsampled_shape((4, 4), (1, 2, 2))
    with pytest.raises(ValueError):
        downsampled_shape((4, -1, 4), (1, 2, 2))
    with pytest.raises(ValueError):
        downsampled_shape((4, 4.5, 4), (1, 2, 2))
    with pytest.raises(ValueError):
        downsampled_shape((4, 4, 4), (1, 0, 2))
    with pytest.raises(ValueError):
        downsampled_shape((4, 4, 4), (1, 2, 2), rule="mean")


# ------------------------------------------------------------------------------------------------
# the wrapper's input handling and validation
# ------------------------------------------------------------------------------------------------


def test_public_name_is_exported():
    assert fastims.downsample is downsample


@pytest.mark.parametrize("rule", ["imaris", "bdv"])
def test_two_d_block_gives_two_d_result(rule, backend, rng):
    plane = rng.integers(0, 4096, size=(9, 11), dtype=np.uint16)
    got = downsample(plane, (1, 2, 2), rule=rule)
    assert got.ndim == 2
    np.testing.assert_array_equal(got, downsample(plane[np.newaxis], (1, 2, 2), rule=rule)[0])


@pytest.mark.parametrize("rule", ["imaris", "bdv"])
def test_non_contiguous_and_byteswapped_input(rule, backend, rng):
    big = rng.integers(0, 2**16, size=(6, 20, 30), dtype=np.uint16)
    view = big[:, ::2, 1::3]
    want = downsample(np.ascontiguousarray(view), (2, 2, 2), rule=rule)
    np.testing.assert_array_equal(downsample(view, (2, 2, 2), rule=rule), want)
    swapped = np.ascontiguousarray(view).astype(">u2")
    got = downsample(swapped, (2, 2, 2), rule=rule)
    assert got.dtype == np.dtype(np.uint16)
    np.testing.assert_array_equal(got, want)


def test_list_of_python_ints_is_rejected():
    # a Python list of ints becomes int64, which the kernels do not support
    with pytest.raises(TypeError, match="unsupported dtype"):
        downsample([[[1, 2], [3, 4]]], (1, 2, 2))


def test_out_is_filled_and_returned(backend, rng):
    block = rng.integers(0, 2**16, size=(4, 8, 8), dtype=np.uint16)
    out = np.zeros((2, 4, 4), np.uint16)
    assert downsample(block, (2, 2, 2), out=out) is out
    np.testing.assert_array_equal(out, downsample(block, (2, 2, 2)))
    plane_out = np.zeros((4, 4), np.uint16)
    assert downsample(block[0], (1, 2, 2), out=plane_out) is plane_out


@pytest.mark.parametrize("block", [np.zeros(4, np.uint16), np.zeros((1, 2, 2, 2), np.uint16)])
def test_rejects_wrong_ndim(block):
    with pytest.raises(ValueError, match="2-D"):
        downsample(block, (1, 1, 1))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float64, np.uint64, np.bool_])
def test_rejects_unsupported_dtype(dtype):
    with pytest.raises(TypeError, match="unsupported dtype"):
        downsample(np.zeros((2, 2, 2), dtype), (1, 1, 1))


@pytest.mark.parametrize(
    "factors",
    [(2, 2), (2, 2, 2, 2), (0, 1, 1), (1, -2, 1), (1.5, 1, 1), ("2", 1, 1), (True, 1, 1), 2],
)
def test_rejects_bad_factors(factors):
    with pytest.raises(ValueError, match="factors"):
        downsample(np.zeros((2, 2, 2), np.uint16), factors)


def test_accepts_numpy_integer_factors():
    block = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    assert downsample(block, np.array([2, 2, 2])).tolist() == [[[3]]]


def test_rejects_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        downsample(np.zeros((2, 2, 2), np.uint16), (1, 1, 1), rule="mean")


def test_imaris_factor_larger_than_axis_raises():
    with pytest.raises(ValueError, match="empty"):
        downsample(np.zeros((1, 8, 8), np.uint16), (2, 2, 2), rule="imaris")
    # bdv keeps the partial box, so the same call is fine there
    assert downsample(np.zeros((1, 8, 8), np.uint16), (2, 2, 2), rule="bdv").shape == (1, 4, 4)


def test_empty_block_raises():
    with pytest.raises(ValueError, match="empty"):
        downsample(np.zeros((0, 8, 8), np.uint16), (1, 2, 2), rule="bdv")


def test_rejects_bad_out():
    block = np.zeros((4, 8, 8), np.uint16)
    with pytest.raises(ValueError, match="shape"):
        downsample(block, (2, 2, 2), out=np.zeros((2, 4, 5), np.uint16))
    with pytest.raises(ValueError, match="shape"):
        downsample(block, (2, 2, 2), out=np.zeros((2, 16), np.uint16))
    with pytest.raises(TypeError, match="dtype"):
        downsample(block, (2, 2, 2), out=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(TypeError, match="ndarray"):
        downsample(block, (2, 2, 2), out=[[[0] * 4] * 4] * 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        downsample(block, (2, 2, 2), out=np.zeros((2, 4, 8), np.uint16)[:, :, ::2])
    readonly = np.zeros((2, 4, 4), np.uint16)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        downsample(block, (2, 2, 2), out=readonly)
    with pytest.raises(ValueError, match="overlap"):
        downsample(block, (2, 2, 2), out=block.reshape(-1)[:32].reshape(2, 4, 4))
