"""Importing one layer of an image: fetch its blob, verify it, unpack it, publish it.

`import_layer` decides what a layer needs, holding the layer's lock (`layer_lock`) so that
concurrent pulls of images sharing it do the work once:

- ``PRESENT``: the layer and the blob this manifest names are in the store; nothing to do.
- ``BLOB``: the layer is there but the blob is not (the same layer came compressed differently,
  e.g. from a docker-archive): the blob is streamed into the session, verified against its size
  and digest and, decompressed, against the diff_id; then published.
- ``UNPACK``: one pass over the blob: read (size and digest verified), copied into the session
  (if the store lacks it), decompressed (diff_id verified), unpacked into a staged layer; then
  the entry manifest and ``layer.json`` are written, the filesystem synced, and layer and blob
  published together with the store lock held.

A layer's unpack never looks at its parent (whiteouts are kept as files), so the layers of an
image are imported in parallel threads, each with a read-ahead thread (`layerfs.store.readahead`)
that reads, hashes and decompresses while the tar is unpacked; decompression, hashing and file
writes release the GIL. A shared `threading.Event` cancels them all at their next read once one
has failed.
"""

from __future__ import annotations

import enum
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from layerfs.oci import (
    Compression,
    DecompressionLimits,
    Layer,
    OCIError,
    ResolvedImage,
    VerifiedReader,
    VerifiedStream,
    open_decompressed,
)
from layerfs.store.durable import syncfs
from layerfs.store.entries import write_entries
from layerfs.store.readahead import ReadAhead
from layerfs.store.records import ENTRIES_FILE, LayerRecord, utc_now, write_layer_record
from layerfs.store.session import Session, layer_lock
from layerfs.store.store import Store
from layerfs.store.unpack import UnpackError, UnpackResult, unpack_layer

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TAR_BUFFER = 64 << 10  # between the read-ahead thread and tarfile's small reads
_LOCK_POLL = (0.01, 0.2)  # first and longest wait between tries of a busy layer lock
_T = TypeVar("_T")


class Cancelled(Exception):
    """Another layer of the same pull failed: stop (not a ValueError, so nothing wraps it)."""


class LayerAction(enum.Enum):
    """What importing a layer took."""

    PRESENT = "present"
    BLOB = "blob"
    UNPACK = "unpack"


@dataclass(frozen=True)
class LayerOutcome:
    """The result of importing one layer; ``published_*`` say what this pull added."""

    layer: Layer
    action: LayerAction
    published_layer: bool = False
    published_blob: bool = False
    bytes_read: int = 0


@dataclass(frozen=True)
class ImportContext:
    """What every layer import of one pull shares."""

    store: Store
    session: Session
    image: ResolvedImage
    limits: DecompressionLimits
    cancel: threading.Event
    on_start: Callable[[Layer, LayerAction], None]
    on_bytes: Callable[[Layer, int], None]


class _Tee(io.RawIOBase):
    """Reads the verified blob, copying it to ``sink`` and counting; checks for cancellation."""

    def __init__(
        self, ctx: ImportContext, layer: Layer, blob: VerifiedStream, sink: BinaryIO | None
    ) -> None:
        super().__init__()
        self.ctx, self.layer, self.blob, self.sink = ctx, layer, blob, sink
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.ctx.cancel.is_set():
            raise Cancelled()
        n = self.blob.readinto(buffer)
        if n:
            if self.sink is not None:
                self.sink.write(memoryview(buffer)[:n])
            self.count += n
            self.ctx.on_bytes(self.layer, n)
        return n

    def drain(self) -> None:
        """Read (and copy) to the end, which completes the blob's verification."""
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass
        self.blob.verify()

    def close(self) -> None:
        if not self.closed:
            self.blob.close()
        super().close()


def import_layer(ctx: ImportContext, layer: Layer) -> LayerOutcome:
    """Make sure ``layer`` and its blob are in the store (see the module docstring)."""
    store, chain_id, digest = ctx.store, layer.chain_id, layer.descriptor.digest
    if store.backend.has_layer(chain_id) and store.blobs.has(digest):
        return LayerOutcome(layer, LayerAction.PRESENT)
    lock = layer_lock(store.paths, chain_id)
    if not lock.acquire(blocking=False):
        logger.debug("layer %s is being imported by another process: waiting", chain_id)
        _acquire(lock.acquire, ctx.cancel)
    try:
        if store.backend.has_layer(chain_id):
            if store.blobs.has(digest):
                return LayerOutcome(layer, LayerAction.PRESENT)
            ctx.on_start(layer, LayerAction.BLOB)
            return _fetch_blob(ctx, layer)
        ctx.on_start(layer, LayerAction.UNPACK)
        return _unpack(ctx, layer)
    finally:
        lock.release(unlink=True)


