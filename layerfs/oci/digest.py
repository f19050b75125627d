"""Content digests: the image-spec grammar, hashing, and ChainIDs.

A digest is ``algorithm ":" encoded``. The algorithm grammar is
``[a-z0-9]+(?:[+._-][a-z0-9]+)*`` and the encoded part ``[a-zA-Z0-9=_-]+``.
Registered algorithms add stricter rules: ``sha256`` and ``blake3`` take 64
lowercase hex digits, ``sha512`` 128 (uppercase hex is rejected).

Any digest that fits the grammar parses, so documents using an algorithm we
cannot compute are still readable; the error comes when something has to be
hashed or verified (:class:`UnsupportedImageError`). ``blake3`` is registered
but has no implementation in the standard library, so it is in that case.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from typing import NewType, Protocol

from layerfs.oci.errors import BlobVerificationError, InvalidImageError, UnsupportedImageError

Digest = NewType("Digest", str)
"""A digest string that :func:`parse_digest` accepted."""

_DIGEST_RE = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)")

# Registered algorithms: the exact form of their encoded part.
_REGISTERED_ENCODING: dict[str, re.Pattern[str]] = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
    "blake3": re.compile(r"[a-f0-9]{64}"),
}


class _HashObject(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


_HASH_FACTORIES: dict[str, Callable[[], _HashObject]] = {
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}

CANONICAL_ALGORITHM = "sha256"
"""The algorithm layerfs uses for digests it computes itself."""


class DigestError(InvalidImageError):
    """A string is not a valid digest."""


def parse_digest(value: str) -> Digest:
    """Check ``value`` against the digest grammar and return it as a :data:`Digest`.

    Raises :class:`DigestError` naming what is wrong.
    """
    m = _DIGEST_RE.fullmatch(value)
    if m is None:
        raise DigestError(
            f"invalid digest {value!r}: expected ALGORITHM:ENCODED "
            "(e.g. sha256:<64 lowercase hex digits>)"
        )
    algorithm, encoded = m.groups()
    pattern = _REGISTERED_ENCODING.get(algorithm)
    if pattern is not None and pattern.fullmatch(encoded) is None:
        raise DigestError(
            f"invalid digest {value!r}: {algorithm} needs "
            f"{_expected_length(algorithm)} lowercase hex digits"
        )
    return Digest(value)


def _expected_length(algorithm: str) -> int:
    return 128 if algorithm == "sha512" else 64


def split_digest(digest: Digest) -> tuple[str, str]:
    """``(algorithm, encoded)`` of a parsed digest."""
    algorithm, _, encoded = digest.partition(":")
    return algorithm, encoded


def is_supported_algorithm(algorithm: str) -> bool:
    """Whether layerfs can compute digests with ``algorithm``."""
    return algorithm in _HASH_FACTORIES


class DigestHasher:
    """Incremental hashing that yields a :data:`Digest`."""

    def __init__(self, algorithm: str = CANONICAL_ALGORITHM) -> None:
        factory = _HASH_FACTORIES.get(algorithm)
        if factory is None:
            raise UnsupportedImageError(
                f"digest algorithm {algorithm!r} is not supported "
                f"(supported: {', '.join(sorted(_HASH_FACTORIES))})"
            )
        self.algorithm = algorithm
        self._hash = factory()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ``data`` to the hash."""
        self._hash.update(data)

    def digest(self) -> Digest:
        """The digest of everything fed so far."""
        return Digest(f"{self.algorithm}:{self._hash.hexdigest()}")


def new_hasher(algorithm: str = CANONICAL_ALGORITHM) -> DigestHasher:
    """A hasher for ``algorithm``; :class:`UnsupportedImageError` if there is none."""
    return DigestHasher(algorithm)


def hasher_for(digest: Digest) -> DigestHasher:
    """A hasher for the algorithm of ``digest``, to verify content against it."""
    try:
        return DigestHasher(split_digest(digest)[0])
    except UnsupportedImageError as exc:
        raise exc.with_context(f"cannot verify {digest}") from None


def compute_digest(data: bytes, algorithm: str = CANONICAL_ALGORITHM) -> Digest:
    """The digest of ``data``."""
    hasher = DigestHasher(algorithm)
    hasher.update(data)
    return hasher.digest()


def digests_equal(a: Digest, b: Digest) -> bool:
    """Compare digests in constant time (they may guard trust decisions)."""
    return hmac.compare_digest(a.encode(), b.encode())


def verify_bytes(digest: Digest, data: bytes) -> None:
    """Raise :class:`BlobVerificationError` unless ``data`` hashes to ``digest``."""
    hasher = hasher_for(digest)
    hasher.update(data)
    actual = hasher.digest()
    if not digests_equal(actual, digest):
        raise BlobVerificationError(f"blob {digest}: digest mismatch: content hashes to {actual}")


def chain_id(diff_ids: Sequence[Digest]) -> Digest:
    """The ChainID of the layer stack ``diff_ids`` (bottom first), per the image spec.

    ``ChainID(L0) = DiffID(L0)``;
    ``ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))``.
    """
    ids = chain_ids(diff_ids)
    if not ids:
        raise ValueError("chain_id: diff_ids must not be empty")
    return ids[-1]


def chain_ids(diff_ids: Sequence[Digest]) -> tuple[Digest, ...]:
    """The ChainID of every prefix of ``diff_ids``: one per layer, bottom first."""
    out: list[Digest] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(compute_digest(f"{out[-1]} {diff_id}".encode()))
    return tuple(out)
