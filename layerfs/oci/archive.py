"""Opening a tar archive as a file tree, decompressing it first if needed.

An uncompressed archive is read in place (:class:`~layerfs.oci.tartree.TarTree`).
A gzip- or zstd-compressed one cannot be read at random, so it is
decompressed once into a temporary file inside the caller's scratch
directory. The file is unlinked as soon as it is open, so nothing is left
behind even if the process dies; its space returns on :meth:`ArchiveTree.close`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from layerfs.oci.compression import detect_compression, open_decompressed
from layerfs.oci.errors import SourceError
from layerfs.oci.mediatypes import Compression
from layerfs.oci.streams import ByteStream
from layerfs.oci.tartree import TarTree

_COPY_CHUNK = 1 << 20


class ArchiveTree:
    """The regular files of the archive at ``path``; ``scratch_dir`` holds a decompressed copy."""

    def __init__(self, path: str, scratch_dir: str | None = None) -> None:
        if not os.path.isfile(path):
            raise SourceError("no such archive file")
        self.path = path
        self._temp: str | None = None
        with open(path, "rb") as f:
            compression = detect_compression(f.read(4))
        try:
            if compression is not Compression.NONE:
                self._temp = self._decompress(path, compression, scratch_dir)
            self._tree = TarTree(self._temp or path)
        finally:
            self._remove_temp()

    @staticmethod
    def _decompress(path: str, compression: Compression, scratch_dir: str | None) -> str:
        fd, temp = tempfile.mkstemp(prefix="layerfs-archive-", suffix=".tar", dir=scratch_dir)
        try:
            with (
                open(fd, "wb") as out,
                open_decompressed(
                    open(path, "rb"),
                    compression,
                    name=path,
                ) as src,
            ):
                shutil.copyfileobj(src, out, _COPY_CHUNK)
        except BaseException:
            os.unlink(temp)
            raise
        return temp

    def open(self, path: str) -> ByteStream:
        """A stream over the archive member ``path``."""
        return self._tree.open(path)

    def size(self, path: str) -> int:
        """The size of the archive member ``path``."""
        return self._tree.size(path)

    def _remove_temp(self) -> None:
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except FileNotFoundError:
                pass
            self._temp = None

    def close(self) -> None:
        """Release the archive (and with it any decompressed copy)."""
        self._tree.close()