def _acquire(try_lock: Callable[..., bool], cancel: threading.Event) -> None:
    """Take a lock that another pull may hold for minutes, still noticing cancellation."""
    delay = _LOCK_POLL[0]
    while not try_lock(blocking=False):
        if cancel.wait(delay):
            raise Cancelled()
        delay = min(delay * 2, _LOCK_POLL[1])


def _open_tar(
    tee: _Tee, layer: Layer, limits: DecompressionLimits
) -> tuple[BinaryIO, Callable[[], int]]:
    """The layer's tar read through ``tee``, checked against its diff_id, and a function
    telling how many tar bytes were read."""
    if layer.compression is Compression.NONE and layer.descriptor.digest == layer.diff_id:
        # The blob is the tar: its own check covers the diff_id.
        return io.BufferedReader(tee, _CHUNK), lambda: tee.count
    plain = open_decompressed(
        tee, layer.compression, limits=limits, name=f"blob {layer.descriptor.digest}"
    )
    reader = VerifiedReader(plain, layer.diff_id, None)
    return VerifiedStream(reader), lambda: reader.bytes_read


def _fetch_blob(ctx: ImportContext, layer: Layer) -> LayerOutcome:
    blobs, digest = ctx.store.blobs, layer.descriptor.digest
    staged, sink = blobs.open_staging(ctx.session.path, digest)
    with sink, _Tee(ctx, layer, ctx.image.open_layer(layer), sink) as tee:
        tar, _ = _open_tar(tee, layer, ctx.limits)
        with tar:
            _drain(tar)
            tee.drain()
        _finish(sink)
    with ctx.store.lock():
        published = blobs.publish(staged, digest)
    return LayerOutcome(layer, LayerAction.BLOB, published_blob=published, bytes_read=tee.count)


def _unpack(ctx: ImportContext, layer: Layer) -> LayerOutcome:
    store, session = ctx.store, ctx.session
    digest = layer.descriptor.digest
    staged = store.backend.stage(session.path, layer.chain_id)
    published_layer = False
    try:
        blob_path, sink = None, None
        if not store.blobs.has(digest):
            blob_path, sink = store.blobs.open_staging(session.path, digest)
        try:
            with _Tee(ctx, layer, ctx.image.open_layer(layer), sink) as tee:
                tar, tar_size = _open_tar(tee, layer, ctx.limits)
                with tar:
                    with ReadAhead(tar) as ahead:
                        stream = io.BufferedReader(ahead, _TAR_BUFFER)
                        options = store.backend.unpack_options()
                        result = _unwrap(lambda: unpack_layer(stream, staged.diff, options=options))
                        _unwrap(lambda: _drain(stream))
                    tee.drain()
            if sink is not None:
                _finish(sink)
        finally:
            if sink is not None:
                sink.close()
        write_entries(os.path.join(staged.path, ENTRIES_FILE), result.entries)
        write_layer_record(staged.path, _layer_record(ctx.image, layer, result, tar_size()))
        syncfs(staged.path)
        with store.lock():
            published_layer = store.backend.publish(staged)
            published_blob = blob_path is not None and store.blobs.publish(blob_path, digest)
    except BaseException:
        if not published_layer:
            store.backend.discard(staged)
        raise
    return LayerOutcome(layer, LayerAction.UNPACK, published_layer, published_blob, tee.count)


def _layer_record(
    image: ResolvedImage, layer: Layer, result: UnpackResult, tar_size: int
) -> LayerRecord:
    parent = image.layers[layer.index - 1].chain_id if layer.index else None
    return LayerRecord(
        chain_id=layer.chain_id,
        diff_id=layer.diff_id,
        parent=parent,
        size=result.data_bytes,
        tar_size=tar_size,
        members=result.members,
        compressed=(layer.descriptor.digest,),
        unpacked=utc_now(),
        owners_applied=result.owners_applied,
        xattr_sidecar=result.xattr_sidecar,
        skipped_devices=len(result.skipped_devices),
    )


def _drain(stream: BinaryIO) -> None:
    """Read ``stream`` to its end: what completes its verification."""
    while stream.read(_CHUNK):
        pass


def _finish(sink: BinaryIO) -> None:
    sink.flush()
    os.fsync(sink.fileno())


def _unwrap(action: Callable[[], _T]) -> _T:
    """Run ``action``; a verification failure the tar reader wrapped is raised as itself.

    A blob that fails its digest while tarfile reads a header surfaces as "malformed tar";
    the real cause (digest, size, corrupt compression) is the message a user needs.
    """
    try:
        return action()
    except UnpackError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, OCIError | Cancelled):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
