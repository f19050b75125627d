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
path of the link target); ``digest`` is a regular file's `ContentHash` digest: xxh3-128 of its
contents up to 1 GiB, beyond that a digest whose cost does not grow with the length of its holes.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote_from_bytes, unquote_to_bytes

import xxhash

__all__ = [
    "ContentHash",
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

# Files up to this size are digested as plain xxh3-128 of their bytes, holes hashed as zeros
# (hashing 1 GiB of zeros takes well under a second); larger ones by `_BLOCK` blocks, so that a
# hole of any length costs the same. The choice depends on the size alone, so that the unpacker
# (which knows the sparse map) and fsck (which sees whatever extents the filesystem reports)
# always digest a file the same way.
_PLAIN_LIMIT = 1 << 30
_BLOCK = 1 << 16
_ZERO_BLOCK = bytes(_BLOCK)
_RUN = struct.Struct("<QQ")


class ContentHash:
    """The content digest of a regular file of ``size`` bytes, fed in order by `update` (data)
    and `zeros` (a hole, or zeros known without reading them).

    Up to `_PLAIN_LIMIT` bytes the digest is xxh3-128 of the contents. Beyond it, the file is cut
    into aligned `_BLOCK`-byte blocks; the maximal runs of all-zero whole blocks are recorded as
    (offset, length) and the other bytes are hashed in order, so a run costs the same whatever
    its length and whether it is a hole or written zeros. The digest is then xxh3-128 of a tag,
    the digest of those bytes, the digest of the runs and the size.
    """

    __slots__ = ("_data", "_partial", "_plain", "_pos", "_run_start", "_runs", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._plain = size <= _PLAIN_LIMIT
        self._data = xxhash.xxh3_128()
        self._runs = xxhash.xxh3_128()
        self._partial = bytearray()  # the start of the current block, while it is incomplete
        self._pos = 0  # offset of the end of what the blocks so far covered
        self._run_start = -1  # offset of the open run of zero blocks, -1 when none is open

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._plain:
            self._data.update(data)
            return
        buf = bytes(data) if isinstance(data, memoryview) else data  # startswith needs bytes
        start = 0
        if self._partial:
            take = min(_BLOCK - len(self._partial), len(buf))
            self._partial += buf[:take]
            start = take
            if len(self._partial) < _BLOCK:
                return
            self._blocks(self._partial, 0, _BLOCK)
            self._partial = bytearray()
        end = start + (len(buf) - start) // _BLOCK * _BLOCK
        self._blocks(buf, start, end)
        self._partial += buf[end:]

    def _blocks(self, buf: bytes | bytearray, start: int, end: int) -> None:
        """Take the whole blocks ``buf[start:end]``, hashing runs of data blocks in one call."""
        view = memoryview(buf)
        data_from = start
        for i in range(start, end, _BLOCK):
            if buf.startswith(_ZERO_BLOCK, i):  # a memcmp, without copying the block
                self._data.update(view[data_from:i])
                data_from = i + _BLOCK
                if self._run_start < 0:
                    self._run_start = self._pos + i - start
            elif self._run_start >= 0:
                self._close_run(self._pos + i - start)
        self._data.update(view[data_from:end])
        self._pos += end - start

    def _close_run(self, end: int) -> None:
        self._runs.update(_RUN.pack(self._run_start, end - self._run_start))
        self._run_start = -1

    def zeros(self, n: int) -> None:
        if self._plain:
            while n > 0:
                self._data.update(memoryview(_ZERO_BLOCK)[: min(n, _BLOCK)])
                n -= _BLOCK
            return
        if self._partial:
            fill = min(n, _BLOCK - len(self._partial))
            self.update(_ZERO_BLOCK[:fill])
            n -= fill
        whole = n // _BLOCK * _BLOCK
        if whole:
            if self._run_start < 0:
                self._run_start = self._pos
            self._pos += whole
        if n - whole:
            self._partial += _ZERO_BLOCK[: n - whole]

    def hexdigest(self) -> str:
        """The digest; once everything was fed (`ValueError` when that is not ``size`` bytes)."""
        if self._plain:
            return self._data.hexdigest()
        if self._pos + len(self._partial) != self._size:
            raise ValueError(f"fed {self._pos + len(self._partial)} bytes of {self._size}")
        if self._run_start >= 0:
            self._close_run(self._pos)
        self._data.update(self._partial)  # a final partial block is always hashed as data
        self._partial = bytearray()
        return xxhash.xxh3_128_hexdigest(
            b"layerfs-blocks\0"
            + self._data.digest()
            + self._runs.digest()
            + self._size.to_bytes(8, "little")
        )


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
    """The `ContentHash` digest of the whole regular file ``fd``, holes skipped unread."""
    size = os.fstat(fd).st_size
    h = ContentHash(size)
    pos = 0
    while pos < size:
        try:
            data_at = os.lseek(fd, pos, os.SEEK_DATA)
            hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                data_at = hole_at = size
            elif exc.errno == errno.EINVAL:  # no SEEK_DATA here: read it all
                data_at, hole_at = pos, size
            else:
                raise
        data_at, hole_at = min(data_at, size), min(hole_at, size)
        h.zeros(data_at - pos)
        pos = data_at
        while pos < hole_at:
            data = os.pread(fd, min(_CHUNK, hole_at - pos), pos)
            if not data:  # shrunk since its fstat: it cannot match any digest
                return "truncated"
            h.update(data)
            pos += len(data)
    return h.hexdigest()


def _set_mode(dest_fd: int, path: bytes, mode: int) -> int:
    """chmod ``path`` (below ``dest_fd``, never following a symlink) to ``mode``; its old mode."""
    fd = os.open(path or b".", os.O_PATH | os.O_NOFOLLOW, dir_fd=dest_fd)
    try:
        old = stat.S_IMODE(os.fstat(fd).st_mode)
        # An O_PATH descriptor cannot be fchmod()ed, but its /proc link can be chmod()ed.
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)
    return old


def _must_open_up(st: os.stat_result, bits: int) -> bool:
    """Whether the checker must add ``bits`` to an object's mode to read it: an unprivileged
    store (unpacked without owners) owns its files, and keeps modes such as 0000 that stop even
    their owner, whereas root reads through any mode."""
    uid = os.geteuid()
    return uid != 0 and st.st_uid == uid and st.st_mode & bits != bits


_DIR_BITS = stat.S_IRUSR | stat.S_IXUSR


def _walk(
    dest_fd: int, found: dict[bytes, os.stat_result], opened: list[tuple[bytes, int]]
) -> dict[bytes, str]:
    """lstat of every object below the directory ``dest_fd`` into ``found`` (``found[b""]`` is
    its own stat), by relative path; not following symlinks, iterative so that no tree is too
    deep for it. Directories it must open up are recorded in ``opened`` with their old modes,
    parents first, for the caller to restore; those it cannot read are returned with the error."""
    unreadable: dict[bytes, str] = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        try:
            if _must_open_up(found[rel], _DIR_BITS):
                old = _set_mode(dest_fd, rel, stat.S_IMODE(found[rel].st_mode) | _DIR_BITS)
                opened.append((rel, old))
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
        except OSError as exc:
            unreadable[rel] = exc.strerror or str(exc)
    return unreadable


def _hash_entry(dest_fd: int, e: Entry, st: os.stat_result) -> str:
    """The content digest of a regular file, opening up its mode for the time it takes if the
    checker is its unprivileged owner and the mode stops it."""
    old = -1
    if _must_open_up(st, stat.S_IRUSR):
        old = _set_mode(dest_fd, e.path, stat.S_IMODE(st.st_mode) | stat.S_IRUSR)
    try:
        fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dest_fd)
        try:
            return hash_file(fd)
        finally:
            os.close(fd)
    finally:
        if old >= 0:
            _set_mode(dest_fd, e.path, old)


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
            digest = _hash_entry(dest_fd, e, st)
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
    # O_PATH: the layer root's own mode may deny reading it (`_walk` opens it up if it may).
    dest_fd = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    opened: list[tuple[bytes, int]] = []
    problems: list[str] = []
    try:
        by_path = {b"": os.stat(dest_fd)}
        unreadable = _walk(dest_fd, by_path, opened)
        problems += [f"{_show(p)}: cannot be read: {why}" for p, why in unreadable.items()]
        expected = {e.path: e for e in entries}
        for e in entries:
            st = by_path.get(e.path)
            if st is None:
                if not _below(e.path, unreadable):  # else its directory was reported instead
                    problems.append(f"{_show(e.path)}: missing")
                continue
            try:
                problems.extend(_compare(dest_fd, e, st, owners, by_path))
            except OSError as exc:  # one entry that cannot be checked must not stop the others
                problems.append(f"{_show(e.path)}: cannot be checked: {exc.strerror or exc}")
        problems.extend(
            f"{_show(path)}: not in the manifest"
            for path in by_path
            if path and path not in expected
        )
    finally:
        for path, mode in reversed(opened):  # children first: a parent may be 0000 again
            try:
                _set_mode(dest_fd, path, mode)
            except OSError as exc:
                problems.append(f"{_show(path)}: mode {mode:04o} not restored: {exc.strerror}")
        os.close(dest_fd)
    return problems


def _below(path: bytes, dirs: dict[bytes, str]) -> bool:
    """Whether ``path`` lies below one of ``dirs`` (relative paths, ``b""`` the root)."""
    if b"" in dirs:
        return True
    parent = path
    while b"/" in parent:
        parent = parent.rpartition(b"/")[0]
        if parent in dirs:
            return True
    return False
