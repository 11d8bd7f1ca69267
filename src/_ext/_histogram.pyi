"""Type stub for the compiled module :mod:`fastims._ext._histogram`."""

import numpy as np
import numpy.typing as npt

def hist_u8(src: npt.NDArray[np.uint8], counts: npt.NDArray[np.uint64]) -> None:
    """Add the bincount of 1-D C-contiguous uint8 `src` into uint64[256] `counts`, in place."""

def hist_u16(src: npt.NDArray[np.uint16], counts: npt.NDArray[np.uint64]) -> None:
    """Add the bincount of 1-D C-contiguous uint16 `src` into uint64[65536] `counts`, in place."""
