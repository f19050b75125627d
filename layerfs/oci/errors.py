"""Exceptions raised by ``layerfs.oci``.

All of them are user errors (a bad image or a bad image name), never bugs:
the CLI prints their message as one line. Messages name the input at fault
and the field or blob inside it, e.g. ``manifest: layers[2].digest: ...``.
"""

from __future__ import annotations

from typing import Self


class OCIError(Exception):
    """Base class of every error ``layerfs.oci`` raises on purpose."""

    def with_context(self, context: str) -> Self:
        """The same kind of error with ``context: `` prefixed to its message."""
        return type(self)(f"{context}: {self}")


class InvalidImageError(OCIError, ValueError):
    """An image document or blob is malformed or fails verification."""


class UnsupportedImageError(InvalidImageError):
    """The image is valid but uses something layerfs cannot handle.

    Examples: a digest algorithm without a hash implementation, an encrypted
    or unknown layer media type.
    """


class BlobVerificationError(InvalidImageError):
    """A blob's size or digest differs from what its descriptor promised."""


class DecompressionBombError(InvalidImageError):
    """A compressed stream expands beyond the configured limits."""


class SourceError(OCIError, ValueError):
    """An image source cannot be opened or does not hold the image asked for."""
