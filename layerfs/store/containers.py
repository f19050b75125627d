"""Containers and image mounts: records under ``containers/``, rootfs mounts by ``layerfs``.

A container is ``containers/<name>/`` holding ``container.json``, ``upper/``, ``work/`` and,
unless ``--bundle`` put them elsewhere, ``rootfs/`` (the mount) and ``config.json``. With the
zfs backend, ``upper/`` and ``work/`` are in the container's own dataset, mounted at
``containers/<name>/fs/`` (`layerfs.store.zfscontainers`): it has the ``--upper-quota``, and
``snapshot``/``rollback`` act on it; ``rm`` destroys it. An image
mounted read-only at a directory of the user's (``mount-image``) is a record of kind
``image-mount`` in the same place, so that both keep their layers alive the same way
(`refs.collect_references`). Records are written before anything is mounted and removed after
everything is unmounted, so a crash never leaves a mount nothing accounts for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from layerfs.fs.daemon import DaemonConfig, MountError
from layerfs.fs.daemon import spawn as spawn_daemon
from layerfs.fs.options import OptionError, absolute, parse_options, split_options
from layerfs.oci import Digest
from layerfs.store import zfscontainers as zc
from layerfs.store.durable import remove_tree, syncfs, write_atomic
from layerfs.store.errors import StoreError
from layerfs.store.records import CONTAINER_RECORD, ImageRecord, JsonDoc, load_doc, utc_now
from layerfs.store.store import Store
from layerfs.store.zfs import DatasetName, Zfs
from layerfs.store.zfsbackend import ZfsBackend

KIND_CONTAINER = "container"
DAEMON_PID = "daemon.pid"
KIND_IMAGE_MOUNT = "image-mount"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class ContainerError(StoreError):
    """A container operation the user asked for cannot be done; the message says why."""


@dataclass(frozen=True)
class Container:
    """One container (or image mount) record."""

    name: str
    kind: str
    image: str
    image_id: Digest
    layers: tuple[Digest, ...]  # ChainIDs, bottom first
    blobs: tuple[Digest, ...]
    created: str
    rootfs: str
    bundle: str | None
    upper: str | None
    work: str | None
    dataset: str | None = None  # zfs backend: the dataset holding upper and work

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "name": self.name,
            "kind": self.kind,
            "image": self.image,
            "image_id": self.image_id,
            "layers": list(self.layers),
            "blobs": list(self.blobs),
            "created": self.created,
            "rootfs": self.rootfs,
            "bundle": self.bundle,
            "upper": self.upper,
            "work": self.work,
            "dataset": self.dataset,
        }

    @classmethod
    def from_doc(cls, d: JsonDoc, directory: str) -> Container:
        """The record read from ``directory`` (where ``rootfs`` is when it names none);
        StoreDamagedError naming the first field that is wrong."""
        return cls(
            name=d.get("name", str),
            kind=d.get("kind", str, optional=True) or KIND_CONTAINER,
            image=d.get("image", str),
            image_id=d.digest("image_id") or Digest(""),
            layers=d.digests("layers"),
            blobs=d.digests("blobs", optional=True),
            created=d.get("created", str),
            rootfs=d.get("rootfs", str, optional=True) or os.path.join(directory, "rootfs"),
            bundle=d.get("bundle", str, optional=True),
            upper=d.get("upper", str, optional=True),
            work=d.get("work", str, optional=True),
            dataset=d.get("dataset", str, optional=True),
        )


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ContainerError(
            f"container name {name!r}: use letters, digits, '_', '.', '-' (max 128), "
            "starting with a letter or digit"
        )
    return name


def _record_path(store: Store, name: str) -> str:
    return os.path.join(store.paths.container_dir(name), CONTAINER_RECORD)


def read_container(store: Store, name: str) -> Container:
    """The record of container (or image mount) ``name``; `ContainerError` naming what is
    wrong when there is none or it is damaged."""
    path = _record_path(store, check_name(name))
    try:
        doc = load_doc(path)
    except FileNotFoundError:
        raise ContainerError(f"no container named {name!r} (see 'layerctl ps')") from None
    return Container.from_doc(doc, os.path.dirname(path))


def list_containers(store: Store) -> list[Container]:
    out = []
    try:
        names = sorted(os.listdir(store.paths.containers))
    except FileNotFoundError:
        return []
    for name in names:
        if _NAME.fullmatch(name) and os.path.exists(_record_path(store, name)):
            out.append(read_container(store, name))
    return out


def _write(store: Store, c: Container) -> None:
    write_atomic(_record_path(store, c.name), json.dumps(c.to_json(), indent=2).encode() + b"\n")


# Mount state -------------------------------------------------------------------------------


def mount_state(path: str) -> str:
    """``mounted``, ``stale`` (the daemon is gone: ENOTCONN) or ``unmounted``."""
    if not _in_mountinfo(path):
        return "unmounted"
    try:
        # An open reaches the daemon (a stat may be answered from the kernel's cache).
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            return "stale"
        raise
    return "mounted"


def _in_mountinfo(path: str) -> bool:
    target = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4].decode("unicode_escape").encode("latin-1")
            if mnt == target and b" - fuse.layerfs " in line:
                return True
    return False


def _layerfs(options: str, source: str, mountpoint: str) -> int:
    """Mount with layerfs, its daemon forked from this process: no second interpreter
    to start, which is most of what `create` from a cached image costs."""
    try:
        opts, _ = parse_options(split_options([options]))
        cfg = DaemonConfig(
            os.path.realpath(mountpoint), absolute(dataclasses.replace(opts, fsname=source))
        )
        return spawn_daemon(cfg)
    except (MountError, OptionError) as exc:
        raise ContainerError(str(exc)) from exc


def _unmount(path: str, *, lazy: bool = False) -> None:
    r = subprocess.run(
        ["fusermount3", "-u", *(["-z"] if lazy else []), path],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0 and _in_mountinfo(path):
        reason = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "busy?"
        raise ContainerError(f"cannot unmount {path}: {reason} (close what uses it, or --force)")


def _lower_option(store: Store, layers: tuple[Digest, ...]) -> str:
    return ":".join(store.backend.diff_dir(c) for c in reversed(layers))


def mount_container(store: Store, c: Container) -> str:
    """Mount ``c``'s rootfs unless it is; a stale mount (dead daemon) is cleaned first.

    Says what it did: ``already mounted``, ``mounted`` or ``remounted`` (it was stale).
    """
    state = mount_state(c.rootfs)
    if state == "mounted":
        return "already mounted"
    if state == "stale":
        _unmount(c.rootfs, lazy=True)
    os.makedirs(c.rootfs, exist_ok=True)
    store.backend.activate(c.layers)
    if c.dataset is not None and c.upper is not None:
        zc.mount_upper(_zfs(store, c), DatasetName(c.dataset), os.path.dirname(c.upper))
    # allow_other: container processes run as the image's users, not as the mounter.
    opts = f"lowerdir={_lower_option(store, c.layers)},allow_other"
    if c.kind == KIND_CONTAINER:
        assert c.upper is not None and c.work is not None
        opts += f",upperdir={c.upper},workdir={c.work}"
    else:
        opts += ",ro"
    pid = _layerfs(opts, f"layerctl:{c.name}", c.rootfs)
    # Beside the record: which process serves the mount (for ps, kill, tests).
    with contextlib.suppress(OSError):
        write_atomic(os.path.join(store.paths.container_dir(c.name), DAEMON_PID), b"%d\n" % pid)
    return "remounted" if state == "stale" else "mounted"


def unmount_container(c: Container, *, force: bool = False) -> bool:
    """Unmount ``c``'s rootfs; False when it was not mounted."""
    if mount_state(c.rootfs) == "unmounted":
        return False
    _unmount(c.rootfs, lazy=force)
    return True


