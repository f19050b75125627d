"""This process's mount table (``/proc/self/mountinfo``), read without running a command.

Used to find what is mounted at or below a directory before it is deleted (a tree is never
deleted through a mount) and to tell whether a dataset's mountpoint is live.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of the mount table."""

    mountpoint: str
    fstype: str
    source: str  # for ZFS (kernel or zfs-fuse): the dataset name


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def read_mounts() -> list[Mount]:
    """Every mount this process sees, in mount order."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            head, _, tail = line.rstrip(b"\n").partition(b" - ")
            fields, extra = head.split(b" "), tail.split(b" ")
            if len(fields) < 5 or len(extra) < 2:
                continue
            out.append(Mount(_unescape(fields[4]), _unescape(extra[0]), _unescape(extra[1])))
    return out


def mounts_below(path: str) -> list[Mount]:
    """The mounts at ``path`` or inside it (``path`` absolute and normalised)."""
    prefix = path.rstrip("/") + "/"
    return [m for m in read_mounts() if m.mountpoint == path or m.mountpoint.startswith(prefix)]


def is_mountpoint(path: str) -> bool:
    """Whether something is mounted at ``path`` (also when its filesystem no longer answers)."""
    return any(m.mountpoint == path for m in read_mounts())
