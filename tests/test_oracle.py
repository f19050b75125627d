"""Kernel overlayfs as the oracle: the same operations on both mounts must show the same tree.

Lower layers are built in overlay-native form (char 0/0 whiteouts, ``trusted.overlay.opaque``)
so the kernel reads them too. Each of the two mounts gets its own upper and work directory; the
lower directories are shared read-only. A case applies one script to the kernel overlay, then to
layerfs, and compares the errno of every step, the snapshots (names, types, modes, owners, sizes,
contents, link targets, hard-link groups) and the user xattrs; then layerfs is remounted on the
same upper and compared again.

Deliberate differences, each asserted on its own:
- Hard links: kernel overlay with ``index=off`` breaks a lower hard-link group on copy-up;
  layerfs keeps it (``test_lower_hardlink_group_survives_copy_up``).
- Directory ``st_nlink``: the kernel reports 1 for merged directories; layerfs reports 2 + the
  subdirectories. ``snapshot`` has no nlink; ``check_layerfs_invariants`` asserts layerfs's count.
- ``st_ino``: layerfs numbers are unique within the mount and stable across copy-up and remount
  (also with each layer on its own filesystem); checked on layerfs only.
- Names starting ``.wh.`` cannot be created through layerfs (``test_whiteout_names_refused``).
- Internal xattr names (``trusted.overlay.*``, ``user.overlay.*``, ``user.layerfs.*``): the
  kernel accepts them, layerfs refuses them (``test_internal_xattrs_refused``).

Everything else is compared with the kernel; a difference there is a layerfs bug and fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import errno
import functools
import itertools
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import make_tree
from tests.mounts import (
    LayerfsMount,
    diff_snapshots,
    layerfs_options,
    overlay,
    snapshot,
    start_layerfs,
)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
OWNER = 1234
SPARSE_SIZE = 2 << 20
LOWER_TIME = 1_500_000_000_000_000_000  # mtime of everything in the lower layers
SPARSE_DATA_AT = 512 << 10

_V = TypeVar("_V")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.renameat2.restype = ctypes.c_int


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old), None, str(new))


# Lower layers -------------------------------------------------------------------------------


def overlay_whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, 0)


def build_lowers(base: Path) -> list[Path]:
    """Three layers, top first, in the form kernel overlayfs reads.

    The names a..e in ``.``, ``d`` and ``d/e`` are the state machine's name space; the
    lower hard-link group (``links/h1``, ``links/h2``, ``other/h3``) stays outside it because
    writing through it is a deliberate difference.
    """
    top, mid, bottom = base / "l-top", base / "l-mid", base / "l-bottom"
    make_tree(
        bottom,
        {
            "a": "bottom a\n",
            "d/a": "bottom d/a\n",
            "d/b": "bottom d/b\n",
            "d/e/c": "bottom d/e/c, hidden by the opaque d/e above\n",
            "d/e/d": "bottom d/e/d, whited out above\n",
            "e": "bottom e, whited out above\n",
            "over": "bottom over\n",
            "merged/x": "bottom merged/x\n",
            "merged/sub/y": "bottom merged/sub/y\n",
            "gone_file": "whited out above\n",
            "gone_dir/f": "whited out above\n",
            "gone_dir/sub/g": "whited out above\n",
            "opq/hidden": "hidden by the opaque dir above\n",
            "opq/sub/h": "hidden by the opaque dir above\n",
            "tree/t1": "t1\n",
            "tree/sub/t2": "t2\n",
            "tree/sub/deep/t3": "t3\n",
            "tree/link": "link:->sub/t2",
            "renme/bot": "bottom renme/bot\n",
            "renme/sub/g": "bottom renme/sub/g\n",
            "empty_dir": None,
            "links/h1": "hard-link group\n",
            "other": None,
            "sym/rel": "link:->../a",
            "sym/abs": "link:->/etc/passwd",
            "sym/dangling": "link:->no/such/file",
            "special": None,
            "xa": "file with xattrs\n",
        },
    )
    os.link(bottom / "links/h1", bottom / "links/h2")
    os.link(bottom / "links/h1", bottom / "other/h3")
    os.mkfifo(bottom / "special/fifo", 0o640)
    os.mknod(bottom / "special/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (bottom / "special/suid").write_text("#!/bin/sh\n")
    os.chmod(bottom / "special/suid", 0o4755)
    (bottom / "special/owned").write_text("owned by 1234\n")
    os.chown(bottom / "special/owned", OWNER, OWNER)
    os.makedirs(bottom / "special/owned_dir")
    os.chown(bottom / "special/owned_dir", OWNER, OWNER)
    with open(bottom / "special/sparse", "wb") as f:
        f.truncate(SPARSE_SIZE)
        os.pwrite(f.fileno(), b"data in the middle", SPARSE_DATA_AT)
    os.setxattr(bottom / "xa", "user.tag", b"v1")
    os.setxattr(bottom / "xa", "user.other", b"v2")
    os.setxattr(bottom / "d/b", "user.tag", b"db")
    os.setxattr(bottom / "merged", "user.dir", b"bottom")

    make_tree(
        mid,
        {
            "b": "mid b\n",
            "d/c": "mid d/c\n",
            "d/e/b": "mid d/e/b\n",
            "over": "mid over\n",
            "merged/m": "mid merged/m\n",
            "merged/sub/z": "mid merged/sub/z\n",
            "opq/visible": "mid opq/visible\n",
            "renme/mid": "mid renme/mid\n",
            "empty_dir": None,
            "tree/mid": "mid tree\n",
        },
    )
    overlay_whiteout(mid / "gone_file")
    overlay_whiteout(mid / "gone_dir")
    overlay_whiteout(mid / "e")
    overlay_whiteout(mid / "d/e/d")
    os.setxattr(mid / "opq", "trusted.overlay.opaque", b"y")
    os.setxattr(mid / "d/e", "trusted.overlay.opaque", b"y")
    os.setxattr(mid / "b", "user.tag", b"mid")

    make_tree(
        top,
        {
            "a": "top a\n",
            "c": "link:->a",
            "d/a": "top d/a\n",
            "d/e/a": "top d/e/a\n",
            "over": "top over\n",
            "merged/t": "top merged/t\n",
            "x_file": "top x_file\n",
            "f1": "top f1\n",
            "f2": "top f2\n",
            "ex1/one": "ex1/one\n",
            "ex2/two": "ex2/two\n",
            "ex2/sub/deep": "ex2/sub/deep\n",
        },
    )
    # Times the copy-ups must keep: fixed, so both mounts show the same values.
    for layer in (bottom, mid, top):
        for dirpath, dirnames, filenames in os.walk(layer, topdown=False):
            for name in dirnames + filenames:
                os.utime(
                    os.path.join(dirpath, name),
                    ns=(LOWER_TIME,) * 2,
                    follow_symlinks=False,
                )
    return [top, mid, bottom]


# The two mounts ------------------------------------------------------------------------------


@dataclass
class Pair:
    """A kernel overlay and a layerfs mount over the same lower layers, own uppers each."""

    base: Path
    lowers: list[Path]
    lfs_mount: LayerfsMount | None = None

    @property
    def lfs(self) -> Path:
        return self.base / "lfs" / "mnt"

    @property
    def ovl(self) -> Path:
        return self.base / "ovl" / "mnt"

    def upper(self, which: str) -> Path:
        return self.base / which / "upper"

    def work(self, which: str) -> Path:
        return self.base / which / "work"

    def start_layerfs(self) -> None:
        assert self.lfs_mount is None
        self.lfs_mount = start_layerfs(
            self.lfs, layerfs_options(self.lowers, self.upper("lfs"), self.work("lfs"))
        )

    def stop_layerfs(self) -> None:
        m, self.lfs_mount = self.lfs_mount, None
        if m is not None:
            m.stop()

    def remount(self) -> None:
        self.stop_layerfs()
        self.start_layerfs()


@contextlib.contextmanager
def open_pair(base: Path, lowers: Sequence[Path]) -> Iterator[Pair]:
    for which in ("lfs", "ovl"):
        for sub in ("upper", "work", "mnt"):
            (base / which / sub).mkdir(parents=True)
    pair = Pair(base, list(lowers))
    with contextlib.ExitStack() as stack:
        stack.enter_context(overlay(pair.ovl, lowers, pair.upper("ovl"), pair.work("ovl")))
        stack.callback(pair.stop_layerfs)
        pair.start_layerfs()
        yield pair


def mounts_below(path: Path) -> list[str]:
    """Mount points (of any type) at or below ``path``."""
    top = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p == top or p.startswith(top + "/")]


@pytest.fixture(autouse=True)
def _no_mounts_left(tmp_path: Path) -> Iterator[None]:
    # conftest checks layerfs mounts; the kernel overlays and tmpfs mounts are checked here.
    yield
    left = mounts_below(tmp_path)
    for p in reversed(left):
        subprocess.run(["umount", "-l", p], check=False)
    assert not left, f"test left mounts behind: {left}"


@pytest.fixture
def lowers(tmp_path: Path) -> list[Path]:
    return build_lowers(tmp_path / "layers")


@pytest.fixture
def pair(tmp_path: Path, lowers: list[Path]) -> Iterator[Pair]:
    with open_pair(tmp_path / "mounts", lowers) as p:
        yield p


# Comparing ----------------------------------------------------------------------------------


def outcome(fn: Callable[[], object]) -> str:
    """``ok``, ``ok <value>`` or the errno name of the OSError ``fn`` raised."""
    try:
        value = fn()
    except OSError as exc:
        assert exc.errno is not None, exc
        return errno.errorcode[exc.errno]
    return "ok" if value is None else f"ok {value!r}"


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` (not following symlinks) with its lstat."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root), os.lstat(full)


def xattr_snapshot(root: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for rel, _ in walk(root):
        full = root / rel
        names = os.listxattr(full, follow_symlinks=False)
        if names:
            out[rel] = {n: os.getxattr(full, n, follow_symlinks=False) for n in sorted(names)}
    return out


class Times(enum.Enum):
    """Which mtimes a case compares: a change of entries gives a directory a new mtime, and
    an object created without explicit times gets "now": both differ between the mounts."""

    NONE = enum.auto()
    FILES = enum.auto()  # non-directories
    ALL = enum.auto()


def mtime_snapshot(root: Path, times: Times) -> dict[str, int]:
    return {
        rel: st.st_mtime_ns
        for rel, st in walk(root)
        if times is Times.ALL or (times is Times.FILES and not stat.S_ISDIR(st.st_mode))
    }


def ino_map(root: Path) -> dict[str, int]:
    return {rel: st.st_ino for rel, st in walk(root)}


def check_layerfs_invariants(root: Path) -> None:
    """What layerfs promises beyond the kernel: dir nlink, unique inodes, one st_dev."""
    seen: dict[int, list[tuple[str, os.stat_result]]] = {}
    devs = {os.lstat(root).st_dev}
    for rel, sta in [(".", os.lstat(root)), *walk(root)]:
        devs.add(sta.st_dev)
        seen.setdefault(sta.st_ino, []).append((rel, sta))
        if stat.S_ISDIR(sta.st_mode):
            with os.scandir(root / rel) as it:
                entries = list(it)
            subdirs = sum(1 for e in entries if e.is_dir(follow_symlinks=False))
            # Deliberate difference (b): the kernel says 1 for merged directories.
            assert sta.st_nlink == 2 + subdirs, f"{rel}: nlink {sta.st_nlink}, {subdirs} subdirs"
            for e in entries:
                ino = os.lstat(e.path).st_ino
                assert e.inode() == ino, f"{rel}/{e.name}: d_ino {e.inode()} != st_ino {ino}"
    assert len(devs) == 1, f"more than one st_dev in the mount: {devs}"
    for ino, names in seen.items():
        if len(names) > 1:
            # Only hard links may share a number: non-directories, nlink counting them all,
            # one content.
            assert all(
                not stat.S_ISDIR(st.st_mode) and st.st_nlink >= len(names) for _, st in names
            ), f"inode {ino} shared by {[n for n, _ in names]}"
            datas = {(root / n).read_bytes() for n, st in names if stat.S_ISREG(st.st_mode)}
            assert len(datas) <= 1, f"inode {ino} shared by {[n for n, _ in names]}: two contents"


def _without(d: dict[str, _V], skip: Sequence[str]) -> dict[str, _V]:
    return {k: v for k, v in d.items() if k not in skip}


def _compare(
    what: str,
    kernel: Callable[[], dict[str, _V]],
    layerfs: Callable[[], dict[str, _V]],
    skip: Sequence[str],
    when: str,
) -> list[str]:
    """Differences between two per-path maps; a mount that cannot be read is one more."""
    try:
        a = _without(kernel(), skip)
    except OSError as exc:
        return [f"{when}{what}: kernel mount unreadable: {exc!r}"]
    try:
        b = _without(layerfs(), skip)
    except OSError as exc:
        return [f"{when}{what}: layerfs mount unreadable: {exc!r}"]
    return [
        f"{when}{what} of {k}: kernel {a.get(k)} != layerfs {b.get(k)}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def tree_problems(
    pair: Pair, *, times: Times = Times.NONE, skip: Sequence[str] = (), when: str = ""
) -> list[str]:
    """Where layerfs does not show what the kernel shows (minus ``skip``), or breaks its own
    invariants; empty when all is well."""
    out = _compare("entry", lambda: snapshot(pair.ovl), lambda: snapshot(pair.lfs), skip, when)
    out += _compare(
        "xattrs", lambda: xattr_snapshot(pair.ovl), lambda: xattr_snapshot(pair.lfs), skip, when
    )
    if times is not Times.NONE:
        out += _compare(
            "mtime",
            lambda: mtime_snapshot(pair.ovl, times),
            lambda: mtime_snapshot(pair.lfs, times),
            skip,
            when,
        )
    try:
        check_layerfs_invariants(pair.lfs)
    except (AssertionError, OSError) as exc:
        out.append(f"{when}layerfs invariant: {exc}")
    return out


def assert_same_tree(
    pair: Pair, *, times: Times = Times.NONE, skip: Sequence[str] = (), when: str = ""
) -> None:
    problems = tree_problems(pair, times=times, skip=skip, when=when)
    assert not problems, "\n".join(problems)


def remount_problems(
    pair: Pair, *, times: Times = Times.NONE, skip: Sequence[str] = ()
) -> list[str]:
    """Remount layerfs on the same upper: same tree as the kernel, same inode numbers."""
    inos = ino_map(pair.lfs)
    pair.remount()
    out = tree_problems(pair, times=times, skip=skip, when="after remount: ")
    after = ino_map(pair.lfs)
    out += [
        f"st_ino of {k} changed across remount: {v} -> {after.get(k)}"
        for k, v in inos.items()
        if after.get(k) != v
    ]
    return out


def assert_same_after_remount(
    pair: Pair, *, times: Times = Times.NONE, skip: Sequence[str] = ()
) -> None:
    problems = remount_problems(pair, times=times, skip=skip)
    assert not problems, "\n".join(problems)


# Scripted cases ------------------------------------------------------------------------------


@dataclass
class Steps:
    """Runs one script's steps on one mount, recording each step's outcome."""

    root: Path
    scratch: Path  # outside both mounts, shared by them: source trees for cp and tar
    results: list[str] = field(default_factory=list)

    def __call__(self, label: str, fn: Callable[[], object]) -> None:
        self.results.append(f"{label}: {outcome(fn)}")

    def p(self, rel: str) -> Path:
        return self.root / rel


def write_at(path: Path, data: bytes, flags: int, offset: int | None = None) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def run(*cmd: str) -> None:
    """Run a command that must succeed (its output names mount-specific paths: not recorded)."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read_nonblock(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def case_write_append_truncate(s: Steps) -> None:
    s("overwrite", lambda: write_at(s.p("over"), b"NEW", os.O_WRONLY))
    s("append", lambda: write_at(s.p("a"), b"appended\n", os.O_WRONLY | os.O_APPEND))
    s("append nested", lambda: write_at(s.p("d/e/a"), b"more\n", os.O_WRONLY | os.O_APPEND))
    s("truncate shorter", lambda: os.truncate(s.p("b"), 3))
    s("truncate longer", lambda: os.truncate(s.p("d/a"), 100))
    s("O_TRUNC", lambda: write_at(s.p("merged/sub/y"), b"", os.O_WRONLY | os.O_TRUNC))
    s("write owned", lambda: write_at(s.p("special/owned"), b"X", os.O_WRONLY, 2))
    s("append sparse", lambda: write_at(s.p("special/sparse"), b"tail", os.O_WRONLY | os.O_APPEND))
    s("read back", lambda: s.p("a").read_bytes())
    s("write gone", lambda: write_at(s.p("gone_file"), b"x", os.O_WRONLY))
    s("write dir", lambda: write_at(s.p("merged"), b"x", os.O_WRONLY))


