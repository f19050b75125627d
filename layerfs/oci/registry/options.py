"""How to talk to registries: credentials, TLS, retries, upload chunking.

:class:`RegistryOptions` is what ``--creds``, ``--tls-verify`` and ``--cert-dir`` become. A
caller that cannot pass it down explicitly (``layerctl pull`` goes through the store's
``pull_image``, which only knows source names) sets it for the duration of a call with
:func:`using_registry_options`; :func:`current_registry_options` is what a source opened
without explicit options uses. The value is a ``ContextVar``: it does not leak between threads
or concurrent tasks, and it is restored when the ``with`` block ends.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from layerfs.oci.registry.errors import AuthenticationError

DEFAULT_CHUNK_SIZE = 16 << 20
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 5


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for basic auth and token requests."""

    username: str
    password: str = field(repr=False)


def parse_credentials(text: str) -> Credentials:
    """``USER:PASS`` (as skopeo's ``--creds``); the password may contain ``:``."""
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise AuthenticationError("--creds: expected USER:PASS")
    return Credentials(username, password)


@dataclass(frozen=True)
class RegistryOptions:
    """Settings for one pull or push.

    ``tls_verify`` None means verify, unless a ``registries.conf`` marks the registry
    ``insecure``; False skips certificate checks and allows plain HTTP (skopeo's
    ``--tls-verify=false``). ``cert_dir`` replaces the default certificate directories
    (``/etc/containers/certs.d/HOST:PORT``, ``/etc/docker/certs.d/HOST:PORT``): ``*.crt`` are
    CA certificates, ``NAME.cert`` with ``NAME.key`` a client certificate. ``auth_file``
    replaces the search for ``auth.json``; ``registries_conf`` the default
    ``registries.conf`` (``""``: none). Blobs larger than ``chunk_size`` are uploaded in
    chunks of that size, smaller ones in one request.
    """

    credentials: Credentials | None = None
    tls_verify: bool | None = None
    cert_dir: str | None = None
    auth_file: str | None = None
    registries_conf: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    parallel_uploads: int = 4


_CURRENT: contextvars.ContextVar[RegistryOptions | None] = contextvars.ContextVar(
    "layerfs_registry_options", default=None
)


def current_registry_options() -> RegistryOptions:
    """The options set by the innermost :func:`using_registry_options`, else the defaults."""
    return _CURRENT.get() or RegistryOptions()


@contextmanager
def using_registry_options(options: RegistryOptions) -> Iterator[None]:
    """Make ``options`` the current registry options inside the ``with`` block."""
    token = _CURRENT.set(options)
    try:
        yield
    finally:
        _CURRENT.reset(token)
