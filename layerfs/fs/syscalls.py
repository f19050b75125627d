"""Thin wrappers around system calls: those ``os`` lacks (renameat2, FICLONE) and small
helpers every part of the engine uses on paths, times and errors."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

_FICLONE = 0x40049409

# By soname: ctypes.util.find_library runs `ldconfig -p` in a subprocess, at every start
# of every command.
LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
_renameat2 = LIBC.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def fd_path(fd: int, path: bytes) -> bytes:
    """``path`` below the directory ``fd`` for calls that take no dir_fd (xattrs).

    The kernel resolves /proc/self/fd/N/<path> from that directory without crossing
    symlinks in it (the components are proven directories; the caller decides whether
    the last one is followed).
    """
    return b"/proc/self/fd/%d/%s" % (fd, path)


_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)


def read_xattrs(target: int | bytes) -> dict[str, bytes]:
    """Every extended attribute of an open file or of a path (never followed); {} where
    the filesystem has none, and one removed meanwhile is skipped."""
    follow = isinstance(target, int)  # an fd is the object itself
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return out
        raise
    for name in names:
        try:
            out[name] = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA and exc.errno not in _NO_XATTRS:
                raise
    return out


def renameat2(src_dir: int, src: bytes, dst_dir: int, dst: bytes, flags: int) -> None:
    """renameat2(2); raises OSError like the os module does."""
    if _renameat2(src_dir, src, dst_dir, dst, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)


def try_reflink(src_fd: int, dst_fd: int) -> bool:
    """Clone ``src_fd`` into ``dst_fd`` where the filesystem can; False when it cannot."""
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS):
            return False
        raise
    return True


def oserror(code: int, what: bytes | str = "") -> OSError:
    """An OSError carrying ``code``, as a failing system call would raise it."""
    return OSError(code, os.strerror(code), what)


def join(parent: bytes, name: bytes) -> bytes:
    """``parent/name`` for paths relative to a layer root (``.`` is the root)."""
    return name if parent == b"." else parent + b"/" + name


def merge_times(times: tuple[int | None, int | None], st: os.stat_result) -> tuple[int, int]:
    """(atime, mtime) in ns, taking from ``st`` what ``times`` leaves unset."""
    atime, mtime = times
    return (st.st_atime_ns if atime is None else atime, st.st_mtime_ns if mtime is None else mtime)


def writable_fd(fd: int) -> bool:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def keep_times(dir_fd: int, path: bytes, st: os.stat_result) -> None:
    """Put back the atime and mtime of ``path`` as ``st`` had them."""
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