def case_chmod_chown_utime(s: Steps) -> None:
    t = 1_600_000_000_123_456_789
    s("chmod", lambda: os.chmod(s.p("a"), 0o600))
    s("chmod nested", lambda: os.chmod(s.p("d/e/a"), 0o751))
    s("chmod dir", lambda: os.chmod(s.p("merged"), 0o700))
    s("chmod suid", lambda: os.chmod(s.p("special/suid"), 0o6755))
    s("chown", lambda: os.chown(s.p("b"), OWNER, OWNER))
    s("chown owned", lambda: os.chown(s.p("special/owned"), 0, 0))
    s("chown dir", lambda: os.chown(s.p("d"), OWNER, -1))
    s("lchown symlink", lambda: os.lchown(s.p("sym/rel"), OWNER, OWNER))
    s("chown fifo", lambda: os.chown(s.p("special/fifo"), OWNER, OWNER))
    s("chmod dev", lambda: os.chmod(s.p("special/null"), 0o600))
    s("utime", lambda: os.utime(s.p("over"), ns=(t, t)))
    s("utime symlink", lambda: os.utime(s.p("sym/abs"), ns=(t, t + 1), follow_symlinks=False))
    s("utime dir", lambda: os.utime(s.p("d/e"), ns=(t, t + 2)))
    s("dir mtime", lambda: os.lstat(s.p("d/e")).st_mtime_ns)
    s("chmod gone", lambda: os.chmod(s.p("gone_file"), 0o600))


