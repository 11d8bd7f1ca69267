"""Pure-NumPy twins of the compiled kernels: same names, same signatures, same results.

They are the test oracle and the fallback when ``FASTIMS_KERNELS=reference``.
"""

from fastims._reference.chunks import (
    gather_chunk,
    gather_row,
    lz4_frame,
    lz4_frames,
    lz4_frames_in_place,
    shuffle,
    stream_copy,
    unshuffle,
)
from fastims._reference.deflate import huffman_block
from fastims._reference.downsample import downsample_bdv, downsample_imaris
from fastims._reference.histogram import hist_binned, hist_u8, hist_u16, minmax_finite

__all__ = [
    "downsample_bdv",
    "downsample_imaris",
    "gather_chunk",
    "gather_row",
    "hist_binned",
    "hist_u8",
    "hist_u16",
    "huffman_block",
    "lz4_frame",
    "lz4_frames",
    "lz4_frames_in_place",
    "minmax_finite",
    "shuffle",
    "stream_copy",
    "unshuffle",
]
