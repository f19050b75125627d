"""Read-only file trees: where a transport finds its files.

An OCI layout is the same whether it is a directory (``oci:``) or a tar of
one (``oci-archive:``), so the layout reader works on a :class:`FileTree`,
and each transport supplies one. Paths are relative, ``/``-separated, and
never contain ``..``: a tree refuses them rather than trust the caller.
"""

from __future__ import annotations

import os
import posixpath
from typing import Protocol

from layerfs.oci.streams import ByteStream


class FileTree(Protocol):
    """Named regular files that can be opened for reading."""

    def open(self, path: str) -> ByteStream:
        """A fresh stream over the file at ``path``; :class:`FileNotFoundError` if none."""
        ...

    def size(self, path: str) -> int:
        """The size of the file at ``path``; :class:`FileNotFoundError` if none."""
        ...


def clean_path(path: str) -> str:
    """``path`` normalized as a relative tree path; :class:`FileNotFoundError` if it escapes."""
    norm = posixpath.normpath("/" + path.replace("\\", "/")).lstrip("/")
    parts = path.split("/")
    if not norm or norm == "." or ".." in parts or "\0" in path:
        raise FileNotFoundError(f"{path!r}: not a path inside the image")
    return norm


class DirTree:
    """A :class:`FileTree` over a directory."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _full(self, path: str) -> str:
        return os.path.join(self.root, clean_path(path))

    def open(self, path: str) -> ByteStream:
        full = self._full(path)
        # Checked first: opening a FIFO planted in a layout would block.
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{full}: no such regular file")
        return open(full, "rb")  # the caller closes it

    def size(self, path: str) -> int:
        full = self._full(path)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"{full}: no such file")
        return os.path.getsize(full)
