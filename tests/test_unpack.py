"""Tests of the layer unpacker and its per-entry manifest (layerfs.store.unpack, .entries).

Tars are built in memory with `tarfile` (GNU sparse ones with GNU tar from a real sparse file).
The hostile corpus checks both the error (naming the member) and that nothing outside the
destination changed.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash

from layerfs.fs.sidecar import load_sidecar, sidecar_path
from layerfs.store.entries import (
    EntriesError,
    Entry,
    EntryType,
    read_entries,
    verify_entries,
    write_entries,
)
from layerfs.store.unpack import UnpackError, UnpackOptions, UnpackResult, unpack_layer

MTIME = 1_600_000_000
NOBODY = 65534
# A v2 file capability granting cap_net_bind_service (permitted + effective).
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


# -- building tars ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One tar member to write: a TarInfo and its data."""

    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, kind: bytes, mode: int, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = MTIME
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


def reg(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Member:
    return Member(_info(name, tarfile.REGTYPE, mode, size=len(data), **kw), data)


def dir_(name: str, mode: int = 0o755, **kw: object) -> Member:
    return Member(_info(name, tarfile.DIRTYPE, mode, **kw))


def symlink(name: str, target: str, **kw: object) -> Member:
    return Member(_info(name, tarfile.SYMTYPE, 0o777, linkname=target, **kw))


def hardlink(name: str, target: str) -> Member:
    return Member(_info(name, tarfile.LNKTYPE, 0o644, linkname=target))


def special(name: str, kind: bytes, major: int = 0, minor: int = 0, mode: int = 0o644) -> Member:
    return Member(_info(name, kind, mode, devmajor=major, devminor=minor))


def xattr_pax(attrs: dict[str, bytes]) -> dict[str, str]:
    return {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in attrs.items()}


def make_tar(*members: Member) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            tf.addfile(m.info, io.BytesIO(m.data) if m.info.isreg() else None)
    return buf.getvalue()


def unpack(dest: Path, data: bytes, **options: bool) -> UnpackResult:
    dest.mkdir()
    return unpack_layer(io.BytesIO(data), str(dest), options=UnpackOptions(**options))


def xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


# -- a normal layer --------------------------------------------------------------------------


def test_normal_tree(tmp_path: Path) -> None:
    big = os.urandom(3 * (1 << 20) + 5)  # more than one copy chunk
    data = make_tar(
        dir_("etc", mode=0o750, uid=7, gid=8),
        reg("etc/passwd", b"root:x:0:0\n"),
        reg(
            "usr/bin/ping",
            b"\x7fELF",
            mode=0o4755,
            uid=1234,
            gid=1234,
            pax_headers=xattr_pax({"security.capability": CAPABILITY, "user.foo": b"bar"}),
        ),
        reg("big", big, pax_headers={"mtime": "1700000000.123456789", "atime": "1500000000.5"}),
        symlink("etc/link", "../no/such/place", uid=5, gid=6),
        hardlink("etc/passwd-hard", "etc/passwd"),
        special("dev/fifo", tarfile.FIFOTYPE, mode=0o600),
        special("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666),
        special("dev/sda", tarfile.BLKTYPE, 8, 0, mode=0o660),
        reg(".wh.gone"),
        reg("etc/.wh..wh..opq"),
        dir_("tmp", mode=0o1777),
    )
    dest = tmp_path / "layer"
    result = unpack(dest, data, same_owner=True, allow_devices=True)

    st = os.lstat(dest / "etc")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 7, 8)
    assert st.st_mtime_ns == MTIME * 10**9  # set after its children were written
    ping = os.lstat(dest / "usr/bin/ping")
    assert (stat.S_IMODE(ping.st_mode), ping.st_uid, ping.st_gid) == (0o4755, 1234, 1234)
    assert os.getxattr(dest / "usr/bin/ping", "security.capability") == CAPABILITY
    assert os.getxattr(dest / "usr/bin/ping", "user.foo") == b"bar"
    usr = os.lstat(dest / "usr")  # an implicit parent
    assert (stat.S_IMODE(usr.st_mode), usr.st_uid, usr.st_gid) == (0o755, 0, 0)
    big_st = os.lstat(dest / "big")  # before reading it updates the atime
    assert big_st.st_mtime_ns == 1_700_000_000_123_456_789
    assert big_st.st_atime_ns == 1_500_000_000_500_000_000
    assert (dest / "big").read_bytes() == big
    link = os.lstat(dest / "etc/link")
    assert stat.S_ISLNK(link.st_mode) and (link.st_uid, link.st_gid) == (5, 6)
    assert os.readlink(dest / "etc/link") == "../no/such/place"
    assert link.st_mtime_ns == MTIME * 10**9
    assert os.lstat(dest / "etc/passwd-hard").st_ino == os.lstat(dest / "etc/passwd").st_ino
    assert stat.S_ISFIFO(os.lstat(dest / "dev/fifo").st_mode)
    null = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(os.lstat(dest / "dev/sda").st_mode)
    for wh in (".wh.gone", "etc/.wh..wh..opq"):  # whiteouts stay plain empty files
        st = os.lstat(dest / wh)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777

    assert result.members == 12 and result.data_bytes == len(big) + 15
    assert not result.xattr_sidecar and not result.skipped_devices
    assert not os.path.exists(sidecar_path(str(dest)))
    by_path = {e.path: e for e in result.entries}
    assert by_path[b"big"].digest == xxh(big)
    assert by_path[b"usr/bin/ping"] == Entry(
        b"usr/bin/ping", EntryType.FILE, 0o4755, 1234, 1234, 4, xxh(b"\x7fELF")
    )
    assert by_path[b"usr"] == Entry(b"usr", EntryType.DIR, 0o755, 0, 0)
    assert by_path[b"etc/link"].target == b"../no/such/place"
    assert by_path[b"etc/passwd-hard"].target == b"etc/passwd"
    assert by_path[b"dev/null"].rdev == os.makedev(1, 3)
    assert verify_entries(str(dest), result.entries) == []


def test_names_are_normalized_inside_dest(tmp_path: Path) -> None:
    data = make_tar(reg("/abs/file", b"a"), reg("./rel", b"b"), reg("//x/./y", b"c"))
    dest = tmp_path / "layer"
    result = unpack(dest, data)
    assert (dest / "abs/file").read_bytes() == b"a"
    assert (dest / "rel").read_bytes() == b"b"
    assert (dest / "x/y").read_bytes() == b"c"
    assert [e.path for e in result.entries] == [b"abs", b"abs/file", b"rel", b"x", b"x/y"]


def test_root_entry_sets_dest_metadata(tmp_path: Path) -> None:
    data = make_tar(dir_(".", mode=0o711, uid=3, gid=4), reg("./f", b"x"))
    dest = tmp_path / "layer"
    result = unpack(dest, data)
    st = os.lstat(dest)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o711, 3, 4)
    assert result.entries[0] == Entry(b"", EntryType.DIR, 0o711, 3, 4)
    assert verify_entries(str(dest), result.entries) == []


