"""A client for OCI registries (the distribution spec): ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``.

What it holds, one module each: reference names (:mod:`.names`), settings (:mod:`.options`),
``auth.json`` lookup (:mod:`.authfile`), ``WWW-Authenticate`` parsing (:mod:`.challenge`),
basic and bearer-token auth (:mod:`.auth`), TLS contexts from certificate directories
(:mod:`.tls`), registries.conf mirrors (:mod:`.mirrors`), HTTP with retries and redirects
(:mod:`.connection`), the API calls (:mod:`.client`), resumable blob downloads
(:mod:`.blobreader`), blob uploads (:mod:`.upload`) and whole-image pushes (:mod:`.push`).

The image source for pulls is :mod:`layerfs.oci.registry_source`, beside the other transports.
Like the rest of ``layerfs.oci`` it must not import ``layerfs.store``, ``layerfs.fs`` or
``layerfs.bundle``; and nothing here may import ``layerfs.oci.reference`` (which imports
:mod:`.names`) or the modules built on it.

Nothing is trusted: every manifest and blob a registry sends is verified against its digest
by the caller's :class:`~layerfs.oci.blob.VerifiedReader`; every failure is a
:class:`RegistryError` (a ``SourceError``), one line, never an ``http.client`` exception.

Caveats: one HTTP connection per request (no keep-alive pool); OAuth2 identity tokens from
``auth.json`` are not used; registries.conf drop-ins and short-name aliases are not read;
foreign layers are fetched from the registry, never from their ``urls``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from layerfs.oci.registry.errors import (
    AuthenticationError,
    NotFoundError,
    RegistryError,
    TLSError,
)
from layerfs.oci.registry.names import RegistryRef, parse_registry_ref
from layerfs.oci.registry.options import (
    Credentials,
    RegistryOptions,
    current_registry_options,
    parse_credentials,
    using_registry_options,
)

if TYPE_CHECKING:
    from layerfs.oci.registry.push import PushImage, RegistryPushResult, push_to_registry
    from layerfs.oci.registry.upload import UploadAction

# Pushing pulls in the HTTP client, TLS and auth: loaded on first use, so commands that
# never talk to a registry (layerctl create among them) start without it.
_LAZY = {
    "PushImage": "push",
    "RegistryPushResult": "push",
    "push_to_registry": "push",
    "UploadAction": "upload",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "AuthenticationError",
    "Credentials",
    "NotFoundError",
    "PushImage",
    "RegistryError",
    "RegistryOptions",
    "RegistryPushResult",
    "RegistryRef",
    "TLSError",
    "UploadAction",
    "current_registry_options",
    "parse_credentials",
    "parse_registry_ref",
    "push_to_registry",
    "using_registry_options",
]
