"""Where everything lives below a store root, and the store's own description (``store.json``).

::

    ROOT/
      store.json                 {"version": 1, "backend": "dir"} (+ backend options)
      lock                       flock: short critical sections that change records
      blobs/<alg>/<hex>          manifest, config and layer blobs as pulled
      layers/<chainid-hex>/      diff/, diff.xattrs, entries, layer.json (one per ChainID)
      images/<escaped>.json      image records (`layerfs.store.names` escapes the name)
      containers/<name>/         container.json and the container's dirs
      tmp/                       sessions (private, flock'ed dirs) and per-layer lock files

The root defaults to ``$LAYERFS_ROOT``, else ``/var/lib/layerfs`` for root and
``$XDG_DATA_HOME/layerfs`` (``~/.local/share/layerfs``) for anyone else. Directories are created
mode 0700: layers hold setuid binaries that must not be reachable by other users through the
store's paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from layerfs.oci import Digest, split_digest
from layerfs.store.durable import write_atomic
from layerfs.store.errors import StoreDamagedError, StoreError

STORE_VERSION = 1
STORE_FILE = "store.json"
DIRS = ("blobs", "layers", "images", "containers", "tmp")

# Lengths of the hex part of the digests a ChainID can have (sha256; sha512 for a lone layer).
_ALGORITHM_OF_LENGTH = {64: "sha256", 128: "sha512"}
_HEX = frozenset("0123456789abcdef")


def default_root(environ: Mapping[str, str] | None = None) -> str:
    """The store root when no ``--root`` is given."""
    env = os.environ if environ is None else environ
    if env.get("LAYERFS_ROOT"):
        return env["LAYERFS_ROOT"]
    if os.geteuid() == 0:
        return "/var/lib/layerfs"
    data = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "layerfs")


def layer_dirname(chain_id: Digest) -> str:
    """The name of a layer's directory below ``layers/``: the hex part of its ChainID."""
    return split_digest(chain_id)[1]


def chain_id_of_dirname(name: str) -> Digest | None:
    """The ChainID a ``layers/`` entry stands for; None for anything that is not a layer."""
    algorithm = _ALGORITHM_OF_LENGTH.get(len(name))
    if algorithm is None or not set(name) <= _HEX:
        return None
    return Digest(f"{algorithm}:{name}")


@dataclass(frozen=True)
class StorePaths:
    """The paths of one store root."""

    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, STORE_FILE)

    @property
    def lock(self) -> str:
        return os.path.join(self.root, "lock")

    @property
    def blobs(self) -> str:
        return os.path.join(self.root, "blobs")

    @property
    def layers(self) -> str:
        return os.path.join(self.root, "layers")

    @property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def containers(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def tmp(self) -> str:
        return os.path.join(self.root, "tmp")

    def blob(self, digest: Digest) -> str:
        """``blobs/<algorithm>/<hex>``."""
        algorithm, encoded = split_digest(digest)
        return os.path.join(self.blobs, algorithm, encoded)

    def layer_dir(self, chain_id: Digest) -> str:
        """``layers/<chainid-hex>``."""
        return os.path.join(self.layers, layer_dirname(chain_id))

    def container_dir(self, name: str) -> str:
        """``containers/<name>``."""
        return os.path.join(self.containers, name)


@dataclass(frozen=True)
class StoreConfig:
    """What ``store.json`` says: the format version, the backend and the backend's options."""

    backend: str = "dir"
    options: Mapping[str, str] = field(default_factory=dict)
    version: int = STORE_VERSION

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "backend": self.backend, **self.options}


def read_store_config(paths: StorePaths) -> StoreConfig | None:
    """The store's ``store.json``; None when there is none."""
    try:
        with open(paths.config, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreDamagedError(f"{paths.config}: unreadable store description: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("backend"), str):
        raise StoreDamagedError(f"{paths.config}: not a layerfs store description")
    if doc.get("version") != STORE_VERSION:
        raise StoreError(
            f"{paths.config}: store format version {doc.get('version')!r} is not supported "
            f"(this layerctl reads version {STORE_VERSION})"
        )
    options = {k: v for k, v in doc.items() if k not in ("version", "backend")}
    if not all(isinstance(v, str) for v in options.values()):
        raise StoreDamagedError(f"{paths.config}: backend options must be strings")
    return StoreConfig(doc["backend"], options)


def write_store_config(paths: StorePaths, config: StoreConfig) -> None:
    """Write ``store.json`` atomically."""
    data = json.dumps(config.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    write_atomic(paths.config, data)


def make_dirs(paths: StorePaths) -> None:
    """Create the root and its fixed subdirectories (mode 0700) and the lock file."""
    os.makedirs(paths.root, mode=0o700, exist_ok=True)
    for name in DIRS:
        os.makedirs(os.path.join(paths.root, name), mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(paths.blobs, "sha256"), mode=0o700, exist_ok=True)
    os.close(os.open(paths.lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
