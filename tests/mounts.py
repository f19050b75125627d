"""Test helpers: real layerfs and kernel overlayfs mounts, always torn down, and tree snapshots."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

import xxhash

LAYERFS = [sys.executable, "-m", "layerfs.cli.layerfs"]


def _mounts_at(path: Path | str) -> list[list[bytes]]:
    """The /proc/self/mountinfo lines (split) of the mounts on ``path``, oldest first."""
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        return [
            fields
            for fields in map(bytes.split, f)
            if fields[4].decode("unicode_escape").encode("latin-1") == target
        ]


def mounted(path: Path | str, fstype: str | None = None) -> bool:
    """Whether ``path`` is a mount point in /proc/self/mountinfo (optionally of ``fstype``)."""
    return any(
        fstype is None or fields[fields.index(b"-") + 1].decode() == fstype
        for fields in _mounts_at(path)
    )


def wait_for(cond: object, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond()`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def bdi_readahead_kb(mountpoint: Path | str) -> int:
    """The readahead (KiB) of the backing device of the mount at ``mountpoint``."""
    mounts = _mounts_at(mountpoint)
    if not mounts:
        raise FileNotFoundError(f"{mountpoint} is not a mount point")
    dev = mounts[-1][2].decode()  # the last mount on a path is the one that shows
    with open(f"/sys/class/bdi/{dev}/read_ahead_kb", encoding="ascii") as ra:
        return int(ra.read())


@dataclass
class LayerfsMount:
    mountpoint: Path
    proc: subprocess.Popen[bytes]
    options: str
    stderr: IO[bytes] | None = None

    def stderr_text(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mountpoint)],
            stderr=subprocess.DEVNULL,
            check=False,
        )
        try:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.stderr is not None:
            self.stderr.close()


def layerfs_options(
    lowers: Sequence[Path],
    upper: Path | None = None,
    work: Path | None = None,
    extra: Sequence[str] = (),
) -> str:
    opts = ["lowerdir=" + ":".join(str(p) for p in lowers)]
    if upper is not None and work is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
    opts += list(extra)
    return ",".join(opts)


def start_layerfs(
    mountpoint: Path, options: str, *, user_env: dict[str, str] | None = None
) -> LayerfsMount:
    """Start ``layerfs -f`` and wait until its mount shows in mountinfo."""
    return start_layerfs_with(mountpoint, options, env=user_env)


@contextlib.contextmanager
def layerfs(
    mountpoint: Path,
    lowers: Sequence[Path],
    upper: Path | None = None,
    work: Path | None = None,
    extra: Sequence[str] = (),
) -> Iterator[LayerfsMount]:
    m = start_layerfs(mountpoint, layerfs_options(lowers, upper, work, extra))
    try:
        yield m
    finally:
        m.stop()


@contextlib.contextmanager
def overlay(
    mountpoint: Path,
    lowers: Sequence[Path],
    upper: Path,
    work: Path,
    extra: str = "redirect_dir=on,index=off,metacopy=off",
) -> Iterator[Path]:
    """A kernel overlayfs mount: the oracle."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    if extra:
        opts += "," + extra
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@dataclass(frozen=True)
class Item:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    content: str  # xxh3-64 of data, symlink target, or rdev
    group: int  # index of the hard-link group among regular files with nlink > 1, else -1


def snapshot(root: Path, *, times: bool = False) -> dict[str, Item]:
    """Everything a user can see of a tree, comparable across filesystems."""
    out: dict[str, Item] = {}
    groups: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            content = ""
            group = -1
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    content = xxhash.xxh3_64_hexdigest(f.read())
                if st.st_nlink > 1:
                    group = groups.setdefault(st.st_ino, len(groups))
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            out[rel] = Item(
                stat.filemode(kind | 0)[0],
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                size,
                content + (f"@{st.st_mtime_ns}" if times else ""),
                group,
            )
    return out


def diff_snapshots(a: dict[str, Item], b: dict[str, Item]) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)} != {b.get(key)}")
    return out


def start_layerfs_with(
    mountpoint: Path,
    options: str,
    *,
    log: Path | None = None,
    prefix: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> LayerfsMount:
    """Start ``layerfs -f`` (with ``--log FILE``, a command prefix such as ``prlimit ...``,
    an environment) and wait until its mount shows in mountinfo.

    The prefix must exec the daemon (as ``prlimit`` and ``setpriv`` do): ``proc.pid`` is
    the daemon's pid, for signals and /proc.
    """
    mountpoint.mkdir(parents=True, exist_ok=True)
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by LayerfsMount.stop
    args = ["--log", str(log)] if log is not None else []
    proc = subprocess.Popen(
        [*prefix, *LAYERFS, "-f", *args, "-o", options, str(mountpoint)],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=env,
    )
    m = LayerfsMount(mountpoint, proc, options, err)
    try:
        wait_for(
            lambda: mounted(mountpoint, "fuse.layerfs") or proc.poll() is not None,
            what=f"layerfs mount at {mountpoint}",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"layerfs exited {proc.returncode}: {m.stderr_text()}")
    except BaseException:
        m.stop()
        raise
    return m


@dataclass
class Stack:
    """One lower directory under an upper, its workdir and a mountpoint; ``log`` is the
    daemon's ``--log`` (for `daemon_stats`)."""

    lower: Path
    upper: Path
    work: Path
    mnt: Path
    log: Path

    @classmethod
    def under(cls, root: Path) -> Self:
        """Empty ``upper`` and ``work`` under ``root``; ``lower`` is the caller's to fill."""
        s = cls(root / "lower", root / "upper", root / "work", root / "mnt", root / "log")
        for p in (s.lower, s.upper, s.work):
            p.mkdir(parents=True, exist_ok=True)
        return s

    def mount(self, *extra: str) -> LayerfsMount:
        opts = layerfs_options([self.lower], self.upper, self.work, extra)
        return start_layerfs_with(self.mnt, opts, log=self.log)


def crash_layerfs(m: LayerfsMount) -> None:
    """Simulate a daemon crash: SIGKILL, reap, then detach the dead mount (``-u -z``)."""
    if m.proc.poll() is None:
        m.proc.kill()
    m.proc.wait(timeout=10)
    subprocess.run(
        ["fusermount3", "-u", "-z", str(m.mountpoint)], stderr=subprocess.DEVNULL, check=False
    )
    wait_for(lambda: not mounted(m.mountpoint, "fuse.layerfs"), what="crashed mount to go")


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (``VmHWM``, ``VmRSS``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def daemon_stats(m: LayerfsMount, log: Path, timeout: float = 10.0) -> dict[str, int]:
    """Ask the daemon (SIGUSR1) for its counters and parse the ``stats:`` line it logs."""

    def lines() -> list[str]:
        return [x for x in log.read_text(errors="replace").splitlines() if "stats: " in x]

    before = len(lines())
    m.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: len(lines()) > before, timeout, what="daemon stats line")
    last = lines()[-1].split("stats: ", 1)[1]
    return {k: int(v) for k, v in (p.split("=", 1) for p in last.split())}
