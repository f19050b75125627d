"""A real ZFS pool for tests: zfs-fuse on a sparse file vdev, made and destroyed by fixtures.

zfs-fuse is started once per test session (only if it is not running already) and stopped at
the end; each test gets its own pool, destroyed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ZFS_FUSE = "/sbin/zfs-fuse"
PIDFILE = "/run/layerfs-test-zfs-fuse.pid"


class ZfsUnavailableError(RuntimeError):
    pass


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _live_zfs_fuse() -> list[int]:
    out = subprocess.run(["pgrep", "-x", "zfs-fuse"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if _state(int(p)) not in ("Z", "gone")]


def _ready() -> bool:
    return subprocess.run(["zpool", "list"], capture_output=True, check=False).returncode == 0


def _wait(cond: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise ZfsUnavailableError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def zfs_daemon() -> Iterator[None]:
    """zfs-fuse running for the duration; started (and stopped) here only if it was not."""
    if not os.path.exists(ZFS_FUSE) or shutil.which("zpool") is None:
        raise ZfsUnavailableError("zfs-fuse is not installed: run tools/setup")
    if _ready():
        yield
        return
    # An instance still shutting down holds the zfs lock: wait for it to go.
    _wait(lambda: not _live_zfs_fuse(), 30, "an old zfs-fuse to exit")
    # zfs-fuse refuses to start over a pidfile its last run left behind.
    Path(PIDFILE).unlink(missing_ok=True)
    for attempt in range(5):
        r = subprocess.run(
            [ZFS_FUSE, "--pidfile", PIDFILE, "--no-kstat-mount"],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode == 0:
            break
        time.sleep(0.5 * (attempt + 1))
    else:
        raise ZfsUnavailableError(f"zfs-fuse does not start: {r.stderr.strip()}")
    try:
        _wait(_ready, 20, "zfs-fuse to answer")
        yield
    finally:
        for pid in _live_zfs_fuse():
            os.kill(pid, 15)
        try:
            _wait(lambda: not _live_zfs_fuse(), 30, "zfs-fuse to exit")
        except ZfsUnavailableError:
            for pid in _live_zfs_fuse():
                os.kill(pid, 9)
        Path(PIDFILE).unlink(missing_ok=True)


@contextmanager
def zfs_pool(workdir: Path, name: str, size: str = "2G") -> Iterator[str]:
    """A pool ``name`` on a sparse file in ``workdir`` (zfs-fuse must be running)."""
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
        for _ in range(40):
            r = subprocess.run(["zpool", "destroy", "-f", name], capture_output=True, check=False)
            if r.returncode == 0:
                break
            time.sleep(0.25)
        vdev.unlink(missing_ok=True)
