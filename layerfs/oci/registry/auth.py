"""Registry authentication: answering ``401`` challenges with basic auth or bearer tokens.

The client sends a request as it is; a ``401`` carries a ``WWW-Authenticate`` challenge, which
:meth:`Authenticator.answer` learns from:

- ``Basic``: the credentials are sent with this and every later request.
- ``Bearer`` (the distribution token protocol): a token for the request's scopes
  (``repository:NAME:pull``, ``...:pull,push``) is fetched from the challenge's ``realm``
  with ``service`` and ``scope`` parameters, with basic auth when there are credentials and
  anonymously otherwise. Tokens are cached per set of scopes until shortly before they expire,
  and later requests get one before they are sent.

A second ``401`` for the same request is final: :class:`AuthenticationError`, worded by what
was tried (no credentials, rejected credentials, a token without the needed access).
Thread-safe: one lock guards the learned scheme and the token cache.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from layerfs.oci.registry.challenge import Challenge, parse_challenges
from layerfs.oci.registry.connection import HttpTransport, Reply
from layerfs.oci.registry.errors import AuthenticationError, RegistryError
from layerfs.oci.registry.options import Credentials

MAX_TOKEN_ANSWER = 1 << 20
_DEFAULT_TOKEN_LIFETIME = 60
_EXPIRY_MARGIN = 10
NO_CREDENTIALS_HINT = "give --creds USER:PASS or log in with 'podman login' or 'skopeo login'"


@dataclass(frozen=True)
class _Token:
    value: str
    expires: float  # time.monotonic()

    def fresh(self) -> bool:
        return time.monotonic() < self.expires


def basic_header(creds: Credentials) -> str:
    """The ``Authorization`` value for basic auth with ``creds``."""
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class Authenticator:
    """What one registry asked for, and the credentials and tokens to answer it with.

    Error messages do not name the registry: the caller adds the image name as context.
    """

    def __init__(self, transport: HttpTransport, credentials: Credentials | None) -> None:
        self.transport = transport
        self.credentials = credentials
        self._lock = threading.Lock()
        self._basic = False
        self._bearer: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}

    def header(self, scopes: Sequence[str]) -> str | None:
        """The ``Authorization`` value to send with a request needing ``scopes``, if known."""
        with self._lock:
            if self._basic and self.credentials is not None:
                return basic_header(self.credentials)
            bearer = self._bearer
            token = self._tokens.get(_key(scopes))
        if bearer is None:
            return None
        if token is None or not token.fresh():
            token = self._fetch_token(bearer, scopes)
        return f"Bearer {token.value}"

    def answer(self, reply: Reply, scopes: Sequence[str], *, sent: str | None) -> None:
        """Learn from the ``401`` ``reply`` to a request that carried ``sent`` (its
        ``Authorization``), so that sending it again may succeed; raise if it cannot."""
        challenges = parse_challenges(reply.headers.get_all("WWW-Authenticate") or [])
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None and "realm" in bearer.params:
            wanted = _merge(scopes, bearer.params.get("scope", ""))
            if sent is not None and sent.startswith("Bearer ") and set(wanted) <= set(scopes):
                raise self._not_authorized(scopes, bearer)
            with self._lock:
                self._bearer = bearer
            token = self._fetch_token(bearer, wanted)
            with self._lock:
                self._tokens[_key(scopes)] = token  # what the caller will ask for next
            return
        if basic is not None:
            if self.credentials is None:
                raise AuthenticationError(f"authentication required; {NO_CREDENTIALS_HINT}")
            if sent is not None and sent.startswith("Basic "):
                raise self._rejected()
            with self._lock:
                self._basic = True
            return
        schemes = ", ".join(c.scheme for c in challenges) or "none"
        raise AuthenticationError(
            f"the registry asks for authentication this client cannot do (schemes: {schemes})"
        )

    def _rejected(self) -> AuthenticationError:
        user = self.credentials.username if self.credentials else "?"
        return AuthenticationError(
            f"authentication failed for user {user!r}: wrong user name or password"
        )

    def _not_authorized(self, scopes: Sequence[str], bearer: Challenge) -> AuthenticationError:
        wanted = _merge(scopes, bearer.params.get("scope", ""))
        who = f"user {self.credentials.username!r}" if self.credentials else "anonymous access"
        hint = "" if self.credentials else f"; {NO_CREDENTIALS_HINT}"
        return AuthenticationError(f"not authorized: {who} is not granted {' '.join(wanted)}{hint}")

    def _fetch_token(self, bearer: Challenge, scopes: Sequence[str]) -> _Token:
        realm = bearer.params["realm"]
        query: list[tuple[str, str]] = []
        if "service" in bearer.params:
            query.append(("service", bearer.params["service"]))
        query.extend(("scope", s) for s in scopes)
        headers = {}
        if self.credentials is not None:
            query.append(("account", self.credentials.username))
            headers["Authorization"] = basic_header(self.credentials)
        sep = "&" if urllib.parse.urlsplit(realm).query else "?"
        url = realm + sep + urllib.parse.urlencode(query) if query else realm
        with self.transport.request("GET", url, headers) as reply:
            if reply.status == 401:
                if self.credentials is not None:
                    raise self._rejected()
                raise AuthenticationError(f"authentication required; {NO_CREDENTIALS_HINT}")
            if reply.status != 200:
                raise RegistryError(
                    f"token service {realm} answered HTTP {reply.status} {reply.reason}"
                )
            token = _parse_token(reply.read_all(MAX_TOKEN_ANSWER), realm)
        with self._lock:
            self._tokens[_key(scopes)] = token
        return token


def _parse_token(data: bytes, realm: str) -> _Token:
    try:
        doc = json.loads(data)
        value = doc.get("token") or doc.get("access_token")
        lifetime = doc.get("expires_in") or _DEFAULT_TOKEN_LIFETIME
    except (ValueError, AttributeError):
        value, lifetime = None, 0
    if not isinstance(value, str) or not value or not isinstance(lifetime, int | float):
        raise RegistryError(f"token service {realm}: answer holds no token")
    lifetime = max(float(lifetime), _DEFAULT_TOKEN_LIFETIME)
    return _Token(value, time.monotonic() + lifetime - _EXPIRY_MARGIN)


def _merge(scopes: Sequence[str], extra: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*scopes, *extra.split()]))


def _key(scopes: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))
