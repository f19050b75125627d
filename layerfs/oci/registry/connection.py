"""HTTP(S) requests to one registry: scheme choice, redirects, retries, errors in plain words.

:class:`HttpTransport` sends one request per connection (``http.client``), so it is safe to use
from several threads at once; the connection lives as long as its :class:`Reply`. It knows
nothing of authentication: :mod:`layerfs.oci.registry.client` adds that.

- Scheme: HTTPS. When verification is off (``--tls-verify=false``) and the TLS handshake fails,
  plain HTTP is tried, and used from then on if it works (skopeo does the same).
- Redirects of ``GET`` and ``HEAD`` are followed (blob downloads are often sent to a CDN); the
  ``Authorization`` header is dropped when the redirect leaves the registry's host.
- Retries: ``GET`` and ``HEAD`` are retried, with growing pauses, after a dropped connection, a
  timeout, a 5xx or a 429 answer (honouring a short ``Retry-After``). Refused connections,
  unknown hosts and TLS failures are not retried: they will not get better by waiting.
- Every failure is a :class:`~layerfs.oci.registry.errors.RegistryError` naming the host.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from typing import Protocol

from layerfs.oci.registry.errors import RegistryError, TLSError
from layerfs.oci.registry.options import RegistryOptions
from layerfs.oci.registry.tls import ssl_context

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 10
_SEND_BLOCK = 1 << 20
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_IDEMPOTENT = frozenset({"GET", "HEAD"})
_MAX_RETRY_AFTER = 10.0


class BodyStream(Protocol):
    """A request body read to its end by ``http.client`` (the caller sets its length)."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the end."""
        ...

    def close(self) -> None:
        """Release it."""
        ...


Body = bytes | BodyStream | None


def backoff(attempt: int) -> float:
    """The pause before retry number ``attempt`` (from 1): 0.2 s doubling, at most 5 s."""
    return float(min(0.2 * 2 ** (attempt - 1), 5.0))


