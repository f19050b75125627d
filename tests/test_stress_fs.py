"""Faults, load, permissions and resource bounds through real layerfs mounts (issue 8, fs side).

- Crash consistency: the daemon is killed with SIGKILL at random points (mid copy-up of a big
  file, mid burst of namespace changes) and, with strace's syscall injection, right before each
  mutating syscall of one operation in turn. A fresh mount on the same directories must then show
  the state before or after the interrupted operation (never a mix), every fsync'd write, no
  temporary name, an empty ``workdir/tmp``, and lower layers unchanged.
- Concurrent load on one mount: writers and readers on self-checking fixed-size records, parallel
  copy-ups of one file, renames racing lookups.
- Permissions through an ``allow_other`` mount, checked as ``nobody``; ``.wh.*`` names and
  internal xattrs refused.
- Resource bounds: 10,000 open files, a 100,000-entry directory (daemon RSS), ``rm -rf`` of a
  20,000-file tree with the inode table shrinking back once the kernel forgets.

Set ``LAYERFS_STRESS_SEED`` to replay the random choices of a failed run (the seed is in every
failure message). The strace-driven tests are skipped where strace is not installed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import random
import re
import resource
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash

from layerfs.fs.metacopy import MARKER as METACOPY_MARKER
from layerfs.fs.metacopy import read_marker
from layerfs.fs.serving import READAHEAD_KB
from tests.conftest import make_tree
from tests.mounts import (
    Item,
    LayerfsMount,
    bdi_readahead_kb,
    crash_layerfs,
    daemon_stats,
    layerfs,
    layerfs_options,
    mounted,
    proc_status_kb,
    snapshot,
    start_layerfs,
    start_layerfs_with,
    wait_for,
)

SEED = int(os.environ.get("LAYERFS_STRESS_SEED", str(time.time_ns() % 1_000_000_007)))
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# What a syscall on a mount whose daemon died answers.
DEAD = (errno.ENOTCONN, errno.ECONNABORTED)
# Where layerfs builds objects before renaming them into place (emptied at mount), and the
# shape of the names it gives them there (PID.COUNTER).
WORK_TMP = "tmp"
TMPNAME = re.compile(r"\d+\.\d+")

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def rename_exchange(a: Path, b: Path) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(a))


def derive(tag: str, n: int, size: int) -> bytes:
    """Content that only (tag, n, size) determines: a mismatch names what was seen."""
    unit = xxhash.xxh3_128_digest(f"{tag}:{n}".encode())
    return (unit * (size // 16 + 1))[:size]


def file_hash(path: Path | str) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def tree_state(root: Path) -> dict[str, Item]:
    """Everything of a (lower) tree that must never change, mtimes included."""
    return snapshot(root, times=True)


View = dict[str, tuple[Item, int]]


def view(root: Path) -> View:
    """What a user sees through a mount, with each object's st_ino (stable across remounts)."""
    return {rel: (item, os.lstat(root / rel).st_ino) for rel, item in snapshot(root).items()}


def _short(v: tuple[Item, int] | None) -> str:
    if v is None:
        return "absent"
    item, ino = v
    what = {"d": "dir", "-": "file", "l": "link"}.get(item.kind, item.kind)
    link = f" link-group {item.group}" if item.group >= 0 else ""
    return f"{what} {item.mode:o} {item.content[:8]}{link} ino {ino:#x}"


def diff_views(want: View, got: View, limit: int = 5) -> str:
    """``path: expected -> found`` for the first differences (for failure messages)."""
    out = [
        f"{k}: {_short(want.get(k))} -> {_short(got.get(k))}"
        for k in sorted(set(want) | set(got))
        if want.get(k) != got.get(k)
    ]
    more = f" (+{len(out) - limit} more)" if len(out) > limit else ""
    return "; ".join(out[:limit]) + more


def leftovers(upper: Path, work: Path, mnt: Path) -> list[str]:
    """Traces of unfinished work after a mount: temp names, stray upper objects, work files.

    Every upper object must be a whiteout, an opaque marker, or visible at the same path
    through the mount ``mnt``; ``workdir/tmp`` must be empty (it is cleaned at mount).
    """
    out = [f"work/tmp/{n}" for n in os.listdir(work / WORK_TMP)]
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, upper)
            st = os.lstat(full)
            if name.startswith(".wh."):
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                continue
            if TMPNAME.fullmatch(name):
                out.append(f"upper/{rel}: temporary name")
            elif not os.path.lexists(mnt / rel):
                out.append(f"upper/{rel}: not visible through the mount")
    return out


@dataclass
class Dirs:
    """One upper/work pair and a mountpoint, made fresh on demand."""

    base: Path
    upper: Path = field(init=False)
    work: Path = field(init=False)
    mnt: Path = field(init=False)

    def __post_init__(self) -> None:
        self.upper, self.work, self.mnt = self.base / "upper", self.base / "work", self.base / "mnt"
        for p in (self.upper, self.work, self.mnt):
            p.mkdir(parents=True, exist_ok=True)

    def options(self, lowers: Sequence[Path], extra: Sequence[str] = ()) -> str:
        return layerfs_options(lowers, self.upper, self.work, extra)

    def remove(self) -> None:
        assert not mounted(self.mnt)
        shutil.rmtree(self.base)


@contextlib.contextmanager
def mount(dirs: Dirs, lowers: Sequence[Path]) -> Iterator[LayerfsMount]:
    m = start_layerfs(dirs.mnt, dirs.options(lowers))
    try:
        yield m
    finally:
        m.stop()


