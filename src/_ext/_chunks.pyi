"""Type stub for the compiled module :mod:`fastims._ext._chunks`."""

from typing import TypeVar

import numpy as np
import numpy.typing as npt

_Pixel = TypeVar("_Pixel", np.uint8, np.uint16, np.uint32, np.uint64, np.float32)

def gather_chunk(
    src: npt.NDArray[_Pixel], z0: int, y0: int, x0: int, out: npt.NDArray[_Pixel]
) -> None:
    """Copy ``src[z0:z0+cz, y0:y0+cy, x0:x0+cx]`` (C-contiguous 3-D) into C-contiguous `out`
    of shape (cz, cy, cx) and the same dtype, writing zeros where the chunk lies beyond `src`."""

def gather_row(
    parts: list[npt.NDArray[np.uint8] | None], g: int, depth: int, y0: int, x0: int, out: npt.NDArray[np.uint8],
    itemsize: int = 1,
) -> None:
    """Fill `out` (n, cz, cy, cxb) uint8 (each ``out[i]`` C-contiguous) with the n chunks at row `y0`, byte `x0` onwards, of a
    slab held as byte parts (g', Y, Xb) of `g` planes (None or planes beyond `depth` read as
    zeros), zero-padded; each chunk byte-shuffled (HDF5 filter 2) when ``itemsize > 1``."""

def stream_copy(dst: npt.NDArray[np.uint8], src: npt.NDArray[np.uint8]) -> None:
    """Copy 1-D uint8 `src` into `dst` of the same length with streaming (non-temporal) stores."""

def shuffle(src: npt.NDArray[np.uint8], itemsize: int, out: npt.NDArray[np.uint8]) -> None:
    """HDF5 byte-shuffle (filter 2) of 1-D uint8 `src` into ``out[:len(src)]``."""

def unshuffle(src: npt.NDArray[np.uint8], itemsize: int, out: npt.NDArray[np.uint8]) -> None:
    """Inverse of :func:`shuffle` into ``out[:len(src)]``."""

def lz4_frame(
    src: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8], compress: int, acceleration: int = 1, planes: int = 1
) -> int:
    """Write the one-block HDF5-LZ4 frame of `src` into `out` (>= 16 + n + n//255 + 16 bytes,
    n//255 + 2 more with planes > 1) with liblz4's ``LZ4_compress_fast`` at address
    `compress`; leading byte planes of noise become literals; return the frame length."""

def lz4_frames(
    src: npt.NDArray[np.uint8], chunk_bytes: int, itemsize: int, scratch: npt.NDArray[np.uint8],
    compress: int, out: npt.NDArray[np.uint8], stride: int, sizes: npt.NDArray[np.int64],
    acceleration: int = 1,
    planes: int = 1,
) -> None:
    """HDF5-LZ4 frames of ``len(sizes)`` consecutive chunks (byte-shuffled first when
    ``itemsize > 1``) at ``out[i * stride]``; frame lengths into `sizes`."""

def lz4_frames_in_place(
    buf: npt.NDArray[np.uint8], offset: int, chunk_bytes: int, stride: int, scratch: npt.NDArray[np.uint8],
    compress: int, sizes: npt.NDArray[np.int64], starts: npt.NDArray[np.int64], acceleration: int = 1,
    planes: int = 1,
) -> None:
    """HDF5-LZ4 frames of the chunks at ``buf[i * stride + offset:][:chunk_bytes]``, each
    built in its own slot (literal planes left where they lie): frame ``i`` is
    ``buf[i * stride + starts[i]:][:sizes[i]]``, equal to :func:`lz4_frame`'s."""
