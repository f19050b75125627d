"""A real ZFS pool for tests: zfs-fuse on a sparse file vdev, made and destroyed by a fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ZFS_FUSE = "/sbin/zfs-fuse"
PIDFILE = "/var/run/zfs-fuse.pid"


def _zfs_fuse_pid() -> int | None:
    try:
        pid = int(Path(PIDFILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    with open(f"/proc/{pid}/stat") as f:
        if f.read().split()[2] == "Z":
            return None
    return pid


def _ready() -> bool:
    return subprocess.run(["zpool", "list"], capture_output=True, check=False).returncode == 0


@contextmanager
def zfs_pool(workdir: Path, name: str, size: str = "2G") -> Iterator[str]:
    """A pool ``name`` on a sparse file in ``workdir``; starts zfs-fuse if needed, stops it after."""
    if not os.path.exists(ZFS_FUSE) or shutil.which("zpool") is None:
        pytest.fail("zfs-fuse is not installed: run tools/setup")
    started = False
    if _zfs_fuse_pid() is None:
        subprocess.run([ZFS_FUSE], check=True)
        started = True
    deadline = time.monotonic() + 15
    while not _ready():
        if time.monotonic() > deadline:
            raise TimeoutError("zfs-fuse did not come up")
        time.sleep(0.1)
    vdev = workdir / f"{name}.img"
    subprocess.run(["truncate", "-s", size, str(vdev)], check=True)
    mountpoint = workdir / f"{name}-mnt"
    subprocess.run(
        ["zpool", "create", "-f", "-m", str(mountpoint), name, str(vdev)],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        for _ in range(20):
            r = subprocess.run(["zpool", "destroy", "-f", name], capture_output=True, check=False)
            if r.returncode == 0:
                break
            time.sleep(0.25)
        vdev.unlink(missing_ok=True)
        if started:
            _stop_zfs_fuse()


def _stop_zfs_fuse() -> None:
    pid = _zfs_fuse_pid()
    if pid is None:
        return
    os.kill(pid, 15)
    deadline = time.monotonic() + 15
    while _zfs_fuse_pid() is not None:  # gone, or a zombie nobody reaps
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            break
        time.sleep(0.05)
