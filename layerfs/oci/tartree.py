"""A :class:`~layerfs.oci.tree.FileTree` over an uncompressed tar archive, without extracting it.

Opening the archive reads its headers once (``tarfile`` seeks over the file
data) and records where each regular file's data lies. Files are then read
in place with ``os.pread`` on one shared descriptor, so any number of
streams, from any threads, can be open at once. Hard links and symbolic
links inside the archive are followed (``docker save`` links each legacy
``layer.tar`` to its blob); links that leave the archive are treated as
missing. When a name appears twice the later entry wins, as in extraction.

Caveats: sparse members are not supported (image tools never write them);
a symlinked parent directory is not followed.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile

from layerfs.oci.errors import SourceError
from layerfs.oci.streams import ByteStream
from layerfs.oci.tree import clean_path

_MAX_LINK_HOPS = 32


_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.SOLARIS_XHDTYPE,
)
_EXTENDED_MAX = 16 << 20


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads PAX and GNU long-name headers whole into memory: bound them first."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > _EXTENDED_MAX:
            raise tarfile.ReadError(f"{self.size}-byte extended header (limit {_EXTENDED_MAX})")
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


class TarTree:
    """Random access to the regular files of the tar archive at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._files: dict[str, tuple[int, int]] = {}
        self._links: dict[str, str] = {}  # name -> target name (both clean)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._index()
        except BaseException:
            os.close(self._fd)
            raise

    def _index(self) -> None:
        with os.fdopen(os.dup(self._fd), "rb") as f:
            try:
                with tarfile.open(fileobj=f, mode="r:", tarinfo=_BoundedTarInfo) as tar:
                    for member in tar:
                        self._add(member)
            except tarfile.TarError as exc:
                raise SourceError(f"{self.path}: not a readable tar archive: {exc}") from None

    def _add(self, member: tarfile.TarInfo) -> None:
        try:
            name = clean_path(member.name)
        except FileNotFoundError:
            return  # "..", "/" and the like: nothing a lookup can reach
        self._files.pop(name, None)
        self._links.pop(name, None)
        if member.isreg() and not member.issparse():
            self._files[name] = (member.offset_data, member.size)
            return
        if member.islnk():
            target = member.linkname
        elif member.issym():
            target = member.linkname
            if not target.startswith("/"):
                target = posixpath.join(posixpath.dirname(name), target)
        else:
            return
        try:
            self._links[name] = clean_path(posixpath.normpath(target))
        except FileNotFoundError:
            pass

    def _lookup(self, path: str) -> tuple[int, int]:
        name = clean_path(path)
        for _ in range(_MAX_LINK_HOPS):
            if name in self._files:
                return self._files[name]
            if name not in self._links:
                break
            name = self._links[name]
        raise FileNotFoundError(f"{self.path}: no regular file {path!r} in the archive")

    def open(self, path: str) -> ByteStream:
        offset, size = self._lookup(path)
        return _Section(self, offset, size)

    def size(self, path: str) -> int:
        return self._lookup(path)[1]

    def pread(self, size: int, offset: int) -> bytes:
        """``size`` bytes of the archive at ``offset``."""
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        """Release the archive; streams still open stop working."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Section(io.RawIOBase):
    """One member's data, read in place."""

    def __init__(self, tree: TarTree, offset: int, size: int) -> None:
        super().__init__()
        self._tree = tree
        self._offset = offset
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        chunk = self._tree.pread(want, self._offset + self._pos)
        if not chunk:
            raise SourceError(f"{self._tree.path}: archive is truncated")
        view[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)
