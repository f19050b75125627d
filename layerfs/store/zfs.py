"""ZFS as the store uses it: datasets made, sealed, mounted and destroyed by name.

`Zfs` runs the ``zfs`` and ``zpool`` commands (``LC_ALL=C``, so that their messages can be
told apart) and, where pyzfs (``libzfs_core``) loads and works, uses it for create, snapshot,
destroy and exists; mounts, properties and listings always go through the command, as they
need libzfs. Errors become one of the `ZfsError` classes, worded as one line that names the
dataset: `ZfsNotFoundError`, `ZfsExistsError`, `ZfsBusyError`, `ZfsUnavailableError` (no
``zfs`` command, or no ZFS running). "Dataset is busy" (a process still in a mount, an unmount
still in flight) is retried a few times, with growing pauses, before it is reported.

Every call names its datasets: nothing here lists a whole pool (`Zfs.children` lists one
dataset's children, for ``gc``).

Commands that mount or unmount (create, mount, unmount, destroy, rollback, setting
``mountpoint``/``canmount``/``readonly``) run one at a time on the machine: a ``flock`` on
`MOUNT_LOCK` (and a lock between this process's threads). zfs-fuse loses mounts made at the
same moment (two ``zfs create`` at once leave a mount whose every access hangs, and the daemon
wedged after that); kernel ZFS does not need this, and it costs little there.

Names are checked before any command runs (`check_dataset_name`, `check_snapshot_name`):
letters, digits and ``_ - . :``, components joined by ``/``, a pool name starting with a letter.

Caveats:

- zfs-fuse (ZFS pool version 23) knows no ``zfs list -p``, no ``createtxg`` and sets one property
  per ``zfs set``; the commands used here stay within what it accepts. Its mounts always show
  ``readonly`` as ``off`` (source ``temporary``) although a ``readonly=on`` dataset refuses writes.
- The libzfs_core path is untested on this project's CI (zfs-fuse has no ``/dev/zfs``); it is
  tried once per `Zfs` and dropped for the commands at its first initialisation failure.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import NewType, TypeVar

from layerfs.store.errors import StoreError

logger = logging.getLogger(__name__)

DatasetName = NewType("DatasetName", str)

MAX_NAME = 255  # ZFS_MAX_DATASET_NAME_LEN (256) less the NUL, snapshots included
_COMPONENT = re.compile(r"[A-Za-z0-9_.:-]+")
_POOL = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")
_RESERVED_POOLS = frozenset({"mirror", "raidz", "raidz1", "raidz2", "raidz3", "draid", "spare"})
_RESERVED_POOLS |= {"log", "cache", "special", "dedup"}
_NAME_RULE = "letters, digits, '_', '-', '.', ':'"
_COMMAND_TIMEOUT = 300.0
BUSY_RETRIES = (0.1, 0.2, 0.4, 0.8, 1.5)  # pauses between tries of a busy operation
MOUNT_LOCK = "/run/lock/layerfs-zfs-mount.lock"
_MOUNTING_PROPERTIES = frozenset({"mountpoint", "canmount", "readonly"})
_threads_mounting = threading.Lock()
_T = TypeVar("_T")


class ZfsError(StoreError):
    """A ZFS operation failed; the message names the operation and the dataset."""


class ZfsNotFoundError(ZfsError):
    """The dataset, snapshot or pool does not exist."""


class ZfsExistsError(ZfsError):
    """The dataset or snapshot to make exists already."""


class ZfsBusyError(ZfsError):
    """The dataset is in use (a process in its mount, an unmount in flight)."""


class ZfsUnavailableError(ZfsError):
    """No ``zfs`` command, or ZFS is not running (no module, no zfs-fuse daemon)."""


# -- names ---------------------------------------------------------------------------------------


def check_dataset_name(
    text: str, *, what: str = "zfs dataset", limit: int = MAX_NAME
) -> DatasetName:
    """``text`` as a dataset name (``POOL[/PATH]``); `ZfsError` saying what is wrong with it."""
    problem = None
    parts = text.split("/")
    if not text:
        problem = "it is empty"
    elif len(text) > limit:
        problem = f"it is longer than {limit} characters"
    elif any(not p for p in parts):
        problem = "it has an empty component (a leading, trailing or double '/')"
    elif not _POOL.fullmatch(parts[0]):
        problem = f"the pool name must start with a letter and hold only {_NAME_RULE}"
    elif parts[0] in _RESERVED_POOLS:
        problem = f"{parts[0]!r} is a reserved word, not a pool name"
    elif any(not _COMPONENT.fullmatch(p) or p in (".", "..") for p in parts[1:]):
        problem = f"use only {_NAME_RULE} between the '/'"
    if problem is not None:
        raise ZfsError(f"{what} {text!r} is not a valid name: {problem} (expected POOL/PATH)")
    return DatasetName(text)


def check_snapshot_name(dataset: DatasetName, snap: str) -> str:
    """``snap`` checked as a snapshot of ``dataset``; the full name ``dataset@snap``."""
    full = f"{dataset}@{snap}"
    if not _COMPONENT.fullmatch(snap) or snap in (".", ".."):
        raise ZfsError(f"snapshot name {snap!r}: use only {_NAME_RULE}")
    if len(full) > MAX_NAME:
        raise ZfsError(
            f"snapshot name {snap!r}: too long ({full!r} must fit in {MAX_NAME} characters)"
        )
    return full


def child(parent: DatasetName, name: str) -> DatasetName:
    """The dataset ``parent/name``."""
    return check_dataset_name(f"{parent}/{name}")


def pool_of(name: DatasetName) -> str:
    """The pool a dataset lives in."""
    return name.split("/", 1)[0]


# -- the command ---------------------------------------------------------------------------------


@contextmanager
def _mounting(path: str) -> Iterator[None]:
    """Hold the machine-wide mount lock (see the module docstring); the process-wide one
    alone where the lock file cannot be opened."""
    with _threads_mounting:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            logger.debug("no machine-wide zfs mount lock (%s): this process's only", exc)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _failure_text(stderr: str) -> str:
    """The line of a zfs error output that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("cannot "):
            return line
    return lines[0] if lines else "failed (no message)"


