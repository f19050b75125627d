"""Pull: import an image from an image source into the store, all or nothing.

`pull_image` resolves the source (nothing in the store changes if that fails), pins what the
image needs, imports its layers in parallel (`layerfs.store.ingest`), then commits: manifest and
config blobs, the layers' ``compressed`` lists, and finally the image record, written last and
atomically, with the store lock held. A name maps to the record of its latest pull; layers are
shared by ChainID, so the same image pulled from ``oci:``, ``oci-archive:`` and
``docker-archive:`` is unpacked once (a docker-archive's synthesized manifest has its own digest
and its uncompressed layer blobs are stored beside the compressed ones).

If anything fails — a blob, a tar, the disk, Ctrl-C — the other layers are cancelled, and the
layers and blobs this pull published are removed again unless something else (an image, a
container, another live pull) references them by then: the store is as it was.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from layerfs.oci import (
    DEFAULT_LIMITS,
    DecompressionLimits,
    Digest,
    Layer,
    OCIError,
    Platform,
    ResolvedImage,
    open_source,
    parse_source,
)
from layerfs.oci.mediatypes import OCI_MANIFEST
from layerfs.store.errors import StoreDamagedError, StoreError
from layerfs.store.ingest import Cancelled, ImportContext, LayerAction, LayerOutcome, import_layer
from layerfs.store.names import ImageName, check_image_name, default_name
from layerfs.store.records import (
    ImageRecord,
    read_layer_record,
    utc_now,
    write_image_record,
    write_layer_record,
)
from layerfs.store.refs import collect_references
from layerfs.store.session import Session, live_pins
from layerfs.store.shield import shielded
from layerfs.store.store import Store
from layerfs.store.unpack import UnpackError

logger = logging.getLogger(__name__)

MAX_WORKERS = 8


class PullProgress(Protocol):
    """What a progress display is told; called from worker threads."""

    def begin(self, image: ResolvedImage) -> None: ...
    def layer_started(self, layer: Layer, action: LayerAction) -> None: ...
    def layer_bytes(self, layer: Layer, nbytes: int) -> None: ...
    def layer_done(self, layer: Layer, action: LayerAction) -> None: ...
    def end(self) -> None: ...


@dataclass(frozen=True)
class PullOptions:
    """How to pull: the record's name, the platform, decompression limits, parallelism."""

    name: str | None = None
    platform: Platform | None = None
    limits: DecompressionLimits = DEFAULT_LIMITS
    workers: int = 0  # 0: one per layer, up to the CPUs (at least 2) and MAX_WORKERS


@dataclass(frozen=True)
class PullResult:
    """The stored image and what each of its layers took."""

    record: ImageRecord
    outcomes: tuple[LayerOutcome, ...]

    def count(self, action: LayerAction) -> int:
        return sum(1 for o in self.outcomes if o.action is action)

    @property
    def bytes_read(self) -> int:
        return sum(o.bytes_read for o in self.outcomes)


class LayerImportError(StoreError):
    """A layer could not be imported; the message names the source, the layer and the cause."""


def pull_image(
    store: Store,
    source: str,
    options: PullOptions | None = None,
    progress: PullProgress | None = None,
) -> PullResult:
    """Import the image ``source`` (``oci:DIR[:REF]``, ...) into ``store``; see the module doc."""
    options = options or PullOptions()
    ref = parse_source(source)
    name = check_image_name(options.name) if options.name is not None else default_name(ref)
    with store.session() as session, open_source(ref, scratch_dir=session.scratch) as src:
        image = src.resolve(options.platform)
        for layer in image.layers:
            try:
                _ = layer.compression  # an unsupported media type fails here, before any work
            except OCIError as exc:
                raise _layer_error(image, layer, exc) from None
        with store.lock():
            session.pin(
                [layer.chain_id for layer in image.layers],
                [image.manifest_digest, image.config_digest]
                + [layer.descriptor.digest for layer in image.layers],
            )
        if progress is not None:
            progress.begin(image)
        try:
            outcomes = _import_layers(store, session, image, options, progress)
        finally:
            if progress is not None:
                progress.end()
        return PullResult(_commit(store, session, image, name, outcomes), outcomes)


def _workers(options: PullOptions, count: int) -> int:
    if options.workers > 0:
        return options.workers
    return max(1, min(count, max(2, os.cpu_count() or 1), MAX_WORKERS))


