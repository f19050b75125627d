"""Content-addressed blobs: ``blobs/<algorithm>/<hex>``, exactly as pulled.

A blob enters the store only verified: it is written into the caller's session directory while
its digest is checked (by the caller's verifying stream, or here for bytes in memory), fsync'd,
then renamed into place with the store lock held. A blob already present is kept and the new copy
dropped: identical digests mean identical bytes. Blob files are read-only (0444).
"""

from __future__ import annotations

import os
import uuid
from typing import BinaryIO

from layerfs.oci import Digest, new_hasher, split_digest, verify_bytes
from layerfs.store.durable import fsync_dir
from layerfs.store.layout import StorePaths

_CHUNK = 1 << 20
_BLOB_MODE = 0o444
_HEX = frozenset("0123456789abcdef")


class BlobStore:
    """The ``blobs/`` directory of one store."""

    def __init__(self, paths: StorePaths) -> None:
        self.paths = paths

    def path(self, digest: Digest) -> str:
        return self.paths.blob(digest)

    def has(self, digest: Digest) -> bool:
        return os.path.exists(self.path(digest))

    def read(self, digest: Digest) -> bytes:
        """A (small) blob's bytes, checked against its digest."""
        with open(self.path(digest), "rb") as f:
            data = f.read()
        verify_bytes(digest, data)
        return data

    def open_staging(self, session_dir: str, digest: Digest) -> tuple[str, BinaryIO]:
        """A new file for the blob ``digest`` in ``session_dir`` and its path (the caller
        verifies). Names are unique: two layers of one image may have the same blob."""
        algorithm, encoded = split_digest(digest)
        path = os.path.join(session_dir, f"blob-{algorithm}-{encoded}-{uuid.uuid4().hex[:8]}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _BLOB_MODE)
        return path, open(fd, "wb", buffering=_CHUNK)

    def stage_bytes(self, session_dir: str, digest: Digest, data: bytes) -> str:
        """Verify ``data`` against ``digest`` and stage it; the staged path."""
        verify_bytes(digest, data)
        path, f = self.open_staging(session_dir, digest)
        with f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path

    def publish(self, staged: str, digest: Digest) -> bool:
        """Move the staged, verified blob into place (store lock held).

        False (and the staged copy removed) when the store already had it.
        """
        target = self.path(digest)
        if os.path.exists(target):
            os.unlink(staged)
            return False
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        os.rename(staged, target)
        fsync_dir(os.path.dirname(target))
        return True

    def remove(self, digest: Digest) -> int:
        """Delete a blob; the bytes freed (0 if it was not there)."""
        path = self.path(digest)
        try:
            size = os.lstat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return size

    def list(self) -> list[Digest]:
        """Every blob in the store (files whose names are not digests are ignored)."""
        out = []
        try:
            algorithms = sorted(os.listdir(self.paths.blobs))
        except FileNotFoundError:
            return []
        for algorithm in algorithms:
            directory = os.path.join(self.paths.blobs, algorithm)
            if not os.path.isdir(directory):
                continue
            for name in sorted(os.listdir(directory)):
                if name and set(name) <= _HEX:
                    out.append(Digest(f"{algorithm}:{name}"))
        return out

    def check(self, digest: Digest) -> str | None:
        """Re-hash a stored blob; a one-line problem, or None when it is intact."""
        algorithm, _ = split_digest(digest)
        try:
            hasher = new_hasher(algorithm)
        except ValueError:
            return f"blob {digest}: algorithm {algorithm!r} cannot be verified"
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        except FileNotFoundError:
            return f"blob {digest}: missing"
        actual = hasher.digest()
        if actual != digest:
            return f"blob {digest}: content changed (it hashes to {actual})"
        return None