# Lifecycle ---------------------------------------------------------------------------------


def create_container(
    store: Store,
    image: ImageRecord,
    image_ref: str,
    name: str,
    *,
    bundle: str | None = None,
    upper_quota: int | None = None,
) -> Container:
    """Make the container's record and upper (a dataset on zfs, with ``upper_quota`` bytes
    at most), and mount its rootfs."""
    check_name(name)
    zfs_backend = store.backend if isinstance(store.backend, ZfsBackend) else None
    if upper_quota is not None and zfs_backend is None:
        raise ContainerError("--upper-quota needs the zfs backend (layerctl init --backend zfs)")
    cdir = store.paths.container_dir(name)
    bundle_dir = os.path.abspath(bundle) if bundle else cdir
    # On zfs, upper/ and work/ are in the container's dataset, made once the record exists.
    upper_root = os.path.join(cdir, zc.UPPER_MOUNT) if zfs_backend else cdir
    with store.lock():
        if os.path.lexists(cdir):
            raise ContainerError(f"a container named {name!r} exists already")
        if zfs_backend is not None:
            zc.check_free(zfs_backend, name)
        if (
            bundle
            and os.path.lexists(os.path.join(bundle_dir, "rootfs"))
            and os.listdir(os.path.join(bundle_dir, "rootfs"))
        ):
            raise ContainerError(f"bundle {bundle_dir}: rootfs/ exists and is not empty")
        os.makedirs(store.paths.containers, exist_ok=True)
        os.mkdir(cdir, 0o700)
        c = Container(
            name=name,
            kind=KIND_CONTAINER,
            image=image.name,
            image_id=image.id,
            layers=image.layers,
            blobs=image.blobs,
            created=utc_now(),
            rootfs=os.path.join(bundle_dir, "rootfs"),
            bundle=bundle_dir,
            upper=os.path.join(upper_root, "upper"),
            work=os.path.join(upper_root, "work"),
            dataset=zc.container_dataset(zfs_backend, name) if zfs_backend else None,
        )
        if zfs_backend is None:
            for d in (c.upper, c.work):
                assert d is not None
                os.mkdir(d, 0o755)
        _write(store, c)
    try:
        if zfs_backend is not None:
            zc.create_upper(zfs_backend, name, upper_root, quota=upper_quota)
        os.makedirs(bundle_dir, exist_ok=True)
        mount_container(store, c)
    except BaseException:
        remove_container(store, c.name, force=True)
        raise
    return c


