"""Hold Ctrl-C (and any other Python signal handler) across the engine's bookkeeping.

Python runs signal handlers in the main thread between any two bytecodes, so a
``KeyboardInterrupt`` (or an exception raised by an application's handler, e.g. a SIGALRM
timeout) can land between "a task was counted" and "the task was queued", or inside a
``with lock:`` before the lock is released, and the engine would then wait at ``close()``
for a task that never runs. Inside :func:`hold_interrupts` such signals are recorded
instead; the handlers that were installed run at the block's ``checkpoint()`` calls, which
callers place where nothing is half done (the back-pressure wait, after a frame's copy), or
when the block ends (for SIGINT's default handler: ``KeyboardInterrupt`` is raised there).
"""

from __future__ import annotations

# the C module: signal's Python wrappers convert every number to an enum (2 µs a call)
import _signal
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["hold_interrupts"]

_current: _Held | None = None  # the outermost hold of the main thread (signals go only there)


class _Held:
    """The signals caught while held; :meth:`checkpoint` lets them act at a safe point."""

    def __init__(self) -> None:
        self.caught: list[tuple[int, Any]] = []
        self.handlers: dict[int, Any] = {}

    def record(self, signum: int, frame: Any) -> None:
        if all(signum != s for s, _ in self.caught):
            self.caught.append((signum, frame))

    def checkpoint(self) -> None:
        """Run the handlers of the signals caught so far (SIGINT's default raises here)."""
        while self.caught:
            signum, frame = self.caught.pop(0)
            self.handlers[signum](signum, frame)


@contextmanager
def hold_interrupts() -> Iterator[_Held]:
    """Defer Python-level signal handlers until the block ends; a no-op outside the main thread.

    Only handlers installed from Python are replaced (one installed from C, SIG_IGN or
    SIG_DFL is left alone); a nested block shares the outermost one (its ``checkpoint()``
    runs what the outer block caught). Signals that arrived are handled at ``checkpoint()``
    calls or when the outermost block ends, in the order they came, once each.
    """
    global _current
    if threading.current_thread() is not threading.main_thread():
        yield _Held()  # nothing is caught here: signals only reach the main thread
        return
    if _current is not None:
        yield _current
        return
    held = _Held()
    try:
        for signum in _python_handled():
            held.handlers[signum] = _signal.signal(signum, held.record)
    except BaseException:  # pragma: no cover - the main thread is finalising, or a signal came
        for signum, previous in held.handlers.items():
            _signal.signal(signum, previous)
        raise
    _current = held
    try:
        yield held
    finally:
        _current = None
        for signum, previous in held.handlers.items():
            _signal.signal(signum, previous)
        held.checkpoint()


def _python_handled() -> list[int]:
    """The signals whose handler is a Python callable now."""
    return [s for s in _SIGNALS if callable(_signal.getsignal(s))]


_SIGNALS = [int(s) for s in sorted(signal.valid_signals())
            if s not in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None))]
