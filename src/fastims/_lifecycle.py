"""The context-manager lifecycle shared by every writer on the streaming engine."""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - registers its exit hook before ours (see below)
import logging
import os
import threading
from typing import Any

from fastims._interrupts import hold_interrupts
from fastims.errors import WriterStateError

logger = logging.getLogger("fastims")

__all__ = ["EngineWriter"]

# writers whose files are open, finished at interpreter exit if the program did not close
# them (held strongly: a writer dropped unclosed still has its data in flight)
_OPEN: set[EngineWriter] = set()


def _close_open_writers() -> None:
    """Interpreter exit: finish the writers a program left open, as ``close()`` would.

    Otherwise HDF5's own exit handler closes their files after Python has gone, and its
    flush calls back into h5py's file-object driver: the process dies of a segfault and the
    file is left without its metadata. Missing planes are zero-filled and named in the file,
    as ``close()`` does. A writer that fails to finish is logged and the others still are.
    """
    for writer in list(_OPEN):
        # one broken writer (e.g. half-constructed) must not keep the others unfinished
        try:
            if writer._closed or writer._opened_by != os.getpid():  # a forked child has no engine threads
                continue
            logger.warning("%s was not closed: finishing it at interpreter exit", writer._label)
            writer._close(raising=False)
        except Exception:  # keep finishing the others
            _OPEN.discard(writer)
            logger.exception("finishing %s at interpreter exit failed", _describe(writer))


def _describe(writer: object) -> str:
    """A name for `writer` in messages that cannot fail (its attributes may be missing)."""
    label = getattr(writer, "_label", None)  # also None when a property behind it is missing
    return str(label) if label is not None else f"<{type(writer).__name__} at {id(writer):#x}>"


def _register_exit_hook() -> None:
    # threading's exit hooks run before the worker pools are joined (concurrent.futures
    # registers its own at import, above, and they run last-registered first), so the engine
    # can still encode; atexit's run only after the pools refuse new work
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_close_open_writers)
            return
        except RuntimeError:  # pragma: no cover - imported while the interpreter shuts down
            pass
    atexit.register(_close_open_writers)  # pragma: no cover - other Python implementations


_register_exit_hook()


class EngineWriter:
    """Mixin: ``with`` support, :meth:`abort` and the closing sequence of engine writers.

    Subclasses provide ``_engine``, ``_closed``, ``_label`` (the file named in messages),
    ``_finish()`` (complete the data and metadata; return the error to report, or None) and
    ``_close_files()`` (run in the writer thread).
    """

    _engine: Any
    _closed: bool
    _label: Any
    _opened_by = -1  # pid of the process whose engine threads serve the writer

    def _opened(self) -> None:
        """Called by subclasses once their files are open: finished at exit if never closed."""
        self._opened_by = os.getpid()
        _OPEN.add(self)

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
            _OPEN.discard(self)
            # an interrupted _finish (Ctrl-C) leaves tasks in flight: they store their chunks
            # before the files close, not into closed ones. Held: a second Ctrl-C would split
            # this the same way, and it ends once the work in flight (the memory budget) is done.
            with hold_interrupts():
                self._engine.drain()
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
