"""Deferring Ctrl-C and SIGTERM across the few steps that must not be cut in half.

An interrupt that lands between creating something (a session directory, a published layer) and
noting that it exists leaks it. `interrupts_deferred` installs SIGINT and SIGTERM handlers that
raise `KeyboardInterrupt` — at once, or, while the main thread is inside a `shielded` block, when
the block ends. Without those handlers installed (a library caller), `shielded` does nothing and
Python's own SIGINT handling applies.

Only the main thread runs Python signal handlers, so shields in worker threads are no-ops: the
interrupt surfaces in the main thread, which cancels and waits for the workers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_depth = 0
_pending = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        _pending = True
        return
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def shielded() -> Iterator[None]:
    """Hold back an interrupt until the block is done (main thread; handlers installed)."""
    global _depth, _pending
    if not _main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if not _depth:
            _pending = False  # an error is unwinding already: the interrupt would add nothing
        raise
    _depth -= 1
    if not _depth and _pending:
        _pending = False
        raise KeyboardInterrupt


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM raise `KeyboardInterrupt`, held back inside `shielded` blocks."""
    global _pending
    if not _main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _pending = False
