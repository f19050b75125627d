"""Metadata-only copy-up through a real mount: what is copied when, and what reads see."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs.fs.metacopy import MARKER, read_marker
from tests.conftest import make_tree
from tests.mounts import Stack, crash_layerfs, layerfs_options, start_layerfs

DATA = b"lower data\n" * 1000  # 11 KiB: more than a block, so a full copy has blocks


class MetaStack(Stack):
    def marker(self, name: str) -> tuple[int, bytes] | None:
        return read_marker(os.fsencode(self.upper / name))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[MetaStack]:
    s = MetaStack.under(tmp_path)
    make_tree(s.lower, {"f": DATA, "g": DATA, "d/h": DATA, "empty": ""})
    os.setxattr(s.lower / "f", "user.keep", b"k")
    os.setxattr(s.lower / "g", "user.big", b"x" * 2000)  # too much to keep a copy data-less
    yield s


@pytest.fixture
def mnt(stack: MetaStack) -> Iterator[Path]:
    m = stack.mount()
    try:
        yield m.mountpoint
    finally:
        m.stop()


def _blocks(path: Path) -> int:
    return os.lstat(path).st_blocks


def test_chmod_copies_attributes_not_data(stack: MetaStack, mnt: Path) -> None:
    ino = os.lstat(mnt / "f").st_ino
    assert not (stack.work / "metacopy").exists()  # lookups ask no upper file yet
    os.chmod(mnt / "f", 0o600)
    assert (stack.work / "metacopy").exists()
    os.chown(mnt / "f", 123, 456)
    os.utime(mnt / "f", ns=(5_000_000_000, 6_000_000_000))
    up = os.lstat(stack.upper / "f")
    assert stack.marker("f") == (0, b"f")
    assert up.st_size == len(DATA) and up.st_blocks * 512 <= up.st_blksize  # no data
    assert (stat.S_IMODE(up.st_mode), up.st_uid, up.st_gid) == (0o600, 123, 456)
    assert os.getxattr(stack.upper / "f", "user.keep") == b"k"
    st = os.lstat(mnt / "f")
    assert (st.st_ino, stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (
        ino,
        0o600,
        123,
        6_000_000_000,
    )
    assert st.st_blocks == _blocks(stack.lower / "f")  # du counts the data it reads
    assert (mnt / "f").read_bytes() == DATA
    assert os.listxattr(mnt / "f") == ["user.keep"]  # the marker stays hidden
    with pytest.raises(OSError):
        os.getxattr(mnt / "f", MARKER)
    with pytest.raises(PermissionError):
        os.setxattr(mnt / "f", MARKER, b"0:g")


def test_writing_replaces_the_copy_with_a_full_one(stack: MetaStack, mnt: Path) -> None:
    ino = os.lstat(mnt / "f").st_ino
    os.chmod(mnt / "f", 0o640)
    reader = os.open(mnt / "f", os.O_RDONLY)  # read across the copy below
    try:
        assert os.pread(reader, 5, 0) == DATA[:5]
        with open(mnt / "f", "r+b") as w:
            w.seek(0)
            w.write(b"UPPER")
        assert stack.marker("f") is None
        assert (stack.upper / "f").read_bytes() == b"UPPER" + DATA[5:]
        assert _blocks(stack.upper / "f") * 512 >= len(DATA)
        assert os.pread(reader, 5, 0) == b"UPPER"  # the open reader follows the copy
        os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(reader, len(DATA), 0) == b"UPPER" + DATA[5:]  # from the daemon
    finally:
        os.close(reader)
    st = os.lstat(mnt / "f")
    assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (ino, 0o640)
    assert os.getxattr(mnt / "f", "user.keep") == b"k"
    assert (stack.lower / "f").read_bytes() == DATA


def test_truncate_link_and_xattr_changes_need_a_full_copy(stack: MetaStack, mnt: Path) -> None:
    for name in ("f", "d/h"):
        os.chmod(mnt / name, 0o600)
        assert stack.marker(name) is not None
    os.truncate(mnt / "f", 0)
    assert stack.marker("f") is None and (mnt / "f").read_bytes() == b""
    assert stat.S_IMODE(os.lstat(mnt / "f").st_mode) == 0o600
    os.link(mnt / "d/h", mnt / "h2")
    assert stack.marker("d/h") is None
    assert os.lstat(mnt / "h2").st_nlink == 2 and (mnt / "h2").read_bytes() == DATA
    os.chmod(mnt / "empty", 0o600)  # nothing to leave behind: an ordinary copy
    assert stack.marker("empty") is None
    os.chmod(mnt / "g", 0o600)  # its xattrs are too big to ride along data-less
    assert stack.marker("g") is None and (stack.upper / "g").read_bytes() == DATA
    os.rename(mnt / "g", mnt / "g2")
    assert (mnt / "g2").read_bytes() == DATA


def test_renamed_and_xattr_changed_copies(stack: MetaStack, mnt: Path) -> None:
    ino = os.lstat(mnt / "d/h").st_ino
    os.rename(mnt / "d/h", mnt / "moved")
    assert stack.marker("moved") == (0, b"d/h")
    assert (mnt / "moved").read_bytes() == DATA and os.lstat(mnt / "moved").st_ino == ino
    assert not (mnt / "d/h").exists()
    os.removexattr(mnt / "f", "user.keep")  # removing only shrinks: no data copied
    assert stack.marker("f") == (0, b"f") and os.listxattr(mnt / "f") == []
    os.setxattr(mnt / "f", "user.large", b"y" * 3000)  # growing them needs a full copy
    assert stack.marker("f") is None and (stack.upper / "f").read_bytes() == DATA
    assert os.getxattr(mnt / "f", "user.large") == b"y" * 3000
    os.setxattr(mnt / "moved", "user.new", b"n")  # a marked file's xattrs stay small
    assert stack.marker("moved") is None
    assert (stack.upper / "moved").read_bytes() == DATA
    assert os.getxattr(mnt / "moved", "user.new") == b"n"
    assert os.lstat(mnt / "moved").st_ino == ino


def test_copies_survive_remount_and_crash(stack: MetaStack) -> None:
    m = stack.mount()
    try:
        inos = {n: os.lstat(m.mountpoint / n).st_ino for n in ("f", "d/h")}
        os.chmod(m.mountpoint / "f", 0o600)
        os.chmod(m.mountpoint / "d/h", 0o600)
    finally:
        crash_layerfs(m)
        m.stop()
    m = stack.mount()
    try:
        for name, ino in inos.items():
            st = os.lstat(m.mountpoint / name)
            assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (ino, 0o600)
            assert (m.mountpoint / name).read_bytes() == DATA
        with open(m.mountpoint / "f", "ab") as f:
            f.write(b"more")
    finally:
        m.stop()
    m = stack.mount()
    try:
        assert (m.mountpoint / "f").read_bytes() == DATA + b"more"
        assert os.lstat(m.mountpoint / "f").st_ino == inos["f"]
        assert (m.mountpoint / "d/h").read_bytes() == DATA
    finally:
        m.stop()


@pytest.mark.parametrize("extra", ["metacopy=off", "whiteout=oci"])
def test_metacopy_off_copies_data(stack: MetaStack, extra: str) -> None:
    m = start_layerfs(stack.mnt, layerfs_options([stack.lower], stack.upper, stack.work, [extra]))
    try:
        os.chmod(m.mountpoint / "f", 0o600)
    finally:
        m.stop()
    assert stack.marker("f") is None and (stack.upper / "f").read_bytes() == DATA
    assert not (stack.work / "metacopy").exists()


def test_bad_metacopy_value_is_refused(stack: MetaStack) -> None:
    opts = layerfs_options([stack.lower], stack.upper, stack.work, ["metacopy=maybe"])
    with pytest.raises(RuntimeError, match="metacopy=maybe: expected on or off"):
        start_layerfs(stack.mnt, opts)
