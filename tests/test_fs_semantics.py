"""Union semantics through a real layerfs mount: whiteouts, copy-up, links, renames, inodes."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerfs.fs.ops import CACHE_READDIR
from tests.conftest import make_tree
from tests.mounts import (
    LayerfsMount,
    daemon_stats,
    layerfs,
    layerfs_options,
    mounted,
    snapshot,
    start_layerfs_with,
    wait_for,
)

libc = ctypes.CDLL("libc.so.6", use_errno=True)
libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


def rename2(src: Path, dst: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(src))


def errno_of(fn: Callable[..., object], *args: object) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or 0
    return 0


def open_write(path: Path) -> None:
    with open(path, "w"):
        pass


@pytest.fixture
def stack(tmp_path: Path) -> dict[str, Path]:
    """Two lower layers (OCI whiteout forms in the top one), upper, work, mountpoint."""
    l1, l2 = tmp_path / "l1", tmp_path / "l2"
    make_tree(
        l2,
        {
            "a": "from l2\n",
            "gone": "hidden by l1\n",
            "d/x": "x2\n",
            "d/keep": "k\n",
            "opq/old": "old\n",
            "tree/s1/f1": "1",
            "tree/s1/f2": "2",
            "tree/s2/f3": "3",
            "big": b"",
        },
    )
    make_tree(
        l1,
        {
            "a": "from l1\n",
            ".wh.gone": "",
            "d/y": "y1\n",
            "d/.wh.x": "",
            "opq/.wh..wh..opq": "",
            "opq/new": "new\n",
            "sym": "link:->a",
            "hl/one": "shared\n",
        },
    )
    os.link(l1 / "hl/one", l1 / "hl/two")
    os.makedirs(l1 / "hl2")
    os.link(l1 / "hl/one", l1 / "hl2/three")
    os.chown(l1 / "a", 1234, 4321)
    os.chmod(l1 / "a", 0o4755)
    os.setxattr(l1 / "a", "user.note", b"hello")
    os.setxattr(l1 / "a", "trusted.overlay.secret", b"internal")
    os.utime(l1 / "a", ns=(1_000_000_000, 2_000_000_000))
    os.mkfifo(l1 / "fifo")
    os.mknod(l1 / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with open(l2 / "big", "wb") as f:  # sparse: 64 MiB with two small data islands
        f.write(b"head")
        f.seek(32 << 20)
        f.write(b"middle")
        f.truncate(64 << 20)
    out = {"l1": l1, "l2": l2}
    for name in ("upper", "work", "mnt"):
        (tmp_path / name).mkdir()
        out[name] = tmp_path / name
    return out


@pytest.fixture
def mnt(stack: dict[str, Path]) -> Iterator[Path]:
    with layerfs(stack["mnt"], [stack["l1"], stack["l2"]], stack["upper"], stack["work"]):
        yield stack["mnt"]


def test_oci_whiteouts_and_markers_read(mnt: Path) -> None:
    names = sorted(os.listdir(mnt))
    assert "gone" not in names and not any(n.startswith(".wh.") for n in names)
    assert sorted(os.listdir(mnt / "d")) == ["keep", "y"]
    assert sorted(os.listdir(mnt / "opq")) == ["new"]
    assert (mnt / "a").read_text() == "from l1\n"
    for hidden in ("gone", ".wh.gone", "d/x", "d/.wh.x", "opq/old", "opq/.wh..wh..opq"):
        assert not os.path.lexists(mnt / hidden), hidden


def test_overlay_whiteout_forms_read(tmp_path: Path, dirs: dict[str, Path]) -> None:
    low, top = tmp_path / "low", tmp_path / "top"
    make_tree(low, {"f": "f", "dx/a": "a", "dy/b": "b", "dz/c": "c"})
    make_tree(top, {"dx/new": "n", "dy/new": "n", "dz": None})
    os.mknod(top / "f", stat.S_IFCHR, 0)
    os.setxattr(top / "dx", "trusted.overlay.opaque", b"y")
    os.setxattr(top / "dy", "user.overlay.opaque", b"y")
    with layerfs(dirs["mnt"], [top, low]) as m:
        root = m.mountpoint
        assert sorted(os.listdir(root)) == ["dx", "dy", "dz"]
        assert os.listdir(root / "dx") == ["new"]
        assert os.listdir(root / "dy") == ["new"]
        assert os.listdir(root / "dz") == ["c"]
        assert "trusted.overlay.opaque" not in os.listxattr(root / "dx")


def test_whiteout_names_refused(mnt: Path) -> None:
    assert errno_of(open_write, mnt / ".wh.evil") == errno.EINVAL
    assert errno_of(os.mkdir, mnt / ".wh..wh..opq") == errno.EINVAL
    assert errno_of(os.rename, mnt / "a", mnt / ".wh.a") == errno.EINVAL
    assert errno_of(os.symlink, "x", mnt / "d/.wh.y") == errno.EINVAL


@pytest.mark.parametrize("form", ["char", "oci"])
def test_whiteouts_written_in_upper(stack: dict[str, Path], form: str) -> None:
    upper = stack["upper"]
    with layerfs(
        stack["mnt"], [stack["l1"], stack["l2"]], upper, stack["work"], [f"whiteout={form}"]
    ) as m:
        root = m.mountpoint
        os.unlink(root / "a")
        subprocess.run(["rm", "-rf", str(root / "tree")], check=True)
        os.unlink(root / "d/keep")
        os.unlink(root / "d/y")
        os.rmdir(root / "d")
        os.mkdir(root / "d")
        (root / "d/fresh").write_text("fresh")
        assert os.listdir(root / "d") == ["fresh"]
        assert not (root / "a").exists() and not (root / "tree").exists()
        names = sorted(os.listdir(root))
    if form == "char":
        st = os.lstat(upper / "a")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert stat.S_ISCHR(os.lstat(upper / "tree").st_mode)
    else:
        assert (upper / ".wh.a").is_file() and not (upper / "a").exists()
        assert (upper / ".wh.tree").is_file()
    assert (upper / "d/.wh..wh..opq").exists()
    # The same view after a remount: nothing about the whiteouts lived in memory only.
    with layerfs(stack["mnt"], [stack["l1"], stack["l2"]], upper, stack["work"]) as m:
        assert sorted(os.listdir(m.mountpoint)) == names
        assert os.listdir(m.mountpoint / "d") == ["fresh"]


def _upper_only(upper: Path, rel: str) -> os.stat_result:
    return os.lstat(upper / rel)


@pytest.mark.parametrize(
    "op", ["write", "truncate", "chmod", "chown", "utime", "setxattr", "link", "open_rw"]
)
def test_copy_up_keeps_metadata(stack: dict[str, Path], mnt: Path, op: str) -> None:
    before = os.lstat(mnt / "a")
    ino = before.st_ino
    path = mnt / "a"
    if op == "write":
        with open(path, "r+b") as f:
            f.write(b"FROM")
    elif op == "truncate":
        os.truncate(path, 4)
    elif op == "chmod":
        os.chmod(path, 0o4700)
    elif op == "chown":
        os.chown(path, 1234, 99)
    elif op == "utime":
        os.utime(path, ns=(5_000_000_000, 6_000_000_000))
    elif op == "setxattr":
        os.setxattr(path, "user.more", b"x")
    elif op == "link":
        os.link(path, mnt / "a-link")
    elif op == "open_rw":
        with open(path, "r+b"):
            pass
    up = os.lstat(stack["upper"] / "a")
    after = os.lstat(path)
    assert after.st_ino == ino, "st_ino must survive copy-up"
    assert os.getxattr(stack["upper"] / "a", "user.note") == b"hello"
    assert "trusted.overlay.secret" not in os.listxattr(path)
    expect_mode = 0o4700 if op == "chmod" else 0o4755
    if op != "chown":
        assert stat.S_IMODE(up.st_mode) == expect_mode
        assert (up.st_uid, up.st_gid) == (1234, 4321)
    if op not in ("write", "truncate", "utime"):
        assert up.st_mtime_ns == 2_000_000_000
    data = path.read_bytes()
    assert data == {"write": b"FROM l1\n", "truncate": b"from"}.get(op, b"from l1\n")
    assert os.listdir(stack["work"] / "tmp") == []
    assert (stack["l1"] / "a").read_text() == "from l1\n", "lower layer must never change"


def test_copy_up_special_files(stack: dict[str, Path], mnt: Path) -> None:
    os.chown(mnt / "sym", 7, 8, follow_symlinks=False)
    os.chmod(mnt / "fifo", 0o600)
    os.chmod(mnt / "null", 0o600)
    up = stack["upper"]
    assert os.readlink(up / "sym") == "a" and os.lstat(up / "sym").st_uid == 7
    assert stat.S_ISFIFO(os.lstat(up / "fifo").st_mode)
    st = os.lstat(up / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_sparse_file_stays_sparse(stack: dict[str, Path], mnt: Path) -> None:
    with open(mnt / "big", "r+b") as f:
        f.seek(10)
        f.write(b"X")
    st = os.lstat(stack["upper"] / "big")
    assert st.st_size == 64 << 20
    assert st.st_blocks * 512 < 4 << 20, "holes were filled on copy-up"
    with open(mnt / "big", "rb") as f:
        f.seek(32 << 20)
        assert f.read(6) == b"middle"


def test_hardlink_group_survives_copy_up(stack: dict[str, Path], mnt: Path) -> None:
    names = [mnt / "hl/one", mnt / "hl/two", mnt / "hl2/three"]
    inos = {os.lstat(p).st_ino for p in names}
    assert len(inos) == 1 and os.lstat(names[0]).st_nlink == 3
    with open(names[1], "a") as f:
        f.write("written via two\n")
    for p in names:
        assert p.read_text() == "shared\nwritten via two\n", p
        assert os.lstat(p).st_ino in inos
    up = stack["upper"]
    assert os.lstat(up / "hl/one").st_ino == os.lstat(up / "hl2/three").st_ino
    os.chmod(names[2], 0o600)
    assert all(stat.S_IMODE(os.lstat(p).st_mode) == 0o600 for p in names)


def test_rename_lower_dirs_and_flags(mnt: Path) -> None:
    os.rename(mnt / "tree", mnt / "moved")
    assert sorted(os.listdir(mnt / "moved")) == ["s1", "s2"]
    assert (mnt / "moved/s1/f1").read_text() == "1"
    assert not (mnt / "tree").exists()
    (mnt / "moved/s2/added").write_text("+")
    os.rename(mnt / "moved/s1", mnt / "d/s1")
    assert sorted(os.listdir(mnt / "d/s1")) == ["f1", "f2"]
    assert errno_of(rename2, mnt / "a", mnt / "sym", RENAME_NOREPLACE) == errno.EEXIST
    rename2(mnt / "a", mnt / "fresh", RENAME_NOREPLACE)
    assert (mnt / "fresh").read_text() == "from l1\n" and not (mnt / "a").exists()
    rename2(mnt / "fresh", mnt / "d/keep", RENAME_EXCHANGE)
    assert (mnt / "fresh").read_text() == "k\n"
    assert (mnt / "d/keep").read_text() == "from l1\n"
    rename2(mnt / "d", mnt / "opq", RENAME_EXCHANGE)
    assert sorted(os.listdir(mnt / "opq")) == ["keep", "s1", "y"]
    assert os.listdir(mnt / "d") == ["new"]
    assert errno_of(os.rename, mnt / "opq", mnt / "moved") == errno.ENOTEMPTY


def test_rename_state_survives_remount(stack: dict[str, Path]) -> None:
    args = ([stack["l1"], stack["l2"]], stack["upper"], stack["work"])
    with layerfs(stack["mnt"], *args) as m:
        os.rename(m.mountpoint / "tree", m.mountpoint / "t2")
        os.rename(m.mountpoint / "t2/s1", m.mountpoint / "s1")
        ino = os.lstat(m.mountpoint / "s1/f1").st_ino
        before = snapshot(m.mountpoint)
    with layerfs(stack["mnt"], *args) as m:
        assert snapshot(m.mountpoint) == before
        assert os.lstat(m.mountpoint / "s1/f1").st_ino == ino


def test_rmdir_merged_and_rm_rf(mnt: Path) -> None:
    assert errno_of(os.rmdir, mnt / "d") == errno.ENOTEMPTY
    subprocess.run(["rm", "-rf", str(mnt / "d"), str(mnt / "tree")], check=True)
    assert not (mnt / "d").exists() and not (mnt / "tree").exists()
    os.mkdir(mnt / "tree")
    assert os.listdir(mnt / "tree") == []


def test_inode_numbers(tmp_path: Path, stack: dict[str, Path]) -> None:
    # A layer on another filesystem: its inode numbers may collide with the others'.
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
    try:
        make_tree(other, {f"t{i}": str(i) for i in range(50)})
        lowers = [other, stack["l1"], stack["l2"]]
        with layerfs(stack["mnt"], lowers, stack["upper"], stack["work"]) as m:
            inos = _inos(m)
            os.chmod(m.mountpoint / "t3", 0o600)
            os.chmod(m.mountpoint / "d/y", 0o600)
            assert _inos(m) == inos
            devs = {os.lstat(m.mountpoint / p).st_dev for p in inos}
            assert len(devs) == 1
        with layerfs(stack["mnt"], lowers, stack["upper"], stack["work"]) as m:
            assert _inos(m) == inos
    finally:
        subprocess.run(["umount", str(other)], check=True)


def _inos(m: LayerfsMount) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(m.mountpoint):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, m.mountpoint)] = os.lstat(p).st_ino
    seen: dict[int, str] = {}
    for rel, ino in out.items():
        other = seen.setdefault(ino, rel)
        # Only the lower hard-link group may share a number.
        assert other == rel or {rel, other} <= {"hl/one", "hl/two", "hl2/three"}, (rel, other)
    return out


def test_nlink(mnt: Path) -> None:
    for d in ("", "d", "tree", "tree/s1", "opq"):
        p = mnt / d
        subdirs = sum(1 for e in os.scandir(p) if e.is_dir(follow_symlinks=False))
        assert os.lstat(p).st_nlink == 2 + subdirs, d
    os.mkdir(mnt / "d/sub")
    assert os.lstat(mnt / "d").st_nlink == 3
    assert os.lstat(mnt / "hl/one").st_nlink == 3
    os.link(mnt / "a", mnt / "a2")
    assert os.lstat(mnt / "a").st_nlink == 2


def test_big_reads_exact_at_any_offset_and_at_the_end(tmp_path: Path) -> None:
    """Reads of 512 KiB and more are answered on a worker thread (from the file itself
    with a pyfuse3 that has FileRange): whole files, odd offsets, short at the end,
    nothing past it."""
    data = os.urandom((3 << 20) + 12345)
    make_tree(tmp_path / "l", {"odd": data})
    for name in ("u", "w", "m"):
        (tmp_path / name).mkdir()
    with layerfs(tmp_path / "m", [tmp_path / "l"], tmp_path / "u", tmp_path / "w") as m:
        assert (m.mountpoint / "odd").read_bytes() == data  # readahead: 1 MiB requests
        # O_DIRECT: every pread is one READ of its own offset and size.
        fd = os.open(m.mountpoint / "odd", os.O_RDONLY | os.O_DIRECT)
        try:
            for off in (0, 1, (1 << 20) - 7, len(data) - 100, len(data) - 1, len(data)):
                assert os.pread(fd, 1 << 20, off) == data[off : off + (1 << 20)], off
        finally:
            os.close(fd)


def test_readdir_offsets_stable_under_changes(mnt: Path) -> None:
    for i in range(300):
        (mnt / "d" / f"n{i:03d}").write_text("")
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]
    d = libc.opendir(os.fsencode(mnt / "d"))
    assert d

    def name_of(ent: int) -> str:
        return ctypes.string_at(ent + 19).decode()  # d_name in struct dirent64

    seen: list[str] = []
    positions: dict[str, int] = {}
    for _ in range(100):
        pos = libc.telldir(d)
        ent = libc.readdir(d)
        seen.append(name_of(ent))
        positions[seen[-1]] = pos
    for i in range(150, 300):  # remove entries not yet read, add new ones
        os.unlink(mnt / "d" / f"n{i:03d}")
    for i in range(50):
        (mnt / "d" / f"new{i}").write_text("")
    # Seek back to an entry that still exists: it must come again, at the same offset.
    back = next(n for n in seen[50:] if n.startswith("n") and int(n[1:]) < 150)
    libc.seekdir(d, positions[back])
    assert name_of(libc.readdir(d)) == back, "offset not stable"
    rest: list[str] = []
    while ent := libc.readdir(d):
        rest.append(name_of(ent))
    libc.closedir(d)
    names = seen[: seen.index(back) + 1] + rest
    real = [n for n in names if n not in (".", "..")]
    assert len(real) == len(set(real)), "duplicate entries"
    assert not any(n.startswith(".wh.") for n in real)


def test_kernel_cached_listings_follow_changes(tmp_path: Path, stack: dict[str, Path]) -> None:
    log = tmp_path / "daemon.log"
    opts = layerfs_options([stack["l1"], stack["l2"]], stack["upper"], stack["work"])
    m = start_layerfs_with(stack["mnt"], opts, log=log)
    try:
        d, other = stack["mnt"] / "d", stack["mnt"] / "tree"
        want = {"keep", "y"}
        assert set(os.listdir(d)) == want
        before = daemon_stats(m, log)["readdirs"]
        assert set(os.listdir(d)) == want
        again = daemon_stats(m, log)["readdirs"]
        # tools/setup installs pyfuse3 with the opendir patch: without it this test must fail,
        # not pass without checking the cache.
        assert CACHE_READDIR, "pyfuse3 lacks FileInfo.cache_readdir: run tools/build-pyfuse3"
        assert again == before, "a second listing of an unchanged directory reached the daemon"
        steps: list[tuple[Callable[[], object], set[str]]] = [
            (lambda: (d / "new").write_text("n"), want | {"new"}),
            (lambda: os.unlink(d / "keep"), {"y", "new"}),
            (lambda: os.rename(d / "new", other / "moved"), {"y"}),
            (lambda: os.rename(other / "s1", d / "s1"), {"y", "s1"}),
            (lambda: os.mkdir(d / "sub"), {"y", "s1", "sub"}),
            (lambda: os.rmdir(d / "sub"), {"y", "s1"}),
            (lambda: os.symlink("y", d / "ln"), {"y", "s1", "ln"}),
            (lambda: os.link(d / "y", d / "y2"), {"y", "s1", "ln", "y2"}),
            (lambda: rename2(d / "y", other / "s2", RENAME_EXCHANGE), {"y", "s1", "ln", "y2"}),
        ]
        for change, expect in steps:
            change()
            assert set(os.listdir(d)) == expect
            assert set(os.listdir(d)) == expect  # the second one from the kernel's cache
        assert sorted(os.listdir(d / "y")) == ["f3"]  # the exchanged directory
        assert {"moved", "s2"} <= set(os.listdir(other))
    finally:
        m.stop()
    with layerfs(stack["mnt"], [stack["l1"], stack["l2"]], stack["upper"], stack["work"]):
        assert set(os.listdir(stack["mnt"] / "d")) == {"y", "s1", "ln", "y2"}


def test_xattrs(stack: dict[str, Path], mnt: Path) -> None:
    p = mnt / "a"
    assert os.getxattr(p, "user.note") == b"hello"
    assert os.listxattr(p) == ["user.note"]
    assert errno_of(os.getxattr, p, "trusted.overlay.secret") == errno.ENODATA
    assert errno_of(os.setxattr, p, "user.overlay.opaque", b"y") == errno.EPERM
    assert errno_of(os.setxattr, p, "user.layerfs.x", b"y") == errno.EPERM
    assert not (stack["upper"] / "a").exists(), "a refused xattr must not copy up"
    os.setxattr(p, "user.two", b"2")
    assert sorted(os.listxattr(p)) == ["user.note", "user.two"]
    os.removexattr(p, "user.note")
    assert os.listxattr(p) == ["user.two"]
    assert errno_of(os.removexattr, mnt / "d/keep", "user.none") == errno.ENODATA


def test_statfs_is_the_uppers(stack: dict[str, Path], mnt: Path) -> None:
    a, b = os.statvfs(mnt), os.statvfs(stack["upper"])
    assert (a.f_blocks, a.f_bsize, a.f_files) == (b.f_blocks, b.f_bsize, b.f_files)


def test_read_only_without_upper(stack: dict[str, Path]) -> None:
    with layerfs(stack["mnt"], [stack["l1"], stack["l2"]]) as m:
        root = m.mountpoint
        assert (root / "a").read_text() == "from l1\n"
        assert errno_of(open_write, root / "a") == errno.EROFS
        assert errno_of(os.mkdir, root / "n") == errno.EROFS
        assert errno_of(os.unlink, root / "a") == errno.EROFS


def test_allow_other_permissions(tmp_path: Path, stack: dict[str, Path]) -> None:
    make_tree(stack["l2"], {"secret": "s", "ro/f": "f", "pub": "p"})
    os.chmod(stack["l2"] / "secret", 0o600)
    os.chmod(stack["l2"] / "ro", 0o555)
    # pytest's tmp dirs are 0700: the unprivileged user needs a mountpoint it can reach.
    public = Path(tempfile.mkdtemp(prefix="layerfs-allow-other-"))
    public.chmod(0o755)
    with layerfs(
        public, [stack["l1"], stack["l2"]], stack["upper"], stack["work"], ["allow_other"]
    ) as m:
        root = m.mountpoint

        def as_nobody(cmd: str) -> int:
            return subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd],
                capture_output=True,
                check=False,
            ).returncode

        assert as_nobody(f"cat {root}/pub") == 0
        assert as_nobody(f"cat {root}/secret") != 0
        assert as_nobody(f"touch {root}/ro/new") != 0
        assert as_nobody(f"rm -f {root}/a") != 0
        assert (root / "a").exists()
    public.rmdir()


def test_copy_up_of_big_file_does_not_stall(stack: dict[str, Path]) -> None:
    with open(stack["l2"] / "huge", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(384):
            f.write(chunk)
    with layerfs(stack["mnt"], [stack["l1"], stack["l2"]], stack["upper"], stack["work"]) as m:
        # A size change copies the data (a chmod would copy attributes only).
        t = threading.Thread(target=os.truncate, args=(m.mountpoint / "huge", 384 << 20))
        t.start()
        time.sleep(0.05)
        start = time.monotonic()
        for i in range(20):
            os.lstat(m.mountpoint / "tree" / "s1" / "f1")
            (m.mountpoint / f"during{i}").write_text("x")
        elapsed = time.monotonic() - start
        t.join()
        assert elapsed < 1.0, f"requests stalled {elapsed:.2f}s behind a copy-up"
        up = os.lstat(stack["upper"] / "huge")
        assert up.st_size == 384 << 20 and up.st_blocks * 512 >= 384 << 20


def test_forget_frees_inodes_and_no_fd_per_inode(tmp_path: Path, stack: dict[str, Path]) -> None:
    make_tree(stack["l2"], {f"many/f{i}": "" for i in range(3000)})
    log = tmp_path / "log"
    opts = ",".join(
        [
            f"lowerdir={stack['l1']}:{stack['l2']}",
            f"upperdir={stack['upper']}",
            f"workdir={stack['work']}",
        ]
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerfs.cli.layerfs",
            "-f",
            "--log",
            str(log),
            "-o",
            opts,
            str(stack["mnt"]),
        ],
        env={**os.environ},
    )
    m = LayerfsMount(stack["mnt"], proc, opts)
    try:
        wait_for(lambda: mounted(stack["mnt"], "fuse.layerfs"), what="mount")
        subprocess.run(
            ["find", str(stack["mnt"]), "-printf", "%s %m\n"], check=True, capture_output=True
        )
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert fds < 50, f"daemon holds {fds} fds"

        def stats() -> dict[str, int]:
            os.kill(proc.pid, 10)  # SIGUSR1
            wait_for(lambda: "stats:" in log.read_text(), what="stats")
            line = [x for x in log.read_text().splitlines() if "stats:" in x][-1]
            log.write_text("")
            return {k: int(v) for k, v in (p.split("=") for p in line.split("stats: ")[1].split())}

        assert stats()["inodes"] > 3000
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        wait_for(lambda: stats()["inodes"] < 100, what="forget to free inodes")
    finally:
        m.stop()


@pytest.mark.zfs
def test_upper_on_zfs_without_xattrs(zpool: str, stack: dict[str, Path]) -> None:
    subprocess.run(["zfs", "create", f"{zpool}/c"], check=True)
    base = Path(
        subprocess.run(
            ["zfs", "get", "-H", "-o", "value", "mountpoint", f"{zpool}/c"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    upper, work = base / "upper", base / "work"
    upper.mkdir()
    work.mkdir()
    args = ([stack["l1"], stack["l2"]], upper, work)
    with layerfs(stack["mnt"], *args) as m:
        root = m.mountpoint
        os.unlink(root / "d/keep")
        subprocess.run(["rm", "-rf", str(root / "tree")], check=True)
        subprocess.run(["rm", "-rf", str(root / "opq")], check=True)
        os.mkdir(root / "opq")
        os.chmod(root / "a", 0o700)  # copy-up keeps user.note although the upper cannot
        os.setxattr(root / "d/y", "user.set", b"on-zfs")
        os.rename(root / "d", root / "d2")
        view = snapshot(root)
        assert os.getxattr(root / "a", "user.note") == b"hello"
        with open(upper / "a", "rb") as f:  # the upper really has no xattrs
            assert errno_of(os.setxattr, f.fileno(), "user.x", b"1") == errno.ENOTSUP
    assert stat.S_ISCHR(os.lstat(upper / "tree").st_mode)
    assert (upper / "opq/.wh..wh..opq").exists()
    with layerfs(stack["mnt"], *args) as m:
        assert snapshot(m.mountpoint) == view
        assert os.getxattr(m.mountpoint / "a", "user.note") == b"hello"
        assert os.getxattr(m.mountpoint / "d2/y", "user.set") == b"on-zfs"
        assert os.listdir(m.mountpoint / "opq") == []
