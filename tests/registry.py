"""Servers for registry tests: a real registry process, a meddling proxy, a token service.

- `run_registry` starts Debian's ``docker-registry`` (distribution 2.8) on a free port of
  127.0.0.1 with its storage in a temporary directory: plain HTTP, or with htpasswd basic
  auth (`Htpasswd`), a TLS certificate (`make_cert`), or bearer tokens (`TokenService`).
  It returns once ``/v2/`` answers and always stops the process when the ``with`` ends.
- `Proxy` forwards to a registry and can flip a byte in a blob (``corrupt``), cut the
  connection once after some bytes of a blob (``drop_after``), and logs every request.
- `TokenService` is the distribution token protocol: it checks basic credentials and
  answers with a JWT (RS256, signed by ``openssl``) the registry trusts.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.mounts import wait_for

REGISTRY = shutil.which("docker-registry")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- credentials and certificates ----------------------------------------------------------------


@dataclass(frozen=True)
class Htpasswd:
    """One user for htpasswd basic auth."""

    user: str
    password: str

    def write(self, path: Path) -> Path:
        path.write_text(f"{self.user}:{_bcrypt(self.password)}\n")
        return path


def _bcrypt(password: str) -> str:
    """A bcrypt hash (what the registry's htpasswd accepts): glibc's crypt, else htpasswd -B."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt

        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
        if hashed and hashed.startswith("$2"):
            return hashed
    except ImportError:
        pass
    out = subprocess.run(
        ["htpasswd", "-nbB", "u", password], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().partition(":")[2]


def make_cert(directory: Path, name: str = "registry") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and localhost); ``(cert, key)``.

    The key goes beside ``directory``, not in it: a certificate directory holding a ``.key``
    without its ``.cert`` is an error for skopeo.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory.parent / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True,
        check=True,
    )  # fmt: skip
    return cert, key


# -- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    scheme: str
    data: Path

    def ref(self, name: str) -> str:
        return f"docker://{self.host}/{name}"


def _config(
    port: int,
    data: Path,
    htpasswd: Path | None,
    tls: tuple[Path, Path] | None,
    token: TokenService | None,
) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {data}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: layerfs-test",
    ]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    if htpasswd is not None:
        lines += ["auth:", "  htpasswd:", "    realm: layerfs-test", f"    path: {htpasswd}"]
    if token is not None:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.service}",
            f"    issuer: {token.issuer}",
            f"    rootcertbundle: {token.cert}",
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def run_registry(
    workdir: Path,
    *,
    htpasswd: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    token: TokenService | None = None,
) -> Iterator[Registry]:
    """A registry process for the duration of the ``with`` (see the module doc)."""
    assert REGISTRY is not None, "docker-registry is not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(_config(port, workdir / "data", htpasswd, tls, token))
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=log)
    scheme = "https" if tls else "http"
    try:
        wait_for(lambda: _answers(port, tls is not None) or proc.poll() is not None, 15, "registry")
        if proc.poll() is not None:
            raise RuntimeError(f"registry died: {(workdir / 'registry.log').read_text()}")
        yield Registry(f"127.0.0.1:{port}", scheme, workdir / "data")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _answers(port: int, tls: bool) -> bool:
    conn: http.client.HTTPConnection
    if tls:
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status in (200, 401)
    except OSError:
        return False
    finally:
        conn.close()


# -- a proxy in the middle ------------------------------------------------------------------------


@dataclass
class Proxy:
    """Forwards to the plain-HTTP registry ``upstream``; meddles with blobs when told to.

    ``corrupt``: digests whose blob gets one byte flipped (every time). ``drop_after``: digest ->
    for each of the next GETs of that blob, how many bytes of the answer to send before
    closing the connection.
    ``log``: ``(method, path, Range header)`` of every request.
    """

    upstream: str
    corrupt: set[str] = field(default_factory=set)
    drop_after: dict[str, list[int]] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    host: str = ""

    def blob_gets(self, digest: str) -> list[str | None]:
        """The Range headers of every GET of blob ``digest``."""
        return [r for m, p, r in self.log if m == "GET" and p.endswith(f"/blobs/{digest}")]


class _QuietServer(http.server.ThreadingHTTPServer):
    """Clients hanging up mid-answer (a cancelled download) are normal here, not news."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@contextlib.contextmanager
def run_proxy(upstream: str) -> Iterator[Proxy]:
    proxy = Proxy(upstream)

    class Handler(_ProxyHandler):
        state = proxy

    server = _QuietServer(("127.0.0.1", 0), Handler)
    proxy.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: Proxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        state = self.state
        state.log.append(
            (self.command, urllib.parse.urlsplit(self.path).path, self.headers["Range"])
        )
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPConnection(state.upstream, timeout=30)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        digest = urllib.parse.urlsplit(self.path).path.rpartition("/blobs/")[2]
        is_blob = self.command == "GET" and "/blobs/sha256:" in self.path and response.status < 300
        if is_blob and digest in state.corrupt and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
        cuts = state.drop_after.get(digest) if is_blob else None
        cut = cuts.pop(0) if cuts else None
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if cut is not None:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward


# -- a token service ------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _libtrust_key_id(der_public_key: bytes) -> str:
    """The key ID the registry derives from a public key (libtrust's format)."""
    digest = hashlib.sha256(der_public_key).digest()[:30]
    encoded = base64.b32encode(digest).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


@dataclass
class TokenService:
    """Issues registry tokens to ``user``/``password`` (and to nobody else)."""

    workdir: Path
    user: str
    password: str
    service: str = "layerfs-test-registry"
    issuer: str = "layerfs-test-issuer"
    realm: str = ""
    issued: list[str] = field(default_factory=list)  # the scopes asked for, per token

    def __post_init__(self) -> None:
        self.cert, self.key = make_cert(self.workdir, "token")
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-pubkey", "-noout"],
            capture_output=True,
            check=True,
        ).stdout
        pub_der = subprocess.run(
            ["openssl", "pkey", "-pubin", "-outform", "DER"],
            input=der,
            capture_output=True,
            check=True,
        ).stdout
        self.kid = _libtrust_key_id(pub_der)

    def token(self, scopes: list[str]) -> str:
        now = int(time.time())
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": self.user,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"


@contextlib.contextmanager
def run_token_service(service: TokenService) -> Iterator[TokenService]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            expected = base64.b64encode(f"{service.user}:{service.password}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {expected}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            scopes = query.get("scope", [])
            service.issued.append(" ".join(scopes))
            body = json.dumps({"token": service.token(scopes), "expires_in": 300}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = _QuietServer(("127.0.0.1", 0), Handler)
    service.realm = f"http://127.0.0.1:{server.server_address[1]}/token"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