def test_duplicates(tmp_path: Path) -> None:
    data = make_tar(
        reg("f", b"old"),
        reg("f", b"new", mode=0o600),  # a later file replaces an earlier one
        dir_("d", mode=0o700),
        reg("d/in", b"kept"),
        dir_("d", mode=0o755, uid=9),  # a directory again: only its metadata changes
        symlink("s", "f"),
        dir_("s"),  # a directory replaces a symlink
        reg("f2", b"z"),
        hardlink("f2", "f2"),  # what GNU tar writes for a file named twice: a no-op
    )
    dest = tmp_path / "layer"
    result = unpack(dest, data)
    assert (dest / "f").read_bytes() == b"new"
    assert stat.S_IMODE(os.lstat(dest / "f").st_mode) == 0o600
    assert (dest / "d/in").read_bytes() == b"kept"
    assert os.lstat(dest / "d").st_uid == 9
    assert stat.S_ISDIR(os.lstat(dest / "s").st_mode)
    assert (dest / "f2").read_bytes() == b"z"
    assert sorted(e.path for e in result.entries) == [b"d", b"d/in", b"f", b"f2", b"s"]
    assert verify_entries(str(dest), result.entries) == []


def test_replacing_a_symlink_does_not_write_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"precious")
    data = make_tar(symlink("s", str(outside / "target")), reg("s", b"mine"))
    dest = tmp_path / "layer"
    unpack(dest, data)
    assert (outside / "target").read_bytes() == b"precious"
    assert not os.path.islink(dest / "s") and (dest / "s").read_bytes() == b"mine"


