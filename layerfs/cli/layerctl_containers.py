"""``layerctl`` container commands: create, ps, mount, umount, rm, mount-image, snapshot, rollback.

Wiring only: the work is in `layerfs.store.containers` (and `layerfs.store.zfscontainers` for
the zfs backend's quota and snapshots) and `layerfs.bundle`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from layerfs.bundle import resolve_user, runtime_config, write_bundle_config
from layerfs.cli.progress import human_size
from layerfs.store import containers as ct
from layerfs.store.errors import StoreMissingError
from layerfs.store.pull import PullOptions, pull_image
from layerfs.store.records import ImageRecord
from layerfs.store.store import Store
from layerfs.store.zfscontainers import parse_size

_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:", "docker://")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the container subcommands on ``sub`` (an argparse subparsers object)."""
    s = sub.add_parser(
        "create",
        parents=[common],
        help="mount an image as a container rootfs and write its config.json",
    )
    s.add_argument("image", metavar="IMAGE", help="stored name/ID, or a SOURCE to pull first")
    s.add_argument("name", metavar="NAME", help="container name")
    s.add_argument(
        "--bundle",
        metavar="DIR",
        help="bundle directory (default: the container's directory in the store)",
    )
    s.add_argument(
        "--upper-quota", metavar="SIZE", help="limit the upper layer, e.g. 10G (zfs backend)"
    )
    s.add_argument("--tty", action="store_true", help="terminal: true in config.json")
    s.set_defaults(func=_create)

    s = sub.add_parser("ps", parents=[common], help="list containers")
    s.set_defaults(func=_ps)

    s = sub.add_parser(
        "mount",
        parents=[common],
        help="mount a container's rootfs (after a reboot or a dead daemon)",
    )
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("name", metavar="NAME", nargs="?", help="container name")
    g.add_argument("--all", action="store_true", help="every container and image mount")
    s.set_defaults(func=_mount)

    s = sub.add_parser("umount", parents=[common], help="unmount a container or a mounted image")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("target", metavar="NAME|DIR", nargs="?", help="container name or directory")
    g.add_argument("--all", action="store_true", help="every container and image mount")
    s.set_defaults(func=_umount)

    s = sub.add_parser("rm", parents=[common], help="remove a container and its upper layer")
    s.add_argument("name", metavar="NAME", help="container name")
    s.add_argument("--force", action="store_true", help="unmount it first if mounted")
    s.set_defaults(func=_rm)

    s = sub.add_parser(
        "mount-image",
        parents=[common],
        help="mount an image read-only at a directory (no container)",
    )
    s.add_argument("image", metavar="IMAGE", help="stored name/ID, or a SOURCE to pull first")
    s.add_argument("directory", metavar="DIR", help="an existing directory")
    s.set_defaults(func=_mount_image)

    s = sub.add_parser(
        "snapshot",
        parents=[common],
        help="snapshot a container's upper layer, or list its snapshots (zfs backend)",
    )
    s.add_argument("name", metavar="NAME", help="container name")
    s.add_argument("snap", metavar="SNAP", nargs="?", help="snapshot name (default: the time)")
    s.add_argument("--list", action="store_true", help="list the snapshots, oldest first")
    s.set_defaults(func=_snapshot)

    s = sub.add_parser(
        "rollback",
        parents=[common],
        help="roll a container's upper layer back to a snapshot (zfs backend)",
    )
    s.add_argument("name", metavar="NAME", help="container name")
    s.add_argument("snap", metavar="SNAP", help="snapshot name")
    s.add_argument(
        "--destroy-newer", action="store_true", help="also destroy the snapshots made after SNAP"
    )
    s.set_defaults(func=_rollback)


def _image(store: Store, ref: str) -> ImageRecord:
    if ref.startswith(_TRANSPORTS):
        return pull_image(store, ref, PullOptions()).record
    return store.find_image(ref)


def _create(args: argparse.Namespace) -> int:
    store = Store.open(args.root, create=True)
    ct.check_name(args.name)
    if args.upper_quota and store.config.backend != "zfs":
        raise ct.ContainerError("--upper-quota needs the zfs backend (layerctl init --backend zfs)")
    quota = parse_size(args.upper_quota) if args.upper_quota else None
    image = _image(store, args.image)
    config = store.image_config(image)
    c = ct.create_container(
        store, image, args.image, args.name, bundle=args.bundle, upper_quota=quota
    )
    try:
        user = resolve_user(config.config.user, c.rootfs)
        spec = runtime_config(config, user=user, rootfs="rootfs", tty=args.tty, hostname=args.name)
        assert c.bundle is not None
        write_bundle_config(c.bundle, spec)
    except BaseException:
        ct.remove_container(store, c.name, force=True)
        raise
    print(c.bundle)
    return 0


def _open(root: str | None) -> Store | None:
    try:
        return Store.open(root)
    except StoreMissingError:
        return None


def _ps(args: argparse.Namespace) -> int:
    store = _open(args.root)
    rows = [("NAME", "IMAGE", "STATE", "UPPER", "CREATED", "ROOTFS")]
    for c in ct.list_containers(store) if store else []:
        upper = human_size(ct.upper_size(c)) if c.kind == ct.KIND_CONTAINER else "-"
        name = c.name if c.kind == ct.KIND_CONTAINER else "(image)"
        rows.append((name, c.image, ct.mount_state(c.rootfs), upper, c.created, c.rootfs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def _mount(args: argparse.Namespace) -> int:
    store = Store.open(args.root)
    targets = ct.list_containers(store) if args.all else [ct.read_container(store, args.name)]
    for c in targets:
        state = ct.mount_container(store, c)
        label = c.name if c.kind == ct.KIND_CONTAINER else c.rootfs
        print(f"{label}: {state} at {c.rootfs}")
    return 0


def _umount(args: argparse.Namespace) -> int:
    store = Store.open(args.root)
    if args.all:
        for c in ct.list_containers(store):
            ct.unmount_container(c)
            if c.kind == ct.KIND_IMAGE_MOUNT:
                ct.forget_image_mount(store, c)
        return 0
    target = args.target
    found = ct.find_by_rootfs(store, target) if "/" in target or os.path.isdir(target) else None
    c = found if found is not None else ct.read_container(store, target)
    if not ct.unmount_container(c):
        print(f"{target}: not mounted", file=sys.stderr)
    if c.kind == ct.KIND_IMAGE_MOUNT:
        ct.forget_image_mount(store, c)
    return 0


def _rm(args: argparse.Namespace) -> int:
    store = Store.open(args.root)
    c = ct.remove_container(store, args.name, force=args.force)
    print(f"removed {c.name}")
    return 0


def _mount_image(args: argparse.Namespace) -> int:
    store = Store.open(args.root, create=True)
    image = _image(store, args.image)
    c = ct.mount_image(store, image, args.image, args.directory)
    print(c.rootfs)
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    store = Store.open(args.root)
    if args.list:
        if args.snap:
            raise ct.ContainerError("layerctl snapshot --list NAME takes no SNAP")
        for snap in ct.container_snapshots(store, args.name):
            print(snap)
        return 0
    snap = ct.snapshot_container(store, args.name, args.snap)
    print(f"{args.name}@{snap}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    store = Store.open(args.root)
    remounted = ct.rollback_container(store, args.name, args.snap, destroy_newer=args.destroy_newer)
    print(f"{args.name}: rolled back to {args.snap}{' and remounted' if remounted else ''}")
    return 0