def _import_layers(
    store: Store,
    session: Session,
    image: ResolvedImage,
    options: PullOptions,
    progress: PullProgress | None,
) -> tuple[LayerOutcome, ...]:
    """Import every layer in parallel; on any failure, roll back and raise the first cause."""
    cancel = threading.Event()
    ctx = ImportContext(
        store=store,
        session=session,
        image=image,
        limits=options.limits,
        cancel=cancel,
        on_start=progress.layer_started if progress else _ignore,
        on_bytes=progress.layer_bytes if progress else _ignore,
    )
    if not image.layers:
        return ()
    futures: list[concurrent.futures.Future[LayerOutcome]] = []
    with concurrent.futures.ThreadPoolExecutor(
        _workers(options, len(image.layers)), thread_name_prefix="layer"
    ) as pool:
        try:
            for layer in image.layers:
                futures.append(pool.submit(import_layer, ctx, layer))
            done, _ = concurrent.futures.wait(
                futures, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            if any(f.exception() is not None for f in done):
                cancel.set()
        except BaseException:
            cancel.set()
            # Ctrl-C may land between two submits: wait for every worker the pool started,
            # not only those in `futures`, before the rollback removes their files.
            pool.shutdown(wait=True, cancel_futures=True)
            _rollback(store, session, _published(futures))
            raise
    failures = [(i, f.exception()) for i, f in enumerate(futures) if f.exception() is not None]
    if not failures:
        outcomes = tuple(f.result() for f in futures)
        if progress is not None:
            for o in outcomes:
                progress.layer_done(o.layer, o.action)
        return outcomes
    _rollback(store, session, _published(futures))
    real = [(i, e) for i, e in failures if not isinstance(e, Cancelled)]
    index, exc = (real or failures)[0]
    assert exc is not None
    if isinstance(exc, OSError):
        exc.add_note(f"while importing layer {index + 1} of {image.source}")
        raise exc
    if not isinstance(exc, OCIError | UnpackError | StoreError):
        raise exc  # a bug: its traceback, not a one-line message
    raise _layer_error(image, image.layers[index], exc) from exc


def _layer_error(image: ResolvedImage, layer: Layer, exc: Exception) -> LayerImportError:
    """``exc`` worded as a failure of ``layer`` of ``image``, on one line."""
    text = str(exc).removeprefix(f"{image.source}: ")
    # The tar is checked against the diff_id; "blob <diff_id>" would send the user looking
    # for a blob that does not exist.
    if layer.diff_id != layer.descriptor.digest:
        text = text.replace(
            f"blob {layer.diff_id}:", f"uncompressed layer (diff_id {layer.diff_id}):"
        )
    return LayerImportError(
        f"{image.source}: layer {layer.index + 1}/{len(image.layers)} "
        f"({layer.descriptor.digest}): {text}"
    )


def _ignore(*_args: object) -> None:
    pass


def _published(
    futures: Sequence[concurrent.futures.Future[LayerOutcome]],
) -> tuple[list[Digest], list[Digest]]:
    layers: list[Digest] = []
    blobs: list[Digest] = []
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is None:
            o = f.result()
            if o.published_layer:
                layers.append(o.layer.chain_id)
            if o.published_blob:
                blobs.append(o.layer.descriptor.digest)
    return layers, blobs


def _rollback(store: Store, session: Session, published: tuple[list[Digest], list[Digest]]) -> None:
    """Remove what this pull published, unless something else uses it by now."""
    layers, blobs = published
    if not layers and not blobs:
        return
    try:
        with shielded(), store.lock():
            refs = collect_references(store.paths, live_pins(store.paths, exclude=session))
            for chain_id in layers:
                if chain_id not in refs.layers:
                    store.backend.remove_layer(chain_id, session.path)
            for digest in blobs:
                if digest not in refs.blobs:
                    store.blobs.remove(digest)
    except StoreDamagedError as exc:
        logger.warning("not rolling back the failed pull: %s (run 'layerctl gc' later)", exc)


def _commit(
    store: Store,
    session: Session,
    image: ResolvedImage,
    name: ImageName,
    outcomes: Sequence[LayerOutcome],
) -> ImageRecord:
    """Publish manifest and config, record the blobs on their layers, write the image record."""
    documents = [
        (image.manifest_digest, image.manifest_bytes),
        (image.config_digest, image.config_bytes),
    ]
    published: list[Digest] = []
    with shielded():  # an interrupt waits until the record is written or rolled back
        try:
            # Staged inside the try: a full disk here must roll back the layers too.
            staged = {
                digest: store.blobs.stage_bytes(session.path, digest, data)
                for digest, data in documents
                if not store.blobs.has(digest)
            }
            with store.lock():
                for digest, path in staged.items():
                    if store.blobs.publish(path, digest):
                        published.append(digest)
                size = 0
                for layer in image.layers:
                    size += _note_blob(store, layer)
                record = ImageRecord(
                    name=name,
                    manifest_digest=image.manifest_digest,
                    manifest_media_type=image.manifest.media_type or OCI_MANIFEST,
                    config_digest=image.config_digest,
                    layers=tuple(layer.chain_id for layer in image.layers),
                    diff_ids=tuple(layer.diff_id for layer in image.layers),
                    layer_digests=tuple(layer.descriptor.digest for layer in image.layers),
                    platform=str(image.platform) if image.platform else _config_platform(image),
                    created=image.config.created,
                    pulled=utc_now(),
                    source=image.source,
                    size=size,
                )
                write_image_record(store.paths, record)
        except BaseException as exc:
            if isinstance(exc, OSError):
                exc.add_note(f"while recording {image.source} in the store at {store.root}")
            _rollback(
                store,
                session,
                (
                    [o.layer.chain_id for o in outcomes if o.published_layer],
                    [o.layer.descriptor.digest for o in outcomes if o.published_blob] + published,
                ),
            )
            raise
    return record


def _note_blob(store: Store, layer: Layer) -> int:
    """Check the layer and its blob are there, list the blob in ``layer.json``; its size."""
    digest = layer.descriptor.digest
    layer_dir = store.backend.layer_dir(layer.chain_id)
    if not store.backend.has_layer(layer.chain_id) or not store.blobs.has(digest):
        raise StoreError(
            f"layer {layer.chain_id} vanished from the store at {store.root} during the pull; "
            "pull again"
        )
    record = read_layer_record(layer_dir)
    if digest not in record.compressed:
        write_layer_record(
            layer_dir,
            dataclasses.replace(record, compressed=(*record.compressed, digest)),
        )
    return record.size


def _config_platform(image: ResolvedImage) -> str:
    config = image.config
    return str(Platform(config.os, config.architecture, config.variant))