def test_unprivileged_options(tmp_path: Path) -> None:
    data = make_tar(
        reg("suid", b"x", mode=0o6755, uid=1234, gid=1234),
        dir_("sgid-dir", mode=0o2775, uid=1234, gid=1234),
        special("null", tarfile.CHRTYPE, 1, 3),
    )
    dest = tmp_path / "layer"
    result = unpack(dest, data, same_owner=False, allow_devices=False)
    st = os.lstat(dest / "suid")
    assert stat.S_IMODE(st.st_mode) == 0o755 and (st.st_uid, st.st_gid) == (0, 0)
    assert stat.S_IMODE(os.lstat(dest / "sgid-dir").st_mode) == 0o2775
    assert not os.path.lexists(dest / "null")
    assert result.skipped_devices == (b"null",) and not result.owners_applied
    by_path = {e.path: e for e in result.entries}
    assert (by_path[b"suid"].mode, by_path[b"suid"].uid) == (0o6755, 1234)  # the tar's truth
    assert verify_entries(str(dest), result.entries, owners=False) == []
    assert verify_entries(str(dest), result.entries) != []


def _unpack_as_nobody(work: Path, data: bytes) -> dict[str, object]:
    """Unpack into ``work/layer`` from a forked child running as uid/gid 65534, default options."""
    (work / "layer").mkdir(parents=True)
    for p in (work, work / "layer"):
        os.chown(p, NOBODY, NOBODY)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.chdir(work)  # relative paths from here need no access to root's tmp_path parents
            codecs.lookup("ascii")  # nobody cannot import from root's Python installation
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            r = unpack_layer(io.BytesIO(data), "layer", options=UnpackOptions())
            skipped = [p.decode() for p in r.skipped_devices]
            found = {"owners": r.owners_applied, "sidecar": r.xattr_sidecar, "skipped": skipped}
            os.write(wfd, json.dumps(found).encode())
            code = 0
        except BaseException as exc:
            os.write(wfd, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        report: dict[str, object] = json.loads(f.read())
    os.waitpid(pid, 0)
    return report


def test_unpack_without_root(tmp_path: Path) -> None:
    data = make_tar(
        dir_("ro", mode=0o555),  # applied last, so its contents can still be written
        reg("ro/suid", b"x", mode=0o4755, uid=0, gid=0),
        hardlink("ro/link", "ro/suid"),
        reg("t", b"t", pax_headers=xattr_pax({"trusted.x": b"1", "user.y": b"2"})),
        special("ro/null", tarfile.CHRTYPE, 1, 3),
    )
    report = _unpack_as_nobody(tmp_path / "work", data)
    assert report == {"owners": False, "sidecar": True, "skipped": ["ro/null"]}
    dest = tmp_path / "work/layer"
    st = os.lstat(dest / "ro/suid")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_nlink) == (0o755, NOBODY, 2)
    assert stat.S_IMODE(os.lstat(dest / "ro").st_mode) == 0o555
    assert load_sidecar(str(dest)) == {b"t": {"trusted.x": b"1", "user.y": b"2"}}


# -- xattrs ----------------------------------------------------------------------------------


def test_xattrs_to_sidecar(tmp_path: Path) -> None:
    data = make_tar(
        dir_("d", pax_headers=xattr_pax({"user.dir": b"D"})),
        reg("d/f", b"x", pax_headers=xattr_pax({"security.capability": CAPABILITY})),
        hardlink("d/g", "d/f"),
        symlink("l", "d", pax_headers=xattr_pax({"trusted.t": b"T"})),
        reg(
            "lib",
            b"",
            # libarchive's form: percent-encoded name, base64 value without padding
            pax_headers={"LIBARCHIVE.xattr.user.a%3Db": base64.b64encode(b"v1").decode()[:-1]},
        ),
    )
    dest = tmp_path / "layer"
    result = unpack(dest, data, xattrs_to_sidecar=True)
    assert result.xattr_sidecar
    assert os.listxattr(dest / "d/f") == [] and os.listxattr(dest / "d") == []
    assert load_sidecar(str(dest)) == {
        b"d": {"user.dir": b"D"},
        b"d/f": {"security.capability": CAPABILITY},
        b"d/g": {"security.capability": CAPABILITY},
        b"l": {"trusted.t": b"T"},
        b"lib": {"user.a=b": b"v1"},
    }