def is_dead(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DEAD


def background(fn: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``fn`` on a daemon thread; what it raises lands in the returned list."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


# Crash consistency: a big copy-up ---------------------------------------------------------


BIG = 300 << 20


def write_big(path: Path, size: int) -> None:
    """A file of distinct 1 MiB blocks (no two alike), written fast."""
    block = bytearray(os.urandom(1 << 20))
    with open(path, "wb") as f:
        for i in range(size >> 20):
            block[:8] = struct.pack("<Q", i)
            f.write(block)


def staged_bytes(tmp: Path) -> int:
    """Bytes in the copy being staged in ``workdir/tmp`` (0 when there is none)."""
    total = 0
    for name in os.listdir(tmp):
        with contextlib.suppress(FileNotFoundError):
            total += os.lstat(tmp / name).st_size
    return total


@pytest.mark.stress
@pytest.mark.timeout(150)
def test_crash_during_big_copy_up(tmp_path: Path) -> None:
    """Kill the daemon while it copies a 300 MiB lower file's data up; remount and check.

    A size change copies the data: of the lower file itself, or of its metadata-only copy
    (made by a chmod first) — then the full copy replaces the marked one.
    """
    rng = random.Random(SEED)
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    make_tree(top, {"etc/conf": "top\n"})
    make_tree(bottom, {"etc/conf": "bottom\n", "etc/other": "o\n"})
    write_big(bottom / "big", BIG)
    lowers = [top, bottom]
    before = {str(p): tree_state(p) for p in lowers}
    big_hash = file_hash(bottom / "big")
    rounds, mid_copy, progress = 5, 0, []
    for i in range(rounds):
        d = Dirs(tmp_path / f"round{i}")
        target = rng.choice([BIG, int(rng.uniform(0.02, 1.0) * BIG)])
        with mount(d, lowers) as m:
            ino = os.lstat(m.mountpoint / "big").st_ino
            if i % 2:
                os.chmod(m.mountpoint / "big", 0o600)
                assert read_marker(bytes(d.upper / "big")) is not None
            t, errors = background(functools.partial(os.truncate, m.mountpoint / "big", BIG))
            # Aim inside the copy: once its temporary file has a random share of the data
            # (all of it: the kill lands in the fsync or just before the rename).
            tmp = d.work / WORK_TMP
            wait_for(lambda tmp=tmp, t=t: os.listdir(tmp) or not t.is_alive(), what="copy-up")
            wait_for(
                lambda tmp=tmp, t=t, n=target: staged_bytes(tmp) >= n or not t.is_alive(),
                what="copy-up progress",
            )
            staged = [os.lstat(tmp / n).st_size for n in os.listdir(tmp)]
            crash_layerfs(m)
            t.join(10)
            assert not t.is_alive(), "chmod still blocked after the daemon died"
            mid_copy += bool(staged)
            progress.append(f"{staged[0] * 100 // BIG}%" if staged else "done")
            assert all(is_dead(e) for e in errors), f"seed {SEED}: {errors}"
        with mount(d, lowers) as m:
            root = m.mountpoint
            assert os.listdir(d.work / WORK_TMP) == [], "workdir/tmp not cleaned at mount"
            st = os.lstat(root / "big")
            assert st.st_size == BIG and st.st_ino == ino
            assert stat.S_IMODE(st.st_mode) in (0o644, 0o600)
            assert file_hash(root / "big") == big_hash, f"seed {SEED} round {i}: big corrupt"
            if (d.upper / "big").exists() and read_marker(bytes(d.upper / "big")) is None:
                assert file_hash(d.upper / "big") == big_hash, "a partial copy in the upper"
            assert leftovers(d.upper, d.work, root) == []
            assert (root / "etc/conf").read_text() == "top\n"
            # The copy-up still works after the crash.
            os.chmod(root / "big", 0o640)
            assert stat.S_IMODE(os.lstat(d.upper / "big").st_mode) == 0o640
        d.remove()
    assert {str(p): tree_state(p) for p in lowers} == before, "a lower layer changed"
    print(f"big copy-up: {rounds} kills, {mid_copy} mid-copy, copied at kill: {progress}")
    assert mid_copy >= 1, "no kill landed during a copy-up: the test proves nothing"


# Crash consistency: a burst of namespace changes, with fsync'd files -----------------------


@dataclass
class Obj:
    """What the model expects at a path: file content (bytes) or a directory (None)."""

    data: bytes | None
    ino: int


@dataclass
class Pending:
    """The operation in flight when the daemon died.

    After remount its paths must show ``pre`` or ``post`` when ``kind`` is "atomic"; for
    "file" (a create or rewrite not yet fsync'd) any file content or, for a create, nothing;
    for "dir" (mkdir) a directory or nothing.
    """

    what: str
    pre: dict[str, Obj | None]
    post: dict[str, Obj | None]
    kind: str


class BurstModel:
    """The expected merged tree under ``b/``, updated only when an operation returns."""

    def __init__(self, root: Path) -> None:
        self.objs: dict[str, Obj] = scan(root)
        self.pending: Pending | None = None
        self.seq = 0
        self.ops = 0
        self.fsynced = 0  # files written and fsync'd, each checked after every later kill

    def refresh(self, root: Path) -> None:
        """Take what the mount shows as the truth (after the in-flight operation's outcome)."""
        self.objs = scan(root)
        self.pending = None

    def files(self) -> list[str]:
        return sorted(p for p, o in self.objs.items() if o.data is not None)

    def dirs(self) -> list[str]:
        return sorted(p for p, o in self.objs.items() if o.data is None)

    def subtree(self, path: str) -> dict[str, Obj]:
        return {p: o for p, o in self.objs.items() if p == path or p.startswith(path + "/")}

    def begin(self, what: str, post: dict[str, Obj | None], kind: str = "atomic") -> Pending:
        pre: dict[str, Obj | None] = {p: self.objs.get(p) for p in post}
        self.pending = Pending(what, pre, post, kind)
        return self.pending

    def commit(self) -> None:
        assert self.pending is not None
        for p, o in self.pending.post.items():
            if o is None:
                self.objs.pop(p, None)
            else:
                self.objs[p] = o
        self.pending = None
        self.ops += 1

    def check(self, root: Path) -> list[str]:
        """Differences between the model and the mount ``root`` (empty when it holds)."""
        seen = scan(root)
        out: list[str] = []
        pend = self.pending
        loose = set(pend.post) if pend is not None else set()
        for p in sorted((set(self.objs) | set(seen)) - loose):
            want, got = self.objs.get(p), seen.get(p)
            if want != got:
                out.append(f"{p}: expected {_brief(want)}, found {_brief(got)}")
        if pend is None:
            return out
        got_pend = {p: seen.get(p) for p in pend.post}
        if pend.kind == "atomic":
            if got_pend not in (pend.pre, pend.post):
                out.append(
                    f"{pend.what} interrupted: neither before nor after: "
                    + ", ".join(f"{p}={_brief(o)}" for p, o in sorted(got_pend.items()))
                )
            return out
        for p, o in got_pend.items():
            if o is None and pend.pre[p] is not None:
                out.append(f"{pend.what} interrupted: {p} vanished")
            elif o is not None and (o.data is None) != (pend.kind == "dir"):
                out.append(f"{pend.what} interrupted: {p} is {_brief(o)}")
        return out


def scan(root: Path) -> dict[str, Obj]:
    out: dict[str, Obj] = {}
    for dirpath, dirnames, filenames in os.walk(root / "b"):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = os.lstat(full)
            data = None if stat.S_ISDIR(st.st_mode) else full.read_bytes()
            out[str(full.relative_to(root))] = Obj(data, st.st_ino)
    return out


def _brief(o: Obj | None) -> str:
    if o is None:
        return "nothing"
    if o.data is None:
        return f"dir(ino={o.ino})"
    return f"file({len(o.data)}B {xxhash.xxh3_64_hexdigest(o.data)[:8]} ino={o.ino})"


def burst(root: Path, model: BurstModel, rng: random.Random, stop: threading.Event) -> None:
    """Random creates (fsync'd), rewrites, unlinks, renames, mkdir/rm -rf under ``root/b``."""
    while not stop.is_set():
        model.seq += 1
        n = model.seq
        files, dirs = model.files(), model.dirs()
        kind = rng.choices(
            ["create", "rewrite", "unlink", "rename", "rename_dir", "mkdir", "rmtree"],
            [5, 3, 3, 3, 1, 1, 1],
        )[0]
        if kind == "create" or (kind in ("rewrite", "unlink", "rename") and not files):
            path = f"{rng.choice(['b', *dirs])}/n{n}"
            data = derive("burst", n, rng.choice([0, 100, 5000, 70000]))
            pend = model.begin(f"create {path}", {path: Obj(data, 0)}, "file")
            fd = os.open(root / path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
                pend.post[path] = Obj(data, os.fstat(fd).st_ino)
            finally:
                os.close(fd)
            model.fsynced += 1
        elif kind == "rewrite":
            path = rng.choice(files)
            data = derive("rewrite", n, rng.choice([10, 3000, 40000]))
            model.begin(f"rewrite {path}", {path: Obj(data, model.objs[path].ino)}, "file")
            with open(root / path, "r+b") as f:
                f.truncate(0)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            model.fsynced += 1
        elif kind == "unlink":
            path = rng.choice(files)
            model.begin(f"unlink {path}", {path: None})
            os.unlink(root / path)
        elif kind == "rename":
            src = rng.choice(files)
            dst = rng.choice([f"{rng.choice(['b', *dirs])}/r{n}", rng.choice(files)])
            if dst == src:
                continue
            model.begin(f"rename {src} -> {dst}", {src: None, dst: model.objs[src]})
            os.rename(root / src, root / dst)
        elif kind == "rename_dir" and dirs:
            src, dst = rng.choice(dirs), f"b/m{n}"
            moved = model.subtree(src)
            post: dict[str, Obj | None] = dict.fromkeys(moved)
            post.update({dst + p[len(src) :]: o for p, o in moved.items()})
            model.begin(f"rename dir {src} -> {dst}", post)
            os.rename(root / src, root / dst)
        elif kind == "mkdir":
            path = f"{rng.choice(['b', *dirs])}/k{n}"
            pend = model.begin(f"mkdir {path}", {path: Obj(None, 0)}, "dir")
            os.mkdir(root / path)
            pend.post[path] = Obj(None, os.lstat(root / path).st_ino)
        elif kind == "rmtree" and dirs:
            # rm -rf of a whole (often lower) directory, each step recorded as it returns.
            top = rng.choice(dirs)
            for p in sorted(model.subtree(top), key=lambda p: -p.count("/")):
                model.begin(f"remove {p} (rm -rf {top})", {p: None})
                if model.objs[p].data is None:
                    os.rmdir(root / p)
                else:
                    os.unlink(root / p)
                model.commit()
            continue
        else:
            continue
        model.commit()


def burst_lowers(tmp_path: Path) -> list[Path]:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    spec: dict[str, str | bytes | None] = {f"b/L{i}": derive("L", i, 50 * i) for i in range(40)}
    spec.update({f"b/D{j}/f{k}": derive("D", 10 * j + k, 999) for j in range(6) for k in range(8)})
    spec.update({f"b/D{j}/sub/s": f"s{j}" for j in range(6)})
    make_tree(bottom, spec)
    make_tree(top, {**{f"b/T{i}": derive("T", i, 2000) for i in range(10)}, "b/.wh.L0": ""})
    make_tree(top, {"b/D1/.wh.f0": "", "b/D2/f9": "top"})
    return [top, bottom]


@pytest.mark.stress
@pytest.mark.timeout(120)
def test_crash_during_burst_of_changes(tmp_path: Path) -> None:
    """Kill the daemon at random points of a burst of creates/unlinks/renames, many times."""
    rng, kill_rng = random.Random(SEED + 1), random.Random(SEED + 2)
    lowers = burst_lowers(tmp_path)
    before = {str(p): tree_state(p) for p in lowers}
    d = Dirs(tmp_path / "c")
    with mount(d, lowers) as m:
        model = BurstModel(m.mountpoint)
    kills, problems = 10, []
    for k in range(kills):
        stop = threading.Event()
        with mount(d, lowers) as m:
            t, died = background(functools.partial(burst, m.mountpoint, model, rng, stop))
            time.sleep(kill_rng.uniform(0.1, 0.8))
            crash_layerfs(m)  # mid-operation: the thread learns it from ENOTCONN
            stop.set()
            t.join(10)
            assert not t.is_alive(), "the burst thread hangs on a dead mount"
            died = [e for e in died if not is_dead(e)]
            assert not died, f"seed {SEED} kill {k}: the burst failed before the kill: {died}"
        with mount(d, lowers) as m:
            found = model.check(m.mountpoint)
            found += leftovers(d.upper, d.work, m.mountpoint)
            what = model.pending.what if model.pending else "no operation"
            if found:
                problems.append(f"kill {k} during {what}: {found}")
            # Carry on from what the mount shows (the in-flight operation's outcome included).
            model.refresh(m.mountpoint)
    assert {str(p): tree_state(p) for p in lowers} == before, "a lower layer changed"
    print(
        f"burst: {kills} kills, {model.ops} operations ({model.fsynced} fsync'd writes), "
        f"{len(problems)} inconsistent remounts (seed {SEED})"
    )
    assert not problems, f"seed {SEED}:\n" + "\n".join(problems)


# Crash consistency: a kill right before each mutating syscall of one operation -------------

# Everything by which the daemon changes the upper, the work directory or its database.
MUTATING = (
    "rename,renameat,renameat2,unlink,unlinkat,rmdir,mkdir,mkdirat,mknod,mknodat,link,linkat,"
    "symlink,symlinkat,chmod,fchmod,fchmodat,chown,fchown,fchownat,lchown,setxattr,lsetxattr,"
    "fsetxattr,removexattr,lremovexattr,fremovexattr,truncate,ftruncate,utimensat,"
    "copy_file_range,write,pwrite64,fsync,fdatasync"
)
HAVE_STRACE = shutil.which("strace") is not None
_SYSCALL_LINE = re.compile(r"(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")


@contextlib.contextmanager
def strace(pid: int, args: Sequence[str], err: Path) -> Iterator[subprocess.Popen[bytes]]:
    """strace attached to every thread of ``pid``; detached (or gone) on exit."""
    with open(err, "wb") as f:
        proc = subprocess.Popen(
            ["strace", "-f", "-p", str(pid), *args], stdout=subprocess.DEVNULL, stderr=f
        )
    try:
        wait_for(
            lambda: b"attached" in err.read_bytes() or proc.poll() is not None,
            what="strace to attach",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"strace failed: {err.read_text()}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()  # strace detaches and lets the tracee run on
        proc.wait(timeout=10)


def crash_points(trace: str, pid: int) -> list[tuple[str, int]]:
    """(syscall, n-th call of it) for each mutating syscall of the daemon's main thread.

    A point right after a failed call (no effect) repeats the previous state: skipped.
    """
    counts: dict[str, int] = {}
    points: list[tuple[str, int]] = []
    failed_before = False
    for line in trace.splitlines():
        m = _SYSCALL_LINE.match(line)
        if m is None or int(m.group(1)) != pid:
            continue
        name = m.group(2)
        counts[name] = counts.get(name, 0) + 1
        if not failed_before:
            points.append((name, counts[name]))
        failed_before = m.group(4) == "-1"
    return points


ANY_INO = -1


def same_view(got: View, want: View) -> bool:
    if got.keys() != want.keys():
        return False
    return all(got[p][0] == item and ino in (ANY_INO, got[p][1]) for p, (item, ino) in want.items())


@dataclass(frozen=True)
class Scenario:
    """One operation (``op``) to interrupt, after ``setup``; both act on the mount root."""

    name: str
    setup: Callable[[Path], None]
    op: Callable[[Path], None]


def _rm_rf(root: Path, name: str) -> None:
    subprocess.run(["rm", "-rf", str(root / name)], check=True)


def _unlink_all(root: Path, name: str) -> None:
    for p in sorted((root / name).iterdir()):
        os.unlink(p)


def _mkdir_with_file(root: Path) -> None:
    _rm_rf(root, "d0")
    os.mkdir(root / "n")
    (root / "n/x").write_text("new x\n")


def _nothing(root: Path) -> None:
    return None


SCENARIOS = [
    Scenario("rename_lower_dir", _nothing, lambda r: os.rename(r / "d1", r / "e1")),
    Scenario("rmdir_after_unlinks", lambda r: _unlink_all(r, "d2"), lambda r: os.rmdir(r / "d2")),
    Scenario(
        "rename_dir_onto_removed_dir", _mkdir_with_file, lambda r: os.rename(r / "n", r / "d0")
    ),
    Scenario("mkdir_over_removed_dir", lambda r: _rm_rf(r, "d0"), lambda r: os.mkdir(r / "d0")),
    Scenario("copy_up_chmod", _nothing, lambda r: os.chmod(r / "a", 0o600)),
    Scenario("copy_up_hardlinked", _nothing, lambda r: os.chmod(r / "h1", 0o600)),
    Scenario("rename_file_over_lower", _nothing, lambda r: os.rename(r / "a", r / "x")),
    Scenario("exchange_lower_dirs", _nothing, lambda r: rename_exchange(r / "p", r / "q")),
    Scenario("unlink_lower_file", _nothing, lambda r: os.unlink(r / "x")),
]


def crash_lowers(tmp_path: Path) -> list[Path]:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    spec: dict[str, str | bytes | None] = {
        **{f"d{i}/f{k}": f"d{i}f{k}\n" for i in range(3) for k in range(4)},
        "d1/sub/s": "s\n",
        "a": derive("a", 0, 3000),
        "x": "x\n",
        "h1": "linked\n",
        **{f"p/p{k}": f"p{k}\n" for k in range(3)},
        **{f"q/q{k}": f"q{k}\n" for k in range(2)},
    }
    make_tree(bottom, spec)
    os.link(bottom / "h1", bottom / "h2")
    os.setxattr(bottom / "a", "user.note", b"kept")
    make_tree(top, {"d1/top": "t\n", "p/.wh.p0": "", "q/q9": "q9\n"})
    return [top, bottom]


def run_crash_point(
    base: Path, lowers: Sequence[Path], sc: Scenario, point: tuple[str, int] | None
) -> tuple[View, View, str, Dirs]:
    """Mount, set up, run ``sc.op`` under strace: recording (point None) or killing the
    daemon right before the ``point`` syscall. Returns (view before, view after a fresh
    mount, trace, dirs)."""
    d = Dirs(base)
    trace_file, err = base / "trace", base / "strace.err"
    with mount(d, lowers) as m:
        root = m.mountpoint
        sc.setup(root)
        before = view(root)
        # The daemon's one write of its own after INIT (the bdi's readahead) must not be
        # taken for the operation's first, nor be killed in its place.
        wait_for(lambda: bdi_readahead_kb(root) == READAHEAD_KB, what="the daemon's readahead")
        if point is None:
            args = ["-o", str(trace_file), "-e", f"trace={MUTATING}"]
        else:
            name, nth = point
            args = ["-o", "/dev/null", "-e", f"trace={name}"]
            args += ["-e", f"inject={name}:signal=KILL:when={nth}"]
        failure: list[OSError] = []
        with strace(m.proc.pid, args, err):

            def op() -> None:
                try:
                    sc.op(root)
                except OSError as exc:
                    failure.append(exc)

            t = threading.Thread(target=op, daemon=True)
            t.start()
            t.join(20)
            assert not t.is_alive(), f"{sc.name} {point}: the operation hangs"
        if point is None:
            assert not failure, f"{sc.name}: {failure}"
        else:
            try:
                m.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                # The traced run made this syscall, this run did not (SQLite writes its WAL
                # header only on a connection's first write, for one): no crash, so the
                # operation must have completed — the "after" state is checked below.
                assert not failure, f"{sc.name} {point}: {failure}"
            else:
                # The kill may land after the operation already answered (a syscall made
                # after the reply): then it succeeded, and "after" is what must show.
                assert not failure or is_dead(failure[0]), f"{sc.name} {point}: {failure}"
                crash_layerfs(m)
    with mount(d, lowers) as m:
        after = view(m.mountpoint)
        stray = leftovers(d.upper, d.work, m.mountpoint)
    trace = trace_file.read_text() if point is None else ""
    return before, after, trace + "".join(f"\nLEFTOVER {s}" for s in stray), d


@pytest.mark.stress
@pytest.mark.timeout(170)
@pytest.mark.skipif(not HAVE_STRACE, reason="needs strace (syscall fault injection)")
def test_crash_before_each_mutating_syscall(tmp_path: Path) -> None:
    """For each operation, kill the daemon right before each of its mutating syscalls in
    turn; a fresh mount must show the state before or after the operation, nothing else."""
    lowers = crash_lowers(tmp_path)
    before_lowers = {str(p): tree_state(p) for p in lowers}
    problems: list[str] = []
    tried = 0
    per_op: dict[str, int] = {}
    for sc in SCENARIOS:
        pre_ref, post_ref, trace, ref = run_crash_point(
            tmp_path / sc.name / "ref", lowers, sc, None
        )
        assert "LEFTOVER" not in trace, f"{sc.name} without a crash: {trace}"
        points = crash_points(trace, int(trace.split()[0]) if trace.strip() else 0)
        assert points, f"{sc.name}: no mutating syscall traced"
        ref.remove()
        per_op[sc.name] = len(points)
        for i, point in enumerate(points):
            tried += 1
            pre, got, stray, d = run_crash_point(tmp_path / sc.name / str(i), lowers, sc, point)
            # Upper objects made by the setup have new inode numbers in every run.
            ino_map = {pre_ref[p][1]: pre[p][1] for p in pre_ref if p in pre}
            post = {p: (it, ino_map.get(ino, ANY_INO)) for p, (it, ino) in post_ref.items()}
            where = f"{sc.name}: kill before {point[0]} #{point[1]} ({i + 1}/{len(points)})"
            if not (same_view(got, pre) or same_view(got, post)):
                problems.append(
                    f"{where}: neither before nor after.\n    vs before: {diff_views(pre, got)}"
                    f"\n    vs after:  {diff_views(post, got)}"
                )
            if stray.strip():
                problems.append(f"{where}: {stray.strip()}")
            d.remove()
    assert {str(p): tree_state(p) for p in lowers} == before_lowers, "a lower layer changed"
    print(f"crash points: {tried} kills over {len(SCENARIOS)} operations: {per_op}")
    assert not problems, "\n".join(problems)


# Concurrent load on one mount ------------------------------------------------------------------

REC = 4096  # one page: records never share a page
RECORDS = 32
WRITERS = READERS = 8
_HEAD = struct.Struct("<IIQ")


def record(f: int, r: int, v: int) -> bytes:
    """Record ``r`` of file ``f`` at version ``v``: header, filler, then its own checksum."""
    body = _HEAD.pack(f, r, v) + derive(f"rec{f}.{r}", v, REC - _HEAD.size - 8)
    return body + xxhash.xxh3_64_digest(body)


def parse_record(buf: bytes, f: int, r: int) -> int | None:
    """The version of a whole, self-consistent record of (f, r); None for anything else."""
    if len(buf) != REC or xxhash.xxh3_64_digest(buf[:-8]) != buf[-8:]:
        return None
    ff, rr, v = _HEAD.unpack_from(buf)
    if (ff, rr) != (f, r) or buf != record(f, r, v):
        return None
    return int(v)


@dataclass
class Load:
    """Shared state of the concurrent test: versions started and completed per record."""

    paths: list[Path]
    started: list[list[int]]
    done: list[list[int]]
    errors: list[str] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    torn: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.ops[what] = self.ops.get(what, 0) + n

    def fail(self, msg: str) -> None:
        with self.lock:
            self.errors.append(msg)


def writer(load: Load, w: int, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    try:
        while time.monotonic() < deadline:
            f = rng.randrange(len(load.paths))
            mine = [r for r in range(RECORDS) if (r + f) % WRITERS == w]
            flags = rng.choice([os.O_RDWR, os.O_WRONLY])
            fd = os.open(load.paths[f], flags)
            try:
                for r in mine:
                    v = load.started[f][r] + 1
                    load.started[f][r] = v
                    assert os.pwrite(fd, record(f, r, v), r * REC) == REC
                    load.done[f][r] = v
                if rng.random() < 0.2:
                    os.fsync(fd)
                    load.count("fsync")
            finally:
                os.close(fd)
            load.count("record writes", len(mine))
    except Exception as exc:
        load.fail(f"writer {w}: {exc!r}")


def reader(load: Load, i: int, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    seen = [[0] * RECORDS for _ in load.paths]
    try:
        while time.monotonic() < deadline:
            f = rng.randrange(len(load.paths))
            fd = os.open(load.paths[f], os.O_RDONLY)
            try:
                data = os.pread(fd, REC * RECORDS, 0)
                if len(data) != REC * RECORDS:
                    load.fail(f"reader {i}: file {f} is {len(data)} bytes")
                    continue
                for r in range(RECORDS):
                    buf = data[r * REC : (r + 1) * REC]
                    v = parse_record(buf, f, r)
                    tries = 0
                    while v is None and tries < 50:
                        # A read racing a write of the same page may see it half copied (as
                        # on any Linux filesystem); a damaged record stays damaged.
                        tries += 1
                        time.sleep(0.001)
                        v = parse_record(os.pread(fd, REC, r * REC), f, r)
                    if tries:
                        with load.lock:
                            load.torn += 1
                    if v is None:
                        load.fail(f"reader {i}: file {f} record {r} corrupt: {buf[:16]!r}")
                    elif v > load.started[f][r]:
                        load.fail(f"reader {i}: file {f} record {r} v{v} was never written")
                    elif v < seen[f][r]:
                        load.fail(f"reader {i}: file {f} record {r} went back v{seen[f][r]}->v{v}")
                    else:
                        seen[f][r] = v
            finally:
                os.close(fd)
            load.count("file reads")
    except Exception as exc:
        load.fail(f"reader {i}: {exc!r}")


def join_all(threads: Sequence[threading.Thread], deadline: float) -> list[str]:
    """Join ``threads`` by ``deadline``; the names of those still running (hung)."""
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


@pytest.mark.stress
@pytest.mark.timeout(90)
def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    """8 writers and 8 readers on shared lower and upper files; every record checks itself,
    the final content is the last completed write of each record, nothing hangs."""
    lower = tmp_path / "lower"
    nlower, nupper = 4, 4
    make_tree(
        lower,
        {f"l{f}": b"".join(record(f, r, 0) for r in range(RECORDS)) for f in range(nlower)},
    )
    d = Dirs(tmp_path / "c")
    duration = 8.0
    with mount(d, [lower]) as m:
        root = m.mountpoint
        for f in range(nlower, nlower + nupper):
            (root / f"u{f}").write_bytes(b"".join(record(f, r, 0) for r in range(RECORDS)))
        paths = [root / f"l{f}" for f in range(nlower)]
        paths += [root / f"u{f}" for f in range(nlower, nlower + nupper)]
        n = len(paths)
        load = Load(paths, [[0] * RECORDS for _ in range(n)], [[0] * RECORDS for _ in range(n)])
        end = time.monotonic() + duration
        threads = [
            threading.Thread(
                target=writer, args=(load, w, end, SEED + w), name=f"w{w}", daemon=True
            )
            for w in range(WRITERS)
        ]
        threads += [
            threading.Thread(
                target=reader, args=(load, i, end, SEED + 100 + i), name=f"r{i}", daemon=True
            )
            for i in range(READERS)
        ]
        for t in threads:
            t.start()
        hung = join_all(threads, end + 30)
        assert not hung, f"threads hang: {hung}"
        assert not load.errors, f"seed {SEED}: " + "; ".join(load.errors[:10])

        def final(read: Callable[[int], bytes], where: str) -> list[str]:
            bad = []
            for f in range(n):
                data = read(f)
                for r in range(RECORDS):
                    v = parse_record(data[r * REC : (r + 1) * REC], f, r)
                    if v != load.done[f][r]:
                        bad.append(
                            f"{where}: file {f} record {r}: v{v}, last written v{load.done[f][r]}"
                        )
            return bad

        bad = final(lambda f: paths[f].read_bytes(), "through the mount")
        with open("/proc/sys/vm/drop_caches", "w") as dc:
            dc.write("1\n")  # read again from the daemon, not the page cache
        bad += final(lambda f: paths[f].read_bytes(), "after drop_caches")
    names = [f"l{f}" for f in range(nlower)] + [f"u{f}" for f in range(nlower, n)]
    bad += final(lambda f: (d.upper / names[f]).read_bytes(), "in the upper after unmount")
    assert sorted(os.listdir(d.upper)) == sorted(names)
    assert os.listdir(d.work / WORK_TMP) == []
    print(
        f"concurrent load {duration:.0f}s: {load.ops}, transient torn reads {load.torn} "
        f"(seed {SEED})"
    )
    assert not bad, "lost or damaged updates: " + "; ".join(bad[:10])


def copy_up_racer(
    path: Path,
    kind: str,
    size: int,
    barrier: threading.Barrier,
    hashes: list[str],
    errors: list[str],
    label: str,
) -> None:
    """Wait for the others, trigger a copy-up of ``path`` by ``kind``, then hash the file."""
    try:
        barrier.wait(10)
        copy_up_op(path, kind, size)
        hashes.append(file_hash(path))
    except Exception as exc:
        errors.append(f"{label} ({kind}): {exc!r}")


def copy_up_op(path: Path, kind: str, size: int) -> None:
    if kind == "open_rw":
        fd = os.open(path, os.O_RDWR)
        os.close(fd)
    elif kind == "chmod":
        os.chmod(path, 0o644)
    elif kind == "utime":
        os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    elif kind == "xattr":
        os.setxattr(path, "user.t", b"1")
    elif kind == "truncate_same":
        os.truncate(path, size)


@pytest.mark.timeout(90)
def test_parallel_copy_ups_of_one_file(tmp_path: Path) -> None:
    """16 threads trigger the copy-up of the same lower file at once (big files copy on a
    worker thread, small ones inline; a hard-linked pair through both names): one upper copy,
    everybody reads the same data, no error."""
    lower = tmp_path / "lower"
    sizes = {"big0": 8 << 20, "big1": 3 << 20, "small0": 65536, "small1": 10, "h1": 2 << 20}
    make_tree(lower, {name: derive(name, 0, size) for name, size in sizes.items()})
    os.link(lower / "h1", lower / "h2")
    want = {name: file_hash(lower / name) for name in sizes}
    want["h2"] = want["h1"]
    d = Dirs(tmp_path / "c")
    nthreads, rounds = 16, 3
    kinds = ["open_rw", "chmod", "utime", "xattr", "truncate_same"]
    errors: list[str] = []
    ops = 0
    for rnd in range(rounds):
        with mount(d, [lower]) as m:
            root = m.mountpoint
            inos = {name: os.lstat(root / name).st_ino for name in [*sizes, "h2"]}
            for name in [*sizes, "h2"]:
                barrier = threading.Barrier(nthreads)
                hashes: list[str] = []
                threads = []
                for i in range(nthreads):
                    target = ("h1", "h2")[i % 2] if name.startswith("h") else name
                    kind = random.Random(SEED + i).choice(kinds)
                    size = sizes.get(target, sizes["h1"])
                    race = functools.partial(copy_up_racer, root / target, kind, size, barrier)
                    t = threading.Thread(
                        target=race, args=(hashes, errors, f"round {rnd} {target} thread {i}")
                    )
                    t.daemon = True
                    threads.append(t)
                for t in threads:
                    t.start()
                assert not join_all(threads, time.monotonic() + 30), "copy-up threads hang"
                ops += nthreads
                assert set(hashes) == {want[name]}, (
                    f"round {rnd} {name}: {len(set(hashes))} versions"
                )
            assert not errors, errors
            # One copy each; the hard-linked pair is still one file.
            assert sorted(os.listdir(d.upper)) == sorted([*sizes, "h2"])
            for name in [*sizes, "h2"]:
                # Attribute changes alone leave a metadata-only copy, whose data is below.
                if read_marker(bytes(d.upper / name)) is None:
                    assert file_hash(d.upper / name) == want[name]
                assert file_hash(root / name) == want[name]
                assert os.lstat(root / name).st_ino == inos[name], f"{name}: st_ino changed"
            assert os.lstat(d.upper / "h1").st_ino == os.lstat(d.upper / "h2").st_ino
            with open(root / "h1", "r+b") as f:
                f.write(b"R%d" % rnd)
            assert (root / "h2").read_bytes()[:2] == b"R%d" % rnd
            want["h1"] = want["h2"] = file_hash(root / "h1")
            assert os.listdir(d.work / WORK_TMP) == []
        d.remove()
        d = Dirs(tmp_path / f"c{rnd}")
        want["h1"] = want["h2"] = file_hash(lower / "h1")
    print(f"parallel copy-ups: {ops} racing operations over {rounds} rounds")


@pytest.mark.timeout(60)
def test_truncate_by_path_while_open_read_only(tmp_path: Path) -> None:
    """truncate(2) by path while another process reads the file: the kernel may hand the
    daemon that reader's (read-only) handle with the request; the truncate must still work."""
    lower = tmp_path / "lower"
    make_tree(lower, {"low": b"L" * 100})
    d = Dirs(tmp_path / "c")
    with mount(d, [lower]) as m:
        failures = []
        (m.mountpoint / "up").write_bytes(b"U" * 100)
        for name in ("up", "low"):
            path = m.mountpoint / name
            fd = os.open(path, os.O_RDONLY)
            try:
                for size in (100, 50, 0):
                    try:
                        os.truncate(path, size)
                    except OSError as exc:
                        failures.append(f"{name}: truncate to {size}: {exc}")
            finally:
                os.close(fd)
        assert not failures, failures
        assert (m.mountpoint / "up").read_bytes() == b""
        assert (m.mountpoint / "low").read_bytes() == b""


def lookup_loop(
    root: Path, rng: random.Random, deadline: float, contents: dict[str, bytes], stats: Load
) -> None:
    """stat/open/list the names being renamed; only ENOENT may fail, contents always right."""
    n = 0
    while time.monotonic() < deadline:
        n += 1
        what = rng.randrange(6)
        try:
            if what == 0:
                os.stat(root / rng.choice(["ra", "rb"]))
            elif what == 1:
                data = (root / rng.choice(["ra", "rb"])).read_bytes()
                if data != contents["ra"]:
                    stats.fail(f"ra/rb read {data[:20]!r}")
            elif what == 2:
                names = sorted(os.listdir(root / rng.choice(["rd", "re"])))
                if names != sorted(p[3:] for p in contents if p.startswith("rd/")):
                    stats.fail(f"rd/re listed {names}")
            elif what == 3:
                k = rng.randrange(10)
                data = (root / rng.choice(["rd", "re"]) / f"f{k}").read_bytes()
                if data != contents[f"rd/f{k}"]:
                    stats.fail(f"rd/f{k} read {data[:20]!r}")
            elif what == 4:
                data = (root / rng.choice(["xa", "xb"])).read_bytes()
                if data not in (contents["xa"], contents["xb"]):
                    stats.fail(f"xa/xb read {data[:20]!r}")
            else:
                os.stat(root / rng.choice(["xa", "xb"]))
        except FileNotFoundError:
            stats.count("ENOENT")
        except OSError as exc:
            stats.fail(f"lookup {what}: {exc!r}")
    stats.count("lookups", n)


def rename_loop(a: Path, b: Path, deadline: float, stats: Load, exchange: bool = False) -> None:
    n = 0
    try:
        while time.monotonic() < deadline:
            if exchange:
                rename_exchange(a, b)
            else:
                os.rename(a, b)
                os.rename(b, a)
            n += 1
    except OSError as exc:
        stats.fail(f"rename {a.name}<->{b.name}: {exc!r}")
    stats.count(f"renames {a.name}<->{b.name}", n)


@pytest.mark.stress
@pytest.mark.timeout(60)
def test_renames_racing_lookups(tmp_path: Path) -> None:
    """A lower file and a lower directory renamed back and forth, two files exchanged, while
    six threads look them up, open and list them: only ENOENT, never wrong contents."""
    lower = tmp_path / "lower"
    contents = {"ra": derive("ra", 0, 5000), **{f"rd/f{k}": f"f{k}\n".encode() for k in range(10)}}
    make_tree(lower, {**contents, "rd/sub/s": "s"})
    contents["rd/sub"] = b""
    contents["xa"], contents["xb"] = b"xa" * 100, b"xb" * 100
    d = Dirs(tmp_path / "c")
    stats = Load([], [], [])
    with mount(d, [lower]) as m:
        root = m.mountpoint
        (root / "xa").write_bytes(contents["xa"])
        (root / "xb").write_bytes(contents["xb"])
        end = time.monotonic() + 5.0
        threads = [
            threading.Thread(target=rename_loop, args=(root / "ra", root / "rb", end, stats)),
            threading.Thread(target=rename_loop, args=(root / "rd", root / "re", end, stats)),
            threading.Thread(target=rename_loop, args=(root / "xa", root / "xb", end, stats, True)),
        ]
        threads += [
            threading.Thread(
                target=lookup_loop, args=(root, random.Random(SEED + i), end, contents, stats)
            )
            for i in range(6)
        ]
        for t in threads:
            t.daemon = True
            t.start()
        assert not join_all(threads, end + 30), "threads hang"
        assert not stats.errors, f"seed {SEED}: " + "; ".join(stats.errors[:10])
        state = view(root)
    with mount(d, [lower]) as m:
        assert view(m.mountpoint) == state, "the renames did not survive a remount"
        root = m.mountpoint
        assert (root / "ra").read_bytes() == contents["ra"]
        assert sorted(os.listdir(root / "rd")) == sorted([f"f{k}" for k in range(10)] + ["sub"])
        assert {(root / "xa").read_bytes(), (root / "xb").read_bytes()} == {
            contents["xa"],
            contents["xb"],
        }
    print(f"renames racing lookups: {stats.ops}")


# Permissions through an allow_other mount ------------------------------------------------------


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def public_mount(
    tmp_path: Path, name: str, lowers: Sequence[Path], extra: Sequence[str]
) -> Iterator[tuple[LayerfsMount, Dirs]]:
    """A mount ``nobody`` can reach: pytest's tmp dirs are 0700, so the mountpoint is not."""
    public = Path(tempfile.mkdtemp(prefix=f"layerfs-{name}-"))
    try:
        public.chmod(0o755)
        d = Dirs(tmp_path / name)
        with layerfs(public / "mnt", lowers, d.upper, d.work, ["allow_other", *extra]) as m:
            os.chmod(m.mountpoint, 0o755)
            yield m, d
    finally:
        shutil.rmtree(public, ignore_errors=True)


def permission_lowers(tmp_path: Path) -> list[Path]:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    make_tree(
        bottom,
        {"secret": "root only\n", "ro/f": "f\n", "pub": "p\n", "gone": "g\n", "od/x": "x"},
    )
    os.chmod(bottom / "secret", 0o600)
    os.chmod(bottom / "ro", 0o555)
    (bottom / "tmp").mkdir(mode=0o1777)
    os.chmod(bottom / "tmp", 0o1777)
    shutil.copy2("/usr/bin/id", bottom / "suid-id")
    os.chown(bottom / "suid-id", 0, 0)
    os.chmod(bottom / "suid-id", 0o4755)
    make_tree(top, {".wh.gone": "", "xf": "xattrs\n"})
    os.setxattr(top / "xf", "user.keep", b"1")
    os.setxattr(top / "xf", "user.overlay.origin", b"internal")
    os.setxattr(top / "xf", "user.layerfs.meta", b"internal")
    os.setxattr(top / "xf", "trusted.overlay.redirect", b"/internal")
    return [top, bottom]


def mount_flags(path: Path) -> set[str]:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == target:
                return set(fields[5].split(","))
    raise AssertionError(f"{path} is not mounted")


@pytest.mark.timeout(60)
def test_permissions_for_an_unprivileged_user(tmp_path: Path) -> None:
    """As nobody through allow_other: no reading a 0600 root file, no writing into a 0555
    directory or a root file, no owner change, files made in a sticky dir owned by nobody."""
    lowers = permission_lowers(tmp_path)
    with public_mount(tmp_path, "perm", lowers, ["nosuid"]) as (m, d):
        r = m.mountpoint
        assert as_nobody("cat", str(r / "pub")).stdout == "p\n", "nobody cannot reach the mount"
        assert (r / "secret").read_text() == "root only\n"  # root can: the test can fail
        (r / "tmp/rootfile").write_text("")
        denied = {
            "read 0600 root file": as_nobody("cat", str(r / "secret")),
            "create in 0555 dir": as_nobody("touch", str(r / "ro/new")),
            "mkdir in 0555 dir": as_nobody("mkdir", str(r / "ro/newdir")),
            "unlink in 0555 dir": as_nobody("rm", "-f", str(r / "ro/f")),
            "rename out of 0555 dir": as_nobody("mv", str(r / "ro/f"), str(r / "tmp/f")),
            "write root 0644 file": as_nobody("sh", "-c", f"echo x >> {r}/pub"),
            "chmod root file": as_nobody("chmod", "666", str(r / "pub")),
            "chown own file to root": as_nobody(
                "sh", "-c", f"touch {r}/tmp/mine && chown 0 {r}/tmp/mine"
            ),
            "unlink root file in sticky dir": as_nobody(
                "sh", "-c", f"rm -f {r}/tmp/rootfile; test ! -e {r}/tmp/rootfile"
            ),
            "chmod setuid-root binary": as_nobody("chmod", "u-s", str(r / "suid-id")),
        }
        allowed = {n: p for n, p in denied.items() if p.returncode == 0}
        assert not allowed, f"nobody was allowed to: {sorted(allowed)}"
        assert not (r / "ro/new").exists() and (r / "ro/f").exists()
        assert (r / "pub").read_text() == "p\n"
        assert stat.S_IMODE(os.lstat(r / "suid-id").st_mode) == 0o4755
        # What nobody may do, it does as nobody: the upper holds nobody's files.
        assert as_nobody("sh", "-c", f"echo mine > {r}/tmp/own").returncode == 0
        st = os.lstat(d.upper / "tmp/own")
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        assert os.lstat(d.upper / "tmp/mine").st_uid == 65534
        assert not (d.upper / "secret").exists() and not (d.upper / "pub").exists()


@pytest.mark.timeout(60)
def test_nosuid_mount_gives_no_setuid(tmp_path: Path) -> None:
    """A setuid-root copy of id(1) run by nobody: euid stays 65534 through a nosuid mount,
    and becomes 0 through a suid one (so the test can tell the difference)."""
    lowers = permission_lowers(tmp_path)
    with public_mount(tmp_path, "nosuid", lowers, ["nosuid"]) as (m, _):
        assert "nosuid" in mount_flags(m.mountpoint)
        run = as_nobody(str(m.mountpoint / "suid-id"), "-u")
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "65534", "setuid honoured through a nosuid mount"
    with public_mount(tmp_path, "suid", lowers, ["suid"]) as (m, _):
        assert "nosuid" not in mount_flags(m.mountpoint)
        run = as_nobody(str(m.mountpoint / "suid-id"), "-u")
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "0", "a suid mount should run setuid-root as root"


@pytest.mark.timeout(60)
def test_whiteout_names_and_internal_xattrs_refused(tmp_path: Path) -> None:
    """``.wh.*`` names cannot be made or seen; overlay/layerfs xattrs are hidden and refused,
    for root and for nobody, before and after copy-up."""
    lowers = permission_lowers(tmp_path)
    internal = ["user.overlay.origin", "user.layerfs.meta", "trusted.overlay.redirect"]
    with public_mount(tmp_path, "wh", lowers, []) as (m, d):
        r = m.mountpoint
        assert "gone" not in os.listdir(r) and ".wh.gone" not in os.listdir(r)
        for name in ("gone", ".wh.gone"):
            assert not os.path.lexists(r / name)
        made: list[str] = []
        attempts: dict[str, Callable[[], object]] = {
            "create": lambda: os.close(os.open(r / "tmp/.wh.f", os.O_CREAT | os.O_WRONLY, 0o644)),
            "opaque marker": lambda: (r / "tmp/.wh..wh..opq").write_text(""),
            "mkdir": lambda: os.mkdir(r / "tmp/.wh.d"),
            "symlink": lambda: os.symlink("pub", r / "tmp/.wh.s"),
            "mkfifo": lambda: os.mkfifo(r / "tmp/.wh.p"),
            "link": lambda: os.link(r / "pub", r / "tmp/.wh.l"),
            "rename": lambda: os.rename(r / "xf", r / "tmp/.wh.r"),
            "whiteout of a lower name": lambda: (r / ".wh.pub").write_text(""),
        }
        for what, attempt in attempts.items():
            try:
                attempt()
                made.append(what)
            except OSError:
                pass
        for cmd in (
            f"touch {r}/tmp/.wh.n",
            f"mkdir {r}/tmp/.wh.nd",
            f"mv {r}/tmp/own {r}/tmp/.wh.own",
        ):
            as_nobody("sh", "-c", f"echo x > {r}/tmp/own")
            if as_nobody("sh", "-c", cmd).returncode == 0:
                made.append(f"nobody: {cmd}")
        assert not made, f".wh.* names were created: {made}"
        assert (r / "pub").exists() and (r / "xf").exists()
        wh_in_upper = [str(p) for p in d.upper.rglob(".wh.*")]
        assert not wh_in_upper, wh_in_upper

        def check_xattrs(where: str) -> list[str]:
            bad = []
            if os.listxattr(r / "xf") != ["user.keep"]:
                bad.append(f"{where}: listxattr shows {os.listxattr(r / 'xf')}")
            for name in internal:
                for what, call in (
                    ("get", lambda n=name: os.getxattr(r / "xf", n)),
                    ("set", lambda n=name: os.setxattr(r / "xf", n, b"forged")),
                    ("remove", lambda n=name: os.removexattr(r / "xf", n)),
                ):
                    try:
                        call()
                        bad.append(f"{where}: {what} {name} allowed")
                    except OSError:
                        pass
            return bad

        bad = check_xattrs("lower")
        os.chmod(r / "xf", 0o644)  # copy-up
        assert (d.upper / "xf").exists()
        bad += check_xattrs("copied up")
        # The only internal xattr of the copy is the mount's own metadata-only marker.
        upper_names = os.listxattr(d.upper / "xf")
        if any(
            n.startswith(("user.overlay.", "user.layerfs.", "trusted.overlay."))
            for n in upper_names
            if n != METACOPY_MARKER
        ):
            bad.append(f"internal xattrs of the lower copied into the upper: {upper_names}")
        if METACOPY_MARKER in upper_names and read_marker(bytes(d.upper / "xf")) != (0, b"xf"):
            bad.append(f"a forged marker: {os.getxattr(d.upper / 'xf', METACOPY_MARKER)!r}")
        # An opaque directory the mount made: its marker xattr stays hidden.
        subprocess.run(["rm", "-rf", str(r / "od")], check=True)
        os.mkdir(r / "od")
        assert os.listdir(r / "od") == []
        if any(n.startswith("trusted.overlay.") for n in os.listxattr(r / "od")):
            bad.append(f"opaque dir shows {os.listxattr(r / 'od')}")
        as_nobody("sh", "-c", f"echo x > {r}/tmp/nb")
        for name in ("user.overlay.opaque", "user.layerfs.origin"):
            if as_nobody("setfattr", "-n", name, "-v", "y", str(r / "tmp/nb")).returncode == 0:
                bad.append(f"nobody set {name}")
        ok = as_nobody("setfattr", "-n", "user.fine", "-v", "1", str(r / "tmp/nb"))
        assert ok.returncode == 0, f"an ordinary user xattr was refused: {ok.stderr}"
        assert not bad, bad


# Resource bounds -----------------------------------------------------------------------------


@contextlib.contextmanager
def nofile_limit(soft: int) -> Iterator[None]:
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = old[1] if old[1] != resource.RLIM_INFINITY else soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def make_files(directory: Path, n: int, content: Callable[[int], bytes] | None = None) -> None:
    """``n`` small files straight in a layer (fast: no mount involved)."""
    directory.mkdir(parents=True, exist_ok=True)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            fd = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
            if content is not None:
                os.write(fd, content(i))
            os.close(fd)
    finally:
        os.close(dfd)


OPEN_FILES = 10_000


@pytest.mark.stress
@pytest.mark.timeout(120)
@pytest.mark.parametrize("daemon_limit", ["inherited", "soft-1024"])
def test_ten_thousand_open_files(tmp_path: Path, daemon_limit: str) -> None:
    """10,000 files open at once through the mount (every fourth for writing, so copied up):
    the daemon holds one descriptor per open file and must cope, also when started with the
    usual soft limit of 1024 (systemd's default) under a higher hard limit."""
    lower = tmp_path / "lower"
    make_files(lower / "many", OPEN_FILES, lambda i: b"%d\n" % i)
    d = Dirs(tmp_path / "c")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = OPEN_FILES + 2000
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} < {need}")
    prefix = [] if daemon_limit == "inherited" else ["prlimit", f"--nofile=1024:{hard}", "--"]
    with nofile_limit(need):
        m = start_layerfs_with(d.mnt, d.options([lower]), prefix=prefix)
        fds: list[int] = []
        try:
            pid = m.proc.pid
            start = time.monotonic()
            failed: OSError | None = None
            for i in range(OPEN_FILES):
                try:
                    flags = os.O_RDWR if i % 4 == 0 else os.O_RDONLY
                    fds.append(os.open(d.mnt / "many" / f"f{i}", flags))
                except OSError as exc:
                    failed = exc
                    break
            held = fd_count(pid)
            limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            assert failed is None, (
                f"open #{len(fds) + 1} through the mount failed: {failed!r}; the daemon holds "
                f"{held} fds under RLIMIT_NOFILE {limit} (soft, hard)"
            )
            opened = time.monotonic() - start
            assert held >= OPEN_FILES, f"daemon holds only {held} fds for {OPEN_FILES} open files"
            for i, fd in enumerate(fds):
                assert os.pread(fd, 16, 0) == b"%d\n" % i
                if i % 4 == 0:
                    os.pwrite(fd, b"w%d\n" % i, 0)
            for fd in fds:
                os.close(fd)
            fds = []
            wait_for(lambda: fd_count(pid) < 50, 30, what="daemon to close released files")
            assert (d.mnt / "many/f8").read_bytes() == b"w8\n"
            assert (d.mnt / "many/f9").read_bytes() == b"9\n"
            assert len(os.listdir(d.upper / "many")) == OPEN_FILES // 4
            hwm = proc_status_kb(pid, "VmHWM")
        finally:
            for fd in fds:
                os.close(fd)
            m.stop()
    print(
        f"{OPEN_FILES} open files ({daemon_limit} limit): opened in {opened:.1f}s, daemon held "
        f"{held} fds, max RSS {hwm // 1024} MiB"
    )


ENTRIES = 100_000
RSS_LIMIT_MB = 400


@pytest.mark.stress
@pytest.mark.timeout(150)
def test_hundred_thousand_entries_listed(tmp_path: Path) -> None:
    """A lower directory of 100,000 entries listed whole, lower-only and then merged with the
    upper: every name once, and the daemon's peak RSS bounded."""
    lower = tmp_path / "lower"
    make_files(lower / "big", ENTRIES)
    d = Dirs(tmp_path / "c")
    log = tmp_path / "daemon.log"
    m = start_layerfs_with(d.mnt, d.options([lower]), log=log)
    try:
        pid = m.proc.pid
        hwm_start = proc_status_kb(pid, "VmHWM")
        want = {f"f{i}" for i in range(ENTRIES)}
        times = []
        for rnd in range(3):
            if rnd == 2:
                # Merged: the directory is in the upper too now (one created, one removed).
                (d.mnt / "big/extra").write_text("x")
                os.unlink(d.mnt / "big/f0")
                want = (want - {"f0"}) | {"extra"}
            start = time.monotonic()
            with os.scandir(d.mnt / "big") as it:
                names = [e.name for e in it]
            times.append(time.monotonic() - start)
            assert len(names) == len(want), f"listing {rnd}: {len(names)} entries"
            assert len(set(names)) == len(names), f"listing {rnd}: duplicates"
            assert set(names) == want
        hwm = proc_status_kb(pid, "VmHWM")
        inodes = daemon_stats(m, log)["inodes"]
    finally:
        m.stop()
    print(
        f"{ENTRIES} entries: listings {', '.join(f'{t:.1f}s' for t in times)}; daemon max RSS "
        f"{hwm_start // 1024} MiB at start, {hwm // 1024} MiB after; {inodes} inodes held"
    )
    assert hwm < RSS_LIMIT_MB * 1024, f"daemon peak RSS {hwm // 1024} MiB"


@pytest.mark.stress
@pytest.mark.timeout(150)
def test_rm_rf_of_a_big_lower_tree_frees_inodes(tmp_path: Path) -> None:
    """rm -rf of 20,000 lower files through the mount; once the kernel drops its caches
    (forget), the daemon's inode table is back to a handful of entries."""
    lower = tmp_path / "lower"
    for j in range(100):
        make_files(lower / "tree" / f"d{j}", 200)
    make_tree(lower, {"keep": "k\n"})
    d = Dirs(tmp_path / "c")
    log = tmp_path / "daemon.log"
    m = start_layerfs_with(d.mnt, d.options([lower]), log=log)
    try:
        # A walk first: the kernel then holds a lookup on every object of the tree.
        subprocess.run(["find", str(d.mnt)], check=True, capture_output=True, timeout=60)
        peak = daemon_stats(m, log)
        assert peak["inodes"] > 20_000, peak
        start = time.monotonic()
        subprocess.run(["rm", "-rf", str(d.mnt / "tree")], check=True, timeout=120)
        took = time.monotonic() - start
        assert sorted(os.listdir(d.mnt)) == ["keep"]

        def shrunk() -> bool:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("2\n")
            return daemon_stats(m, log)["inodes"] < 100

        wait_for(shrunk, 30, what="the inode table to shrink after forget")
        after = daemon_stats(m, log)
        hwm = proc_status_kb(m.proc.pid, "VmHWM")
        fds = fd_count(m.proc.pid)
    finally:
        m.stop()
    st = os.lstat(d.upper / "tree")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, "tree is not a whiteout in the upper"
    with mount(d, [lower]) as m2:
        assert sorted(os.listdir(m2.mountpoint)) == ["keep"]
    print(
        f"rm -rf of 20000 files: {took:.1f}s; inodes {peak['inodes']} -> {after['inodes']}; "
        f"daemon fds {fds}, max RSS {hwm // 1024} MiB"
    )
    assert fds < 50
