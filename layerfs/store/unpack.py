"""Safe extraction of one uncompressed layer tar into an empty directory.

`unpack_layer` reads the tar as a stream (it never seeks) and recreates it below ``dest``, which
becomes one read-only lower directory of the union filesystem. OCI whiteouts (``.wh.NAME``,
``.wh..wh..opq``) are extracted as the plain files they are: the filesystem reads them natively.

The tar is not trusted: each member's name, type, link target, ids, xattrs and sparse map are
checked before it is written, and anything hostile raises `UnpackError` naming the member. On
failure ``dest`` is left half-filled: the caller removes it (and ``sidecar_path(dest)``, which is
only ever written once everything else succeeded).

How escapes are prevented: every directory is reached by ``openat`` from the root, one component
at a time, with ``O_NOFOLLOW | O_DIRECTORY``; every object is created by name relative to its
parent's descriptor (``O_EXCL``, ``mknodat``, ``symlinkat``, ``linkat`` without following). A
symlink is therefore never followed while the layer is written, whatever earlier members made. The
in-memory manifest of what this unpack created is the authority for what exists: ``dest`` must be
empty at the start, so hard-link targets are checked against it, not against the disk.

Decisions (where tar implementations differ):

- Names: normalized by `layerfs.store.tarread` (GNU tar, umoci); ``..`` is refused. The root
  (``.``, ``/``) must be a directory; its metadata is applied to ``dest``.
- Duplicates: a later member replaces an earlier non-directory, as tar does; a directory over a
  directory only updates its metadata; anything replacing a directory, or replacing a file that an
  earlier hard link points to, is refused. A hard link to its own name is a no-op (GNU tar writes
  those for a file named twice).
- Hard links must point to a non-directory created earlier in this layer, by its exact path; the
  link member's own mode, owner and times are ignored (GNU tar), it shares its target's inode.
- Missing parent directories are created 0755 root:root (umoci); their mtime is left alone.
- Whiteouts: ``.wh.`` naming nothing, a whiteout that is not a regular file and a ``.wh.`` name used
  as a directory are refused.
- Devices: created only with ``allow_devices`` (default: running as root); otherwise skipped and
  listed in `UnpackResult.skipped_devices`, leaving no entry in the manifest.
- Owners: applied (numeric uid/gid; names ignored) only with ``same_owner`` (default: root, like
  GNU tar's ``--same-owner``). Without it nothing is chowned and setuid/setgid bits are removed from
  non-directories on disk; the manifest keeps the tar's owners and modes.
- Xattrs: read from PAX headers by `layerfs.store.tarread` (which drops the union filesystem's
  own namespaces). If the filesystem
  refuses an xattr as unsupported (ENOTSUP, or EPERM/EACCES such as ``trusted.*`` without root or
  ``user.*`` on a symlink), or ``xattrs_to_sidecar`` is set, the whole layer's xattrs go to the
  sidecar (`layerfs.fs.sidecar`); the ones already set on files stay, with the same values.
- Times: mtime and atime (PAX, nanoseconds; atime defaults to mtime) on everything but hard links;
  directories get theirs last, deepest first, after their contents are written.
- Errors: an ``OSError`` that is the machine's trouble (ENOSPC, EDQUOT, EIO, EROFS, EMFILE, ENFILE,
  ENOMEM) propagates as itself with a note naming the member; any other is an `UnpackError`.
- Stream: read to its end (`layerfs.store.tarread.read_members`), so that a verifying reader
  around it sees every byte. A damaged header is an error, never an end.

Caveats: see `layerfs.store.tarread` for header parsing. A GNU sparse map's size is bounded
only by the stream. GNU ``SCHILY.acl.*`` text ACLs and file flags are ignored (Go-built layers
carry ACLs as ``system.posix_acl_*`` xattrs, which are kept). Sparse members are written with
holes; regular members are written densely even when they hold zeros. Above 1 GiB a file's
digest records runs of zero blocks by position (`entries.ContentHash`), so a hole of any length
costs constant time at unpack and in fsck. A character device 0:0 is created as such, and
the union filesystem reads it as an overlay whiteout, as kernel overlayfs would.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import tarfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from layerfs.fs.sidecar import XattrMap, sidecar_path, write_sidecar
from layerfs.store.entries import Entry, EntryType
from layerfs.store.filedata import write_dense, write_sparse
from layerfs.store.tarread import (
    PATH_MAX,
    Refused,
    TarReader,
    UnpackError,
    member_path,
    member_xattrs,
    quote_member,
    read_members,
    times_ns,
)

__all__ = ["UnpackError", "UnpackOptions", "UnpackResult", "unpack_layer"]

logger = logging.getLogger(__name__)

_MAX_DIR_FDS = 128
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SUID_SGID = stat.S_ISUID | stat.S_ISGID
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged" to chown
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)
# The filesystem cannot hold this xattr here: switch the layer to the sidecar.
_SIDECAR_ERRNOS = frozenset({errno.ENOTSUP, errno.EPERM, errno.EACCES})
# Member types by tarfile typeflag (tarfile already turned old-style "file/" into DIRTYPE).
_KINDS = {
    **dict.fromkeys(tarfile.REGULAR_TYPES, EntryType.FILE),
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.FIFOTYPE: EntryType.FIFO,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
}


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True, slots=True)
class UnpackOptions:
    """How to unpack: what to keep of owners and devices, where xattrs go."""

    same_owner: bool = field(default_factory=_is_root)
    allow_devices: bool = field(default_factory=_is_root)
    xattrs_to_sidecar: bool = False


@dataclass(frozen=True, slots=True)
class UnpackResult:
    """What one unpack made: counts, the per-entry manifest and where its xattrs went."""

    members: int
    data_bytes: int
    entries: tuple[Entry, ...]
    owners_applied: bool
    xattr_sidecar: bool
    skipped_devices: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class _Attrs:
    """What is applied to an object once it is made (to a directory: after its contents)."""

    member: str
    mode: int  # as applied on disk
    uid: int
    gid: int
    times: tuple[int, int] | None
    xattrs: dict[str, bytes]


def _check_id(value: int, what: str) -> int:
    if not 0 <= value <= _ID_MAX:
        raise Refused(f"{what} {value} out of range")
    return value


class _Layer:
    """The state of one extraction: open directories, the manifest, deferred metadata."""

    def __init__(self, root_fd: int, options: UnpackOptions) -> None:
        self.root_fd = root_fd
        self.same_owner = options.same_owner
        self.allow_devices = options.allow_devices
        self.sidecar = options.xattrs_to_sidecar
        self.entries: dict[bytes, Entry] = {}
        self.link_targets: set[bytes] = set()
        self.dirs: dict[bytes, _Attrs] = {}
        self.xattrs: XattrMap = {}
        self.fds: OrderedDict[bytes, int] = OrderedDict()
        self.data_bytes = 0
        self.skipped: list[bytes] = []

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    # -- directories ---------------------------------------------------------------------------

    def dir_fd(self, rel: bytes, member: str) -> int:
        """A descriptor of directory ``rel``, walked from the root without following symlinks,
        creating missing parents. Valid until the next call (the cache may close it then)."""
        if not rel:
            return self.root_fd
        fd = self.fds.get(rel)
        if fd is not None:
            self.fds.move_to_end(rel)
            return fd
        parts = rel.split(b"/")
        i = len(parts) - 1  # find the deepest open ancestor
        fd = self.root_fd
        while i > 0:
            cached = self.fds.get(b"/".join(parts[:i]))
            if cached is not None:
                fd = cached
                break
            i -= 1
        for j in range(i, len(parts)):
            prefix = b"/".join(parts[: j + 1])
            name = parts[j]
            entry = self.entries.get(prefix)
            if entry is None:
                if name.startswith(b".wh."):
                    raise Refused(f"whiteout {_show(prefix)} used as a directory")
                os.mkdir(name, 0o700, dir_fd=fd)
                self.entries[prefix] = Entry(prefix, EntryType.DIR, 0o755, 0, 0)
                self.dirs[prefix] = _Attrs(member, 0o755, 0, 0, None, {})
            elif entry.type is not EntryType.DIR:
                raise Refused(f"parent {_show(prefix)} is a {entry.type.name.lower()}")
            fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            self.fds[prefix] = fd
            if len(self.fds) > _MAX_DIR_FDS:  # the oldest is never the one just used
                os.close(self.fds.popitem(last=False)[1])
        return fd

    def finish_dirs(self) -> None:
        """Apply directory metadata, descendants before ancestors (reverse name order)."""
        for rel in sorted(self.dirs, reverse=True):
            meta = self.dirs[rel]
            try:
                fd = self.dir_fd(rel, meta.member)
                if self.same_owner:
                    os.fchown(fd, meta.uid, meta.gid)
                if meta.xattrs:
                    self.set_xattrs(fd, meta.xattrs)
                os.fchmod(fd, meta.mode)
                if meta.times is not None:
                    os.utime(fd, ns=meta.times)
            except (Refused, OSError, OverflowError) as exc:
                _raise_for(meta.member, exc)

    # -- members -------------------------------------------------------------------------------

    def set_xattrs(self, target: int | bytes, xattrs: dict[str, bytes]) -> None:
        """Set xattrs on an fd or (not following) a path, unless the layer went to the sidecar."""
        follow = isinstance(target, int)  # an fd: nothing to follow, and os refuses False
        for name, value in xattrs.items():
            if self.sidecar:
                return
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno in _ENVIRONMENT_ERRNOS:
                    raise
                if exc.errno not in _SIDECAR_ERRNOS:
                    raise Refused(f"xattr {name!r}: {exc.strerror}") from exc
                logger.info("xattr %r refused (%s): layer xattrs go to the sidecar", name, exc)
                self.sidecar = True

    def add(self, m: tarfile.TarInfo, stream: TarReader, data_end: int) -> None:
        """Extract one member; ``data_end`` is where its data (if any) ends in the stream."""
        rel = member_path(m.name)
        kind = _KINDS.get(m.type)
        if kind is None:
            raise Refused(f"unsupported member type {m.type!r}")
        parent, _, name = rel.rpartition(b"/")
        if name.startswith(b".wh."):
            if name == b".wh.":
                raise Refused("whiteout '.wh.' names nothing")
            if kind is not EntryType.FILE:
                raise Refused("whiteout is not a regular file")
        if not rel and kind is not EntryType.DIR:
            raise Refused("the layer root is not a directory")
        if kind in (EntryType.CHAR, EntryType.BLOCK) and not self.allow_devices:
            logger.debug("tar member %r: device node skipped", m.name)
            self.skipped.append(rel)
            return
        uid, gid = _check_id(m.uid, "uid"), _check_id(m.gid, "gid")
        mode = m.mode & 0o7777
        disk_mode = mode if self.same_owner or kind is EntryType.DIR else mode & ~_SUID_SGID
        xattrs = member_xattrs(m) if m.pax_headers else {}
        link_text = m.linkname.encode("utf-8", "surrogateescape")
        if kind is EntryType.SYMLINK and (
            not link_text or b"\0" in link_text or len(link_text) >= PATH_MAX
        ):
            raise Refused("invalid symlink target (empty, NUL byte or too long)")

        old = self.entries.get(rel)
        tgt = None
        if kind is EntryType.HARDLINK:
            tgt = self._link_target(m, rel, old)
            if tgt is None:
                return  # a hard link to itself: the file is already there
            xattrs = self.xattrs.get(tgt.path, {})  # the sidecar is by path: both names need them
        pfd = self.dir_fd(parent, m.name)
        if old is not None:
            if old.type is EntryType.DIR:
                if kind is not EntryType.DIR:
                    raise Refused(f"would replace directory {_show(rel)} by a non-directory")
            elif rel in self.link_targets:
                raise Refused(f"would replace {_show(rel)}, which hard links point to")
            else:
                os.unlink(name, dir_fd=pfd)
                del self.entries[rel]
                old = None
        if xattrs:
            self.xattrs[rel] = xattrs
        else:
            self.xattrs.pop(rel, None)

        attrs = _Attrs(m.name, disk_mode, uid, gid, times_ns(m), xattrs)
        if kind is EntryType.FILE:
            size, digest = self._file(m, stream, data_end, pfd, name, attrs)
            entry = Entry(rel, kind, mode, uid, gid, size, digest)
        elif kind is EntryType.DIR:
            if old is None and rel:
                os.mkdir(name, 0o700, dir_fd=pfd)
            self.dirs[rel] = attrs
            entry = Entry(rel, kind, mode, uid, gid)
        elif tgt is not None:
            entry = self._hardlink(m, rel, pfd, name, tgt)
        else:
            rdev = self._special(m, kind, pfd, name, link_text, attrs)
            text = link_text if kind is EntryType.SYMLINK else b""
            entry = Entry(rel, kind, mode, uid, gid, 0, "", text, rdev)
        self.entries[rel] = entry

    def _link_target(self, m: tarfile.TarInfo, rel: bytes, old: Entry | None) -> Entry | None:
        """The entry a hard link member points to; None when it names itself and exists."""
        try:
            target = member_path(m.linkname)
        except Refused as exc:
            raise Refused(f"hard link target: {exc}") from None
        if target == rel and old is not None and old.type is not EntryType.DIR:
            return None
        tgt = self.entries.get(target)
        if tgt is None:
            raise Refused(f"hard link target {_show(target)} does not exist in this layer")
        if tgt.type is EntryType.DIR:
            raise Refused(f"hard link target {_show(target)} is a directory")
        return tgt

    def _hardlink(self, m: tarfile.TarInfo, rel: bytes, pfd: int, name: bytes, tgt: Entry) -> Entry:
        """Link ``name`` to the existing ``tgt``; the header's own metadata is ignored (GNU tar)."""
        tparent, _, tname = tgt.path.rpartition(b"/")
        own = os.dup(pfd)  # the next dir_fd() may close pfd
        try:
            tfd = self.dir_fd(tparent, m.name)
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=own, follow_symlinks=False)
        finally:
            os.close(own)
        self.link_targets.add(tgt.path)
        return dataclasses.replace(tgt, path=rel, type=EntryType.HARDLINK, target=tgt.path)

    def _file(
        self, m: tarfile.TarInfo, stream: TarReader, data_end: int, pfd: int, name: bytes, a: _Attrs
    ) -> tuple[int, str]:
        """Write a regular file through its own descriptor; its size and content digest."""
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            sparse = cast("list[tuple[int, int]] | None", m.sparse)
            if sparse is not None:
                digest = write_sparse(fd, m.size, sparse, stream, data_end)
            else:
                digest = write_dense(fd, m.size, stream)
            if self.same_owner:
                os.fchown(fd, a.uid, a.gid)  # clears security.capability: xattrs come after
            if a.xattrs:
                self.set_xattrs(fd, a.xattrs)
            os.fchmod(fd, a.mode)  # after chown, which clears setuid/setgid
            if a.times is not None:
                os.utime(fd, ns=a.times)
        finally:
            os.close(fd)
        self.data_bytes += m.size
        return m.size, digest

    def _special(
        self, m: tarfile.TarInfo, kind: EntryType, pfd: int, name: bytes, text: bytes, a: _Attrs
    ) -> int:
        """Make a symlink, fifo or device, changed by name and never opened; its device number."""
        rdev = 0
        if kind is EntryType.SYMLINK:
            os.symlink(text, name, dir_fd=pfd)
        elif kind is EntryType.FIFO:
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            rdev = os.makedev(m.devmajor, m.devminor)
            fmt = stat.S_IFCHR if kind is EntryType.CHAR else stat.S_IFBLK
            os.mknod(name, fmt | 0o600, rdev, dir_fd=pfd)
        if self.same_owner:
            os.chown(name, a.uid, a.gid, dir_fd=pfd, follow_symlinks=False)
        if a.xattrs:  # there is no *xattrat(): the parent's fd through /proc keeps it race-free
            self.set_xattrs(b"/proc/self/fd/%d/%s" % (pfd, name), a.xattrs)
        if kind is not EntryType.SYMLINK:
            os.chmod(name, a.mode, dir_fd=pfd, follow_symlinks=False)
        if a.times is not None:
            os.utime(name, ns=a.times, dir_fd=pfd, follow_symlinks=False)
        return rdev


