"""Streaming zstd decompression (RFC 8878), multi-frame aware.

``zstandard``'s stream reader bounds the output of each read, which the bomb
guard needs, but it reports a stream cut inside a frame as a clean end of
file. So the compressed bytes are also run through :class:`FrameTracker`, a
small parser of the frame and block headers that knows whether the input
ended on a frame boundary. Skippable frames are allowed anywhere.

The window size is capped at zstd's default (128 MiB) so a hostile frame
cannot make the decoder allocate more.
"""

from __future__ import annotations

import io
from typing import IO, cast

import zstandard

from layerfs.oci.compression.guard import DEFAULT_LIMITS, CountingStream, DecompressionLimits, Guard
from layerfs.oci.errors import InvalidImageError
from layerfs.oci.streams import ByteStream

_READ_SIZE = 1 << 16
_MAX_WINDOW = 1 << 27
_FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50


class FrameTracker:
    """Follows frame boundaries in a zstd byte stream without decompressing it."""

    def __init__(self) -> None:
        self._need = 4  # header bytes wanted by the current state
        self._state = "magic"
        self._header = bytearray()
        self._skip = 0  # payload bytes to pass over before the next header
        self._checksum = False
        self.valid = True

    @property
    def at_boundary(self) -> bool:
        """Whether everything fed so far is a sequence of complete frames."""
        return self.valid and self._state == "magic" and not self._header and not self._skip

    def feed(self, data: bytes) -> None:
        """Account for the next ``data`` bytes of the stream."""
        pos = 0
        while pos < len(data) and self.valid:
            if self._skip:
                step = min(self._skip, len(data) - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._header), len(data) - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == self._need:
                header = bytes(self._header)
                self._header.clear()
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(header, "little")
            if header == _FRAME_MAGIC:
                self._state, self._need = "frame_header", 1
            elif magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._state, self._need = "skippable_size", 4
            else:
                self.valid = False
        elif state == "skippable_size":
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = "magic", 4
        elif state == "frame_header":
            fhd = header[0]
            fcs_flag, single_segment = fhd >> 6, (fhd >> 5) & 1
            self._checksum = bool((fhd >> 2) & 1)
            fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
            self._skip = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3] + fcs_size
            self._state, self._need = "block", 3
        elif state == "block":
            value = int.from_bytes(header, "little")
            last, block_type, size = value & 1, (value >> 1) & 3, value >> 3
            if block_type == 3:
                self.valid = False
                return
            self._skip = 1 if block_type == 1 else size
            if last:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class _TrackedInput(CountingStream):
    def __init__(self, inner: ByteStream, tracker: FrameTracker) -> None:
        super().__init__(inner)
        self._tracker = tracker

    def read(self, size: int = -1, /) -> bytes:
        chunk = super().read(size)
        self._tracker.feed(chunk)
        return chunk


class ZstdReader(io.RawIOBase):
    """Decompress the zstd stream ``raw`` as it is read."""

    def __init__(
        self,
        raw: ByteStream,
        *,
        limits: DecompressionLimits = DEFAULT_LIMITS,
        name: str = "zstd stream",
        close_raw: bool = True,
    ) -> None:
        super().__init__()
        self._tracker = FrameTracker()
        self._in = _TrackedInput(raw, self._tracker)
        self._guard = Guard(limits, name)
        self._name = name
        self._close_raw = close_raw
        self._done = False
        decompressor = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
        self._reader = decompressor.stream_reader(
            cast("IO[bytes]", self._in),  # it only calls read()
            read_size=_READ_SIZE,
            read_across_frames=True,
            closefd=False,
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._done or not len(view):
            return 0
        try:
            out: bytes = self._reader.read(len(view))
        except zstandard.ZstdError as exc:
            raise InvalidImageError(f"{self._name}: corrupt zstd data: {exc}") from None
        if not out:
            self._finish()
            return 0
        self._guard.produced(len(out), self._in.count)
        view[: len(out)] = out
        return len(out)

    def _finish(self) -> None:
        # The reader may stop at a frame end before the input is exhausted.
        if not self._in.eof and self._in.read(1):
            raise InvalidImageError(f"{self._name}: unexpected data after zstd frames")
        if not self._in.count:
            raise InvalidImageError(f"{self._name}: empty zstd stream")
        if not self._tracker.at_boundary:
            raise InvalidImageError(f"{self._name}: truncated zstd stream")
        self._done = True

    def close(self) -> None:
        if not self.closed:
            self._reader.close()  # type: ignore[no-untyped-call]
            if self._close_raw:
                self._in.close()
        super().close()
