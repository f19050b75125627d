"""Container uppers on ZFS: one dataset per container, with its quota and its snapshots.

``<dataset>/containers/<name>`` is mounted at ``containers/<name>/fs/`` and holds the
container's ``upper/`` and ``work/``: one filesystem, as copy-up renames from ``work/`` into
``upper/``, and the filesystem's database in ``work/`` is snapshotted and rolled back together
with the upper it describes. The record and ``config.json`` stay outside the dataset, so a
rollback never touches them. ``--upper-quota`` is the dataset's ``quota``: a write past it fails
with EDQUOT ("Disk quota exceeded") through the mount, and nothing else is affected.

The mount choreography (stop the rootfs, roll back, mount again) is `layerfs.store.containers`'s;
this module only speaks ZFS.
"""

from __future__ import annotations

import datetime
import os
import re

from layerfs.store.errors import StoreError
from layerfs.store.zfs import (
    DatasetName,
    Zfs,
    ZfsExistsError,
    ZfsNotFoundError,
    check_snapshot_name,
)
from layerfs.store.zfsbackend import NO_AUTO_SNAPSHOT, ZfsBackend

UPPER_MOUNT = "fs"  # below containers/<name>/: the dataset, holding upper/ and work/
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:I?B)?", re.IGNORECASE)
_UNITS = "KMGTPE"


class UpperError(StoreError):
    """A container upper operation on ZFS cannot be done; the message says why."""


def parse_size(text: str) -> int:
    """Bytes of a size such as ``512M``, ``10G``, ``1.5T`` or ``4096`` (powers of 1024)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise UpperError(f"--upper-quota {text!r}: expected a size such as 512M or 10G")
    unit = m.group(2).upper()
    size = int(float(m.group(1)) * 1024 ** (_UNITS.index(unit) + 1 if unit else 0))
    if size <= 0:
        raise UpperError(f"--upper-quota {text!r}: the quota must be more than 0")
    return size


def container_dataset(backend: ZfsBackend, name: str) -> DatasetName:
    """``<dataset>/containers/<name>`` (container names are valid dataset components)."""
    return DatasetName(f"{backend.containers_dataset}/{name}")


def check_free(backend: ZfsBackend, name: str) -> None:
    """Refuse a name whose dataset exists without a container (made by hand, or left over)."""
    dataset = container_dataset(backend, name)
    if backend.zfs.exists(dataset):
        raise UpperError(
            f"zfs dataset {dataset} exists already, but no container {name!r} does: "
            f"destroy it ('zfs destroy -r {dataset}') or choose another name"
        )


def create_upper(
    backend: ZfsBackend, name: str, mountpoint: str, *, quota: int | None = None
) -> DatasetName:
    """Create and mount the container's dataset at ``mountpoint``, with ``upper/`` and
    ``work/`` in it."""
    dataset = container_dataset(backend, name)
    props = {"mountpoint": mountpoint, "layerfs:container": name, **NO_AUTO_SNAPSHOT}
    if quota is not None:
        props["quota"] = str(quota)
    try:
        backend.zfs.create(dataset, props)
    except ZfsExistsError:
        raise UpperError(
            f"zfs dataset {dataset} exists already, but no container {name!r} does: "
            f"destroy it ('zfs destroy -r {dataset}') or choose another name"
        ) from None
    for sub in ("upper", "work"):
        os.mkdir(os.path.join(mountpoint, sub), 0o755)
    return dataset


def mount_upper(zfs: Zfs, dataset: DatasetName, mountpoint: str) -> None:
    """Mount the dataset unless it is (after a reboot)."""
    if not os.path.ismount(mountpoint):
        zfs.mount(dataset)


def destroy_upper(zfs: Zfs, dataset: DatasetName) -> None:
    """Destroy the dataset and its snapshots (retried while the layerfs daemon lets go)."""
    zfs.destroy(dataset, recursive=True, missing_ok=True)


def default_snapshot_name() -> str:
    """A snapshot name from the current UTC time, e.g. ``20240131-120000``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")


def snapshot_upper(zfs: Zfs, dataset: DatasetName, snap: str) -> None:
    try:
        zfs.snapshot(dataset, snap)
    except ZfsExistsError:
        raise UpperError(f"snapshot {snap!r} of {dataset} exists already") from None


def snapshots(zfs: Zfs, dataset: DatasetName) -> list[str]:
    """The snapshot names (the part after ``@``) of the dataset, oldest first."""
    return [full.partition("@")[2] for full in zfs.snapshots(dataset)]


def check_rollback(zfs: Zfs, dataset: DatasetName, snap: str, *, destroy_newer: bool) -> None:
    """Refuse a rollback before anything is stopped: a missing snapshot, or newer ones that
    would be destroyed without ``destroy_newer``."""
    check_snapshot_name(dataset, snap)
    names = snapshots(zfs, dataset)
    if snap not in names:
        have = ", ".join(names) or "none"
        raise UpperError(f"no snapshot {snap!r} of {dataset} (there are: {have})")
    newer = names[names.index(snap) + 1 :]
    if newer and not destroy_newer:
        raise UpperError(
            f"snapshot {snap!r} is not the latest ({', '.join(newer)} came after): "
            "rolling back destroys them; add --destroy-newer to do so"
        )


def rollback_upper(zfs: Zfs, dataset: DatasetName, snap: str, *, destroy_newer: bool) -> None:
    """Roll the (stopped) upper back. ``zfs rollback`` unmounts and mounts the dataset itself,
    and is retried while it is busy: until the stopped layerfs daemon has closed its files."""
    try:
        zfs.rollback(dataset, snap, destroy_newer=destroy_newer)
    except ZfsNotFoundError:
        raise UpperError(f"no snapshot {snap!r} of {dataset}") from None
    finally:
        zfs.mount(dataset)  # mounted again by the rollback; after a failure, perhaps not
