"""Exceptions of the registry client: user errors, each one line naming the registry at fault.

They are :class:`~layerfs.oci.errors.SourceError`\\ s (so ``OCIError`` and ``ValueError``): the
CLI prints them as they are. Network failures (refused connections, TLS problems, dropped
connections that retrying could not get past) are raised as :class:`RegistryError` too, never
as ``http.client`` exceptions, so that no caller mistakes them for bugs.
"""

from __future__ import annotations

from layerfs.oci.errors import SourceError


class RegistryError(SourceError):
    """A registry refused a request, answered nonsense, or could not be reached."""


class AuthenticationError(RegistryError):
    """The registry wants credentials that were not given, or rejected those that were."""


class NotFoundError(RegistryError):
    """The registry has no such repository, tag, manifest or blob.

    ``code`` is the registry's error code (``MANIFEST_UNKNOWN``, ``NAME_UNKNOWN``, ...), if
    it sent one.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TLSError(RegistryError):
    """The TLS connection failed: an untrusted certificate, or a server without TLS."""