def test_refused_xattr_moves_the_whole_layer_to_the_sidecar(tmp_path: Path) -> None:
    data = make_tar(
        reg("f", b"x", pax_headers=xattr_pax({"user.f": b"F"})),
        symlink("l", "f", pax_headers=xattr_pax({"user.l": b"L"})),  # EPERM: user.* on a symlink
    )
    dest = tmp_path / "layer"
    result = unpack(dest, data)
    assert result.xattr_sidecar
    assert load_sidecar(str(dest)) == {b"f": {"user.f": b"F"}, b"l": {"user.l": b"L"}}
    assert os.getxattr(dest / "f", "user.f") == b"F"  # set before the switch, and kept


def test_union_filesystem_xattrs_are_dropped(tmp_path: Path) -> None:
    attrs = {"trusted.overlay.opaque": b"y", "user.layerfs.origin": b"1", "user.ok": b"1"}
    data = make_tar(dir_("d", pax_headers=xattr_pax(attrs)))
    dest = tmp_path / "layer"
    unpack(dest, data)
    assert os.listxattr(dest / "d") == ["user.ok"]


# -- sparse files ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_member_keeps_holes(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    size = 64 << 20
    with open(src / "sparse", "wb") as f:
        f.truncate(size)
        f.seek(1 << 20)
        f.write(b"A" * 5000)
        f.seek(40 << 20)
        f.write(b"B" * 70000)
    content = (src / "sparse").read_bytes()
    tar = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", f"--format={fmt}", "--sparse", "-cf", str(tar), "-C", str(src), "sparse"],
        check=True,
    )
    assert tar.stat().st_size < 1 << 20  # the tar itself stores only the data
    dest = tmp_path / "layer"
    result = unpack(dest, tar.read_bytes())
    assert (dest / "sparse").read_bytes() == content
    assert os.lstat(dest / "sparse").st_blocks * 512 < 1 << 20  # the holes stayed holes
    (entry,) = result.entries
    assert (entry.size, entry.digest) == (size, xxh(content))
    assert verify_entries(str(dest), result.entries) == []


# -- the manifest ----------------------------------------------------------------------------


def test_entries_file_round_trip(tmp_path: Path) -> None:
    entries = [
        Entry(b"", EntryType.DIR, 0o755, 0, 0),
        Entry(b"a dir/new\nline %20", EntryType.FILE, 0o4755, 1, 2, 3, "ab" * 16),
        Entry(b"bad\xffutf8", EntryType.SYMLINK, 0o777, 0, 0, target=b"- target \xfe"),
        Entry(b"h", EntryType.HARDLINK, 0o644, 0, 0, 3, "cd" * 16, target=b"a dir/x"),
        Entry(b"dev/null", EntryType.CHAR, 0o666, 0, 0, rdev=os.makedev(1, 3)),
    ]
    path = str(tmp_path / "entries")
    write_entries(path, entries)
    assert read_entries(path) == entries
    with open(path, "a") as f:
        f.write("f 644 0 0\n")
    with pytest.raises(EntriesError, match=r":7: malformed entry"):
        read_entries(path)


def test_verify_entries_names_every_change(tmp_path: Path) -> None:
    data = make_tar(
        reg("a", b"same size"),
        reg("b", b"b"),
        reg("c", b"c"),
        symlink("l", "a"),
        reg("h", b"h"),
        hardlink("h2", "h"),
    )
    dest = tmp_path / "layer"
    result = unpack(dest, data)
    (dest / "a").write_bytes(b"SAME SIZE")
    os.chmod(dest / "b", 0o600)
    os.unlink(dest / "c")
    (dest / "new").write_bytes(b"")
    os.unlink(dest / "l")
    os.symlink("b", dest / "l")
    os.unlink(dest / "h2")
    shutil.copy(dest / "h", dest / "h2")
    problems = verify_entries(str(dest), result.entries)
    assert problems == [
        f"/a: content changed (xxh3-128 {xxh(b'same size')} -> {xxh(b'SAME SIZE')})",
        "/b: mode changed from 0644 to 0600",
        "/c: missing",
        "/l: symlink target changed from b'a' to b'b'",
        "/h2: no longer a hard link to /h",
        "/new: not in the manifest",
    ]


