"""The context-manager lifecycle shared by every writer on the streaming engine."""

from __future__ import annotations

from typing import Any

from fastims.errors import WriterStateError

__all__ = ["EngineWriter"]


class EngineWriter:
    """Mixin: ``with`` support and :meth:`abort` for writers that own an engine.

    Subclasses provide ``_engine``, ``_closed`` and ``_close(*, raising)``, which completes
    and closes the files (raising, or only logging, the first error).
    """

    _engine: Any
    _closed: bool

    def _close(self, *, raising: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def abort(self) -> None:
        """Stop without completing the file: skip queued work, zero-fill nothing, close.

        For callers that will delete the file anyway (a failed conversion). The file is
        left closed but incomplete; nothing is raised.
        """
        if self._closed:
            return
        self._engine.abort(WriterStateError(f"{self!r} was aborted"))
        self._close(raising=False)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # on an exception in the with-block, finish the file but let that exception propagate
        self._close(raising=exc_type is None)
