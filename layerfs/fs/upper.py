"""The writable upper layer and its work directory: whiteouts, opaque dirs, atomic placing.

Whiteouts are written as overlay character devices 0/0 where mknod works in
the upper (as root on ext4, xfs, tmpfs, zfs) and as OCI ``.wh.NAME`` files
otherwise. Opaque directories get the ``.wh..wh..opq`` marker, plus the
``trusted.overlay.opaque`` xattr where the upper takes xattrs. Everything that
must appear atomically is built in ``workdir/tmp`` and renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import shutil
import stat

from . import whiteout
from .syscalls import RENAME_EXCHANGE, fd_path, renameat2

TMP_DIR = "tmp"
INDEX_DIR = "index"
# Present once the upper has held a metadata-only copy (see `metacopy`): until then no
# lookup needs to ask an upper file for the marker.
METACOPY_FLAG = "metacopy"
LOCK_NAME = "lock"


class UpperError(Exception):
    """The upper or work directory cannot be used; the message names which and why."""


class Upper:
    """Owns the upper root and the work directory of one mount."""

    def __init__(self, upperdir: str, workdir: str, whiteout_form: str = "auto") -> None:
        self.path = upperdir
        self.workdir = workdir
        self.fd = os.open(upperdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._lock_fd = os.open(
            os.path.join(workdir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            os.close(self.fd)
            raise UpperError(f"workdir {workdir} is in use by another layerfs mount") from None
        tmp = os.path.join(workdir, TMP_DIR)
        # Leftovers of a crash mid copy-up or mid whiteout: never visible, removed here;
        # their inode numbers are reported so metadata recorded for them can go too.
        self.leftover_inos: list[int] = []
        if os.path.isdir(tmp):
            with os.scandir(tmp) as it:
                self.leftover_inos = [e.inode() for e in it]
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        self.work_fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # Copies of lower hard-link groups, by origin inode: every name links here.
        index = os.path.join(workdir, INDEX_DIR)
        os.makedirs(index, 0o700, exist_ok=True)
        self.index_fd = os.open(index, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names = itertools.count()
        self._pid = os.getpid()  # names need only be unique in the locked work dir
        # "oci" keeps the upper directly usable as an OCI layer diff.
        self.char_whiteouts = whiteout_form != "oci" and self._probe_mknod()
        if whiteout_form == "char" and not self.char_whiteouts:
            self.close()
            raise UpperError(f"whiteout=char: cannot create device nodes in {workdir}")
        self.xattrs = self._probe_xattrs()
        self.has_metacopies = os.path.exists(os.path.join(workdir, METACOPY_FLAG))

    def note_metacopy(self) -> None:
        """Record that metadata-only copies exist, before the first one is placed (the
        journal keeps the two in order, so a marked file never shows without the flag)."""
        if not self.has_metacopies:
            _touch(self.work_fd, os.fsencode(os.path.join("..", METACOPY_FLAG)))
            self.has_metacopies = True

    def close(self) -> None:
        os.close(self.index_fd)
        os.close(self.work_fd)
        os.close(self.fd)
        os.close(self._lock_fd)

    def tmpname(self) -> bytes:
        return b"%d.%d" % (self._pid, next(self._names))

    def _probe_mknod(self) -> bool:
        name = self.tmpname()
        try:
            os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=self.work_fd)
        except OSError:
            return False
        os.unlink(name, dir_fd=self.work_fd)
        return True

    def _probe_xattrs(self) -> bool:
        name = self.tmpname()
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self.work_fd)
        try:
            os.setxattr(fd, "user.layerfs.probe", b"1")
            return True
        except OSError:
            return False
        finally:
            os.close(fd)
            os.unlink(name, dir_fd=self.work_fd)

    # Queries -----------------------------------------------------------------

    def lstat(self, path: bytes) -> os.stat_result | None:
        try:
            return os.lstat(path, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def has_wh_file(self, parent: bytes, name: bytes) -> bool:
        return self.lstat(_join(parent, whiteout.WH_PREFIX + name)) is not None

    def is_opaque(self, path: bytes) -> bool:
        if self.lstat(_join(path, whiteout.OPAQUE_MARKER)) is not None:
            return True
        for name in whiteout.OPAQUE_XATTRS:
            try:
                if whiteout.is_opaque_value(
                    os.getxattr(self.proc(path), name, follow_symlinks=False)
                ):
                    return True
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    return False
        return False

    def proc(self, path: bytes) -> bytes:
        """A path for calls that take no dir_fd (xattrs), anchored at the upper root."""
        return fd_path(self.fd, path)

    # Changes -----------------------------------------------------------------

    def place(self, tmp: bytes, parent: bytes, name: bytes) -> None:
        """Rename a finished ``tmp`` into ``parent/name``, replacing a whiteout there."""
        dst = _join(parent, name)
        existing = self.lstat(dst)
        if (
            existing is not None
            and stat.S_ISCHR(existing.st_mode)
            and whiteout.is_whiteout_stat(existing)
        ):
            st = os.lstat(tmp, dir_fd=self.work_fd)
            if stat.S_ISDIR(st.st_mode):
                # A directory cannot replace a non-directory by rename: swap, then drop.
                if self._exchange(tmp, dst):
                    os.unlink(tmp, dir_fd=self.work_fd)
                else:
                    os.unlink(dst, dir_fd=self.fd)
                    os.rename(tmp, dst, src_dir_fd=self.work_fd, dst_dir_fd=self.fd)
            else:
                os.rename(tmp, dst, src_dir_fd=self.work_fd, dst_dir_fd=self.fd)
        else:
            os.rename(tmp, dst, src_dir_fd=self.work_fd, dst_dir_fd=self.fd)
        self.drop_wh_file(parent, name)

    def hide_while_replacing(self, parent: bytes, name: bytes) -> None:
        """Swap a whiteout device at ``parent/name`` for an OCI whiteout file, so that the
        name stays hidden while a directory is renamed onto it (no RENAME_EXCHANGE)."""
        _touch(self.fd, _join(parent, whiteout.WH_PREFIX + name))
        os.unlink(_join(parent, name), dir_fd=self.fd)

    def drop_wh_file(self, parent: bytes, name: bytes) -> None:
        try:
            os.unlink(_join(parent, whiteout.WH_PREFIX + name), dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def clear_whiteout(self, parent: bytes, name: bytes) -> bool:
        """Remove a whiteout at ``parent/name`` (either form); True if there was one."""
        found = False
        st = self.lstat(_join(parent, name))
        if st is not None and whiteout.is_whiteout_stat(st):
            os.unlink(_join(parent, name), dir_fd=self.fd)
            found = True
        if self.lstat(_join(parent, whiteout.WH_PREFIX + name)) is not None:
            self.drop_wh_file(parent, name)
            found = True
        return found

    def new_whiteout(self) -> bytes:
        """A character-device whiteout in the work directory, ready to be renamed."""
        tmp = self.tmpname()
        os.mknod(tmp, stat.S_IFCHR | 0o000, 0, dir_fd=self.work_fd)
        return tmp

    def whiteout(self, parent: bytes, name: bytes, *, vacant: bool = False) -> None:
        """Hide ``name`` in ``parent``, atomically replacing a non-directory there.

        ``vacant``: the upper has nothing at the name, so the whiteout is made in place
        (one directory change instead of two).
        """
        dst = _join(parent, name)
        if self.char_whiteouts:
            if vacant:
                try:
                    os.mknod(dst, stat.S_IFCHR | 0o000, 0, dir_fd=self.fd)
                    return
                except FileExistsError:
                    pass
            os.rename(self.new_whiteout(), dst, src_dir_fd=self.work_fd, dst_dir_fd=self.fd)
            return
        _touch(self.fd, _join(parent, whiteout.WH_PREFIX + name))
        try:
            os.unlink(dst, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def _exchange(self, tmp: bytes, dst: bytes) -> bool:
        """Swap ``tmp`` (work dir) with ``dst`` (upper) atomically; False where unsupported.

        zfs-fuse, for one, has no RENAME_EXCHANGE: callers then fall back to two
        steps, which a crash in between could leave half done (the lower entry shows).
        """
        try:
            renameat2(self.work_fd, tmp, self.fd, dst, RENAME_EXCHANGE)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                return False
            raise
        return True

    def remove_dir(self, path: bytes, *, whiteout_after: bool) -> None:
        """Remove the upper directory ``path`` (holding only markers) in one visible step.

        It is swapped out (for a whiteout when ``whiteout_after``) before anything in it is
        deleted, so a crash never shows part of what its whiteouts hid.
        """
        parent, _, name = path.rpartition(b"/")
        parent = parent or b"."
        if whiteout_after and self.char_whiteouts:
            wh = self.new_whiteout()
            if self._exchange(wh, path):
                self._drop_work_tree(wh)
                return
            os.unlink(wh, dir_fd=self.work_fd)
        aside = self.tmpname()
        if whiteout_after:
            # No exchange here: an OCI whiteout file hides the name while it changes hands.
            _touch(self.fd, _join(parent, whiteout.WH_PREFIX + name))
        os.rename(path, aside, src_dir_fd=self.fd, dst_dir_fd=self.work_fd)
        if whiteout_after and self.char_whiteouts:
            os.rename(self.new_whiteout(), path, src_dir_fd=self.work_fd, dst_dir_fd=self.fd)
            self.drop_wh_file(parent, name)
        self._drop_work_tree(aside)

    def _drop_work_tree(self, name: bytes) -> None:
        try:
            shutil.rmtree(os.path.join(os.fsencode(self.workdir), TMP_DIR.encode(), name))
        except NotADirectoryError:
            os.unlink(name, dir_fd=self.work_fd)

    def make_opaque_in_work(self, tmp: bytes) -> None:
        """Mark the directory ``tmp`` in the work directory opaque."""
        self._mark_opaque(self.work_fd, tmp)

    def make_opaque(self, path: bytes) -> None:
        """Mark the upper directory ``path`` opaque."""
        self._mark_opaque(self.fd, path)

    def _mark_opaque(self, dir_fd: int, path: bytes) -> None:
        _touch(dir_fd, _join(path, whiteout.OPAQUE_MARKER))
        self._opaque_xattr(b"/proc/self/fd/%d/%s" % (dir_fd, path))

    def _opaque_xattr(self, path: bytes) -> None:
        if not self.xattrs or os.geteuid() != 0:
            return
        try:
            os.setxattr(path, "trusted.overlay.opaque", b"y", follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise


def index_name(ino: int) -> bytes:
    """The name of a hard-link group's copy in the index directory (its stable inode)."""
    return b"%x" % ino


def _touch(dir_fd: int, path: bytes) -> None:
    """An empty marker file (an OCI whiteout or the opaque marker)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o000, dir_fd=dir_fd))


def _join(parent: bytes, name: bytes) -> bytes:
    return name if parent == b"." else parent + b"/" + name