def case_chown_clears_suid(s: Steps) -> None:
    # Linux clears set-id bits on chown of a file, even for root.
    s("chown suid", lambda: os.chown(s.p("special/suid"), OWNER, OWNER))
    s("mode", lambda: oct(os.lstat(s.p("special/suid")).st_mode))


def case_rm_recreate(s: Steps) -> None:
    s("unlink", lambda: os.unlink(s.p("a")))
    s("gone", lambda: os.path.lexists(s.p("a")))
    s("recreate", lambda: write_at(s.p("a"), b"new a\n", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    s("unlink merged child", lambda: os.unlink(s.p("merged/m")))
    s("unlink again", lambda: os.unlink(s.p("merged/m")))
    s("unlink override", lambda: os.unlink(s.p("over")))
    s("recreate as dir", lambda: os.mkdir(s.p("over")))
    s("unlink symlink", lambda: os.unlink(s.p("sym/rel")))
    s("recreate as file", lambda: s.p("sym/rel").write_text("file now\n"))
    s("unlink fifo", lambda: os.unlink(s.p("special/fifo")))
    s("recreate over whiteout", lambda: s.p("gone_file").write_text("back\n"))
    s("mkdir over dir whiteout", lambda: os.mkdir(s.p("gone_dir")))
    s("gone_dir empty", lambda: listing(s.p("gone_dir")))


def case_rm_rf_lower_tree(s: Steps) -> None:
    s("rm -rf tree", lambda: shutil.rmtree(s.p("tree")))
    s("rm -rf merged", lambda: shutil.rmtree(s.p("merged")))
    s("rm -rf opaque", lambda: shutil.rmtree(s.p("opq")))
    s("root", lambda: listing(s.root))
    s("mkdir tree", lambda: os.mkdir(s.p("tree")))
    s("tree empty", lambda: listing(s.p("tree")))


def case_rmdir_then_mkdir_is_opaque(s: Steps) -> None:
    s("rmdir empty merged", lambda: os.rmdir(s.p("empty_dir")))
    s("mkdir", lambda: os.mkdir(s.p("empty_dir")))
    for name in ("x", "m", "t", "sub/y", "sub/z"):
        s(f"unlink merged/{name}", functools.partial(os.unlink, s.p(f"merged/{name}")))
    s("rmdir merged/sub", lambda: os.rmdir(s.p("merged/sub")))
    s("rmdir merged", lambda: os.rmdir(s.p("merged")))
    s("mkdir merged", lambda: os.mkdir(s.p("merged")))
    s("merged empty", lambda: listing(s.p("merged")))
    s("file inside", lambda: s.p("merged/new").write_text("new\n"))
    s("merged now", lambda: listing(s.p("merged")))


def case_rename_file_over_lower_file(s: Steps) -> None:
    s("rename over", lambda: os.rename(s.p("x_file"), s.p("over")))
    s("rename across dirs", lambda: os.rename(s.p("a"), s.p("d/b")))
    s("rename over merged child", lambda: os.rename(s.p("merged/t"), s.p("merged/x")))
    s("rename symlink", lambda: os.rename(s.p("sym/rel"), s.p("d/e/a")))
    s("rename fifo", lambda: os.rename(s.p("special/fifo"), s.p("f1")))
    s("rename onto itself", lambda: os.rename(s.p("f2"), s.p("f2")))
    s("rename to whiteout", lambda: os.rename(s.p("b"), s.p("gone_file")))
    s("rename xattr file", lambda: os.rename(s.p("xa"), s.p("xa2")))


def case_rename_lower_dir(s: Steps) -> None:
    s("rename lower dir", lambda: os.rename(s.p("renme"), s.p("renamed")))
    s("create inside", lambda: s.p("renamed/new").write_text("new\n"))
    s("list", lambda: listing(s.p("renamed")))
    s("old gone", lambda: os.path.lexists(s.p("renme")))
    s("mkdir old name", lambda: os.mkdir(s.p("renme")))
    s("old name empty", lambda: listing(s.p("renme")))
    s("rename nested", lambda: os.rename(s.p("d/e"), s.p("e_moved")))
    s("write in moved", lambda: write_at(s.p("e_moved/a"), b"!", os.O_WRONLY | os.O_APPEND))
    s("moved list", lambda: listing(s.p("e_moved")))
    s("rename back down", lambda: os.rename(s.p("renamed"), s.p("d/renamed_again")))
    s("list again", lambda: listing(s.p("d/renamed_again/sub")))
    s("rename merged", lambda: os.rename(s.p("merged"), s.p("other/merged")))
    s("rmdir moved sub", lambda: os.rmdir(s.p("other/merged/sub")))
    s("rename to whiteout", lambda: os.rename(s.p("opq"), s.p("gone_dir")))
    s("whiteout name list", lambda: listing(s.p("gone_dir")))


def case_rename_dir_over_empty_merged_dir(s: Steps) -> None:
    s("rename over empty merged", lambda: os.rename(s.p("ex1"), s.p("empty_dir")))
    s("list", lambda: listing(s.p("empty_dir")))
    s("mkdir new", lambda: os.mkdir(s.p("newdir")))
    s("rename new over lower", lambda: os.rename(s.p("newdir"), s.p("empty_dir")))
    s("list again", lambda: listing(s.p("empty_dir")))


def case_errors(s: Steps) -> None:
    s("rmdir non-empty", lambda: os.rmdir(s.p("merged")))
    s("rmdir non-empty lower", lambda: os.rmdir(s.p("d/e")))
    s("mkdir existing", lambda: os.mkdir(s.p("d")))
    s("mkdir over file", lambda: os.mkdir(s.p("a")))
    s("create existing", lambda: write_at(s.p("a"), b"", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    s("rename dir over non-empty", lambda: os.rename(s.p("ex1"), s.p("merged")))
    s("rename dir over file", lambda: os.rename(s.p("ex1"), s.p("a")))
    s("rename file over dir", lambda: os.rename(s.p("a"), s.p("merged")))
    s("rename into own subdir", lambda: os.rename(s.p("ex2"), s.p("ex2/sub/x")))
    s("rename missing", lambda: os.rename(s.p("gone_file"), s.p("zzz")))
    s("unlink dir", lambda: os.unlink(s.p("merged")))
    s("rmdir file", lambda: os.rmdir(s.p("a")))
    s("rmdir whiteout", lambda: os.rmdir(s.p("gone_dir")))
    s("open whited-out", lambda: s.p("gone_file").read_bytes())
    s("stat under whiteout", lambda: os.lstat(s.p("gone_dir/f")))
    s("opaque hides", lambda: os.lstat(s.p("opq/hidden")))
    s("link dir", lambda: os.link(s.p("d"), s.p("dlink")))
    s("link existing", lambda: os.link(s.p("a"), s.p("b")))
    s("symlink existing", lambda: os.symlink("x", s.p("c")))
    s("mkfifo existing", lambda: os.mkfifo(s.p("d")))
    s("file as dir", lambda: os.lstat(s.p("a/x")))
    s("create in file", lambda: s.p("a/x").write_text("x"))
    s("readlink file", lambda: os.readlink(s.p("a")))
    s("nothing changed", lambda: listing(s.root))


def case_rename_noreplace(s: Steps) -> None:
    s("file exists", lambda: renameat2(s.p("f1"), s.p("f2"), RENAME_NOREPLACE))
    s("file onto whiteout", lambda: renameat2(s.p("f1"), s.p("gone_file"), RENAME_NOREPLACE))
    s("file new", lambda: renameat2(s.p("f2"), s.p("d/f2new"), RENAME_NOREPLACE))
    s("dir exists", lambda: renameat2(s.p("ex1"), s.p("ex2"), RENAME_NOREPLACE))
    s("dir over empty", lambda: renameat2(s.p("ex1"), s.p("empty_dir"), RENAME_NOREPLACE))
    s("lower dir new", lambda: renameat2(s.p("renme"), s.p("d/renme"), RENAME_NOREPLACE))
    s("list", lambda: listing(s.p("d/renme")))
    s("merged dir new", lambda: renameat2(s.p("merged"), s.p("merged2"), RENAME_NOREPLACE))
    s("create in it", lambda: os.mkdir(s.p("merged2/newsub")))
    s("missing", lambda: renameat2(s.p("nope"), s.p("nope2"), RENAME_NOREPLACE))


def case_rename_exchange(s: Steps) -> None:
    s("files", lambda: renameat2(s.p("f1"), s.p("f2"), RENAME_EXCHANGE))
    s("f1", lambda: s.p("f1").read_bytes())
    s("lower dirs", lambda: renameat2(s.p("ex1"), s.p("ex2"), RENAME_EXCHANGE))
    s("ex1", lambda: listing(s.p("ex1")))
    s("ex2", lambda: listing(s.p("ex2")))
    s("merged dirs", lambda: renameat2(s.p("merged"), s.p("d/e"), RENAME_EXCHANGE))
    s("merged now", lambda: listing(s.p("merged")))
    s("d/e now", lambda: listing(s.p("d/e")))
    s("file and dir", lambda: renameat2(s.p("a"), s.p("renme"), RENAME_EXCHANGE))
    s("a is dir", lambda: listing(s.p("a")))
    s("create in exchanged", lambda: s.p("a/new").write_text("new\n"))
    s("new file", lambda: s.p("newf").write_text("n\n"))
    s("new and lower file", lambda: renameat2(s.p("newf"), s.p("over"), RENAME_EXCHANGE))
    s("missing", lambda: renameat2(s.p("f1"), s.p("nope"), RENAME_EXCHANGE))
    s("onto whiteout", lambda: renameat2(s.p("f1"), s.p("gone_file"), RENAME_EXCHANGE))


def case_hard_link_lower_file(s: Steps) -> None:
    s("link", lambda: os.link(s.p("a"), s.p("a_link")))
    s("link across dirs", lambda: os.link(s.p("d/e/a"), s.p("merged/sub/ea")))
    s(
        "write through new",
        lambda: write_at(s.p("a_link"), b"via link\n", os.O_WRONLY | os.O_APPEND),
    )
    s("read through old", lambda: s.p("a").read_bytes())
    s("nlink", lambda: os.lstat(s.p("a")).st_nlink)
    s("same ino", lambda: os.lstat(s.p("a")).st_ino == os.lstat(s.p("a_link")).st_ino)
    s("link symlink", lambda: os.link(s.p("c"), s.p("c_link"), follow_symlinks=False))
    s("unlink original", lambda: os.unlink(s.p("a")))
    s("nlink after", lambda: os.lstat(s.p("a_link")).st_nlink)
    # The name made last goes first: the older name must still work.
    s("link lower", lambda: os.link(s.p("f1"), s.p("d/f1_link")))
    s("unlink the new name", lambda: os.unlink(s.p("d/f1_link")))
    s("read the old name", lambda: s.p("f1").read_bytes())
    s("chmod the old name", lambda: os.chmod(s.p("f1"), 0o600))
    s("create", lambda: s.p("nf").write_text("new file\n"))
    s("link new file", lambda: os.link(s.p("nf"), s.p("merged/nf2")))
    s("unlink its new name", lambda: os.unlink(s.p("merged/nf2")))
    s("read new file", lambda: s.p("nf").read_bytes())
    s("append new file", lambda: write_at(s.p("nf"), b"more\n", os.O_WRONLY | os.O_APPEND))
    s("link symlink again", lambda: os.link(s.p("c"), s.p("d/c2"), follow_symlinks=False))
    s("replace the new name", lambda: os.rename(s.p("f2"), s.p("d/c2")))
    s("readlink old name", lambda: os.readlink(s.p("c")))


def case_special_files(s: Steps) -> None:
    s("symlink", lambda: os.symlink("../a", s.p("d/sl")))
    s("symlink abs", lambda: os.symlink("/nonexistent/abs", s.p("merged/abs")))
    s("mkfifo", lambda: os.mkfifo(s.p("merged/sub/fifo"), 0o600))
    s("mknod chr", lambda: os.mknod(s.p("d/zero"), stat.S_IFCHR | 0o640, os.makedev(1, 5)))
    s("mknod blk", lambda: os.mknod(s.p("d/blk"), stat.S_IFBLK | 0o600, os.makedev(7, 0)))
    s("mknod reg", lambda: os.mknod(s.p("d/reg"), stat.S_IFREG | 0o600))
    s("mknod sock", lambda: os.mknod(s.p("d/sock"), stat.S_IFSOCK | 0o600))
    s("symlink over whiteout", lambda: os.symlink("a", s.p("gone_file")))
    s("fifo over dir whiteout", lambda: os.mkfifo(s.p("gone_dir")))
    s("readlink", lambda: os.readlink(s.p("d/sl")))
    s("new file", lambda: s.p("d/suid2").write_text("x"))
    s("setuid new", lambda: os.chmod(s.p("d/suid2"), 0o4711))
    s("chown new", lambda: os.lchown(s.p("d/sl"), OWNER, OWNER))


def case_xattrs(s: Steps) -> None:
    s("set new", lambda: os.setxattr(s.p("xa"), "user.new", b"n"))
    s("replace", lambda: os.setxattr(s.p("xa"), "user.tag", b"v9"))
    s("remove", lambda: os.removexattr(s.p("xa"), "user.other"))
    s("remove missing", lambda: os.removexattr(s.p("xa"), "user.missing"))
    s("get missing", lambda: os.getxattr(s.p("a"), "user.missing"))
    s("create flag", lambda: os.setxattr(s.p("xa"), "user.new", b"c", os.XATTR_CREATE))
    s("replace flag", lambda: os.setxattr(s.p("d/a"), "user.none", b"r", os.XATTR_REPLACE))
    s("remove lower", lambda: os.removexattr(s.p("d/b"), "user.tag"))
    s("set on merged dir", lambda: os.setxattr(s.p("merged"), "user.dir", b"upper"))
    s("set on lower dir", lambda: os.setxattr(s.p("d/e"), "user.e", b"e"))
    s("user on symlink", lambda: os.setxattr(s.p("c"), "user.x", b"x", follow_symlinks=False))
    s("trusted on file", lambda: os.setxattr(s.p("a"), "trusted.mine", b"t"))
    s("get private", lambda: os.getxattr(s.p("opq"), "trusted.overlay.opaque"))
    s("list", lambda: sorted(os.listxattr(s.p("xa"))))
    s("list opaque", lambda: sorted(os.listxattr(s.p("opq"))))


def _fstat_view(fd: int) -> str:
    st = os.fstat(fd)
    return f"mode={st.st_mode:o} uid={st.st_uid} size={st.st_size} nlink={st.st_nlink}"


def case_open_fds(s: Steps) -> None:
    """Objects that lost their name while open: POSIX keeps them usable through the fd."""
    fd = os.open(s.p("d/a"), os.O_RDONLY)
    s("unlink open lower file", lambda: os.unlink(s.p("d/a")))
    s("read it", lambda: os.pread(fd, 100, 0))
    s("close it", lambda: os.close(fd))

    fd = os.open(s.p("a"), os.O_RDWR)
    s("unlink open lower file (rw)", lambda: os.unlink(s.p("a")))
    s("fchmod it", lambda: os.fchmod(fd, 0o600))
    s("write it", lambda: os.write(fd, b"X"))
    s("fstat it", lambda: _fstat_view(fd))
    s("read it back", lambda: os.pread(fd, 100, 0))
    s("close it (rw)", lambda: os.close(fd))

    fd = os.open(s.p("newf"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"hello")
    s("unlink open new file", lambda: os.unlink(s.p("newf")))
    s("fchmod new", lambda: os.fchmod(fd, 0o600))
    s("fchown new", lambda: os.fchown(fd, OWNER, OWNER))
    s("futimens new", lambda: os.utime(fd, ns=(5, 5)))
    s("ftruncate new", lambda: os.ftruncate(fd, 2))
    s("fstat new", lambda: _fstat_view(fd))
    s("read new", lambda: os.pread(fd, 100, 0))
    s("close new", lambda: os.close(fd))

    fd = os.open(s.p("f1"), os.O_RDWR)
    s("rename over open file", lambda: os.rename(s.p("f2"), s.p("f1")))
    s("fchmod replaced", lambda: os.fchmod(fd, 0o600))
    s("write replaced", lambda: os.pwrite(fd, b"Z", 0))
    s("fstat replaced", lambda: _fstat_view(fd))
    s("close replaced", lambda: os.close(fd))
    s("the new f1", lambda: (s.p("f1").read_bytes(), oct(os.lstat(s.p("f1")).st_mode)))

    fd = os.open(s.p("d/e/a"), os.O_RDWR)
    s("rename parent of open file", lambda: os.rename(s.p("d"), s.p("dd")))
    s("write moved", lambda: os.write(fd, b"W"))
    s("fchmod moved", lambda: os.fchmod(fd, 0o640))
    s("close moved", lambda: os.close(fd))

    fd = os.open(s.p("merged"), os.O_RDONLY | os.O_DIRECTORY)
    s("fchmod dir", lambda: os.fchmod(fd, 0o711))
    s("list dir fd", lambda: sorted(os.listdir(fd)))
    s("close dir", lambda: os.close(fd))

    os.mkdir(s.p("nd"))
    fd = os.open(s.p("nd"), os.O_RDONLY | os.O_DIRECTORY)
    s("rmdir open dir", lambda: os.rmdir(s.p("nd")))
    s("fstat removed dir", lambda: stat.filemode(os.fstat(fd).st_mode))
    s("list removed dir", lambda: os.listdir(fd))
    # Deliberate difference: the daemon keeps no handle on a directory (no fd per inode), so
    # fchmod of one removed while open gets ENOENT. test_removed_open_dir pins it.
    s("create in removed dir", lambda: os.close(os.open("x", os.O_CREAT | os.O_WRONLY, dir_fd=fd)))
    s("close removed dir", lambda: os.close(fd))


def _source_tree(base: Path) -> Path:
    """A small tree with every kind of object, to copy into the mounts."""
    src = base / "src"
    if src.exists():
        return src
    make_tree(
        src,
        {
            "x": "src replaces merged/x\n",
            "sub/y": "src replaces merged/sub/y\n",
            "sub/new": "src sub/new\n",
            "fresh/f": "fresh\n",
            "link": "link:->fresh/f",
            "hl1": "hard-linked in src\n",
        },
    )
    os.link(src / "hl1", src / "fresh/hl2")
    os.mkfifo(src / "fifo")
    os.mknod(src / "fresh/dev", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    (src / "owned").write_text("owned\n")
    os.chown(src / "owned", OWNER, OWNER)
    os.chmod(src / "fresh", 0o750)
    os.setxattr(src / "x", "user.src", b"yes")
    with open(src / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.write(b"head")
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for name in dirnames + filenames:
            os.utime(
                os.path.join(dirpath, name),
                ns=(1_400_000_000_000_000_000,) * 2,
                follow_symlinks=False,
            )
    return src


def case_cp_a(s: Steps) -> None:
    src = _source_tree(s.scratch)
    s("cp -a into merged", lambda: run("cp", "-a", f"{src}/.", str(s.p("merged"))))
    s("cp -a new tree", lambda: run("cp", "-a", str(src), str(s.p("d/copy"))))
    s("cp -a over dir tree", lambda: run("cp", "-a", f"{src}/.", str(s.p("tree/sub"))))


def case_tar_x(s: Steps) -> None:
    src = _source_tree(s.scratch)
    archive = s.scratch / "src.tar"
    if not archive.exists():
        run("tar", "--xattrs", "-cf", str(archive), "-C", str(src), ".")
    for target in ("merged", "tree", "d/e"):
        tar = ("tar", "--xattrs", "--xattrs-include=user.*", "-xpf", str(archive))
        s(f"tar -x into {target}", functools.partial(run, *tar, "-C", str(s.p(target))))


@dataclass(frozen=True)
class Case:
    script: Callable[[Steps], None]
    times: Times = Times.NONE


CASES = {
    "write_append_truncate": Case(case_write_append_truncate),
    "chmod_chown_utime": Case(case_chmod_chown_utime, times=Times.ALL),
    "chown_clears_suid": Case(case_chown_clears_suid, times=Times.ALL),
    "rm_recreate": Case(case_rm_recreate),
    "open_fds": Case(case_open_fds),
    "rm_rf_lower_tree": Case(case_rm_rf_lower_tree, times=Times.FILES),
    "rmdir_then_mkdir_is_opaque": Case(case_rmdir_then_mkdir_is_opaque),
    "rename_file_over_lower_file": Case(case_rename_file_over_lower_file, times=Times.FILES),
    "rename_lower_dir": Case(case_rename_lower_dir),
    "rename_dir_over_empty_merged_dir": Case(case_rename_dir_over_empty_merged_dir),
    "errors": Case(case_errors, times=Times.ALL),
    "rename_noreplace": Case(case_rename_noreplace),
    "rename_exchange": Case(case_rename_exchange),
    "hard_link_lower_file": Case(case_hard_link_lower_file),
    "special_files": Case(case_special_files),
    "xattrs": Case(case_xattrs, times=Times.ALL),
    "cp_a": Case(case_cp_a, times=Times.FILES),
    "tar_x": Case(case_tar_x, times=Times.FILES),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_scripted_case(pair: Pair, name: str) -> None:
    case = CASES[name]
    assert_same_tree(pair, times=Times.ALL, when="before any change: ")
    results = {}
    for which, root in (("kernel", pair.ovl), ("layerfs", pair.lfs)):
        steps = Steps(root, pair.base)
        case.script(steps)
        results[which] = steps.results
    # Every difference at once: a case that fails shows all it found, remount included.
    problems = [
        f"step {k!r} on kernel, {f!r} on layerfs"
        for k, f in itertools.zip_longest(results["kernel"], results["layerfs"])
        if k != f
    ]
    problems += tree_problems(pair, times=case.times)
    problems += remount_problems(pair, times=case.times)
    assert not problems, "\n".join(problems)


# Deliberate differences ----------------------------------------------------------------------

LINK_GROUP = ("links/h1", "links/h2", "other/h3")


def test_lower_hardlink_group_survives_copy_up(pair: Pair) -> None:
    for root in (pair.ovl, pair.lfs):
        write_at(root / "links/h2", b"written through h2\n", os.O_WRONLY | os.O_TRUNC)
    # Deliberate difference (a): kernel overlayfs with index=off copies up h2 alone and the
    # other names keep the old data; layerfs copies the group up together. Everything
    # outside the group must still agree with the kernel.
    assert_same_tree(pair, skip=LINK_GROUP)

    def check() -> None:
        sts = [os.lstat(pair.lfs / n) for n in LINK_GROUP]
        assert len({st.st_ino for st in sts}) == 1, [st.st_ino for st in sts]
        assert [st.st_nlink for st in sts] == [3, 3, 3]
        for n in LINK_GROUP:
            assert (pair.lfs / n).read_bytes() == b"written through h2\n", n
        os.chmod(pair.lfs / "other/h3", 0o600)
        assert {stat.S_IMODE(os.lstat(pair.lfs / n).st_mode) for n in LINK_GROUP} == {0o600}

    check()
    inos = ino_map(pair.lfs)
    pair.remount()
    check()
    assert ino_map(pair.lfs) == inos
    assert_same_tree(pair, skip=LINK_GROUP, when="after remount: ")


def test_lower_hardlink_group_unlink_one_name(pair: Pair) -> None:
    # Removing one name leaves a whiteout; the remaining names keep their data on both.
    for root in (pair.ovl, pair.lfs):
        os.unlink(root / "links/h1")
    assert_same_tree(pair, skip=LINK_GROUP)
    write_at(pair.lfs / "other/h3", b"X", os.O_WRONLY)
    assert (pair.lfs / "links/h2").read_bytes() == b"Xard-link group\n"
    assert os.lstat(pair.lfs / "links/h2").st_ino == os.lstat(pair.lfs / "other/h3").st_ino


def test_lower_hardlink_group_below_renamed_dir(pair: Pair) -> None:
    # The kernel shows the written data through the written name, before and after a
    # remount, whatever was looked up first. (That ``other2/h3`` keeps the lower data on the
    # kernel is difference (a) again; layerfs's docstring calls it a caveat.)
    for root in (pair.ovl, pair.lfs):
        os.rename(root / "other", root / "other2")
        write_at(root / "links/h1", b"new\n", os.O_WRONLY | os.O_TRUNC)
    assert (pair.ovl / "links/h1").read_bytes() == b"new\n"
    assert (pair.lfs / "links/h1").read_bytes() == b"new\n"
    pair.remount()
    os.lstat(pair.lfs / "other2/h3")
    (pair.lfs / "other2/h3").read_bytes()
    assert (pair.lfs / "links/h1").read_bytes() == b"new\n", "data written before the remount"
    # One st_ino, one object: the same number must not show two different files.
    check_layerfs_invariants(pair.lfs)


def test_copy_up_keeps_parent_mtime(pair: Pair) -> None:
    # A copy-up must not be visible: the kernel restores the times of the upper parent it
    # copies into, so a chmod, chown, setxattr or write of a lower file leaves the mtime of
    # the directories above unchanged. (layerfs's attribute cache can hide a changed mtime
    # until the remount: look both before and after.)
    for root in (pair.ovl, pair.lfs):
        os.chmod(root / "d/e/a", 0o600)
        os.chmod(root / "d/a", 0o600)
        os.chown(root / "special/owned", 0, 0)
        os.setxattr(root / "d/b", "user.n", b"1")
        write_at(root / "merged/sub/y", b"Y", os.O_WRONLY)
    dirs = ("d", "d/e", "special", "merged", "merged/sub")
    kernel = {d: os.lstat(pair.ovl / d).st_mtime_ns for d in dirs}
    assert set(kernel.values()) == {LOWER_TIME}
    before = {d: os.lstat(pair.lfs / d).st_mtime_ns for d in dirs}
    pair.remount()
    after = {d: os.lstat(pair.lfs / d).st_mtime_ns for d in dirs}
    assert (before, after) == (kernel, kernel)


def test_internal_xattrs_refused(pair: Pair) -> None:
    # Deliberate difference: the kernel accepts trusted.overlay.* names (it escapes them, for
    # nested overlays) and user.overlay.* names (plain user xattrs in trusted mode); layerfs
    # keeps all of its own namespaces (trusted.overlay., user.overlay., user.layerfs.) to
    # itself: refused, hidden, never copied up.
    for name in ("trusted.overlay.opaque", "user.overlay.opaque", "user.layerfs.x"):
        for target in ("a", "merged"):
            path = pair.lfs / target
            set_it = functools.partial(os.setxattr, path, name, b"y")
            assert outcome(set_it) == "EPERM", (name, target)
            get_it = functools.partial(os.getxattr, path, name)
            assert outcome(get_it) == "ENODATA", (name, target)
    assert os.listxattr(pair.lfs / "opq") == []
    assert os.listxattr(pair.lfs / "d/e") == []
    # The refusal copied nothing up and hid nothing.
    assert listing(pair.lfs / "merged") == listing(pair.ovl / "merged")
    assert_same_tree(pair, times=Times.ALL)


def test_statfs_reports_the_upper(pair: Pair) -> None:
    k, f, u = os.statvfs(pair.ovl), os.statvfs(pair.lfs), os.statvfs(pair.upper("lfs"))
    assert (f.f_bsize, f.f_blocks, f.f_files) == (u.f_bsize, u.f_blocks, u.f_files)
    assert (f.f_bsize, f.f_blocks) == (k.f_bsize, k.f_blocks)


@contextlib.contextmanager
def overlay_ro(mountpoint: Path, lowers: Sequence[Path]) -> Iterator[Path]:
    """A kernel overlay without upper: read-only, like layerfs without ``upperdir``."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    opts = "lowerdir=" + ":".join(map(str, lowers))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_read_only_mounts(tmp_path: Path, lowers: list[Path]) -> None:
    with contextlib.ExitStack() as stack:
        ovl = stack.enter_context(overlay_ro(tmp_path / "ovl", lowers))
        m = start_layerfs(tmp_path / "lfs", layerfs_options(lowers))
        stack.callback(m.stop)
        lfs = tmp_path / "lfs"
        diff = diff_snapshots(snapshot(ovl), snapshot(lfs))
        assert not diff, "\n".join(diff)
        assert xattr_snapshot(ovl) == xattr_snapshot(lfs)
        assert mtime_snapshot(ovl, Times.ALL) == mtime_snapshot(lfs, Times.ALL)
        attempts: dict[str, Callable[[Path], object]] = {
            "create": lambda r: write_at(r / "new", b"", os.O_WRONLY | os.O_CREAT),
            "open for writing": lambda r: write_at(r / "a", b"x", os.O_WRONLY),
            "truncate": lambda r: os.truncate(r / "a", 0),
            "mkdir": lambda r: os.mkdir(r / "newdir"),
            "unlink": lambda r: os.unlink(r / "a"),
            "rmdir": lambda r: os.rmdir(r / "empty_dir"),
            "rename": lambda r: os.rename(r / "a", r / "d/new"),
            "chmod": lambda r: os.chmod(r / "a", 0o600),
            "utime": lambda r: os.utime(r / "a", ns=(0, 0)),
            "setxattr": lambda r: os.setxattr(r / "xa", "user.n", b"1"),
            "removexattr": lambda r: os.removexattr(r / "xa", "user.tag"),
            "link": lambda r: os.link(r / "a", r / "a2"),
            "symlink": lambda r: os.symlink("a", r / "s2"),
            "read": lambda r: (r / "over").read_bytes(),
            "whiteout hides": lambda r: os.lstat(r / "gone_file"),
        }
        for what, fn in attempts.items():
            on_lfs = outcome(functools.partial(fn, lfs))
            assert on_lfs == outcome(functools.partial(fn, ovl)), what
        check_layerfs_invariants(lfs)


def test_directory_nlink(pair: Pair) -> None:
    # Deliberate difference (b): the kernel reports 1 for merged directories.
    assert os.lstat(pair.ovl / "merged").st_nlink == 1
    assert os.lstat(pair.lfs / "merged").st_nlink == 3  # merged/sub
    assert os.lstat(pair.lfs / "d").st_nlink == 3  # d/e
    assert os.lstat(pair.lfs / "empty_dir").st_nlink == 2
    os.mkdir(pair.lfs / "merged/new")
    assert os.lstat(pair.lfs / "merged").st_nlink == 4
    os.rmdir(pair.lfs / "merged/new")
    shutil.rmtree(pair.lfs / "merged/sub")
    assert os.lstat(pair.lfs / "merged").st_nlink == 2
    os.rename(pair.lfs / "ex2/sub", pair.lfs / "merged/moved")
    assert os.lstat(pair.lfs / "merged").st_nlink == 3
    assert os.lstat(pair.lfs / "ex2").st_nlink == 2
    check_layerfs_invariants(pair.lfs)
    pair.remount()
    check_layerfs_invariants(pair.lfs)


def test_inode_numbers_stable(pair: Pair) -> None:
    # Deliberate difference (c), checked on layerfs alone: unique, stable across copy-up
    # (data and metadata-only, files and directories) and across remount.
    check_layerfs_invariants(pair.lfs)
    before = ino_map(pair.lfs)
    os.chmod(pair.lfs / "a", 0o600)
    write_at(pair.lfs / "d/e/a", b"x", os.O_WRONLY | os.O_APPEND)
    os.setxattr(pair.lfs / "xa", "user.n", b"1")
    os.lchown(pair.lfs / "sym/rel", OWNER, OWNER)
    os.chmod(pair.lfs / "special/fifo", 0o600)
    os.chmod(pair.lfs / "special/sparse", 0o600)
    (pair.lfs / "merged/sub/new").write_text("new\n")
    after = ino_map(pair.lfs)
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not changed, f"st_ino changed by copy-up: {changed}"
    os.rename(pair.lfs / "renme", pair.lfs / "renamed")
    assert os.lstat(pair.lfs / "renamed").st_ino == before["renme"]
    assert os.lstat(pair.lfs / "renamed/bot").st_ino == before["renme/bot"]
    os.rename(pair.lfs / "f1", pair.lfs / "d/f1")
    assert os.lstat(pair.lfs / "d/f1").st_ino == before["f1"]
    check_layerfs_invariants(pair.lfs)
    inos = ino_map(pair.lfs)
    pair.remount()
    assert ino_map(pair.lfs) == inos
    # Holes stayed holes through the copy-up.
    st = os.lstat(pair.lfs / "special/sparse")
    assert st.st_size == SPARSE_SIZE
    assert st.st_blocks * 512 < SPARSE_SIZE // 4, st.st_blocks


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_inode_numbers_unique_across_layer_filesystems(tmp_path: Path) -> None:
    # One filesystem per layer: the same inode numbers recur in every layer underneath.
    with contextlib.ExitStack() as stack:
        layers = [stack.enter_context(tmpfs(tmp_path / f"fs{i}")) for i in range(3)]
        for i, layer in enumerate(layers):
            make_tree(
                layer,
                {f"f{j}": f"layer {i} file {j}\n" for j in range(20)}
                | {f"dir/g{i}": b"g\n", f"only{i}/x": None},
            )
        underneath = [os.lstat(layer / "f0").st_ino for layer in layers]
        upper = stack.enter_context(tmpfs(tmp_path / "fsu"))
        (upper / "u").mkdir()
        (upper / "w").mkdir()
        m = start_layerfs(tmp_path / "mnt", layerfs_options(layers, upper / "u", upper / "w"))
        stack.callback(m.stop)
        (tmp_path / "mnt" / "created").write_text("upper\n")
        os.chmod(tmp_path / "mnt" / "f3", 0o600)
        check_layerfs_invariants(tmp_path / "mnt")
        inos = ino_map(tmp_path / "mnt")
        assert len(set(inos.values())) == len(inos)
        m.stop()
        m = start_layerfs(tmp_path / "mnt", layerfs_options(layers, upper / "u", upper / "w"))
        stack.callback(m.stop)
        assert ino_map(tmp_path / "mnt") == inos
    # Otherwise this test would prove nothing.
    assert len(set(underneath)) < len(underneath), f"no collision underneath: {underneath}"


def test_whiteout_names_refused(pair: Pair) -> None:
    # By design: an upper with a ".wh.x" file could not be exported as an OCI layer, so
    # layerfs refuses such names; the kernel accepts them.
    (pair.ovl / ".wh.x").write_text("ok on the kernel\n")
    os.unlink(pair.ovl / ".wh.x")
    lfs = pair.lfs
    attempts: dict[str, Callable[[], object]] = {
        "create": lambda: (lfs / ".wh.x").write_text("x"),
        "mkdir": lambda: os.mkdir(lfs / "d/.wh.y"),
        "symlink": lambda: os.symlink("a", lfs / ".wh.z"),
        "mkfifo": lambda: os.mkfifo(lfs / ".wh.f"),
        "link": lambda: os.link(lfs / "a", lfs / ".wh.l"),
        "rename": lambda: os.rename(lfs / "a", lfs / ".wh.a"),
        "opaque marker": lambda: (lfs / "merged/.wh..wh..opq").write_text(""),
    }
    for what, fn in attempts.items():
        result = outcome(fn)
        assert result != "ok", f"{what}: a .wh. name was created"
        assert result != "EIO", f"{what}: EIO, an internal error"
    assert not any(n.startswith(".wh.") for rel, _ in walk(lfs) for n in rel.split("/"))
    assert listing(lfs / "merged") == listing(pair.ovl / "merged")
    assert os.path.exists(lfs / "a")


# The state machine ----------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")
PATHS = [f"{d}/{n}" if d else n for d in ("", "d", "d/e") for n in NAMES]
paths = st.sampled_from(PATHS)
# Names may become fifos: a blocking open would wait for a peer forever.
NB = os.O_NONBLOCK
small = st.binary(max_size=48)


class OracleMachine(RuleBasedStateMachine):
    """Random operations on both mounts: same outcome every step, same tree every few steps."""

    lowers: ClassVar[list[Path]] = []
    scratch: ClassVar[Path] = Path()
    CHECK_EVERY = 6

    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(dir=self.scratch))
        self.stack = contextlib.ExitStack()
        try:
            self.pair = self.stack.enter_context(open_pair(self.base, self.lowers))
        except BaseException:
            self.stack.close()
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self.steps = 0
        self.checked = 0
        self.failed = False

    def teardown(self) -> None:
        try:
            # After a failed step the final comparison would only bury its message.
            if not self.failed:
                assert_same_tree(self.pair, when="end of run: ")
                assert_same_after_remount(self.pair)
        finally:
            self.stack.close()
            shutil.rmtree(self.base, ignore_errors=True)

    def both(self, label: str, fn: Callable[[Path], object]) -> None:
        k = outcome(lambda: fn(self.pair.ovl))
        f = outcome(lambda: fn(self.pair.lfs))
        self.steps += 1
        if f != k:
            self.failed = True
            raise AssertionError(f"{label}: kernel {k}, layerfs {f}")

    @initialize()
    def start(self) -> None:
        assert_same_tree(self.pair, when="at start: ")

    @invariant()
    def trees_agree(self) -> None:
        if self.steps - self.checked >= self.CHECK_EVERY:
            self.checked = self.steps
            problems = tree_problems(self.pair, when=f"after step {self.steps}: ")
            if problems:
                self.failed = True
                raise AssertionError("\n".join(problems))

    @rule(p=paths, data=small)
    def create(self, p: str, data: bytes) -> None:
        self.both(
            f"create {p}",
            lambda r: write_at(r / p, data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NB),
        )

    @rule(p=paths, data=small, offset=st.integers(0, 64))
    def write(self, p: str, data: bytes, offset: int) -> None:
        self.both(f"write {p}", lambda r: write_at(r / p, data, os.O_WRONLY | NB, offset))

    @rule(p=paths, data=small)
    def append(self, p: str, data: bytes) -> None:
        self.both(f"append {p}", lambda r: write_at(r / p, data, os.O_WRONLY | os.O_APPEND | NB))

    @rule(p=paths, size=st.integers(0, 80))
    def truncate(self, p: str, size: int) -> None:
        self.both(f"truncate {p}", lambda r: os.truncate(r / p, size))

    @rule(p=paths, mode=st.sampled_from([0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000]))
    def chmod(self, p: str, mode: int) -> None:
        self.both(f"chmod {p}", lambda r: os.chmod(r / p, mode))

    @rule(p=paths, uid=st.sampled_from([0, OWNER, -1]), gid=st.sampled_from([0, OWNER, -1]))
    def chown(self, p: str, uid: int, gid: int) -> None:
        self.both(f"lchown {p}", lambda r: os.lchown(r / p, uid, gid))

    @rule(p=paths, t=st.integers(0, 2**33))
    def utime(self, p: str, t: int) -> None:
        ns = t * 1_000_000_007

        def op(r: Path) -> int:
            os.utime(r / p, ns=(ns, ns), follow_symlinks=False)
            return os.lstat(r / p).st_mtime_ns

        self.both(f"utime {p}", op)

    @rule(p=paths)
    def mkdir(self, p: str) -> None:
        self.both(f"mkdir {p}", lambda r: os.mkdir(r / p, 0o755))

    @rule(p=paths)
    def rmdir(self, p: str) -> None:
        self.both(f"rmdir {p}", lambda r: os.rmdir(r / p))

    @rule(p=paths)
    def unlink(self, p: str) -> None:
        self.both(f"unlink {p}", lambda r: os.unlink(r / p))

    @rule(src=paths, dst=paths, flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, src: str, dst: str, flags: int) -> None:
        self.both(f"rename {src} {dst} {flags}", lambda r: renameat2(r / src, r / dst, flags))

    # Renames (of merged and redirected directories above all) are where union filesystems
    # go wrong: a second rule doubles their share, over the paths that exist in the lowers.
    @rule(
        src=st.sampled_from(["d", "d/e", "a", "d/a", "d/e/a", "b"]),
        dst=paths,
        flags=st.sampled_from([0, RENAME_EXCHANGE]),
    )
    def rename_lower(self, src: str, dst: str, flags: int) -> None:
        self.both(f"rename {src} {dst} {flags}", lambda r: renameat2(r / src, r / dst, flags))

    @rule(src=paths, dst=paths)
    def link(self, src: str, dst: str) -> None:
        self.both(f"link {src} {dst}", lambda r: os.link(r / src, r / dst, follow_symlinks=False))

    # (``target`` is a reserved keyword of ``rule``.)
    @rule(p=paths, dest=st.sampled_from(["a", "b", "e/a", "x", "/abs/x"]))
    def symlink(self, p: str, dest: str) -> None:
        self.both(f"symlink {p} -> {dest}", lambda r: os.symlink(dest, r / p))

    @rule(p=paths)
    def mkfifo(self, p: str) -> None:
        self.both(f"mkfifo {p}", lambda r: os.mkfifo(r / p, 0o644))

    @rule(p=paths, name=st.sampled_from(["user.tag", "user.x"]), value=small)
    def setxattr(self, p: str, name: str, value: bytes) -> None:
        self.both(f"setxattr {p}", lambda r: os.setxattr(r / p, name, value, follow_symlinks=False))

    @rule(p=paths, name=st.sampled_from(["user.tag", "user.x"]))
    def removexattr(self, p: str, name: str) -> None:
        self.both(f"removexattr {p}", lambda r: os.removexattr(r / p, name, follow_symlinks=False))

    @rule(p=paths)
    def read(self, p: str) -> None:
        self.both(f"read {p}", lambda r: read_nonblock(r / p))

    @rule(p=paths)
    def listdir(self, p: str) -> None:
        self.both(f"list {p}", lambda r: listing(r / p))


@pytest.mark.timeout(300)
def test_random_operations(tmp_path: Path) -> None:
    OracleMachine.lowers = build_lowers(tmp_path / "layers")
    OracleMachine.scratch = tmp_path
    # Shrinking costs two mounts per try and can take minutes: on demand only. Without it a
    # failure still prints its (up to 30) steps.
    shrink = [Phase.shrink] if os.environ.get("LAYERFS_ORACLE_SHRINK") else []
    run_state_machine_as_test(
        OracleMachine,
        settings=settings(
            max_examples=int(os.environ.get("LAYERFS_ORACLE_EXAMPLES", "25")),
            stateful_step_count=30,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, *shrink],
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_removed_open_dir(pair: Pair) -> None:
    """layerfs's answer for a directory removed while open (see case_open_fds)."""
    os.mkdir(pair.lfs / "nd")
    fd = os.open(pair.lfs / "nd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(pair.lfs / "nd")
        assert os.listdir(fd) == []
        with pytest.raises(FileNotFoundError):
            os.fchmod(fd, 0o700)
        assert not (pair.lfs / "nd").exists()
    finally:
        os.close(fd)
