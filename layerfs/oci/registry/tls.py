"""TLS settings for one registry: trusted CAs, client certificates, verification on or off.

Certificates come from a directory laid out as containers-certs.d(5) says: ``*.crt`` files are
CA certificates trusted in addition to the system's, and each ``NAME.cert`` with its
``NAME.key`` is a client certificate. The directory is ``--cert-dir`` when given, else
``/etc/containers/certs.d/HOST[:PORT]`` and ``/etc/docker/certs.d/HOST[:PORT]``, where they
exist. Without verification (``--tls-verify=false``) nothing about the server is checked, but a
client certificate is still presented.
"""

from __future__ import annotations

import os
import ssl

from layerfs.oci.registry.errors import TLSError

SYSTEM_CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")


def cert_dirs(host: str, explicit: str | None) -> list[str]:
    """The certificate directories for the registry ``host`` (``HOST[:PORT]``)."""
    if explicit is not None:
        if not os.path.isdir(explicit):
            raise TLSError(f"--cert-dir {explicit}: no such directory")
        return [explicit]
    return [d for base in SYSTEM_CERT_DIRS if os.path.isdir(d := os.path.join(base, host))]


def ssl_context(host: str, *, verify: bool, cert_dir: str | None) -> ssl.SSLContext:
    """An ``SSLContext`` for connections to ``host``."""
    if verify:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for directory in cert_dirs(host, cert_dir):
        _load_dir(context, directory, verify=verify)
    return context


def _load_dir(context: ssl.SSLContext, directory: str, *, verify: bool) -> None:
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        try:
            if name.endswith(".crt") and verify:
                context.load_verify_locations(cafile=path)
            elif name.endswith(".cert"):
                key = path[: -len(".cert")] + ".key"
                if not os.path.exists(key):
                    raise TLSError(f"{path}: client certificate without its key {key}")
                context.load_cert_chain(path, key)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(f"{path}: cannot load certificate: {exc}") from None
