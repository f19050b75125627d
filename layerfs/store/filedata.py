"""Writing a tar member's data to its file, digested on the way for the entry manifest
(`layerfs.store.entries.ContentHash`: the same digest fsck computes from the file).

`write_dense` copies a regular member; `write_sparse` writes the data segments of a GNU sparse
member at their offsets and leaves holes between them. Both read exactly what the member holds
and raise `Refused` when the stream ends early or the sparse map is inconsistent.
"""

from __future__ import annotations

import os

from layerfs.store.entries import ContentHash
from layerfs.store.tarread import Refused, TarReader

__all__ = ["CHUNK", "write_dense", "write_sparse"]

CHUNK = 1 << 20


def _read_exact(stream: TarReader, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise Refused("unexpected end of data")
    return data


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def write_dense(fd: int, size: int, stream: TarReader) -> str:
    """Copy ``size`` bytes of ``stream`` to ``fd``; their content digest."""
    h = ContentHash(size)
    if size <= CHUNK:  # the common case: one read, one write, one hash call
        data = _read_exact(stream, size)
        if data:
            _write_all(fd, data)
        h.update(data)
        return h.hexdigest()
    left = size
    while left:
        data = _read_exact(stream, min(left, CHUNK))
        h.update(data)
        _write_all(fd, data)
        left -= len(data)
    return h.hexdigest()


def write_sparse(
    fd: int, size: int, segments: list[tuple[int, int]], stream: TarReader, data_end: int
) -> str:
    """Write the data segments of a GNU sparse member at their offsets, leaving holes; the
    content digest, in which a hole costs the same whatever its length."""
    pos = stored = 0
    for offset, length in segments:
        if length == 0:  # old GNU headers pad the map with (0, 0); a final (size, 0) marks the end
            continue
        if offset < pos or length < 0 or offset + length > size:
            raise Refused("sparse map is out of order, overlapping or past the file size")
        pos = offset + length
        stored += length
    if stored > data_end - stream.tell():
        raise Refused("sparse map describes more data than the member holds")
    # First, so that a size beyond what the filesystem allows (EFBIG) fails before any write.
    os.ftruncate(fd, size)
    h = ContentHash(size)
    pos = 0
    for offset, length in segments:
        if not length:
            continue
        h.zeros(offset - pos)
        pos = offset
        while pos < offset + length:
            data = _read_exact(stream, min(offset + length - pos, CHUNK))
            h.update(data)
            _write_all(fd, data, pos)
            pos += len(data)
    h.zeros(size - pos)
    return h.hexdigest()
