"""Verified blob reading: a blob is never trusted until its size and digest check out.

:class:`VerifiedReader` wraps a binary file object and hashes and counts what
passes through. It fails as soon as more bytes than the expected size arrive,
and at end of file if there were fewer, or if the digest differs. It never
reads more than one byte past the expected size, so an endless source cannot
keep it busy. An absurd expected size is refused before any I/O.

A failure is sticky: every later read raises the same error, so a consumer
that swallowed one exception cannot go on to read unverified data.

:class:`VerifiedStream` is the buffered form handed out by image sources: a
``BinaryIO`` (``io.BufferedReader``) with the same ``verify()``.

Caveat: verification happens when end of file is *reached*. A consumer that
stops early (``tarfile`` in stream mode stops at the end-of-archive blocks)
must call ``verify()``, which drains the rest and checks.
"""

from __future__ import annotations

import io

from layerfs.oci.digest import Digest, digests_equal, hasher_for
from layerfs.oci.errors import BlobVerificationError, InvalidImageError
from layerfs.oci.streams import ByteStream, read_some

DEFAULT_MAX_BLOB_SIZE = 1 << 40
"""Largest blob accepted by default (1 TiB): larger claims are refused unread."""

_DRAIN_CHUNK = 1 << 20
STREAM_BUFFER_SIZE = 1 << 20


def check_expected(digest: Digest, size: int | None, max_size: int) -> None:
    """Refuse, before any I/O, a blob that could never verify.

    Raises :class:`InvalidImageError` for a negative or absurd ``size`` and
    :class:`UnsupportedImageError` for a digest algorithm without a hasher.
    """
    if size is not None and (isinstance(size, bool) or size < 0 or size > max_size):
        raise InvalidImageError(
            f"blob {digest}: refusing size {size!r} (expected 0 .. {max_size} bytes)"
        )
    hasher_for(digest)


class VerifiedReader(io.RawIOBase):
    """A readable binary stream over ``raw`` that checks ``size`` and ``digest``.

    ``size`` may be ``None`` when unknown (a decompressed layer checked against
    its diff_id); ``max_size`` then bounds it instead. Closing the reader closes
    ``raw`` unless ``close_raw`` is false.
    """

    def __init__(
        self,
        raw: ByteStream,
        digest: Digest,
        size: int | None,
        *,
        max_size: int = DEFAULT_MAX_BLOB_SIZE,
        close_raw: bool = True,
    ) -> None:
        super().__init__()
        check_expected(digest, size, max_size)
        self._hasher = hasher_for(digest)
        self._raw = raw
        self._digest = digest
        self._size = size
        self._limit = max_size if size is None else size
        self._count = 0
        self._verified = False
        self._failure: BlobVerificationError | None = None
        self._close_raw = close_raw

    @property
    def digest(self) -> Digest:
        """The digest this stream must match."""
        return self._digest

    @property
    def bytes_read(self) -> int:
        """How many bytes passed through so far."""
        return self._count

    @property
    def verified(self) -> bool:
        """Whether end of file was reached and everything checked out."""
        return self._verified

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._failure is not None:
            raise self._failure
        if self._verified:
            return 0
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        # Ask for at most one byte past the limit: that byte proves "too long".
        want = min(len(view), self._limit - self._count + 1)
        chunk = read_some(self._raw, want)
        if not chunk:
            self._finish()
            return 0
        n = len(chunk)
        self._count += n
        if self._count > self._limit:
            raise self._fail(self._too_long())
        self._hasher.update(chunk)
        view[:n] = chunk
        return n

    def _too_long(self) -> BlobVerificationError:
        if self._size is None:
            return BlobVerificationError(
                f"blob {self._digest}: larger than the limit of {self._limit} bytes"
            )
        return BlobVerificationError(
            f"blob {self._digest}: size mismatch: expected {self._size} bytes, got more"
        )

    def _fail(self, error: BlobVerificationError) -> BlobVerificationError:
        self._failure = error
        return error

    def _finish(self) -> None:
        if self._size is not None and self._count != self._size:
            raise self._fail(
                BlobVerificationError(
                    f"blob {self._digest}: size mismatch: expected {self._size} bytes, "
                    f"got {self._count}"
                )
            )
        actual = self._hasher.digest()
        if not digests_equal(actual, self._digest):
            raise self._fail(
                BlobVerificationError(
                    f"blob {self._digest}: digest mismatch: content hashes to {actual}"
                )
            )
        self._verified = True

    def verify(self) -> None:
        """Read what is left (discarding it) and check size and digest."""
        buf = bytearray(_DRAIN_CHUNK)
        while not self._verified:
            self.readinto(buf)

    def close(self) -> None:
        if not self.closed and self._close_raw:
            self._raw.close()
        super().close()


class VerifiedStream(io.BufferedReader):
    """A buffered :class:`VerifiedReader`: a ``BinaryIO`` for ``tarfile`` and friends."""

    def __init__(self, reader: VerifiedReader, buffer_size: int = STREAM_BUFFER_SIZE) -> None:
        super().__init__(reader, buffer_size)
        self._reader = reader

    @property
    def digest(self) -> Digest:
        """The digest this stream must match."""
        return self._reader.digest

    @property
    def verified(self) -> bool:
        """Whether the whole blob was read and checked out."""
        return self._reader.verified

    def verify(self) -> None:
        """Read what is left (discarding it) and check size and digest."""
        self._reader.verify()


def read_verified(raw: ByteStream, digest: Digest, size: int, *, max_size: int) -> bytes:
    """All of ``raw``, checked against ``digest`` and ``size`` (at most ``max_size``)."""
    try:
        reader = VerifiedReader(raw, digest, size, max_size=max_size)
    except BaseException:
        raw.close()
        raise
    with reader:
        return reader.readall()