class Reply:
    """An HTTP response being read; the connection closes with it."""

    def __init__(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str
    ) -> None:
        self._conn = conn
        self._response = response
        self.url = url
        self.status = response.status
        self.reason = response.reason
        self.headers = response.headers

    def header(self, name: str) -> str | None:
        """The value of header ``name``, or None."""
        return self._response.getheader(name)

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes of the body (all with -1); ``b""`` at its end."""
        try:
            return self._response.read(None if size < 0 else size)
        except http.client.IncompleteRead as exc:
            raise ConnectionResetError(f"connection closed early: {exc}") from None
        except http.client.HTTPException as exc:
            raise ConnectionResetError(f"bad response body: {exc!r}") from None

    def read_all(self, limit: int) -> bytes:
        """The whole body, which must not exceed ``limit`` bytes (else `RegistryError`, as
        is a connection lost on the way: small answers are not resumed, but asked again)."""
        try:
            data = self.read(limit + 1)
            while len(data) <= limit:
                more = self.read(limit + 1 - len(data))
                if not more:
                    return data
                data += more
        except OSError as exc:
            raise RegistryError(f"{_where(self.url)}: {exc}") from None
        raise RegistryError(f"{_where(self.url)}: answer larger than {limit} bytes")

    def close(self) -> None:
        """Drop the response and its connection."""
        self._response.close()
        self._conn.close()

    def __enter__(self) -> Reply:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class HttpTransport:
    """Requests to the registry at ``host`` (``HOST[:PORT]``), per ``options``."""

    def __init__(self, host: str, options: RegistryOptions, *, verify: bool) -> None:
        self.host = host
        self.options = options
        self.verify = verify
        self._context = ssl_context(host, verify=verify, cert_dir=options.cert_dir)
        self._scheme: str | None = None  # decided by the first request

    @property
    def base_url(self) -> str:
        """``https://HOST`` (or ``http://`` once plain HTTP was found to be needed)."""
        return f"{self._scheme or 'https'}://{self.host}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (an absolute URL stays as it is)."""
        return urllib.parse.urljoin(self.base_url + "/", path)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        *,
        length: int | None = None,
        follow: bool = True,
    ) -> Reply:
        """Send ``method url`` and return the reply (any status); see the module doc.

        ``url`` is absolute or a path on the registry. A file ``body`` needs ``length``.
        """
        url = self.url(url)
        headers = dict(headers or {})
        attempt = 0
        redirects = 0
        while True:
            try:
                reply = self._send_once(method, url, headers, body, length)
            except _Transient as exc:
                attempt += 1
                if method not in _IDEMPOTENT or attempt > self.options.retries:
                    raise RegistryError(f"{_where(url)}: {exc.cause}") from None
                logger.debug("%s %s: %s; retry %d", method, url, exc.cause, attempt)
                time.sleep(backoff(attempt))
                continue
            if follow and method in _IDEMPOTENT and reply.status in (301, 302, 303, 307, 308):
                location = reply.header("Location")
                reply.close()
                redirects += 1
                if not location or redirects > MAX_REDIRECTS:
                    raise RegistryError(f"{_where(url)}: too many or empty redirects")
                target = urllib.parse.urljoin(url, location)
                if _netloc(target) != _netloc(url):
                    headers.pop("Authorization", None)
                logger.debug("%s %s: redirected to %s", method, url, target)
                url = target
                continue
            if reply.status in _RETRY_STATUS and method in _IDEMPOTENT:
                attempt += 1
                if attempt <= self.options.retries:
                    pause = _retry_after(reply) or backoff(attempt)
                    logger.debug("%s %s: HTTP %d; retry %d", method, url, reply.status, attempt)
                    reply.close()
                    time.sleep(pause)
                    continue
            return reply

    def _send_once(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, length: int | None
    ) -> Reply:
        parts = urllib.parse.urlsplit(url)
        if parts.netloc == self.host and parts.scheme == "https":
            if self._scheme == "http":
                url = "http" + url[len("https") :]
            elif self._scheme is None:
                return self._first_contact(method, url, headers, body, length)
        return self._exchange(method, url, headers, body, length)

    def _first_contact(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, length: int | None
    ) -> Reply:
        """The first request decides the scheme: HTTPS, or HTTP where allowed and needed."""
        try:
            reply = self._exchange(method, url, headers, body, length)
        except TLSError:
            if self.verify:
                raise
            logger.debug("%s: TLS failed; trying plain HTTP", self.host)
            self._scheme = "http"
            return self._exchange(method, "http" + url[len("https") :], headers, body, length)
        self._scheme = "https"
        return reply

    def _exchange(
        self, method: str, url: str, headers: Mapping[str, str], body: Body, length: int | None
    ) -> Reply:
        parts = urllib.parse.urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.netloc,
                timeout=self.options.timeout,
                context=self._context,
                blocksize=_SEND_BLOCK,
            )
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(
                parts.netloc, timeout=self.options.timeout, blocksize=_SEND_BLOCK
            )
        else:
            raise RegistryError(f"{url}: unsupported URL scheme {parts.scheme!r}")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        send_headers = {"User-Agent": "layerfs", **headers}
        if length is not None:
            send_headers["Content-Length"] = str(length)
        try:
            conn.request(method, target, body=body, headers=send_headers)
            response = conn.getresponse()
        except BaseException as exc:
            conn.close()
            raise _classify(exc, parts.netloc) from None
        return Reply(conn, response, url)


class _Transient(Exception):
    """A failure worth a retry (of an idempotent request)."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _classify(exc: BaseException, netloc: str) -> BaseException:
    """``exc`` from a request to ``netloc`` as the error to raise."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSError(
            f"TLS certificate of {netloc} not trusted: {exc.verify_message} (trust its CA with "
            "--cert-dir DIR, or skip verification with --tls-verify=false)"
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if "WRONG_VERSION_NUMBER" in str(exc) or reason == "WRONG_VERSION_NUMBER":
            return TLSError(
                f"{netloc} does not speak TLS (for a plain-HTTP registry use --tls-verify=false)"
            )
        return TLSError(f"TLS handshake with {netloc} failed: {reason}")
    if isinstance(exc, ConnectionRefusedError):
        return RegistryError(f"cannot connect to {netloc}: connection refused")
    if isinstance(exc, socket.gaierror):
        return RegistryError(f"cannot resolve {netloc}: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError):
        return _Transient("timed out")
    if isinstance(exc, ConnectionError | http.client.HTTPException):
        return _Transient(f"connection lost ({exc.__class__.__name__}: {exc})")
    if isinstance(exc, OSError):
        return RegistryError(f"{netloc}: {exc.strerror or exc}")
    return exc


def _retry_after(reply: Reply) -> float | None:
    value = reply.header("Retry-After")
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return None if seconds is None else min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.netloc}{parts.path}"
