"""The one stream interface the blob and decompression layers share.

Anything with ``read(n)`` and ``close()`` will do: a file opened with
``open(..., "rb")``, a ``tarfile`` member, another reader of this package.
A ``read`` returning ``None`` (a non-blocking stream with nothing ready) is
not supported: every reader here raises :class:`BlockingIOError` on it.
"""

from __future__ import annotations

from typing import Protocol


class ByteStream(Protocol):
    """A readable binary stream."""

    def read(self, size: int = -1, /) -> bytes | None:
        """Up to ``size`` bytes; ``b""`` only at end of file."""
        ...

    def close(self) -> None:
        """Release the stream."""
        ...


def read_some(stream: ByteStream, size: int) -> bytes:
    """``stream.read(size)``, refusing the non-blocking ``None`` answer."""
    chunk = stream.read(size)
    if chunk is None:
        raise BlockingIOError("non-blocking streams are not supported")
    return chunk


def read_up_to(stream: ByteStream, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``: fewer only at end of file."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = read_some(stream, remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)
