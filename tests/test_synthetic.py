"""The synthetic camera shared by `fastims simulate`, `fastims bench` and the benchmarks."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fastims.synthetic import SyntheticCamera, camera_stack


def test_frames_are_seeded():
    a = SyntheticCamera((64, 96), depth=16, seed=3)
    b = SyntheticCamera((64, 96), depth=16, seed=3)
    np.testing.assert_array_equal(a.frame(5, 0), b.frame(5, 0))
    assert not np.array_equal(a.frame(5), SyntheticCamera((64, 96), depth=16, seed=4).frame(5))


@pytest.mark.parametrize("stride", [1, 4, 8, 16])
def test_no_noise_shared_between_frames(stride):
    # benchmarks take every 8th plane; frames that shared a noise field compressed together
    # far better than apart (a 256-frame .ims stack: 2.32x instead of 1.64x with shuffle+LZ4)
    cam = SyntheticCamera((128, 128), depth=64, seed=1)
    f0, f1 = cam.frame(8), cam.frame(8 + stride)
    assert np.mean(f0 == f1) < 0.2
    apart = len(zlib.compress(f0.tobytes(), 6)) + len(zlib.compress(f1.tobytes(), 6))
    together = len(zlib.compress(f0.tobytes() + f1.tobytes(), 6))
    assert together > 0.95 * apart


def test_channels_differ():
    cam = SyntheticCamera((64, 64), depth=8, channels=2, seed=1)
    assert np.mean(cam.frame(3, 0) == cam.frame(3, 1)) < 0.2


def test_noise_bank_cycles():
    cam = SyntheticCamera((32, 32), depth=32, seed=1, noise_bank=2)
    stack = cam.stack()
    assert stack.shape == (32, 32, 32) and stack.dtype == np.uint16
    with pytest.raises(ValueError, match="noise_bank"):
        SyntheticCamera((32, 32), depth=4, noise_bank=0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_camera_stack_like_real_data(dtype):
    data = camera_stack((2, 4, 64, 64), dtype, seed=0)
    assert data.shape == (2, 4, 64, 64) and data.dtype == np.dtype(dtype)
    ratio = data.nbytes / len(zlib.compress(data.tobytes(), 1))
    assert 1.1 < ratio < 6  # neither random bytes nor constant
