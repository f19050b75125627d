"""Crash-safe file updates and tree removal for the store.

`write_atomic` replaces a file so that a crash leaves either the old or the new content, never a
mix: write a temporary sibling, fsync it, rename it over the target, fsync the directory.
Temporary names start with ``.`` so that listings of records (whose escaped names never start
with ``.``) skip them. `syncfs` flushes a whole filesystem once, cheaper than an fsync per file
of an unpacked layer. `remove_tree` deletes a tree even where the tree's own modes forbid it
(a layer may hold directories mode 0555).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from typing import Any

from layerfs.fs.syscalls import LIBC


def fsync_dir(path: str) -> None:
    """fsync a directory, making renames and creations in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: str) -> str:
    """A unique temporary sibling of ``path`` (hidden: its name starts with ``.``)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{uuid.uuid4().hex[:12]}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one `temp_name` makes."""
    return name.startswith(".") and name.endswith(".tmp")


def write_atomic(path: str, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` by ``data`` atomically and durably."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def syncfs(path: str) -> None:
    """Flush every dirty page of the filesystem holding ``path`` (``syncfs(2)``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def _make_writable(func: Callable[..., Any], path: str, exc_info: Any) -> None:
    """rmtree's error handler: a directory whose mode forbids changes is opened up, then retried."""
    exc = exc_info[1]
    if not isinstance(exc, PermissionError):
        raise exc
    os.chmod(os.path.dirname(path), stat.S_IRWXU)
    if func is os.rmdir or func is os.unlink:
        func(path)
    elif os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, stat.S_IRWXU)
        shutil.rmtree(path, onerror=_make_writable)
    else:
        raise exc


def remove_tree(path: str) -> None:
    """Remove ``path`` (a tree, a file or nothing at all)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path, onerror=_make_writable)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