# -- malformed streams and misuse ------------------------------------------------------------


def test_stream_is_read_to_the_end(tmp_path: Path) -> None:
    stream = io.BytesIO(make_tar(reg("f", b"x")) + b"\0" * 4096)
    (tmp_path / "layer").mkdir()
    unpack_layer(stream, str(tmp_path / "layer"), options=UnpackOptions())
    assert stream.read() == b""


def test_empty_archive(tmp_path: Path) -> None:
    assert unpack(tmp_path / "layer", make_tar()).entries == ()


def test_stream_ending_on_a_header_boundary_is_complete(tmp_path: Path) -> None:
    tar = make_tar(reg("one", b"1"), reg("two", b"2"))
    assert unpack(tmp_path / "layer", tar[:1024]).members == 1  # as Go's archive/tar reads it


def _pax_header_claiming(size: int) -> bytes:
    """A PAX extended header block that announces ``size`` bytes of records."""
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, size
    return ti.tobuf(tarfile.USTAR_FORMAT)


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda t: b"", "not a readable tar"),
        (lambda t: b"garbage" * 100, "not a readable tar"),
        (lambda t: t[:1000], "tar member 'one': unexpected end of data"),
        (lambda t: t[:1536] + b"\1" * 512 + t[2048:], "after member 'one'.*damaged tar header"),
        (lambda t: t[:2560] + b"x" * 100, "after member 'two'.*truncated header"),
        (lambda t: t[:2560] + _pax_header_claiming(1 << 30), "1073741824-byte extended header"),
    ],
    ids=["empty", "garbage", "truncated-data", "bad-checksum", "truncated-header", "huge-pax"],
)
def test_malformed_stream(tmp_path: Path, mangle: Callable[[bytes], bytes], match: str) -> None:
    tar = make_tar(reg("one", b"1" * 600), reg("two", b"2"), reg("three", b"3"))
    with pytest.raises(UnpackError, match=match):
        unpack(tmp_path / "layer", mangle(tar))


def test_dest_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    (tmp_path / "layer/x").write_bytes(b"")
    with pytest.raises(ValueError, match="not empty"):
        unpack_layer(io.BytesIO(make_tar()), str(tmp_path / "layer"), options=UnpackOptions())


# -- hostile tars ----------------------------------------------------------------------------


