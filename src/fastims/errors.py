"""The small exception family of fastims.

Ordinary cases use built-in exceptions (``FileExistsError``, ``FileNotFoundError``,
``KeyError``/``IndexError`` naming the valid range, ``ValueError``, ``TypeError``);
these classes cover what the built-ins cannot say.
"""

from __future__ import annotations

__all__ = [
    "FastimsError",
    "FormatError",
    "UnsupportedFormatError",
    "WriterStateError",
]


class FastimsError(Exception):
    """Base class of every fastims-specific error."""


class FormatError(FastimsError, ValueError):
    """A file is malformed or is not the format it claims to be."""


class UnsupportedFormatError(FormatError):
    """A valid file uses a variant fastims does not read (for example a bdv.n5 loader)."""


class WriterStateError(FastimsError, RuntimeError):
    """A writer was used in a wrong state: after close, a plane twice, planes missing at close."""
