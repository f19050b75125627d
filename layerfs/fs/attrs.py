"""Attributes and extended attributes of objects in the union (after copy-up, for changes).

Internal xattrs (``trusted.overlay.*``, ``user.overlay.*``, ``user.layerfs.*``) are hidden
and refused; on an upper without xattr support, upper xattrs live in the metadata database.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from . import whiteout
from .inodes import Node
from .syscalls import merge_times as _times
from .syscalls import oserror as _err
from .syscalls import read_xattrs
from .syscalls import writable_fd as _writable_fd

if TYPE_CHECKING:
    from .union import UnionFS


def setattr(
    fs: UnionFS,
    node: Node,
    *,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    size: int | None = None,
    times: tuple[int | None, int | None] | None = None,
    fd: int | None = None,
    linked: bool = False,
) -> None:
    """Change attributes of an object already in the upper.

    An open object is changed through ``fd`` (one of its own handles): cheaper than a
    path, and right even when its name is gone or names something else now. ``linked``:
    the caller knows its path leads to it (it was copied up there just now).
    """
    upper = fs._need_writable()
    if fd is not None and (size is None or _writable_fd(fd)):
        _setattr_fd(fd, mode, uid, gid, size, times, node.kind)
        return
    if not linked and not fs.is_linked(node):
        if fd is None:
            raise _err(errno.ENOENT, node.path())
        _setattr_fd(fd, mode, uid, gid, size, times, node.kind)
        return
    path = node.path()
    if uid is not None or gid is not None:
        os.chown(
            path,
            -1 if uid is None else uid,
            -1 if gid is None else gid,
            dir_fd=upper.fd,
            follow_symlinks=False,
        )
    if mode is not None and node.kind != stat.S_IFLNK:
        os.chmod(path, stat.S_IMODE(mode), dir_fd=upper.fd)
    if size is not None:
        # The kernel may hand over any handle of the file, a read-only one included.
        tfd = (
            fd
            if fd is not None and _writable_fd(fd)
            else os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=upper.fd)
        )
        try:
            os.ftruncate(tfd, size)
        finally:
            if tfd != fd:
                os.close(tfd)
    if times is not None:
        st = os.lstat(path, dir_fd=upper.fd)
        os.utime(path, ns=_times(times, st), dir_fd=upper.fd, follow_symlinks=False)


def _setattr_fd(
    fd: int,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    size: int | None,
    times: tuple[int | None, int | None] | None,
    kind: int,
) -> None:
    if uid is not None or gid is not None:
        os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    if mode is not None and kind != stat.S_IFLNK:
        os.fchmod(fd, stat.S_IMODE(mode))
    if size is not None:
        if not _writable_fd(fd):
            raise _err(errno.EBADF)
        os.ftruncate(fd, size)
    if times is not None:
        os.utime(fd, ns=_times(times, os.fstat(fd)))


def check_xattr_name(fs: UnionFS, name: str) -> None:
    """Refuse to set ``name`` before anything is copied up for it."""
    _xattr_enabled(fs)
    if whiteout.is_internal_xattr(name):
        raise _err(errno.EPERM)


def _xattr_enabled(fs: UnionFS) -> None:
    if not fs.opts.xattrs:
        raise _err(errno.ENOTSUP)


def _upper_xattrs(fs: UnionFS, node: Node) -> dict[str, bytes]:
    assert fs.upper is not None and fs.meta is not None
    path = node.path()
    out = read_xattrs(fs.upper.proc(path)) if fs.upper.xattrs else {}
    out.update(fs.meta.get_xattrs(fs.stat(node).st_ino))
    return out


def xattrs(fs: UnionFS, node: Node) -> dict[str, bytes]:
    """The user-visible extended attributes of ``node``."""
    _xattr_enabled(fs)
    raw = _upper_xattrs(fs, node) if node.upper else fs.lower_xattrs(node.lower[0])
    return {k: v for k, v in raw.items() if not whiteout.is_internal_xattr(k)}


def getxattr(fs: UnionFS, node: Node, name: str, fd: int | None = None) -> bytes:
    """One xattr of ``node``; ``fd``, an open upper file of it, saves the path walk."""
    _xattr_enabled(fs)
    if whiteout.is_internal_xattr(name):
        raise _err(errno.ENODATA)
    if node.upper:
        assert fs.upper is not None and fs.meta is not None
        if fs.upper.xattrs:
            try:
                if fd is not None:
                    return os.getxattr(fd, name)
                return os.getxattr(fs.upper.proc(node.path()), name, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
        # The kernel asks for security.capability before writes and chowns: with no
        # fallback xattrs anywhere, the miss needs no stat.
        if not fs.meta.has_fallback_xattrs():
            raise _err(errno.ENODATA)
        value = fs.meta.get_xattrs(fs.stat(node, fd).st_ino).get(name)
    else:
        value = fs.lower_xattrs(node.lower[0]).get(name)
    if value is None:
        raise _err(errno.ENODATA)
    return value


def setxattr(fs: UnionFS, node: Node, name: str, value: bytes) -> None:
    upper = fs._need_writable()
    _xattr_enabled(fs)
    if whiteout.is_internal_xattr(name):
        raise _err(errno.EPERM)
    assert fs.meta is not None
    if upper.xattrs:
        os.setxattr(upper.proc(node.path()), name, value, follow_symlinks=False)
    else:
        fs.meta.set_xattr(fs.stat(node).st_ino, name, value)


def removexattr(fs: UnionFS, node: Node, name: str) -> None:
    upper = fs._need_writable()
    _xattr_enabled(fs)
    if whiteout.is_internal_xattr(name):
        raise _err(errno.ENODATA)
    assert fs.meta is not None
    if fs.meta.remove_xattr(fs.stat(node).st_ino, name):
        return
    if not upper.xattrs:
        raise _err(errno.ENODATA)
    os.removexattr(upper.proc(node.path()), name, follow_symlinks=False)
