"""File locks (``flock``) between layerctl processes and threads.

Each `FileLock` opens its own file description, so two threads of one process exclude each other
just as two processes do; the lock dies with its holder, so a killed process never leaves a store
locked. A lock is not re-entrant: a thread holding one must not take it again.

Lock files that get deleted (the per-layer locks in ``tmp/``) are safe to delete only while
locked: a waiter that then gets the lock on the unlinked file notices that the path now names
another file (or none) and starts over.
"""

from __future__ import annotations

import errno
import fcntl
import os
from types import TracebackType


class FileLock:
    """An exclusive ``flock`` on the file ``path``, created if missing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, blocking: bool = True) -> bool:
        """Take the lock; False when ``blocking`` is false and someone else holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this object")
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not _flock(fd, blocking):
                return False
            if _same_file(fd, self.path):
                self._fd = fd
                return True
            os.close(fd)  # unlinked by its last holder while we waited: lock the new one

    def release(self, *, unlink: bool = False) -> None:
        """Drop the lock; with ``unlink``, delete the lock file first (while still holding it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if unlink:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def lock_dir(path: str, *, blocking: bool = True) -> int | None:
    """An open descriptor of the directory ``path`` holding an exclusive flock on it.

    None when not ``blocking`` and another holder has it. Closing the descriptor unlocks.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return fd if _flock(fd, blocking) else None


def _flock(fd: int, blocking: bool) -> bool:
    """An exclusive flock on ``fd``; False (and ``fd`` closed) when not ``blocking`` and
    another holder has it. ``fd`` is closed on any failure."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True