def _classify(stderr: str) -> type[ZfsError]:
    text = stderr.lower()
    if (
        "zfs-fuse daemon is running" in text
        or "failed to initialize zfs library" in text
        or "modules are not loaded" in text
        or "/dev/zfs" in text
    ):
        return ZfsUnavailableError
    if "busy" in text:
        return ZfsBusyError
    if "does not exist" in text or "no such pool" in text:
        return ZfsNotFoundError
    if "already exists" in text:
        return ZfsExistsError
    return ZfsError


class _Lzc:
    """pyzfs where it loads: create, snapshot, destroy and exists without a process each.

    Names go in as bytes; pyzfs errors carry an ``errno`` that says which `ZfsError` it is.
    Only string properties are passed at creation (the others need typed nvlist values);
    `Zfs.create` sets the rest with the command.
    """

    _ERRNO_CLASSES: Mapping[int, type[ZfsError]] = {
        errno.ENOENT: ZfsNotFoundError,
        errno.EBUSY: ZfsBusyError,
        errno.EEXIST: ZfsExistsError,
    }

    def __init__(self, module: ModuleType) -> None:
        self._m = module

    def _call(self, what: str, name: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except Exception as exc:
            code = getattr(exc, "errno", None)
            cls = self._ERRNO_CLASSES.get(code, ZfsError) if isinstance(code, int) else ZfsError
            raise cls(f"zfs {what} {name}: {exc}") from exc

    def exists(self, name: str) -> bool:
        return self._call("exists", name, lambda: bool(self._m.lzc_exists(name.encode())))

    def create(self, name: str, props: Mapping[str, str]) -> None:
        encoded = {k.encode(): v.encode() for k, v in props.items()}
        self._call(
            "create", name, lambda: self._m.lzc_create(name.encode(), ds_type="zfs", props=encoded)
        )

    def snapshot(self, full: str) -> None:
        self._call("snapshot", full, lambda: self._m.lzc_snapshot([full.encode()]))

    def destroy_snapshots(self, fulls: Sequence[str]) -> None:
        if fulls:
            names = [f.encode() for f in fulls]
            self._call("destroy", fulls[0], lambda: self._m.lzc_destroy_snaps(names, defer=False))

    def destroy(self, name: str) -> None:
        self._call("destroy", name, lambda: self._m.lzc_destroy(name.encode()))


def _load_lzc() -> _Lzc | None:
    """pyzfs, when it imports and can reach ZFS; else None (and the commands are used)."""
    try:
        module = importlib.import_module("libzfs_core")
    except Exception:  # ImportError, or the C library missing under cffi (OSError)
        return None
    lzc = _Lzc(module)
    try:
        lzc.exists("layerfs-probe")
    except ZfsError as exc:
        logger.debug("libzfs_core does not work here (%s): using the zfs command", exc)
        return None
    return lzc


class Zfs:
    """ZFS operations by dataset name; safe to share between threads."""

    def __init__(
        self,
        *,
        zfs: str = "zfs",
        zpool: str = "zpool",
        use_library: bool = True,
        busy_retries: Sequence[float] = BUSY_RETRIES,
        mount_lock: str = MOUNT_LOCK,
    ) -> None:
        self._zfs, self._zpool = zfs, zpool
        self._mount_lock = mount_lock
        self._busy_retries = tuple(busy_retries)
        self._use_library = use_library
        self._lzc: _Lzc | None = None
        self._lzc_tried = False
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------------------

    def _library(self) -> _Lzc | None:
        with self._lock:
            if self._use_library and not self._lzc_tried:
                self._lzc_tried = True
                self._lzc = _load_lzc()
            return self._lzc

    def run(self, *args: str, command: str | None = None) -> str:
        """``zfs ARGS`` (or ``command ARGS``); its stdout. A failure raises a `ZfsError`."""
        program = command or self._zfs
        if shutil.which(program) is None:
            raise ZfsUnavailableError(
                f"the {program} command is not installed: the zfs backend needs ZFS "
                "(zfsutils-linux, or zfs-fuse)"
            )
        env = dict(os.environ, LC_ALL="C")
        try:
            r = subprocess.run(
                [program, *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=_COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ZfsError(
                f"{program} {' '.join(args)}: no answer in {_COMMAND_TIMEOUT:.0f}s"
            ) from None
        if r.returncode != 0:
            cls = _classify(r.stderr)
            text = _failure_text(r.stderr)
            if cls is ZfsUnavailableError:
                text = f"ZFS is not running ({text}): start zfs-fuse or load the zfs module"
            if not text.startswith("cannot "):  # a message that does not name its dataset
                text = f"{args[0]} {args[-1]}: {text}"
            raise cls(f"{program}: {text}")
        return r.stdout

    def run_mounting(self, *args: str) -> str:
        """`run` for a command that mounts or unmounts, holding the mount lock."""
        with _mounting(self._mount_lock):
            return self.run(*args)

    def _retry_busy(self, action: Callable[[], _T], *, transient: str | None = None) -> _T:
        """``action``, tried again after a pause while it fails as busy (or with a message
        holding ``transient``)."""
        for pause in self._busy_retries:
            try:
                return action()
            except ZfsError as exc:
                if not isinstance(exc, ZfsBusyError) and not (transient and transient in str(exc)):
                    raise
                logger.debug("%s: retrying in %.1fs", exc, pause)
                time.sleep(pause)
        return action()

    # -- pools and datasets --------------------------------------------------------------------

    def pool_exists(self, pool: str) -> bool:
        try:
            self.run("list", "-H", "-o", "name", pool, command=self._zpool)
        except ZfsNotFoundError:
            return False
        return True

    def exists(self, name: str) -> bool:
        """Whether the dataset or snapshot ``name`` exists."""
        lzc = self._library()
        if lzc is not None:
            return lzc.exists(name)
        try:
            self.run("list", "-H", "-o", "name", "-t", "all", name)
        except ZfsNotFoundError:
            return False
        return True

    def create(self, name: DatasetName, properties: Mapping[str, str] | None = None) -> None:
        """Create the filesystem ``name`` with ``properties``; mounted if it has a mountpoint."""
        props = dict(properties or {})
        lzc = self._library()
        if lzc is None:
            options = [a for k, v in props.items() for a in ("-o", f"{k}={v}")]
            try:
                self.run_mounting("create", *options, name)
            except ZfsBusyError:
                if not self.exists(name):
                    raise
                self.mount(name)  # "created, but not mounted": an unmount was in flight
            return
        strings = {k: v for k, v in props.items() if ":" in k or k == "mountpoint"}
        lzc.create(name, strings)
        for key, value in props.items():
            if key not in strings:
                self.set(name, key, value)
        if props.get("mountpoint", "none") not in ("none", "legacy"):
            self.mount(name)

    def snapshot(self, name: DatasetName, snap: str) -> None:
        """Make ``name@snap``."""
        full = check_snapshot_name(name, snap)
        lzc = self._library()
        if lzc is not None:
            lzc.snapshot(full)
        else:
            self.run("snapshot", full)

    def destroy(
        self, name: DatasetName, *, recursive: bool = False, missing_ok: bool = False
    ) -> bool:
        """Destroy ``name`` (with ``recursive``, its snapshots and children too), retrying while
        it is busy; False when it did not exist and ``missing_ok``."""
        try:
            self._retry_busy(lambda: self._destroy(name, recursive))
        except ZfsNotFoundError:
            if not missing_ok:
                raise
            return False
        except ZfsBusyError as exc:
            raise ZfsBusyError(
                f"{exc} (still busy after {len(self._busy_retries) + 1} tries: close what "
                "uses its files and try again)"
            ) from None
        return True

    def _destroy(self, name: DatasetName, recursive: bool) -> None:
        lzc = self._library()
        if lzc is None:
            self.run_mounting("destroy", *(["-r"] if recursive else []), name)
            return
        if recursive:
            for sub in reversed(self.children(name, depth=0)[1:]):
                self._destroy(sub, True)
            lzc.destroy_snapshots(self.snapshots(name))
        self.unmount(name)
        with _mounting(self._mount_lock):
            lzc.destroy(name)

    def rollback(self, name: DatasetName, snap: str, *, destroy_newer: bool = False) -> None:
        """Roll ``name`` back to ``name@snap`` (with ``destroy_newer``, past later snapshots)."""
        full = check_snapshot_name(name, snap)
        flags = ["-r"] if destroy_newer else []
        # zfs-fuse answers "I/O error" while an unmount of the dataset is still in flight.
        self._retry_busy(lambda: self.run_mounting("rollback", *flags, full), transient="I/O error")

    # -- properties and mounts -----------------------------------------------------------------

    def get(self, name: str, prop: str) -> str:
        """The value of ``prop`` (``-`` for an unset user property)."""
        return self.run("get", "-H", "-p", "-o", "value", prop, name).rstrip("\n")

    def set(self, name: str, prop: str, value: str) -> None:
        if prop in _MOUNTING_PROPERTIES:
            self.run_mounting("set", f"{prop}={value}", name)
        else:
            self.run("set", f"{prop}={value}", name)

    def set_mountpoint(self, name: DatasetName, path: str) -> None:
        """Move ``name``'s mount to ``path``, retried while busy (zfs-fuse unmounts lazily,
        so mounting again at once may find the dataset still busy)."""

        def attempt() -> None:
            try:
                self.set(name, "mountpoint", path)
            except ZfsBusyError:
                if self.get(name, "mountpoint") != path:
                    raise
                self._mount_once(name)  # the property moved; its mount failed: mount it

        self._retry_busy(attempt)

    def mount(self, name: DatasetName) -> None:
        """Mount ``name`` at its mountpoint; nothing when it is mounted already."""
        self._retry_busy(lambda: self._mount_once(name))

    def _mount_once(self, name: DatasetName) -> None:
        try:
            self.run_mounting("mount", name)
        except ZfsError as exc:
            if "already mounted" not in str(exc):
                raise

    def unmount(self, name: DatasetName) -> None:
        """Unmount ``name``; nothing when it is not mounted."""
        try:
            self._retry_busy(lambda: self.run_mounting("unmount", name))
        except ZfsError as exc:
            if "not currently mounted" not in str(exc) and "not mounted" not in str(exc):
                raise

    # -- listings (one dataset's, never a pool's) ----------------------------------------------

    def children(self, name: DatasetName, *, depth: int = 1) -> list[DatasetName]:
        """``name`` and the filesystems below it, ``depth`` levels down (0: all), parents first."""
        rows = self.list_properties(name, ("name",), depth=depth)
        return [DatasetName(r[0]) for r in rows]

    def list_properties(
        self, name: DatasetName, props: Sequence[str], *, depth: int = 1
    ) -> list[tuple[str, ...]]:
        """``props`` of ``name`` and of the filesystems below it (see `children`)."""
        limit = ["-d", str(depth)] if depth > 0 else []
        out = self.run("list", "-H", "-t", "filesystem", "-o", ",".join(props), "-r", *limit, name)
        return [tuple(line.split("\t")) for line in out.splitlines() if line]

    def snapshots(self, name: DatasetName) -> list[str]:
        """The full names of ``name``'s snapshots, oldest first."""
        out = self.run("list", "-H", "-t", "snapshot", "-o", "name", "-r", "-d", "1", name)
        return [line for line in out.splitlines() if line.startswith(f"{name}@")]
