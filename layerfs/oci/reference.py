"""Image source names in skopeo's transport syntax.

``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]`` and ``docker-archive:FILE[:REF]``.
As in containers/image, the path ends at the first ``:`` after the transport,
so paths containing ``:`` cannot be named. ``REF`` is a name in the layout's
``org.opencontainers.image.ref.name`` annotations for the OCI transports, a
``NAME[:TAG]`` from ``RepoTags`` for docker-archive, or ``@N`` (the N-th
image, from 0) for any of them.

``docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]`` names an image in a registry (grammar in
:mod:`layerfs.oci.registry.names`); its ``SourceRef`` has ``path`` ``HOST/REPO`` and ``ref``
the canonical ``HOST/REPO:TAG`` (or ``@DIGEST``), e.g. ``docker.io/library/busybox:latest``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from layerfs.oci.errors import SourceError
from layerfs.oci.registry.names import parse_registry_ref


class Transport(enum.Enum):
    """How an image is stored."""

    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    DOCKER = "docker"


_SUPPORTED = ", ".join("docker://" if t is Transport.DOCKER else f"{t.value}:" for t in Transport)
_INDEX_REF_RE = re.compile(r"@(0|[1-9][0-9]{0,8})")
# containers/image's rule for OCI layout reference names.
_OCI_REF_RE = re.compile(r"[A-Za-z0-9._-]+(?:[:/@][A-Za-z0-9._-]+)*")
_DOCKER_REF_RE = re.compile(r"[a-z0-9]+(?:[._/:-][A-Za-z0-9_.-]+)*")


@dataclass(frozen=True)
class SourceRef:
    """A parsed image source name."""

    transport: Transport
    path: str
    ref: str | None = None

    @property
    def source_index(self) -> int | None:
        """N when ``ref`` is ``@N``, else None."""
        if self.ref is not None and _INDEX_REF_RE.fullmatch(self.ref):
            return int(self.ref[1:])
        return None

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            return f"docker://{self.ref}"
        text = f"{self.transport.value}:{self.path}"
        return f"{text}:{self.ref}" if self.ref is not None else text


def parse_source(name: str) -> SourceRef:
    """Parse an image source name; :class:`SourceError` says what is wrong with it."""
    if name.startswith("docker://"):
        image = parse_registry_ref(name[len("docker://") :])
        return SourceRef(Transport.DOCKER, image.name, str(image))
    transport_name, sep, rest = name.partition(":")
    if not sep:
        raise SourceError(f"{name!r}: missing transport (expected one of {_SUPPORTED})")
    try:
        transport = Transport(transport_name)
    except ValueError:
        raise SourceError(
            f"{name!r}: unknown transport {transport_name!r} (supported: {_SUPPORTED})"
        ) from None
    if transport is Transport.DOCKER:
        raise SourceError(f"{name!r}: registry images are named docker://HOST/REPO[:TAG]")
    path, _, ref = rest.partition(":")
    if not path:
        raise SourceError(f"{name!r}: missing path after {transport_name}:")
    if not ref:
        return SourceRef(transport, path, None)
    if not _INDEX_REF_RE.fullmatch(ref):
        pattern = _DOCKER_REF_RE if transport is Transport.DOCKER_ARCHIVE else _OCI_REF_RE
        if not pattern.fullmatch(ref):
            raise SourceError(f"{name!r}: invalid reference {ref!r}")
        if transport is Transport.DOCKER_ARCHIVE and "@" in ref:
            raise SourceError(f"{name!r}: docker-archive references cannot hold a digest")
    return SourceRef(transport, path, ref)


def normalize_docker_name(name: str) -> str:
    """``name`` in full form: ``busybox`` -> ``docker.io/library/busybox:latest``.

    Used to match a ``docker-archive`` reference against ``RepoTags``, which
    tools write in either form.
    """
    first, slash, remainder = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        domain, path = "docker.io", name
    else:
        domain, path = first, remainder
    if domain in ("index.docker.io", "registry-1.docker.io"):
        domain = "docker.io"
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if ":" not in path.rpartition("/")[2]:
        path += ":latest"
    return f"{domain}/{path}"
