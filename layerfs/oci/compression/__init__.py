"""Streaming decompression of layer blobs, one module per compression.

:func:`open_decompressed` turns a readable binary stream of compressed bytes
into a readable binary stream of the uncompressed tar, suitable for
``tarfile.open(fileobj=..., mode="r|")``. Every decompressor is guarded
against decompression bombs by :class:`DecompressionLimits` and reports
corrupt or truncated input as :class:`~layerfs.oci.InvalidImageError`.

Nothing here verifies digests: wrap the input (and the output, against the
layer's diff_id) in :class:`~layerfs.oci.blob.VerifiedReader` for that.
"""

from __future__ import annotations

import io

from layerfs.oci.compression.guard import DEFAULT_LIMITS, DecompressionLimits
from layerfs.oci.compression.gzip import GzipReader
from layerfs.oci.compression.none import PlainReader
from layerfs.oci.compression.zstd import ZstdReader
from layerfs.oci.mediatypes import Compression
from layerfs.oci.streams import ByteStream

__all__ = ["DEFAULT_LIMITS", "DecompressionLimits", "detect_compression", "open_decompressed"]

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def open_decompressed(
    raw: ByteStream,
    compression: Compression,
    *,
    limits: DecompressionLimits = DEFAULT_LIMITS,
    name: str = "layer",
    close_raw: bool = True,
) -> io.RawIOBase:
    """A stream of ``raw`` decompressed according to ``compression``.

    ``name`` (a blob digest, say) prefixes error messages. Closing the result
    closes ``raw`` unless ``close_raw`` is false.
    """
    if compression is Compression.GZIP:
        return GzipReader(raw, limits=limits, name=name, close_raw=close_raw)
    if compression is Compression.ZSTD:
        return ZstdReader(raw, limits=limits, name=name, close_raw=close_raw)
    return PlainReader(raw, close_raw=close_raw)


def detect_compression(head: bytes) -> Compression:
    """The compression of a stream starting with ``head`` (its first 4 bytes or more)."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.NONE