def _hostile(outside: str) -> dict[str, tuple[str, list[Member]]]:
    """Case id -> (the member that must be named, the members)."""
    long_path = "/".join(["d" * 200] * 21)
    return {
        "dotdot": ("../outside/evil", [reg("../outside/evil", b"x")]),
        "dotdot-inside": ("a/../../outside/evil", [reg("a/../../outside/evil", b"x")]),
        "symlink-parent": ("link/evil", [symlink("link", outside), reg("link/evil", b"x")]),
        "symlink-parent-relative": (
            "link/evil",
            [symlink("link", "../outside"), reg("link/evil", b"x")],
        ),
        "symlink-parent-root": (
            f"d/link{outside}/evil",
            [dir_("d"), symlink("d/link", "/"), reg(f"d/link{outside}/evil", b"x")],
        ),
        "symlink-parent-dir-entry": ("link/sub", [symlink("link", outside), dir_("link/sub")]),
        "hardlink-outside": ("h", [hardlink("h", "../outside/secret")]),
        "hardlink-absolute": ("h", [hardlink("h", f"{outside}/secret")]),
        "hardlink-through-symlink": (
            "h",
            [symlink("link", outside), hardlink("h", "link/secret")],
        ),
        "hardlink-missing": ("h", [hardlink("h", "nothere")]),
        "hardlink-to-dir": ("h", [dir_("d"), hardlink("h", "d")]),
        "replace-hardlink-target": (
            "f",
            [reg("f", b"1"), hardlink("h", "f"), symlink("f", f"{outside}/secret")],
        ),
        "whiteout-alone": (".wh.", [reg(".wh.")]),
        "whiteout-symlink": (".wh.x", [symlink(".wh.x", outside)]),
        "whiteout-as-parent": (".wh.d/f", [reg(".wh.d/f", b"x")]),
        "root-is-file": (".", [reg(".", b"x")]),
        "root-is-symlink": ("./", [symlink("./", outside)]),
        "file-parent": ("f/x", [reg("f", b"1"), reg("f/x", b"2")]),
        "nul-in-name": ("a\0b", [reg("a", pax_headers={"path": "a\0b"})]),
        "long-component": ("x" * 256, [reg("x" * 256, b"")]),
        "long-path": (long_path, [reg(long_path, b"")]),
        "dir-replaced-by-symlink": (
            "d",
            [dir_("d"), symlink("d", outside), reg("d/evil", b"x")],
        ),
        "dir-replaced-by-file": ("d", [dir_("d"), reg("d/f"), reg("d", b"x")]),
        "sparse-overlap": (
            "s",
            [
                reg(
                    "s",
                    b"x" * 20,
                    pax_headers={"GNU.sparse.map": "0,10,5,10", "GNU.sparse.size": "99"},
                )
            ],
        ),
        "sparse-overread": (
            "s",
            [
                reg(
                    "s",
                    b"x" * 20,
                    pax_headers={"GNU.sparse.map": "0,5000", "GNU.sparse.size": "5000"},
                )
            ],
        ),
        "bad-base64-xattr": ("f", [reg("f", pax_headers={"LIBARCHIVE.xattr.user.x": "%%%"})]),
        "uid-minus-one": ("f", [reg("f", pax_headers={"uid": "4294967295"})]),
        "symlink-nul-target": ("s", [symlink("s", "x", pax_headers={"linkpath": "a\0b"})]),
        "unsupported-type": ("v", [Member(_info("v", b"V", 0o644))]),
    }


HOSTILE_IDS = sorted(_hostile("/x"))


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, int, str, str]]:
    """Everything under ``root`` except ``skip``: mode, owner, size, contents, link text."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = os.lstat(p)
            body = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            out[str(p)] = (st.st_mode, st.st_uid, st.st_size, body, link)
    return out


@pytest.mark.parametrize("case", HOSTILE_IDS)
def test_hostile_tar_is_refused(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    member, members = _hostile(str(outside))[case]
    dest = tmp_path / "layer"
    before = _snapshot(tmp_path, dest)
    with pytest.raises(UnpackError) as info:
        unpack(dest, make_tar(*members))
    assert f"tar member {member[:160]!r}" in str(info.value)
    assert _snapshot(tmp_path, dest) == before
    assert not os.path.lexists(sidecar_path(str(dest)))


class _TamperingStream(io.RawIOBase):
    """A tar stream that runs ``tamper`` once, when the reader gets past ``at`` bytes."""

    def __init__(self, data: bytes, at: int, tamper: Callable[[], None]) -> None:
        self._data = io.BytesIO(data)
        self._at = at
        self._tamper: Callable[[], None] | None = tamper

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = self._data.readinto(buf)
        if self._tamper is not None and self._data.tell() > self._at:
            self._tamper()
            self._tamper = None
        return n


@pytest.mark.parametrize("swap", ["existing-dir", "new-dir"])
def test_symlinks_planted_meanwhile_are_not_followed(tmp_path: Path, swap: str) -> None:
    """Even a concurrent writer in dest cannot redirect writes: walking never follows symlinks."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "layer"
    dest.mkdir()

    def tamper() -> None:
        if swap == "existing-dir":
            os.rename(dest / "a", dest / "a-moved")
            os.symlink(outside, dest / "a")
        else:
            os.symlink(outside, dest / "b")

    data = make_tar(dir_("a"), reg("a/big", b"x" * 200_000), reg("a/f", b"1"), reg("b/f", b"2"))
    before = _snapshot(tmp_path, dest)
    with io.BufferedReader(_TamperingStream(data, 100_000, tamper), 4096) as stream:
        try:
            unpack_layer(stream, str(dest), options=UnpackOptions())
        except UnpackError as exc:
            assert "tar member 'b/f'" in str(exc)
    assert _snapshot(tmp_path, dest) == before
    if swap == "existing-dir":
        assert (dest / "a-moved/f").read_bytes() == b"1"