def remove_container(store: Store, name: str, *, force: bool = False) -> Container:
    """Unmount (only with ``force`` if mounted) and delete a container and its upper."""
    c = read_container(store, name)
    if mount_state(c.rootfs) == "mounted" and not force:
        raise ContainerError(
            f"container {name!r} is mounted: 'layerctl umount {name}' first, or rm --force"
        )
    unmount_container(c, force=True)
    if c.dataset is not None:
        # Before the record goes (it keeps the layers); retried while the daemon lets go.
        zc.destroy_upper(_zfs(store, c), DatasetName(c.dataset))
    cdir = store.paths.container_dir(c.name)
    if c.bundle and c.bundle != cdir:
        for leftover in ("config.json",):
            try:
                os.unlink(os.path.join(c.bundle, leftover))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(c.rootfs)
        except OSError:
            pass
    with store.lock():
        # The record goes last: until then the container's layers stay protected.
        for d in (c.upper, c.work):
            if d and os.path.lexists(d):
                remove_tree(d)
        for entry in os.listdir(cdir):
            if entry != CONTAINER_RECORD:
                p = os.path.join(cdir, entry)
                if os.path.isdir(p) and not os.path.islink(p):
                    if not os.path.ismount(p):
                        shutil.rmtree(p)
                else:
                    os.unlink(p)
        os.unlink(_record_path(store, c.name))
        os.rmdir(cdir)
    return c


# ZFS snapshots of the upper ----------------------------------------------------------------


def _zfs(store: Store, c: Container) -> Zfs:
    if isinstance(store.backend, ZfsBackend):
        return store.backend.zfs
    raise ContainerError(f"container {c.name!r} has a zfs dataset but the store is not on zfs")


def _dataset(store: Store, c: Container) -> tuple[Zfs, DatasetName]:
    if c.dataset is None:
        raise ContainerError(
            f"container {c.name!r} keeps its upper in a directory: snapshots and rollback "
            "need the zfs backend (a store made with 'layerctl init --backend zfs')"
        )
    return _zfs(store, c), DatasetName(c.dataset)


