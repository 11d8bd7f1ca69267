"""fastims: stream camera frames into Imaris (.ims) and BigDataViewer (HDF5 + XML) files.

The public names are imported lazily so that ``import fastims`` stays fast and never
compiles or imports numba; the first use of a name loads its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fastims._version import __version__
from fastims.errors import FastimsError, FormatError, UnsupportedFormatError, WriterStateError

# public name -> module that defines it
_LAZY = {
    "downsample": "fastims.pyramid",
    "Histogram": "fastims.histogram",
    "warmup": "fastims._dispatch",
    "ImsWriter": "fastims.ims.writer",
    "write_ims": "fastims.ims.writer",
    "ImsReader": "fastims.ims.reader",
    "read_ims": "fastims.ims.reader",
    "BdvWriter": "fastims.bdv.writer",
    "write_bdv": "fastims.bdv.writer",
    "BdvEditor": "fastims.bdv.editor",
    "BdvReader": "fastims.bdv.reader",
    "read_bdv": "fastims.bdv.reader",
    "open": "fastims.reader",
    "link_ims": "fastims.link",
    "link_bdv": "fastims.link",
}

__all__ = [
    "__version__",
    "FastimsError",
    "FormatError",
    "UnsupportedFormatError",
    "WriterStateError",
    "convert",
    *_LAZY,
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers; at run time names load lazily
    from fastims._dispatch import warmup  # noqa: F401
    from fastims.bdv.editor import BdvEditor  # noqa: F401
    from fastims.bdv.reader import BdvReader, read_bdv  # noqa: F401
    from fastims.bdv.writer import BdvWriter, write_bdv  # noqa: F401
    from fastims.histogram import Histogram  # noqa: F401
    from fastims.ims.reader import ImsReader, read_ims  # noqa: F401
    from fastims.ims.writer import ImsWriter, write_ims  # noqa: F401
    from fastims.link import link_bdv, link_ims  # noqa: F401
    from fastims.pyramid import downsample  # noqa: F401
    from fastims.reader import open  # noqa: F401


def __getattr__(name: str) -> Any:
    if name == "convert":  # the module, callable as fastims.convert.convert (see there)
        return importlib.import_module("fastims.convert")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastims' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
