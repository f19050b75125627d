"""Per-entry manifest of an unpacked layer: what the tar said, for fsck to check the tree against.

The unpacker records one `Entry` per object it made (tar members and the parent directories it had
to create), hashing regular files while it streams them. `verify_entries` re-reads the tree and
names every entry that changed, vanished or appeared.

An entry holds what the layer *means*, not what the disk happens to hold: the tar's owners and its
full mode, setuid bits included. When the unpack did not apply owners (not root), pass
``owners=False`` to `verify_entries` so that owners and setuid/setgid bits are not compared.

A hard link is recorded with its target's type-independent metadata copied from the target's entry
and is verified by inode identity with its target (whose own entry checks the contents).

File format (`write_entries` / `read_entries`), UTF-8 text, one entry a line after a header line::

    layerfs-entries 1
    <type> <mode octal> <uid> <gid> <size> <digest|-> <rdev> <path> <target|->

Fields are separated by one space. ``path`` is the entry's path below the layer root with a leading
``/`` (the root itself is ``/``); ``path`` and ``target`` are percent-encoded bytes, so any name
round-trips. ``target`` is meaningful for symlinks (the link text) and hard links (``/``-prefixed
path of the link target); ``digest`` is the xxh3-128 hex digest of a regular file's contents.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

import xxhash

__all__ = [
    "EntriesError",
    "Entry",
    "EntryType",
    "hash_file",
    "read_entries",
    "verify_entries",
    "write_entries",
]

_HEADER = "layerfs-entries 1"
_CHUNK = 1 << 20
_SUID_SGID = stat.S_ISUID | stat.S_ISGID


class EntryType(enum.StrEnum):
    """The kind of a layer entry; the value is its one-letter code in the manifest file."""

    FILE = "f"
    DIR = "d"
    SYMLINK = "l"
    HARDLINK = "h"
    FIFO = "p"
    CHAR = "c"
    BLOCK = "b"


# What lstat() says each recorded type must be on disk (a hard link is a second name of its target).
_S_IFMT_OF = {
    EntryType.FILE: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.FIFO: stat.S_IFIFO,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
}
_TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


class EntriesError(ValueError):
    """A manifest file cannot be read."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One object of an unpacked layer, as the layer defines it.

    ``path`` is relative to the layer root without a leading slash (``b""`` is the root);
    ``mode`` holds the permission bits including setuid/setgid/sticky; ``size`` and ``digest``
    (xxh3-128 hex) describe regular files; ``target`` is a symlink's text or a hard link's
    target path; ``rdev`` is a device's ``os.makedev(major, minor)``.
    """

    path: bytes
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int = 0
    digest: str = ""
    target: bytes = b""
    rdev: int = 0


def _show(path: bytes) -> str:
    """A path for messages: absolute within the layer, undecodable bytes escaped."""
    return "/" + path.decode("utf-8", "backslashreplace")


def _dev(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _encode_line(e: Entry) -> str:
    target = b"/" + e.target if e.type is EntryType.HARDLINK else e.target
    return (
        f"{e.type.value} {e.mode:o} {e.uid} {e.gid} {e.size} {e.digest or '-'} {e.rdev} "
        f"{quote_from_bytes(b'/' + e.path, safe='/')} "
        f"{quote_from_bytes(target, safe='/') if target else '-'}\n"
    )


def write_entries(path: str, entries: Iterable[Entry]) -> None:
    """Write a manifest file atomically (temp file, fsync, rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(_HEADER + "\n")
        f.writelines(_encode_line(e) for e in entries)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _decode_line(line: str) -> Entry:
    fields = line.rstrip("\n").split(" ")
    if len(fields) != 9:
        raise ValueError(f"expected 9 fields, found {len(fields)}")
    code, mode, uid, gid, size, digest, rdev, path, target = fields
    etype = EntryType(code)
    raw_path = unquote_to_bytes(path)
    if not raw_path.startswith(b"/"):
        raise ValueError("path does not start with '/'")
    raw_target = b""
    if etype in (EntryType.SYMLINK, EntryType.HARDLINK):
        raw_target = unquote_to_bytes(target)
        if etype is EntryType.HARDLINK:
            if not raw_target.startswith(b"/"):
                raise ValueError("hard link target does not start with '/'")
            raw_target = raw_target[1:]
    return Entry(
        path=raw_path[1:],
        type=etype,
        mode=int(mode, 8),
        uid=int(uid),
        gid=int(gid),
        size=int(size),
        digest="" if digest == "-" else digest,
        target=raw_target,
        rdev=int(rdev),
    )


def read_entries(path: str) -> list[Entry]:
    """Read a manifest file written by `write_entries`; `EntriesError` names the bad line."""
    try:
        with open(path, encoding="ascii") as f:
            if f.readline().rstrip("\n") != _HEADER:
                raise EntriesError(f"{path}: not a layerfs entries file (bad header line)")
            out = []
            for lineno, line in enumerate(f, start=2):
                try:
                    out.append(_decode_line(line))
                except ValueError as exc:
                    raise EntriesError(f"{path}:{lineno}: malformed entry: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise EntriesError(f"{path}: not ASCII text: {exc}") from exc
    return out


def hash_file(fd: int) -> str:
    """xxh3-128 hex digest of everything readable from ``fd`` (from its current offset)."""
    h = xxhash.xxh3_128()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
    return h.hexdigest()


def _walk(dest_fd: int) -> dict[bytes, os.stat_result]:
    """lstat of every object below the directory ``dest_fd``, by relative path; not following
    symlinks, iterative so that no tree is too deep for it."""
    found: dict[bytes, os.stat_result] = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        fd = os.open(rel or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dest_fd)
        try:
            with os.scandir(fd) as it:
                for d in it:
                    path = rel + b"/" + os.fsencode(d.name) if rel else os.fsencode(d.name)
                    st = d.stat(follow_symlinks=False)
                    found[path] = st
                    if stat.S_ISDIR(st.st_mode):
                        todo.append(path)
        finally:
            os.close(fd)
    return found


def _compare(
    dest_fd: int, e: Entry, st: os.stat_result, owners: bool, by_path: dict[bytes, os.stat_result]
) -> list[str]:
    """Problems of one entry against its lstat ``st`` (empty when it matches)."""
    where = _show(e.path)
    if e.type is EntryType.HARDLINK:
        target = by_path.get(e.target)
        if target is None or (target.st_dev, target.st_ino) != (st.st_dev, st.st_ino):
            return [f"{where}: no longer a hard link to {_show(e.target)}"]
        return []
    fmt = stat.S_IFMT(st.st_mode)
    if fmt != _S_IFMT_OF[e.type]:
        want = _TYPE_NAMES[_S_IFMT_OF[e.type]]
        return [f"{where}: type changed from {want} to {_TYPE_NAMES.get(fmt, oct(fmt))}"]
    problems = []
    mode, want_mode = stat.S_IMODE(st.st_mode), e.mode
    if not owners and e.type is not EntryType.DIR:
        mode, want_mode = mode & ~_SUID_SGID, want_mode & ~_SUID_SGID
    if e.type is not EntryType.SYMLINK and mode != want_mode:
        problems.append(f"{where}: mode changed from {want_mode:04o} to {mode:04o}")
    if owners and (st.st_uid, st.st_gid) != (e.uid, e.gid):
        problems.append(f"{where}: owner changed from {e.uid}:{e.gid} to {st.st_uid}:{st.st_gid}")
    if e.type is EntryType.FILE:
        if st.st_size != e.size:
            problems.append(f"{where}: size changed from {e.size} to {st.st_size}")
        else:
            fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dest_fd)
            try:
                digest = hash_file(fd)
            finally:
                os.close(fd)
            if digest != e.digest:
                problems.append(f"{where}: content changed (xxh3-128 {e.digest} -> {digest})")
    elif e.type is EntryType.SYMLINK:
        text = os.readlink(e.path, dir_fd=dest_fd)
        if text != e.target:
            problems.append(f"{where}: symlink target changed from {e.target!r} to {text!r}")
    elif e.type in (EntryType.CHAR, EntryType.BLOCK) and st.st_rdev != e.rdev:
        problems.append(f"{where}: device changed from {_dev(e.rdev)} to {_dev(st.st_rdev)}")
    return problems


def verify_entries(dest: str, entries: Sequence[Entry], *, owners: bool = True) -> list[str]:
    """Compare the tree at ``dest`` with its manifest; one human-readable line per problem.

    Reports every entry whose type, mode, owner (unless ``owners`` is false), size, contents,
    symlink target, device number or hard-link identity changed, every entry that vanished, and
    every object present in the tree that the manifest does not list. An empty list means the tree
    is intact. Directory timestamps are not compared (they are not content).
    """
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        by_path = _walk(dest_fd)
        by_path[b""] = os.stat(dest_fd)
        expected = {e.path: e for e in entries}
        problems = []
        for e in entries:
            st = by_path.get(e.path)
            if st is None:
                problems.append(f"{_show(e.path)}: missing")
            else:
                problems.extend(_compare(dest_fd, e, st, owners, by_path))
        problems.extend(
            f"{_show(path)}: not in the manifest"
            for path in by_path
            if path and path not in expected
        )
    finally:
        os.close(dest_fd)
    return problems