def snapshot_container(store: Store, name: str, snap: str | None = None) -> str:
    """Snapshot the container's upper (what the mount has written so far); the name used."""
    c = read_container(store, name)
    zfs, dataset = _dataset(store, c)
    snap = snap or zc.default_snapshot_name()
    if mount_state(c.rootfs) == "mounted":
        _flush(c)
    zc.snapshot_upper(zfs, dataset, snap)
    return snap


def _flush(c: Container) -> None:
    """Write the mount's dirty pages through to the upper before it is snapshotted.

    ``syncfs`` also reports, once, a write-back error from before (e.g. the pages of a file
    that hit the quota, already reported to its writer): a second call tells whether
    flushing now fails.
    """
    try:
        syncfs(c.rootfs)
    except OSError:
        try:
            syncfs(c.rootfs)
        except OSError as exc:
            raise ContainerError(
                f"container {c.name!r}: its rootfs cannot be flushed for the snapshot: "
                f"{exc.strerror}"
            ) from None


def container_snapshots(store: Store, name: str) -> list[str]:
    """The container's snapshots, oldest first."""
    c = read_container(store, name)
    zfs, dataset = _dataset(store, c)
    return zc.snapshots(zfs, dataset)


def rollback_container(store: Store, name: str, snap: str, *, destroy_newer: bool = False) -> bool:
    """Roll the container's upper back to ``snap``: unmount the rootfs (refused while
    something uses it), roll back, mount again if it was. Whether it was remounted."""
    c = read_container(store, name)
    zfs, dataset = _dataset(store, c)
    zc.check_rollback(zfs, dataset, snap, destroy_newer=destroy_newer)
    state = mount_state(c.rootfs)
    if state != "unmounted":
        try:
            _unmount(c.rootfs, lazy=state == "stale")
        except ContainerError:
            raise ContainerError(
                f"container {name!r} is in use (its rootfs {c.rootfs} cannot be unmounted): "
                "stop what runs in it, then roll back"
            ) from None
    try:
        zc.rollback_upper(zfs, dataset, snap, destroy_newer=destroy_newer)
    finally:
        if state != "unmounted":
            mount_container(store, c)
    return state != "unmounted"


def mount_image(store: Store, image: ImageRecord, image_ref: str, directory: str) -> Container:
    """Mount an image read-only at ``directory``; recorded so that its layers stay."""
    target = os.path.realpath(directory)
    if not os.path.isdir(target):
        raise ContainerError(f"{directory}: not an existing directory")
    if mount_state(target) != "unmounted":
        raise ContainerError(f"{directory}: something is mounted there already")
    name = "mount-" + hashlib.sha256(target.encode()).hexdigest()[:16]
    cdir = store.paths.container_dir(name)
    with store.lock():
        if os.path.lexists(cdir):
            remove_tree(cdir)  # a record left by an earlier, now unmounted, image mount
        os.makedirs(cdir, 0o700)
        c = Container(
            name=name,
            kind=KIND_IMAGE_MOUNT,
            image=image.name,
            image_id=image.id,
            layers=image.layers,
            blobs=image.blobs,
            created=utc_now(),
            rootfs=target,
            bundle=None,
            upper=None,
            work=None,
        )
        _write(store, c)
    try:
        mount_container(store, c)
    except BaseException:
        with store.lock():
            remove_tree(cdir)
        raise
    return c


def find_by_rootfs(store: Store, directory: str) -> Container | None:
    target = os.path.realpath(directory) if os.path.exists(directory) else directory
    for c in list_containers(store):
        if c.rootfs in (target, os.path.abspath(directory)):
            return c
    return None


def forget_image_mount(store: Store, c: Container) -> None:
    with store.lock():
        remove_tree(store.paths.container_dir(c.name))


def upper_size(c: Container) -> int:
    """Bytes the container's upper layer takes on disk."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(c.upper or "/nonexistent"):
        for n in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


def containers_of(store: Store) -> Iterator[Container]:
    """Every real container (not image mounts)."""
    return (c for c in list_containers(store) if c.kind == KIND_CONTAINER)
