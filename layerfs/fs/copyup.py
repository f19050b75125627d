"""Copy-up: making a private upper copy of a lower object, built aside and renamed into place.

``stage`` does only I/O on file descriptors it is given, so the caller may run
it on a worker thread while the event loop serves other requests. The copy is
made in the work directory under a fresh name and only renamed into the upper
tree by the caller once complete (and fsync'd unless the mount is volatile),
so a crash never leaves a half-copied file visible.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from .metacopy import MARKER
from .syscalls import try_reflink

_CHUNK = 1 << 20
# Below this a clone saves nothing over one copy_file_range (the common small file).
REFLINK_BYTES = 1 << 20


@dataclass(frozen=True)
class CopyJob:
    """One object to copy from a lower layer into the work directory."""

    src_fd: int  # the layer's root directory
    src_path: bytes
    st: os.stat_result
    xattrs: dict[str, bytes]
    work_fd: int
    tmp: bytes
    with_data: bool = True
    fsync: bool = True
    xattrs_supported: bool = True
    # A metadata-only copy: no data, the full size (sparse), this marker (see `metacopy`).
    marker: bytes | None = None
    # The upper inode of the metadata-only copy this full copy replaces.
    replaces: int | None = None


def stage(job: CopyJob) -> dict[str, bytes]:
    """Build the copy at ``job.tmp``; returns xattrs the upper could not store itself."""
    mode = job.st.st_mode
    kind = stat.S_IFMT(mode)
    try:
        if kind == stat.S_IFREG:
            return _stage_file(job)
        if kind == stat.S_IFDIR:
            os.mkdir(job.tmp, 0o700, dir_fd=job.work_fd)
        elif kind == stat.S_IFLNK:
            target = os.readlink(job.src_path, dir_fd=job.src_fd)
            os.symlink(target, job.tmp, dir_fd=job.work_fd)
        else:
            os.mknod(job.tmp, mode, job.st.st_rdev, dir_fd=job.work_fd)
        return apply_metadata(job.work_fd, job.tmp, job.st, job.xattrs, job.xattrs_supported)
    except BaseException:
        discard(job.work_fd, job.tmp)
        raise


def _stage_file(job: CopyJob) -> dict[str, bytes]:
    copying = job.with_data and job.st.st_size > 0
    src = (
        os.open(job.src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=job.src_fd)
        if copying
        else -1
    )
    try:
        dst = os.open(
            job.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=job.work_fd
        )
        try:
            if job.marker is not None:
                # Before the owner and mode change: they may forbid it afterwards.
                os.setxattr(dst, MARKER, job.marker)
            size = job.st.st_size
            if copying:
                if size < REFLINK_BYTES and job.st.st_blocks * 512 >= size:
                    _copy_range(src, dst, 0, size)  # small, no holes: one call
                elif not try_reflink(src, dst):
                    copy_sparse(src, dst, size)
            os.ftruncate(dst, size if job.with_data or job.marker is not None else 0)
            left = apply_metadata_fd(dst, job.st, job.xattrs, job.xattrs_supported)
            if job.fsync and copying:
                os.fsync(dst)  # without data there is nothing the rename must wait for
            return left
        finally:
            os.close(dst)
    except BaseException:
        discard(job.work_fd, job.tmp)
        raise
    finally:
        if src >= 0:
            os.close(src)


def copy_sparse(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes keeping holes as holes (SEEK_DATA/SEEK_HOLE)."""
    off = 0
    while off < size:
        try:
            data = os.lseek(src, off, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                return
            raise
        end = min(os.lseek(src, data, os.SEEK_HOLE), size)
        _copy_range(src, dst, data, end)
        off = end


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(src, dst, min(end - pos, 1 << 30), pos, pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = _copy_plain(src, dst, pos, end)
        if n == 0:
            return  # source shorter than its stat said
        pos += n


def _copy_plain(src: int, dst: int, pos: int, end: int) -> int:
    buf = os.pread(src, min(_CHUNK, end - pos), pos)
    if buf:
        os.pwrite(dst, buf, pos)
    return len(buf)


def _set_xattrs(
    target: int | bytes, xattrs: dict[str, bytes], supported: bool, follow: bool = True
) -> dict[str, bytes]:
    left: dict[str, bytes] = {}
    for name, value in xattrs.items():
        if not supported:
            left[name] = value
            continue
        try:
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                left[name] = value
            else:
                raise
    return left


def apply_metadata_fd(
    fd: int, st: os.stat_result, xattrs: dict[str, bytes], xattrs_supported: bool
) -> dict[str, bytes]:
    """Owner, mode, xattrs and times of ``st`` onto an open file, in the order that keeps them."""
    # chown clears setuid and file capabilities: owner first, then mode and xattrs.
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    left = _set_xattrs(fd, xattrs, xattrs_supported)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    return left


def apply_metadata(
    dir_fd: int, name: bytes, st: os.stat_result, xattrs: dict[str, bytes], xattrs_supported: bool
) -> dict[str, bytes]:
    """Like ``apply_metadata_fd`` for an object named ``name`` in ``dir_fd`` (never followed)."""
    is_link = stat.S_ISLNK(st.st_mode)
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    if not is_link:
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
    left = _set_xattrs(
        b"/proc/self/fd/%d/%s" % (dir_fd, name), xattrs, xattrs_supported, follow=False
    )
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    return left


def discard(work_fd: int, tmp: bytes) -> None:
    """Remove a staged copy that will not be used (file or empty directory)."""
    try:
        os.unlink(tmp, dir_fd=work_fd)
    except IsADirectoryError:
        os.rmdir(tmp, dir_fd=work_fd)
    except FileNotFoundError:
        pass
