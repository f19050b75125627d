"""Blob downloads that survive a dropped connection.

:class:`BlobReader` is a plain byte stream (``read``/``close``) over ``GET /v2/REPO/blobs/DIGEST``.
When the connection breaks, times out or ends before the blob's size, it asks again from where
it stopped (``Range: bytes=N-``), checking that the answer starts there (``206`` with a matching
``Content-Range``); a registry that ignores ``Range`` (``200``) is read from the start again
and the bytes already delivered are skipped. After ``options.retries`` attempts in a row
without progress (or ten times that many in all) it gives up with a
:class:`~layerfs.oci.registry.errors.RegistryError` saying how far it got.

It does not verify anything: the caller wraps it in a
:class:`~layerfs.oci.blob.VerifiedReader`, which hashes exactly the bytes delivered, so a resumed
download is checked like any other.
"""

from __future__ import annotations

import logging
import re
import time

from layerfs.oci.digest import Digest
from layerfs.oci.registry.client import RegistryClient
from layerfs.oci.registry.connection import Reply, backoff
from layerfs.oci.registry.errors import RegistryError

logger = logging.getLogger(__name__)

_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_SKIP_CHUNK = 1 << 20
_READ_ALL = 1 << 20


class BlobReader:
    """The blob ``digest`` of ``repository``, ``size`` bytes long (None: unknown)."""

    def __init__(
        self, client: RegistryClient, repository: str, digest: Digest, size: int | None
    ) -> None:
        self.client = client
        self.repository = repository
        self.digest = digest
        self.size = size
        self.resumes = 0
        self._offset = 0
        self._failures = 0
        self._reply: Reply | None = client.get_blob(repository, digest)

    @property
    def offset(self) -> int:
        """How many bytes were delivered so far."""
        return self._offset

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (``-1``: a large chunk); ``b""`` at the end of the blob."""
        want = _READ_ALL if size < 0 else size
        if want == 0:
            return b""
        while True:
            reply = self._reply
            if reply is None:
                raise ValueError("read from a closed blob stream")
            cause = "connection closed early"
            try:
                chunk = reply.read(want)
            except OSError as exc:
                chunk, cause = b"", f"{exc.__class__.__name__}: {exc}"
            else:
                if chunk:
                    self._offset += len(chunk)
                    self._failures = 0
                    return chunk
                if self.size is None or self._offset >= self.size:
                    return b""
            self._resume(cause)

    def _resume(self, cause: str) -> None:
        while True:
            self._failures += 1
            where = f"blob {self.digest}: download stopped at byte {self._offset}"
            if self.size is not None:
                where += f" of {self.size}"
            retries = self.client.options.retries
            if self._failures > retries or self.resumes >= 10 * retries:
                raise RegistryError(
                    f"{where} ({cause}); gave up after {self._failures - 1} retries"
                )
            logger.debug("%s (%s): resuming, attempt %d", where, cause, self._failures)
            self._close_reply()
            time.sleep(backoff(self._failures))
            self.resumes += 1
            reply = self.client.get_blob(self.repository, self.digest, self._offset)
            self._reply = reply
            if reply.status == 206:
                m = _CONTENT_RANGE_RE.fullmatch((reply.header("Content-Range") or "").strip())
                if m is None or int(m.group(1)) != self._offset:
                    raise RegistryError(
                        f"{where}: the registry resumed at the wrong place "
                        f"(Content-Range {reply.header('Content-Range')!r})"
                    )
                return
            try:  # 200: the whole blob again; skip what was delivered
                self._skip(self._offset)
                return
            except OSError as exc:
                cause = f"{exc.__class__.__name__}: {exc}"

    def _skip(self, count: int) -> None:
        assert self._reply is not None
        left = count
        while left:
            chunk = self._reply.read(min(left, _SKIP_CHUNK))
            if not chunk:
                raise ConnectionResetError("connection closed while skipping to the resume point")
            left -= len(chunk)

    def _close_reply(self) -> None:
        if self._reply is not None:
            self._reply.close()
            self._reply = None

    def close(self) -> None:
        """Drop the connection."""
        self._close_reply()
