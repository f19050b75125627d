"""FUSE passthrough through a real mount: the kernel reads and writes backing files itself.

Whether the daemon moved the data is read from its own I/O counters (/proc/PID/io):
with passthrough it reads only requests, without it every byte of the file.
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs.fs import backing
from tests.images import BUSYBOX
from tests.mounts import Stack, daemon_stats, layerfs_options, start_layerfs_with

pytestmark = pytest.mark.skipif(
    not backing.SUPPORTED, reason="pyfuse3 without passthrough.patch (tools/build-pyfuse3)"
)

SIZE = 8 << 20
DATA = os.urandom(SIZE)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack.under(tmp_path)
    (s.lower / "big").write_bytes(DATA)
    (s.lower / "small").write_bytes(b"lower\n")
    shutil.copy(BUSYBOX, s.lower / "busybox")
    yield s


def _io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def test_files_with_upper_data_bypass_the_daemon(stack: Stack) -> None:
    m = stack.mount()
    try:
        mnt, pid = m.mountpoint, m.proc.pid
        assert daemon_stats(m, stack.log)["passthrough"] == 1
        before = _io(pid)
        with open(mnt / "new", "wb") as f:
            f.write(DATA)
            f.flush()
            os.fsync(f.fileno())
        assert (mnt / "new").read_bytes() == DATA
        after = _io(pid)
        assert after["wchar"] - before["wchar"] < SIZE // 8
        assert after["rchar"] - before["rchar"] < SIZE // 8
        assert (stack.upper / "new").read_bytes() == DATA
        assert os.stat(mnt / "new").st_size == SIZE
        with open(mnt / "new", "ab") as f:  # O_APPEND reaches the backing file
            f.write(b"tail")
        assert (stack.upper / "new").read_bytes() == DATA + b"tail"
        with open(mnt / "new", "r+b") as rw, mmap.mmap(rw.fileno(), 0) as mm:
            mm[:4] = b"MMAP"
        assert (stack.upper / "new").read_bytes()[:5] == b"MMAP" + DATA[4:5]
        # Two handles of one file share its backing file.
        with open(mnt / "new", "rb") as a, open(mnt / "new", "r+b") as b:
            b.write(b"both")
            b.flush()
            assert a.read(4) == b"both"
            assert daemon_stats(m, stack.log)["backings"] == 1
        # A lower file on a writable mount is read by the daemon: a writer may copy it
        # up while it is open, and the kernel could not move its readers along.
        before = _io(pid)
        assert (mnt / "big").read_bytes() == DATA
        assert _io(pid)["rchar"] - before["rchar"] >= SIZE
        assert daemon_stats(m, stack.log)["backings"] == 0  # every id closed again
    finally:
        m.stop()


def test_read_only_mount_passes_lower_files_through(stack: Stack) -> None:
    opts = layerfs_options([stack.lower], extra=["ro"])
    m = start_layerfs_with(stack.mnt, opts, log=stack.log)
    try:
        mnt = m.mountpoint
        before = _io(m.proc.pid)
        assert (mnt / "big").read_bytes() == DATA
        with open(mnt / "big", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert mm[SIZE - 100 :] == DATA[-100:]
        out = subprocess.run(
            [str(mnt / "busybox"), "echo", "ran"], capture_output=True, check=True, timeout=30
        )
        assert out.stdout == b"ran\n"
        assert _io(m.proc.pid)["rchar"] - before["rchar"] < SIZE // 8
    finally:
        m.stop()


def test_off_the_daemon_moves_the_data(stack: Stack) -> None:
    m = stack.mount("passthrough=off")
    try:
        assert daemon_stats(m, stack.log)["passthrough"] == 0
        before = _io(m.proc.pid)
        (m.mountpoint / "new").write_bytes(DATA)
        assert _io(m.proc.pid)["wchar"] - before["wchar"] >= SIZE
    finally:
        m.stop()


def test_copy_up_under_an_open_reader(stack: Stack) -> None:
    """Readers of a lower file follow a writer's copy-up; once all are closed, the
    copy is opened with passthrough."""
    m = stack.mount()
    try:
        mnt = m.mountpoint
        reader = os.open(mnt / "big", os.O_RDONLY)
        try:
            assert os.pread(reader, 5, 0) == DATA[:5]
            with open(mnt / "big", "r+b") as w:
                w.write(b"UPPER")
                w.flush()
                assert os.pread(reader, 5, 0) == b"UPPER"
        finally:
            os.close(reader)
        assert (stack.upper / "big").read_bytes() == b"UPPER" + DATA[5:]
        assert (stack.lower / "big").read_bytes() == DATA
        before = _io(m.proc.pid)["rchar"]
        assert (mnt / "big").read_bytes() == b"UPPER" + DATA[5:]
        assert _io(m.proc.pid)["rchar"] - before < SIZE // 8
    finally:
        m.stop()
