"""The context-manager lifecycle shared by every writer on the streaming engine."""

from __future__ import annotations

import logging
from typing import Any

from fastims.errors import WriterStateError

logger = logging.getLogger("fastims")

__all__ = ["EngineWriter"]


class EngineWriter:
    """Mixin: ``with`` support, :meth:`abort` and the closing sequence of engine writers.

    Subclasses provide ``_engine``, ``_closed``, ``_label`` (the file named in messages),
    ``_finish()`` (complete the data and metadata; return the error to report, or None) and
    ``_close_files()`` (run in the writer thread).
    """

    _engine: Any
    _closed: bool
    _label: Any

    def _finish(self) -> BaseException | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close_files(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self, *, raising: bool) -> None:
        """Finish, then always close the files and the engine; raise or log the first error."""
        if self._closed:
            return
        error: BaseException | None = None
        try:
            error = self._finish()
        except BaseException as exc:
            error = exc
        finally:
            self._closed = True
            try:
                self._engine.call(self._close_files)
            except BaseException as exc:  # keep the first error
                error = error or exc
            self._engine.close()
        if error is not None:
            if raising:
                raise error
            if self._engine.aborted:
                logger.debug("closed aborted %s", self._label)
            else:
                logger.warning("closing %s after an error: %r", self._label, error)

    def abort(self) -> None:
        """Stop without completing the file: skip queued work, zero-fill nothing, close.

        For callers that will delete the file anyway (a failed conversion). The file is
        left closed but incomplete; nothing is raised.
        """
        if self._closed:
            return
        self._engine.abort(WriterStateError(f"{self._label} was aborted"))
        self._close(raising=False)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # on an exception in the with-block, finish the file but let that exception propagate
        self._close(raising=exc_type is None)
