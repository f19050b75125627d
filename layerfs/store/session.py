"""Sessions: one process's private workspace in ``tmp/``, and what it pins.

A session is a directory ``tmp/s-<pid>-<random>/``, created with the store lock held and flock'ed
by its process for as long as it lives. Everything in it belongs to that process alone: staged
layers, blobs being fetched, a decompressed archive copy (``scratch/``), layers being removed.
A session directory that nobody holds locked is garbage (its process died): `sweep_tmp`, run by
`gc` with the store lock held, frees it.

Pins: ``pins.json`` in a session lists the ChainIDs and blob digests its process is about to
reference. A pull writes its pins, with the store lock held, *before* it looks at what the store
has; `gc` and a failed pull's rollback read every live session's pins with the lock held. So a
layer that one pull found present cannot be removed before that pull has written its record.

Per-layer locks: ``tmp/layer-<hex>.lock``, held while a layer is fetched and unpacked, so that
concurrent pulls of images sharing a layer unpack it once. The holder deletes the file when done
(see `layerfs.store.locks`); one left by a dead process is garbage.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from layerfs.oci import Digest
from layerfs.store.backend import LayerBackend
from layerfs.store.durable import remove_tree, write_atomic
from layerfs.store.layout import StorePaths, layer_dirname
from layerfs.store.locks import FileLock, lock_dir
from layerfs.store.shield import shielded

PINS_FILE = "pins.json"
_SESSION_PREFIX = "s-"
_LAYER_LOCK_PREFIX = "layer-"
_LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class Pins:
    """Layers and blobs that live sessions are about to reference."""

    layers: frozenset[Digest] = field(default_factory=frozenset)
    blobs: frozenset[Digest] = field(default_factory=frozenset)

    def __or__(self, other: Pins) -> Pins:
        return Pins(self.layers | other.layers, self.blobs | other.blobs)


class Session:
    """A live session; `close` frees its directory. Start one with `start_session`."""

    def __init__(self, path: str, fd: int, backend: LayerBackend) -> None:
        self.path = path
        self._fd: int | None = fd
        self._backend = backend

    @property
    def scratch(self) -> str:
        """A directory for temporary files of the session (created on first use)."""
        path = os.path.join(self.path, "scratch")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def pin(self, layers: Iterable[Digest], blobs: Iterable[Digest]) -> None:
        """Declare what this session will reference (store lock held)."""
        doc = {"layers": sorted(layers), "blobs": sorted(blobs)}
        write_atomic(os.path.join(self.path, PINS_FILE), json.dumps(doc).encode())

    def close(self) -> None:
        """Free everything in the session, then drop its lock."""
        with shielded():
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                self._backend.purge_session(self.path)
            finally:
                os.close(fd)


def start_session(paths: StorePaths, backend: LayerBackend) -> Session:
    """A new session directory, locked by this process (store lock held by the caller)."""
    path = os.path.join(paths.tmp, f"{_SESSION_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        os.mkdir(path, 0o700)
        fd = lock_dir(path)
    except BaseException:
        remove_tree(path)
        raise
    assert fd is not None  # blocking
    return Session(path, fd, backend)


def layer_lock(paths: StorePaths, chain_id: Digest) -> FileLock:
    """The lock serializing the import of one layer across processes."""
    name = f"{_LAYER_LOCK_PREFIX}{layer_dirname(chain_id)}{_LOCK_SUFFIX}"
    return FileLock(os.path.join(paths.tmp, name))


def _read_pins(session_dir: str) -> Pins:
    try:
        with open(os.path.join(session_dir, PINS_FILE), "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return Pins()
    except ValueError:
        return Pins()  # written atomically, so only a stray file could be malformed
    return Pins(
        frozenset(Digest(d) for d in doc.get("layers", ()) if isinstance(d, str)),
        frozenset(Digest(d) for d in doc.get("blobs", ()) if isinstance(d, str)),
    )


def live_pins(paths: StorePaths, *, exclude: Session | None = None) -> Pins:
    """The pins of every live session but ``exclude`` (store lock held)."""
    pins = Pins()
    for name in _listdir(paths.tmp):
        path = os.path.join(paths.tmp, name)
        if not name.startswith(_SESSION_PREFIX) or (exclude and path == exclude.path):
            continue
        fd = _try_lock_dir(path)
        if fd is None:
            pins |= _read_pins(path)
        else:
            os.close(fd)
    return pins


def sweep_tmp(paths: StorePaths, backend: LayerBackend, *, keep: Session | None = None) -> int:
    """Free what dead processes left in ``tmp/`` (store lock held); how many entries went.

    Live sessions and held layer locks stay, and so does ``keep`` (the caller's own session).
    """
    removed = 0
    for name in _listdir(paths.tmp):
        path = os.path.join(paths.tmp, name)
        if keep is not None and path == keep.path:
            continue
        if name.startswith(_SESSION_PREFIX) and os.path.isdir(path):
            fd = _try_lock_dir(path)
            if fd is None:
                continue  # alive
            try:
                backend.purge_session(path)
            finally:
                os.close(fd)
        elif name.endswith(_LOCK_SUFFIX):
            lock = FileLock(path)
            if not lock.acquire(blocking=False):
                continue  # held: a layer is being imported
            lock.release(unlink=True)
        else:
            remove_tree(path)
        removed += 1
    return removed


def _try_lock_dir(path: str) -> int | None:
    try:
        return lock_dir(path, blocking=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
