"""Reading a file of an untrusted root filesystem without leaving it.

An image's rootfs is hostile input: ``/etc`` may be a symlink to ``/``, and
``/etc/passwd`` a symlink to ``../../../etc/shadow``. Opening
``os.path.join(rootfs, "etc/passwd")`` would follow those links on the host.
:func:`read_rootfs_file` instead resolves the path the way the kernel would
inside a ``chroot`` at the rootfs (``openat2``'s ``RESOLVE_IN_ROOT``): one
component at a time, relative to directory fds, never letting the kernel follow
a symlink (``O_NOFOLLOW``). Symlinks are read and resolved by hand, absolute
targets from the rootfs root, and ``..`` stops at the root; so every symlink in
the image means what it would mean inside the container, and nothing outside
the rootfs is ever opened.

Only regular files are read: a FIFO or device node under the expected name is
refused (it is opened with ``O_NONBLOCK`` so that a FIFO cannot hang us), as
is a file larger than the caller's limit.

Caveat: if the tree is changed concurrently, a component that turns into a
symlink between the check and the open makes the read fail (``O_NOFOLLOW``)
rather than escape; the error then names the path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TypeAlias

from layerfs.bundle.errors import BundleError

StrPath: TypeAlias = str | os.PathLike[str]

#: Reads an absolute path of the image's filesystem: its bytes, or ``None`` when absent.
ImageFileReader: TypeAlias = Callable[[str], bytes | None]

#: Symlinks followed in one resolution before giving up, as the kernel's ELOOP limit.
MAX_SYMLINKS = 40

#: Largest ``/etc/passwd`` or ``/etc/group`` read by default.
DEFAULT_MAX_SIZE = 4 * 1024 * 1024

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def read_rootfs_file(root: StrPath, path: str, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes | None:
    """The content of ``path`` (absolute, as seen in the image) under ``root``.

    Returns ``None`` when the file, or one of its parent directories, does not
    exist. Raises :class:`BundleError` when it exists but is not a regular file,
    is larger than ``max_size``, its symlinks loop, or it cannot be read (a
    permission problem, a dead FUSE mount: the message names the path and errno).
    """
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise BundleError(f"rootfs {os.fspath(root)}: {e.strerror}") from e
    stack = [root_fd]  # stack[-1] is the current directory; stack[0] the root
    try:
        fd = _resolve(stack, path)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_size + 1)
    except OSError as e:
        raise BundleError(f"cannot read {path} of the image: {e.strerror}") from e
    finally:
        for dir_fd in stack:
            os.close(dir_fd)
    if len(data) > max_size:
        raise BundleError(f"{path} of the image is larger than {max_size} bytes")
    return data


def rootfs_reader(root: StrPath, *, max_size: int = DEFAULT_MAX_SIZE) -> ImageFileReader:
    """An :data:`ImageFileReader` over a rootfs directory, via :func:`read_rootfs_file`."""

    def read(path: str) -> bytes | None:
        return read_rootfs_file(root, path, max_size=max_size)

    return read


def _resolve(stack: list[int], path: str) -> int | None:
    """Open ``path`` for reading, walking ``stack``; ``None`` when it does not exist."""
    pending = _components(path)
    pending.reverse()  # a stack: symlink targets are pushed in front of what remains
    links = 0
    while pending:
        name = pending.pop()
        if name == ".":
            continue
        if name == "..":
            # Pop rather than open "..": a directory moved concurrently could
            # otherwise lead above the root, and the root's parent is itself.
            if len(stack) > 1:
                os.close(stack.pop())
            continue
        try:
            st = os.lstat(name, dir_fd=stack[-1])
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise BundleError(
                    f"too many levels of symbolic links resolving {path} in the image"
                )
            target = os.readlink(name, dir_fd=stack[-1])
            if target.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop())
            pending.extend(reversed(_components(target)))
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            return None  # ENOTDIR: "/etc" is a file, so "/etc/passwd" does not exist
        if pending:
            stack.append(_open(name, stack[-1], _DIR_FLAGS, path))
            continue
        if not stat.S_ISREG(st.st_mode):
            # Checked before opening: opening a device node can have side effects.
            raise BundleError(f"{path} of the image is not a regular file")
        return _open_regular(name, stack[-1], path)
    raise BundleError(f"{path} of the image is a directory, not a file")


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c]


def _open(name: str, dir_fd: int, flags: int, path: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            # Changed under us between lstat and open: refuse rather than follow.
            raise BundleError(f"{path} of the image changed while it was being read") from e
        raise


def _open_regular(name: str, dir_fd: int, path: str) -> int:
    fd = _open(name, dir_fd, _FILE_FLAGS, path)
    # Checked again on the fd: the name may have been replaced since the lstat.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BundleError(f"{path} of the image is not a regular file")
    return fd
