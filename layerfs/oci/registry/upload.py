"""Blob uploads (OCI distribution spec): skip, mount, or upload in one request or in chunks.

:func:`upload_blob` puts one blob into a repository, doing the least work that gets it there:

1. ``HEAD`` the blob: if the repository has it already, nothing is sent (``EXISTS``).
2. With ``mount_from`` (another repository on the same registry that holds the blob, e.g. the
   one the image was pulled from), ``POST .../blobs/uploads/?mount=DIGEST&from=REPO``: a ``201``
   means the registry linked the blob without a byte sent (``MOUNTED``); a ``202`` means it
   would not, and the upload session it opened is used instead.
3. Otherwise ``POST .../blobs/uploads/`` opens a session, and the blob goes up
   (``UPLOADED``): blobs up to ``options.chunk_size`` in a single ``PUT ...?digest=``;
   larger ones in ``PATCH`` requests of ``chunk_size`` bytes (``Content-Range: START-END``),
   each answered with the session's next ``Location``, and a closing empty ``PUT ?digest=``.

The blob is read through a :class:`~layerfs.oci.blob.VerifiedReader`, so a damaged local copy
fails (its size or digest) instead of being published; the registry checks the digest too.
"""

from __future__ import annotations

import enum
import urllib.parse
from collections.abc import Callable, Sequence
from typing import BinaryIO

from layerfs.oci.blob import VerifiedReader
from layerfs.oci.descriptor import Descriptor
from layerfs.oci.registry.client import RegistryClient, error_from, pull_scope, push_scope
from layerfs.oci.registry.connection import Reply
from layerfs.oci.registry.errors import RegistryError
from layerfs.oci.streams import read_up_to

BlobOpener = Callable[[Descriptor], BinaryIO]
"""Opens the local file of a blob (unverified: the uploader verifies)."""

_OCTET = "application/octet-stream"


class UploadAction(enum.Enum):
    """How a blob got into the repository."""

    EXISTS = "exists"
    MOUNTED = "mounted"
    UPLOADED = "uploaded"


def upload_blob(
    client: RegistryClient,
    repository: str,
    descriptor: Descriptor,
    open_blob: BlobOpener,
    *,
    mount_from: str | None = None,
) -> UploadAction:
    """Make sure ``repository`` holds the blob of ``descriptor``; see the module doc."""
    scopes = push_scope(repository)
    digest = descriptor.digest
    if client.blob_size(repository, digest, scopes) is not None:
        return UploadAction.EXISTS
    base = f"/v2/{repository}/blobs/uploads/"
    if mount_from is not None and mount_from != repository:
        query = urllib.parse.urlencode({"mount": digest, "from": mount_from})
        mount_scopes = (*scopes, *pull_scope(mount_from))
        with client.send("POST", f"{base}?{query}", mount_scopes, length=0, follow=False) as r:
            if r.status == 201:
                return UploadAction.MOUNTED
            location = _location(r, "start upload")
    else:
        with client.send("POST", base, scopes, length=0, follow=False) as r:
            location = _location(r, "start upload")
    if descriptor.size <= client.options.chunk_size:
        _put_whole(client, scopes, location, descriptor, open_blob)
    else:
        _put_chunks(client, scopes, location, descriptor, open_blob)
    return UploadAction.UPLOADED


def _location(reply: Reply, what: str) -> str:
    """The upload session URL of a ``202`` ``reply``."""
    if reply.status != 202:
        raise error_from(reply, what)
    location = reply.header("Location")
    if not location:
        raise RegistryError(f"{what}: the registry gave no upload Location")
    return urllib.parse.urljoin(reply.url, location)


def _with_digest(location: str, descriptor: Descriptor) -> str:
    sep = "&" if urllib.parse.urlsplit(location).query else "?"
    return f"{location}{sep}{urllib.parse.urlencode({'digest': descriptor.digest})}"


def _verified(descriptor: Descriptor, open_blob: BlobOpener) -> VerifiedReader:
    f = open_blob(descriptor)
    try:
        return VerifiedReader(f, descriptor.digest, descriptor.size)
    except BaseException:
        f.close()
        raise


def _finish(reply: Reply, descriptor: Descriptor) -> None:
    if reply.status != 201:
        raise error_from(reply, f"upload of blob {descriptor.digest}")


def _put_whole(
    client: RegistryClient,
    scopes: Sequence[str],
    location: str,
    descriptor: Descriptor,
    open_blob: BlobOpener,
) -> None:
    def body() -> _Body:
        return _Body(_verified(descriptor, open_blob))

    url = _with_digest(location, descriptor)
    headers = {"Content-Type": _OCTET}
    with client.send(
        "PUT", url, scopes, headers=headers, body=body, length=descriptor.size, follow=False
    ) as r:
        _finish(r, descriptor)


def _put_chunks(
    client: RegistryClient,
    scopes: Sequence[str],
    location: str,
    descriptor: Descriptor,
    open_blob: BlobOpener,
) -> None:
    chunk_size = client.options.chunk_size
    with _verified(descriptor, open_blob) as reader:
        start = 0
        while start < descriptor.size:
            chunk = read_up_to(reader, min(chunk_size, descriptor.size - start))
            if not chunk:
                reader.verify()  # raises: the file is shorter than its descriptor
                break
            headers = {
                "Content-Type": _OCTET,
                "Content-Range": f"{start}-{start + len(chunk) - 1}",
            }
            with client.send(
                "PATCH",
                location,
                scopes,
                headers=headers,
                body=chunk,
                length=len(chunk),
                follow=False,
            ) as r:
                location = _location(r, f"upload of blob {descriptor.digest} at byte {start}")
            start += len(chunk)
        reader.verify()  # nothing is committed unless the whole blob checked out
    with client.send(
        "PUT", _with_digest(location, descriptor), scopes, length=0, follow=False
    ) as r:
        _finish(r, descriptor)


class _Body:
    """A verified blob as a request body: ``http.client`` reads it until ``b""``."""

    def __init__(self, reader: VerifiedReader) -> None:
        self._reader = reader

    def read(self, size: int = -1, /) -> bytes:
        return self._reader.read(size) or b""

    def close(self) -> None:
        self._reader.close()
