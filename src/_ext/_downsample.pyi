"""Type stubs for the compiled block-mean downsampling kernels (``fastims._ext._downsample``).

Both kernels take a C-contiguous (Z, Y, X) ``src`` of uint8, uint16, uint32 or float32 and a
C-contiguous ``out`` of the same dtype, release the GIL, and raise ``ValueError`` when ``out``
has the wrong shape or a factor is not positive. The pure-NumPy twins in
:mod:`fastims._reference.downsample` define the arithmetic.
"""

import numpy as np
import numpy.typing as npt

def downsample_imaris(
    src: npt.NDArray[np.uint8 | np.uint16 | np.uint32 | np.float32],
    out: npt.NDArray[np.uint8 | np.uint16 | np.uint32 | np.float32],
    fz: int,
    fy: int,
    fx: int,
) -> None:
    """ImarisWriter's rule: ``out.shape == (Z // fz, Y // fy, X // fx)``, truncating mean."""

def downsample_bdv(
    src: npt.NDArray[np.uint8 | np.uint16 | np.uint32 | np.float32],
    out: npt.NDArray[np.uint8 | np.uint16 | np.uint32 | np.float32],
    fz: int,
    fy: int,
    fx: int,
) -> None:
    """BigDataViewer's rule: ``out.shape == ceil((Z, Y, X) / f)``, edge-replicated, rounded mean."""
