"""Read-ahead: a stream read by a thread of its own, a few chunks ahead of its consumer.

A layer's import is a pipeline: read the blob, hash it, copy it, decompress it, hash the tar
(all of which release the GIL), then parse the tar and write files (which mostly hold it).
`ReadAhead` runs the first half in its own thread, so even a single-layer image keeps two cores
busy. An exception in the reading thread is raised to the consumer at the point it reaches it;
closing stops the thread (it may finish the chunk it is reading).
"""

from __future__ import annotations

import io
import queue
import threading
from typing import BinaryIO

CHUNK = 1 << 20
DEPTH = 4  # chunks in flight: bounded memory, and enough to smooth out bursts
_POLL = 0.1


class ReadAhead(io.RawIOBase):
    """``source`` read ahead by a background thread; read this from one thread only."""

    def __init__(self, source: BinaryIO, *, chunk: int = CHUNK, depth: int = DEPTH) -> None:
        super().__init__()
        self._source = source
        self._chunk = chunk
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._view = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="readahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._source.read(self._chunk)
                if not self._put(data) or not data:
                    return
        except BaseException as exc:  # handed to the consumer, who raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._view:
            if self._eof:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return 0
            self._view = memoryview(item)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n

    def close(self) -> None:
        """Stop the reading thread and wait for it (``source`` stays open)."""
        if not self.closed:
            self._stop.set()
            self._thread.join()
        super().close()
