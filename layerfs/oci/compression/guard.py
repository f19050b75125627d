"""The decompression-bomb guard shared by every decompressor.

A compressed layer may expand by at most ``max_ratio`` output bytes per input
byte consumed, plus a fixed ``slack`` (so tiny inputs are not judged on their
ratio), and never beyond ``max_output`` when that is set. Deflate reaches
about 1032:1 on zeros and zstd far more; real layers stay well under 256:1,
so the default bounds a 2 MiB bomb at about 768 MiB of output.

Caveat: a legitimate layer holding a large file of zeros (hundreds of MB)
can exceed the default ratio; raise ``max_ratio`` for such images.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerfs.oci.errors import DecompressionBombError
from layerfs.oci.streams import ByteStream, read_some


@dataclass(frozen=True)
class DecompressionLimits:
    """Bounds on how far a compressed stream may expand."""

    max_ratio: int = 256
    slack: int = 256 << 20
    max_output: int | None = None

    def __post_init__(self) -> None:
        if self.max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {self.max_ratio}")
        if self.slack < 0:
            raise ValueError(f"slack must be >= 0, got {self.slack}")
        if self.max_output is not None and self.max_output < 0:
            raise ValueError(f"max_output must be >= 0, got {self.max_output}")


DEFAULT_LIMITS = DecompressionLimits()


class CountingStream:
    """Counts the bytes read from a stream (the decompressor's input)."""

    def __init__(self, raw: ByteStream) -> None:
        self.raw = raw
        self.count = 0
        self.eof = False

    def read(self, size: int = -1, /) -> bytes:
        chunk = read_some(self.raw, size)
        self.count += len(chunk)
        if not chunk and size != 0:
            self.eof = True
        return chunk

    def close(self) -> None:
        self.raw.close()


class Guard:
    """Checks output against input as a decompressor produces it."""

    def __init__(self, limits: DecompressionLimits, name: str) -> None:
        self.limits = limits
        self.name = name
        self.output = 0

    def produced(self, n: int, consumed: int) -> None:
        """Account for ``n`` more output bytes after ``consumed`` input bytes in all."""
        self.output += n
        lim = self.limits
        if lim.max_output is not None and self.output > lim.max_output:
            raise DecompressionBombError(
                f"{self.name}: decompressed size exceeds the limit of {lim.max_output} bytes"
            )
        if self.output > lim.max_ratio * consumed + lim.slack:
            raise DecompressionBombError(
                f"{self.name}: expands more than {lim.max_ratio}:1 "
                f"({self.output} bytes from {consumed}); possible decompression bomb"
            )
