"""Registry image references: ``HOST[:PORT]/REPO[:TAG|@DIGEST]``, as docker and skopeo read them.

The grammar is distribution's (``github.com/distribution/reference``): the first path component
is the registry when it contains a ``.`` or a ``:`` or is ``localhost``; otherwise the image is on
Docker Hub (``busybox`` is ``docker.io/library/busybox``). Repository components are lowercase
alphanumerics separated by ``.``, ``_``, ``__`` or dashes; a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]``
up to 128 characters; a digest is an image-spec digest. Without tag or digest the tag is
``latest``. With both, the digest decides (the tag is kept for display), as in containers/image.

Docker Hub's API lives at ``registry-1.docker.io``; :attr:`RegistryRef.api_host` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from layerfs.oci.digest import Digest, DigestError, parse_digest
from layerfs.oci.errors import SourceError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class RegistryRef:
    """A parsed registry reference; ``str()`` gives its canonical form (no transport)."""

    domain: str  # as written, e.g. "docker.io", "127.0.0.1:5000"
    repository: str  # e.g. "library/busybox"
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """``DOMAIN/REPOSITORY``."""
        return f"{self.domain}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The ``HOST[:PORT]`` to send API requests to."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    def with_reference(
        self, *, tag: str | None = None, digest: Digest | None = None
    ) -> RegistryRef:
        """The same repository, at ``tag`` and/or ``digest``."""
        return RegistryRef(self.domain, self.repository, tag, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None or self.digest is None:
            text += f":{self.tag or DEFAULT_TAG}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_registry_ref(text: str) -> RegistryRef:
    """Parse ``[HOST[:PORT]/]REPO[:TAG][@DIGEST]`` (without ``docker://``).

    Raises :class:`SourceError` naming ``text`` and what is wrong with it.
    """

    def bad(why: str) -> SourceError:
        return SourceError(f"docker://{text}: {why}")

    if not text:
        raise bad("missing image name after docker://")
    rest, at, digest_text = text.partition("@")
    digest: Digest | None = None
    if at:
        try:
            digest = parse_digest(digest_text)
        except DigestError as exc:
            raise bad(str(exc)) from None
    name, tag = rest, None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise bad(f"invalid tag {tag!r} (letters, digits, '_', '.', '-'; at most 128)")
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, repository = first, remainder
        if not _DOMAIN_RE.fullmatch(domain):
            raise bad(f"invalid registry host {domain!r}")
    else:
        domain, repository = DOCKER_HUB, name
    if not _REPOSITORY_RE.fullmatch(repository):
        raise bad(
            f"invalid repository name {repository!r} (lowercase letters, digits and "
            "separators '.', '_', '-', '/')"
        )
    if domain in ("index.docker.io", DOCKER_HUB_API):
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if len(domain) + 1 + len(repository) > MAX_NAME_LENGTH:
        raise bad(f"repository name longer than {MAX_NAME_LENGTH} characters")
    return RegistryRef(domain, repository, tag, digest)
