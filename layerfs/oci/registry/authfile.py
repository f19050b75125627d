"""Credentials from ``auth.json`` files, where podman, skopeo and docker keep their logins.

Searched, first match wins (containers-auth.json(5)): the file named by ``--authfile``-style
options, or else ``$REGISTRY_AUTH_FILE`` alone if set; otherwise
``$XDG_RUNTIME_DIR/containers/auth.json``, ``${XDG_CONFIG_HOME:-~/.config}/containers/auth.json``,
``${DOCKER_CONFIG:-~/.docker}/config.json`` and ``~/.dockercfg``.

In each file the most specific key for the image wins: ``HOST/NS/REPO``, then ``HOST/NS``, then
``HOST`` (legacy keys such as ``https://index.docker.io/v1/`` mean their host). An entry holds
``auth`` (base64 of ``USER:PASS``) or ``username``/``password``. ``credHelpers`` and
``credsStore`` run ``docker-credential-NAME get``, as docker does.

Caveat: OAuth identity tokens (``identitytoken``) are not used; such an entry is skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping

from layerfs.oci.registry.errors import AuthenticationError
from layerfs.oci.registry.names import DOCKER_HUB, DOCKER_HUB_API, RegistryRef
from layerfs.oci.registry.options import Credentials

logger = logging.getLogger(__name__)

_HELPER_TIMEOUT = 30
_LEGACY_HUB_KEYS = ("index.docker.io", DOCKER_HUB_API)


def auth_file_paths(explicit: str | None = None) -> list[str]:
    """The files to search, in order (existing or not)."""
    if explicit:
        return [explicit]
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return [env]
    home = os.path.expanduser("~")
    paths = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(os.path.join(runtime, "containers", "auth.json"))
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    paths.append(os.path.join(config_home, "containers", "auth.json"))
    docker_config = os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    paths.append(os.path.join(docker_config, "config.json"))
    paths.append(os.path.join(home, ".dockercfg"))
    return paths


def find_credentials(ref: RegistryRef, explicit: str | None = None) -> Credentials | None:
    """The stored credentials for ``ref``'s registry (and repository), or None."""
    for path in auth_file_paths(explicit):
        doc = _load(path, required=path == explicit)
        if doc is None:
            continue
        legacy = os.path.basename(path) == ".dockercfg"
        auths = doc if legacy else doc.get("auths", {})
        if isinstance(auths, Mapping):
            entries = {_normalize_key(str(k)): v for k, v in auths.items()}
            for key in _candidate_keys(ref):
                entry = entries.get(key)
                if isinstance(entry, Mapping):
                    creds = _entry_credentials(entry, path, key)
                    if creds is not None:
                        return creds
        creds = _from_helper(doc, ref, path)
        if creds is not None:
            return creds
    return None


def _load(path: str, *, required: bool) -> Mapping[str, object] | None:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        if required:
            raise AuthenticationError(f"{path}: no such auth file") from None
        return None
    except (OSError, ValueError) as exc:
        raise AuthenticationError(f"{path}: cannot read credentials: {exc}") from None
    if not isinstance(doc, Mapping):
        raise AuthenticationError(f"{path}: not a JSON object")
    return doc


def _normalize_key(key: str) -> str:
    if key.startswith(("http://", "https://")):
        key = key.partition("://")[2].partition("/")[0]
    if key in _LEGACY_HUB_KEYS:
        return DOCKER_HUB
    return key.rstrip("/")


def _candidate_keys(ref: RegistryRef) -> Iterator[str]:
    parts = ref.repository.split("/")
    for i in range(len(parts), 0, -1):
        yield f"{ref.domain}/{'/'.join(parts[:i])}"
    yield ref.domain


def _entry_credentials(entry: Mapping[str, object], path: str, key: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            text = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError(f"{path}: {key}: 'auth' is not base64 of USER:PASS") from None
        user, sep, password = text.partition(":")
        if not sep:
            raise AuthenticationError(f"{path}: {key}: 'auth' is not base64 of USER:PASS")
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    if entry.get("identitytoken"):
        logger.debug("%s: %s: identity tokens are not supported; skipped", path, key)
    return None


def _from_helper(doc: Mapping[str, object], ref: RegistryRef, path: str) -> Credentials | None:
    helpers = doc.get("credHelpers")
    helper: object = helpers.get(ref.domain) if isinstance(helpers, Mapping) else None
    if helper is None:
        helper = doc.get("credsStore")
    if not isinstance(helper, str) or not helper:
        return None
    server = "https://index.docker.io/v1/" if ref.domain == DOCKER_HUB else ref.domain
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("%s: credential helper %s failed: %s", path, program, exc)
        return None
    if done.returncode != 0:
        return None  # the helper's way of saying it has nothing for this server
    try:
        answer = json.loads(done.stdout)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, KeyError, TypeError):
        raise AuthenticationError(f"{program}: unexpected answer for {server}") from None
    if not isinstance(user, str) or not isinstance(secret, str) or user == "<token>":
        return None
    return Credentials(user, secret)
