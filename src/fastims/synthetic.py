"""Realistic synthetic camera frames, shared by ``fastims simulate``, the benchmarks and tests.

Frames look like fluorescence microscopy: bright 3-D Gaussian blobs on a smooth background,
Poisson-like shot noise and a camera dark offset. They compress like real data (neither
random bytes nor zeros), and they are seeded, so every run sees the same bytes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SyntheticCamera", "camera_stack"]

_SUPPORTED = ("uint8", "uint16", "uint32", "float32")


class SyntheticCamera:
    """A seeded synthetic camera that returns (Y, X) frames of a 3-D sample.

    Frames are computed on demand from analytic blobs plus shot noise, so a long acquisition
    does not hold its whole stack in memory. Every (plane, channel) gets a noise field of its
    own, as from a real camera: frames that shared one would repeat byte patterns from plane
    to plane, which codecs find within a chunk and which flatters their ratio.

    Parameters
    ----------
    size : tuple of int
        Frame size (Y, X).
    depth : int
        Number of planes of the imaged sample (the z extent blobs are spread over).
    dtype : str or numpy.dtype
        uint8, uint16, uint32 or float32.
    channels : int
        Number of channels; each has its own blobs.
    seed : int
        Seed of every random choice.
    noise_bank : int or None
        None (default): a noise field drawn for each frame from a generator seeded by
        ``(seed, z, c)`` (~45 ms for 2048 x 2048). An int: that many fields drawn once and
        cycled through (faster frames, but frames then repeat noise: tests only).

    Examples
    --------
    >>> cam = SyntheticCamera((64, 96), depth=8, dtype="uint16", seed=1)
    >>> frame = cam.frame(3)
    >>> frame.shape, frame.dtype.name, bool(frame.min() >= 90)
    ((64, 96), 'uint16', True)
    """

    def __init__(
        self,
        size: tuple[int, int],
        *,
        depth: int,
        dtype: str | np.dtype = "uint16",
        channels: int = 1,
        seed: int = 0,
        noise_bank: int | None = None,
    ) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in _SUPPORTED:
            raise TypeError(f"dtype must be one of {_SUPPORTED}, got {self.dtype.name}")
        ny, nx = (int(v) for v in size)
        if ny < 1 or nx < 1 or depth < 1 or channels < 1:
            raise ValueError("size, depth and channels must be positive")
        self.size = (ny, nx)
        self.depth = int(depth)
        self.channels = int(channels)
        rng = np.random.default_rng(seed)
        # scale so that the brightest blobs use most of the dtype's range
        self._gain = {"uint8": 0.05, "uint16": 1.0, "uint32": 16.0, "float32": 1e-3}[self.dtype.name]
        self._offset = {"uint8": 100.0, "uint16": 100.0, "uint32": 100.0, "float32": 100.0}[self.dtype.name]
        yy = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[:, None]
        xx = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[None, :]
        self._background = (60.0 + 40.0 * np.exp(-(xx**2 + yy**2))).astype(np.float32)
        nblobs = max(4, int(ny * nx * self.depth / 4e6))
        self._blobs = []
        for _ in range(self.channels):
            blobs = np.empty(nblobs, dtype=[("z", "f4"), ("y", "f4"), ("x", "f4"), ("s", "f4"),
                                            ("sz", "f4"), ("a", "f4")])
            blobs["z"] = rng.uniform(0, self.depth, nblobs)
            blobs["y"] = rng.uniform(0, ny, nblobs)
            blobs["x"] = rng.uniform(0, nx, nblobs)
            blobs["s"] = rng.uniform(3.0, max(4.0, min(ny, nx) / 40.0), nblobs)
            blobs["sz"] = rng.uniform(1.0, max(1.5, self.depth / 16.0), nblobs)
            blobs["a"] = rng.gamma(2.0, 700.0, nblobs)
            self._blobs.append(blobs)
        # unit-variance noise, scaled by sqrt(signal) per frame (shot noise)
        self._seed = seed
        if noise_bank is not None and (isinstance(noise_bank, bool) or int(noise_bank) < 1):
            raise ValueError(f"noise_bank must be None or a positive int, got {noise_bank!r}")
        self._noise = None if noise_bank is None else rng.standard_normal(
            (int(noise_bank), ny, nx), dtype=np.float32)
        self._signal = np.empty((ny, nx), dtype=np.float32)
        self._noise_buf = np.empty((ny, nx), dtype=np.float32)

    def frame(self, z: int, c: int = 0, *, out: np.ndarray | None = None) -> np.ndarray:
        """Return the frame of plane `z`, channel `c` (a new array unless `out` is given)."""
        ny, nx = self.size
        sig = self._signal
        np.copyto(sig, self._background)
        for b in self._blobs[c]:
            wz = np.exp(-0.5 * ((z - b["z"]) / b["sz"]) ** 2)
            if wz < 1e-3:
                continue
            r = int(3 * b["s"]) + 1
            y0, y1 = max(0, int(b["y"]) - r), min(ny, int(b["y"]) + r + 1)
            x0, x1 = max(0, int(b["x"]) - r), min(nx, int(b["x"]) + r + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            gy = np.exp(-0.5 * ((np.arange(y0, y1, dtype=np.float32) - b["y"]) / b["s"]) ** 2)
            gx = np.exp(-0.5 * ((np.arange(x0, x1, dtype=np.float32) - b["x"]) / b["s"]) ** 2)
            sig[y0:y1, x0:x1] += (b["a"] * wz) * gy[:, None] * gx[None, :]
        if self._noise is None:
            noise = self._noise_buf
            # the trailing 1 keeps this stream apart from default_rng(seed), which placed the blobs
            np.random.default_rng([self._seed, z, c, 1]).standard_normal(dtype=np.float32, out=noise)
        else:
            noise = self._noise[(z * 7 + c * 3) % len(self._noise)]
        val = sig + np.sqrt(sig) * noise
        val *= self._gain
        val += self._offset * (self._gain if self.dtype.kind == "f" else 1.0)
        if out is None:
            out = np.empty((ny, nx), dtype=self.dtype)
        if self.dtype.kind == "f":
            np.copyto(out, val, casting="unsafe")
        else:
            info = np.iinfo(self.dtype)
            np.clip(val, 0, info.max, out=val)
            np.copyto(out, val, casting="unsafe")
        return out

    def stack(self, c: int = 0) -> np.ndarray:
        """Return the whole (Z, Y, X) stack of channel `c`."""
        out = np.empty((self.depth, *self.size), dtype=self.dtype)
        for z in range(self.depth):
            self.frame(z, c, out=out[z])
        return out


def camera_stack(
    shape: tuple[int, ...], dtype: str | np.dtype = "uint16", *, seed: int = 0
) -> np.ndarray:
    """Return a synthetic (Z, Y, X) or (C, Z, Y, X) camera stack.

    Examples
    --------
    >>> camera_stack((4, 32, 48), "uint8", seed=2).shape
    (4, 32, 48)
    """
    if len(shape) not in (3, 4):
        raise ValueError(f"shape must be (Z, Y, X) or (C, Z, Y, X), got {shape}")
    nc = shape[0] if len(shape) == 4 else 1
    z, y, x = shape[-3:]
    cam = SyntheticCamera((y, x), depth=z, dtype=dtype, channels=nc, seed=seed)
    stacks = np.stack([cam.stack(c) for c in range(nc)])
    return stacks if len(shape) == 4 else stacks[0]
