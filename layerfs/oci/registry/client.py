"""The registry API (OCI distribution spec) for one registry: manifests, blobs, tags.

:class:`RegistryClient` sends each request with whatever authorization the registry asked for
(see :mod:`layerfs.oci.registry.auth`) and turns error answers into
:class:`~layerfs.oci.registry.errors.RegistryError`\\ s that quote the registry's own error code
and message. Uploads are in :mod:`layerfs.oci.registry.upload`, resumable blob downloads in
:mod:`layerfs.oci.registry.blobreader`.

Manifests are asked for with every media type layerfs reads (OCI manifest and index, Docker
schema 2 manifest and manifest list); Docker schema 1 is refused with a message saying so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from layerfs.oci import mediatypes
from layerfs.oci.digest import Digest, DigestError, parse_digest
from layerfs.oci.jsondoc import MAX_DOCUMENT_SIZE
from layerfs.oci.registry.auth import Authenticator
from layerfs.oci.registry.authfile import find_credentials
from layerfs.oci.registry.connection import BodyStream, HttpTransport, Reply
from layerfs.oci.registry.errors import AuthenticationError, NotFoundError, RegistryError
from layerfs.oci.registry.names import RegistryRef
from layerfs.oci.registry.options import RegistryOptions

logger = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join(
    (
        mediatypes.OCI_MANIFEST,
        mediatypes.OCI_INDEX,
        mediatypes.DOCKER_MANIFEST,
        mediatypes.DOCKER_MANIFEST_LIST,
    )
)
SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
_MAX_ERROR_BODY = 64 << 10
_MAX_TAGS_ANSWER = 4 << 20

BodyFactory = Callable[[], BodyStream]
"""Makes a fresh request body (a request may have to be sent again after a ``401``)."""


@dataclass(frozen=True)
class ManifestReply:
    """A manifest or index as the registry sent it."""

    data: bytes
    media_type: str | None  # from Content-Type, when it names a known document type
    digest: Digest | None  # from Docker-Content-Digest, when present and well-formed


def pull_scope(repository: str) -> tuple[str, ...]:
    """The token scope for reading ``repository``."""
    return (f"repository:{repository}:pull",)


def push_scope(repository: str) -> tuple[str, ...]:
    """The token scope for writing ``repository``."""
    return (f"repository:{repository}:pull,push",)


class RegistryClient:
    """Requests to the registry of ``ref`` (``ref.api_host``), authenticated as needed.

    ``insecure`` (from registries.conf) turns TLS verification off unless ``options`` says
    otherwise explicitly. Credentials are ``options.credentials``, else the auth files'.
    """

    def __init__(
        self, ref: RegistryRef, options: RegistryOptions, *, insecure: bool = False
    ) -> None:
        self.ref = ref
        self.options = options
        verify = options.tls_verify if options.tls_verify is not None else not insecure
        self.transport = HttpTransport(ref.api_host, options, verify=verify)
        credentials = options.credentials or find_credentials(ref, options.auth_file)
        self.auth = Authenticator(self.transport, credentials)

    def send(
        self,
        method: str,
        url: str,
        scopes: Sequence[str],
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | BodyFactory | None = None,
        length: int | None = None,
        follow: bool = True,
    ) -> Reply:
        """Send a request needing ``scopes``, answering the registry's authentication challenges."""
        for _ in range(3):
            all_headers = dict(headers or {})
            authorization = self.auth.header(scopes)
            if authorization is not None:
                all_headers["Authorization"] = authorization
            payload = body() if callable(body) else body
            try:
                reply = self.transport.request(
                    method, url, all_headers, payload, length=length, follow=follow
                )
            finally:
                if payload is not None and not isinstance(payload, bytes):
                    payload.close()
            if reply.status != 401:
                return reply
            try:
                self.auth.answer(reply, scopes, sent=authorization)
            finally:
                reply.close()
        raise AuthenticationError("unauthorized: the registry refused every authorization offered")

    # -- manifests --------------------------------------------------------------------------

    def get_manifest(self, repository: str, reference: str) -> ManifestReply:
        """The manifest or index ``reference`` (a tag or a digest) of ``repository``."""
        url = f"/v2/{repository}/manifests/{reference}"
        with self.send(
            "GET", url, pull_scope(repository), headers={"Accept": MANIFEST_ACCEPT}
        ) as r:
            if r.status != 200:
                raise error_from(r, f"manifest {reference}")
            content_type = (r.header("Content-Type") or "").partition(";")[0].strip()
            if content_type in SCHEMA1_TYPES:
                raise RegistryError(
                    f"manifest {reference} is Docker schema 1 ({content_type}), which layerfs "
                    "does not read; convert it, e.g. skopeo copy --format v2s2"
                )
            data = r.read_all(MAX_DOCUMENT_SIZE)
        known = mediatypes.is_manifest_type(content_type) or mediatypes.is_index_type(content_type)
        return ManifestReply(data, content_type if known else None, _header_digest(r))

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str
    ) -> Digest | None:
        """Store manifest ``data`` as ``reference``; the digest the registry reports, if any."""
        url = f"/v2/{repository}/manifests/{reference}"
        headers = {"Content-Type": media_type}
        with self.send(
            "PUT", url, push_scope(repository), headers=headers, body=data, length=len(data)
        ) as r:
            if r.status not in (200, 201, 202):
                raise error_from(r, f"manifest {reference}")
            return _header_digest(r)

    def list_tags(self, repository: str, limit: int = 100) -> list[str]:
        """Up to ``limit`` tags of ``repository`` (empty if the registry will not say).

        A repository the registry does not know is a :class:`NotFoundError`.
        """
        url = f"/v2/{repository}/tags/list?n={limit}"
        with self.send("GET", url, pull_scope(repository)) as r:
            if r.status == 404:
                raise error_from(r, f"repository {repository}")
            if r.status != 200:
                return []
            try:
                tags = json.loads(r.read_all(_MAX_TAGS_ANSWER)).get("tags") or []
            except (ValueError, AttributeError):
                return []
        return [t for t in tags if isinstance(t, str)][:limit]

    # -- blobs ------------------------------------------------------------------------------

    def blob_size(self, repository: str, digest: Digest, scopes: Sequence[str] = ()) -> int | None:
        """The size of blob ``digest`` in ``repository`` if the registry has it, else None."""
        url = f"/v2/{repository}/blobs/{digest}"
        with self.send("HEAD", url, scopes or pull_scope(repository)) as r:
            if r.status == 404:
                return None
            if r.status != 200:
                raise error_from(r, f"blob {digest}")
            length = r.header("Content-Length")
        try:
            return int(length) if length is not None else -1
        except ValueError:
            return -1

    def get_blob(self, repository: str, digest: Digest, offset: int = 0) -> Reply:
        """A ``GET`` of blob ``digest`` from byte ``offset`` on (status 200 or 206)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        r = self.send(
            "GET", f"/v2/{repository}/blobs/{digest}", pull_scope(repository), headers=headers
        )
        if r.status not in (200, 206):
            try:
                raise error_from(r, f"blob {digest}")
            finally:
                r.close()
        return r


def _header_digest(reply: Reply) -> Digest | None:
    value = reply.header("Docker-Content-Digest")
    if not value:
        return None
    try:
        return parse_digest(value.strip())
    except DigestError:
        return None


def error_from(reply: Reply, what: str) -> RegistryError:
    """The error an unexpected ``reply`` about ``what`` means (its body is read, not closed)."""
    code, message = _registry_error(reply)
    detail = f"{code.lower().replace('_', ' ')}: {message}" if code else message
    if reply.status == 404:
        return NotFoundError(f"{what}: {detail or 'not found'}", code)
    if reply.status == 401:
        return AuthenticationError(f"{what}: unauthorized{': ' + detail if detail else ''}")
    if reply.status == 403:
        return AuthenticationError(f"{what}: access denied{': ' + detail if detail else ''}")
    tail = f": {detail}" if detail else ""
    return RegistryError(f"{what}: HTTP {reply.status} {reply.reason}{tail}")


def _registry_error(reply: Reply) -> tuple[str | None, str]:
    """The first ``errors[]`` entry of the body, as ``(code, message)``."""
    try:
        body = reply.read_all(_MAX_ERROR_BODY)
    except (RegistryError, OSError):
        return None, ""
    try:
        errors = json.loads(body).get("errors")
        first = errors[0]
        code, message = first.get("code"), first.get("message")
    except (ValueError, AttributeError, IndexError, TypeError, KeyError):
        text = body.decode("utf-8", "replace").strip().splitlines()
        return None, text[0][:200] if text else ""
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else "")