def _show(path: bytes) -> str:
    return "/" + path.decode("utf-8", "backslashreplace")


def _extract_all(layer: _Layer, stream: BinaryIO) -> int:
    count = 0
    for m, reader, data_end in read_members(stream):
        count += 1
        try:
            layer.add(m, reader, data_end)
        except (Refused, OSError, OverflowError) as exc:
            _raise_for(m.name, exc)
    return count


def _raise_for(member: str, exc: BaseException) -> None:
    """Turn a failure while extracting ``member`` into the error the caller should see."""
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        exc.add_note(f"while unpacking tar member {quote_member(member)}")
        raise exc
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    raise UnpackError(f"tar member {quote_member(member)}: {reason}") from exc


def unpack_layer(stream: BinaryIO, dest: str, *, options: UnpackOptions) -> UnpackResult:
    """Extract the uncompressed layer tar ``stream`` into the empty directory ``dest``.

    Raises `UnpackError` (naming the tar member) for a malformed or hostile tar and ``ValueError``
    when ``dest`` is not empty or a sidecar is already beside it. On any failure the caller
    removes ``dest``; the xattr sidecar is only written after everything else succeeded.
    """
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    layer = _Layer(root_fd, options)
    try:
        if os.listdir(root_fd):
            raise ValueError(f"{dest}: unpack destination is not empty")
        if os.path.lexists(sidecar_path(dest)):
            raise ValueError(f"{sidecar_path(dest)}: stale xattr sidecar in the way")
        members = _extract_all(layer, stream)
        layer.finish_dirs()
    finally:
        layer.close()
        os.close(root_fd)
    if layer.sidecar and layer.xattrs:
        write_sidecar(dest, layer.xattrs)
    logger.debug(
        "unpacked %d members, %d bytes into %s%s",
        members,
        layer.data_bytes,
        dest,
        " (xattrs in sidecar)" if layer.sidecar and layer.xattrs else "",
    )
    return UnpackResult(
        members=members,
        data_bytes=layer.data_bytes,
        entries=tuple(layer.entries.values()),
        owners_applied=options.same_owner,
        xattr_sidecar=layer.sidecar and bool(layer.xattrs),
        skipped_devices=tuple(layer.skipped),
    )
