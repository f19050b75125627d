"""The no-op decompressor: an uncompressed layer passes through unchanged."""

from __future__ import annotations

import io

from layerfs.oci.streams import ByteStream, read_some


class PlainReader(io.RawIOBase):
    """``raw`` as it is, behind the same interface as the real decompressors."""

    def __init__(self, raw: ByteStream, *, close_raw: bool = True) -> None:
        super().__init__()
        self._raw = raw
        self._close_raw = close_raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        chunk = read_some(self._raw, len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed and self._close_raw:
            self._raw.close()
        super().close()
