"""Streaming gzip decompression (RFC 1952), multi-member aware.

A gzip file may be several members back to back (``cat a.gz b.gz``), and may
be padded with NUL bytes after a member; both are read as one stream, as GNU
gzip and Python's ``gzip`` module do. Each member's CRC-32 and length are
checked by zlib. Anything else after a member, or a stream that ends inside
one, is an error.
"""

from __future__ import annotations

import io
import zlib

from layerfs.oci.compression.guard import DEFAULT_LIMITS, CountingStream, DecompressionLimits, Guard
from layerfs.oci.errors import InvalidImageError
from layerfs.oci.streams import ByteStream

_READ_SIZE = 1 << 16
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, not raw zlib


class GzipReader(io.RawIOBase):
    """Decompress the gzip stream ``raw`` as it is read."""

    def __init__(
        self,
        raw: ByteStream,
        *,
        limits: DecompressionLimits = DEFAULT_LIMITS,
        name: str = "gzip stream",
        close_raw: bool = True,
    ) -> None:
        super().__init__()
        self._in = CountingStream(raw)
        self._guard = Guard(limits, name)
        self._name = name
        self._close_raw = close_raw
        self._member: zlib._Decompress | None = None
        self._members = 0
        self._pending = b""  # input read but not yet given to zlib
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        while not self._done:
            if self._member is None and not self._start_member():
                break
            out = self._inflate(len(view))
            if out:
                self._guard.produced(len(out), self._in.count)
                view[: len(out)] = out
                return len(out)
        return 0

    def _start_member(self) -> bool:
        """Begin the next member; False at a clean end of stream."""
        while True:
            if self._members:
                self._pending = self._pending.lstrip(b"\0")
            if self._pending:
                self._member = zlib.decompressobj(_GZIP_WBITS)
                self._members += 1
                return True
            self._pending = self._in.read(_READ_SIZE)
            if not self._pending:
                if not self._members:
                    raise InvalidImageError(f"{self._name}: empty gzip stream")
                self._done = True
                return False

    def _inflate(self, max_length: int) -> bytes:
        member = self._member
        assert member is not None
        if not self._pending:
            self._pending = self._in.read(_READ_SIZE)
            if not self._pending:
                raise InvalidImageError(f"{self._name}: truncated gzip stream")
        try:
            out = member.decompress(self._pending, max_length)
        except zlib.error as exc:
            raise InvalidImageError(
                f"{self._name}: corrupt gzip data in member {self._members}: {exc}"
            ) from None
        if member.eof:
            self._pending = member.unused_data
            self._member = None
        else:
            self._pending = member.unconsumed_tail
        return out

    def close(self) -> None:
        if not self.closed and self._close_raw:
            self._in.close()
        super().close()
