"""Type stub for the compiled module :mod:`fastims._ext._deflate`."""

import numpy as np
import numpy.typing as npt

def huffman_block(src: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8], final: bool = False) -> int:
    """Deflate `src` as one literals-only dynamic-Huffman block into `out` (followed by an
    empty stored block unless `final`); bytes written, or -1 when `out` is too small."""
