"""Bind kernel names to the compiled implementation or to its pure-NumPy twin.

Every kernel lives in a module of :mod:`fastims._ext` and has a twin of the same name and
signature in :mod:`fastims._reference`. ``FASTIMS_KERNELS=reference`` (or
:func:`use_reference`) forces the twins, for tests and for platforms where the extensions
did not build.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("fastims")

# kernel name -> module inside fastims._ext that implements it
KERNEL_MODULES: dict[str, str] = {
    "downsample_imaris": "_downsample",
    "downsample_bdv": "_downsample",
    "hist_u8": "_histogram",
    "hist_u16": "_histogram",
    "hist_binned": "_histogram_nb",
    "minmax_finite": "_histogram_nb",
    "huffman_block": "_deflate",
    "gather_chunk": "_chunks",
    "gather_row": "_chunks",
    "lz4_frame": "_chunks",
    "lz4_frames": "_chunks",
    "lz4_frames_in_place": "_chunks",
    "shuffle": "_chunks",
    "stream_copy": "_chunks",
    "unshuffle": "_chunks",
}

_lock = threading.Lock()
_cache: dict[str, Callable[..., Any]] = {}
_force_reference = os.environ.get("FASTIMS_KERNELS", "").lower() == "reference"


def use_reference(flag: bool) -> None:
    """Force (``True``) or release (``False``) the pure-NumPy twins for every kernel."""
    global _force_reference
    with _lock:
        _force_reference = bool(flag)
        _cache.clear()


def backend() -> str:
    """Name of the active kernel backend: ``"compiled"`` or ``"reference"``."""
    return "reference" if _force_reference else "compiled"


def kernel(name: str) -> Callable[..., Any]:
    """Return the active implementation of kernel `name`."""
    fn = _cache.get(name)
    if fn is not None:
        return fn
    with _lock:
        if name not in KERNEL_MODULES:
            raise KeyError(f"unknown kernel {name!r}; known: {sorted(KERNEL_MODULES)}")
        if _force_reference:
            fn = getattr(importlib.import_module("fastims._reference"), name)
        else:
            module = importlib.import_module(f"fastims._ext.{KERNEL_MODULES[name]}")
            fn = getattr(module, name)
        _cache[name] = fn
        return fn


def reference(name: str) -> Callable[..., Any]:
    """Return the pure-NumPy twin of kernel `name` (the test oracle)."""
    return getattr(importlib.import_module("fastims._reference"), name)


def warmup(dtypes: tuple[str, ...] = ("uint8", "uint16", "uint32", "float32")) -> float:
    """Load every kernel and compile the JIT ones for `dtypes`, before the first frame.

    Cython kernels are compiled ahead of time; numba kernels are compiled (or loaded from
    numba's on-disk cache) here, so that no JIT pause lands on an acquisition's first frame.

    Returns
    -------
    float
        Seconds spent.
    """
    import numpy as np

    t0 = time.perf_counter()
    for name in KERNEL_MODULES:
        kernel(name)
    if not _force_reference:
        nb = importlib.import_module("fastims._ext._histogram_nb")
        for dt in dtypes:
            if np.dtype(dt).kind in "fu" and np.dtype(dt).itemsize >= 4:
                nb.warmup(np.dtype(dt))
    elapsed = time.perf_counter() - t0
    logger.debug("fastims.warmup took %.3f s", elapsed)
    return elapsed
