"""Shared fixtures: layers built per test, real mounts, and a check that nothing is left behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounts import mounted


def _layerfs_mounts() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return [line.split()[4] for line in f if " - fuse.layerfs " in line]


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Only this session's mounts: another test run on the machine may have its own.
    base = str(tmp_path_factory.getbasetemp())
    before = set(_layerfs_mounts())
    yield
    left = {m for m in set(_layerfs_mounts()) - before if m.startswith(base)}
    for m in left:
        subprocess.run(["fusermount3", "-u", "-z", m], check=False)
    assert not left, f"test left layerfs mounts behind: {sorted(left)}"


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """Empty upper, work and mountpoint directories."""
    out = {}
    for name in ("upper", "work", "mnt"):
        p = tmp_path / name
        p.mkdir()
        out[name] = p
    return out


@pytest.fixture(scope="session")
def zfs_running() -> Iterator[None]:
    """zfs-fuse for the whole session (started and stopped by the session if needed)."""
    from tests.zfs import zfs_daemon

    with zfs_daemon():
        yield


@pytest.fixture
def zpool(tmp_path: Path, zfs_running: None) -> Iterator[str]:
    """A fresh ZFS pool on a sparse file, destroyed after the test."""
    from tests.zfs import zfs_pool

    with zfs_pool(tmp_path, f"lfs{os.getpid()}x{abs(hash(str(tmp_path))) % 100000}") as pool:
        yield pool


def make_tree(root: Path, spec: dict[str, str | bytes | None]) -> None:
    """Build a tree: value str/bytes = file content, None = directory, 'link:->T' = symlink."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, value in spec.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            p.mkdir(exist_ok=True)
        elif isinstance(value, str) and value.startswith("link:->"):
            os.symlink(value[len("link:->") :], p)
        else:
            p.write_bytes(value.encode() if isinstance(value, str) else value)


def is_mounted(path: Path) -> bool:
    return mounted(path)
