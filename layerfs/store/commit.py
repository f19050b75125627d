"""Commit: a container's changes become a new OCI layer on top of its image, stored as a new image.

`commit_container(store, name, new_image)` reads ``containers/<name>/``:

- ``container.json``: ``image`` (the name the user gave), ``image_id`` (the config digest),
  ``layers`` (ChainIDs, bottom first), optionally ``blobs``, and ``upper``, ``work`` and
  ``rootfs`` (default: those names in the container's directory); records of another ``kind``
  (``image-mount``) are refused;
- the upper directory, in overlay form, and ``layerfs.db`` in the work directory, which
  `layerfs.store.layerdiff` writes as the new layer (a gzip'd PAX tar; how whiteouts,
  redirects, hard links, xattrs and metadata-only copies become tar members is told there).

A container whose rootfs is mounted is flushed first (``syncfs`` on the mount: the kernel's dirty
pages reach the upper), then read as it is.

The new config is the image's own JSON with the diff_id appended to ``rootfs.diff_ids``, a
``history`` entry (``created``, ``created_by: "layerctl commit"``) and a new ``created``; the new
manifest is OCI (Docker media types of the image's layers are mapped to their OCI equivalents;
the blobs are the same). Both go, with hard links to the image's blobs and the new layer blob,
into a one-image OCI layout in a session's scratch directory, which `layerfs.store.pull` imports
under the new name: all of the store's verification, sharing and atomicity apply. The record's
``source`` then says ``container:<name>``.

Caveats: committing a container that is running gives whatever its files hold at the moment each
is read (pause or stop it for a consistent layer). The store's path must not contain ``:`` (the
import goes through an ``oci:`` name).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
from dataclasses import dataclass

from layerfs.oci import (
    Descriptor,
    Digest,
    InvalidImageError,
    Manifest,
    chain_ids,
    compute_digest,
    descriptor_to_json,
    parse_config,
    parse_manifest,
    split_digest,
)
from layerfs.oci.jsondoc import MAX_DOCUMENT_SIZE
from layerfs.oci.mediatypes import (
    ANNOTATION_REF_NAME,
    IMAGE_INDEX_FILE,
    IMAGE_LAYOUT_FILE,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_TAR_GZIP,
    OCI_MANIFEST,
)
from layerfs.oci.writer import (
    LAYOUT_VERSION,
    LayerDigests,
    json_bytes,
    oci_layer_type,
    oci_manifest_bytes,
)
from layerfs.store import containers
from layerfs.store.durable import syncfs
from layerfs.store.errors import StoreError
from layerfs.store.layerdiff import read_upper_meta, write_layer
from layerfs.store.names import check_image_name
from layerfs.store.pull import PullOptions, pull_image
from layerfs.store.records import (
    ImageRecord,
    read_image_record,
    utc_now,
    write_image_record,
)
from layerfs.store.store import Store

logger = logging.getLogger(__name__)

CREATED_BY = "layerctl commit"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
_LAYOUT_REF = "commit"
_CHUNK = 1 << 20


class CommitError(StoreError):
    """A container cannot be committed; the message names the container or the image."""


# -- the container ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerInfo:
    """What a commit needs of a container's record."""

    name: str
    image: str
    image_id: Digest
    layers: tuple[Digest, ...]  # ChainIDs, bottom first
    blobs: tuple[Digest, ...]
    upper: str
    work: str
    rootfs: str  # where it is mounted, when it is


def read_container(store: Store, name: str) -> ContainerInfo:
    """The container ``name``'s record; `CommitError` when there is no such container.

    ``upper``, ``work`` and ``rootfs`` default to ``upper/``, ``work/`` and ``rootfs/`` in
    the container's directory when the record does not name them.
    """
    try:
        record = containers.read_container(store, name)
    except containers.ContainerError as exc:
        raise CommitError(str(exc)) from None
    if record.kind != containers.KIND_CONTAINER:
        raise CommitError(
            f"{name!r} is an {record.kind} record, not a container: nothing to commit"
        )
    directory = store.paths.container_dir(name)
    info = ContainerInfo(
        name=name,
        image=record.image,
        image_id=record.image_id,
        layers=record.layers,
        blobs=record.blobs,
        upper=record.upper or os.path.join(directory, "upper"),
        work=record.work or os.path.join(directory, "work"),
        rootfs=record.rootfs or os.path.join(directory, "rootfs"),
    )
    for path in (info.upper, info.work):
        if not os.path.isabs(path):
            raise CommitError(f"container {name!r}: damaged record: {path!r} is not absolute")
    if not os.path.isdir(info.upper):
        hint = ""
        if record.dataset:
            hint = f"; its dataset {record.dataset} may not be mounted ('layerctl mount {name}')"
        raise CommitError(f"container {name!r}: no upper directory at {info.upper}{hint}")
    return info


def flush_mount(info: ContainerInfo) -> None:
    """Push what a live mount of the container still caches into its upper (``syncfs``)."""
    if not os.path.ismount(info.rootfs):
        return
    try:
        syncfs(info.rootfs)
    except OSError as exc:  # a dead daemon's mount: the upper already has all there is
        logger.debug("commit: syncfs %s: %s", info.rootfs, exc)


# -- the base image --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseImage:
    """The image the container was made from, as its blobs are in the store."""

    manifest_digest: Digest
    manifest: Manifest
    config_bytes: bytes


def find_base_image(store: Store, info: ContainerInfo) -> BaseImage:
    """The container's image: by a record with its ID, else by a manifest among its blobs."""
    candidates = [r.manifest_digest for r in store.images() if r.id == info.image_id]
    candidates += [d for d in info.blobs if d not in candidates and _small_blob(store, d)]
    for digest in candidates:
        try:
            manifest = parse_manifest(store.blobs.read(digest))
        except (OSError, InvalidImageError):
            continue
        if manifest.config.digest != info.image_id:
            continue
        try:
            config_bytes = store.blobs.read(manifest.config.digest)
        except FileNotFoundError:
            break
        diff_ids = parse_config(config_bytes).rootfs.diff_ids
        if chain_ids(diff_ids) != info.layers:
            raise CommitError(
                f"container {info.name!r}: its record lists other layers than its image "
                f"{info.image!r} ({info.image_id}) has"
            )
        return BaseImage(digest, manifest, config_bytes)
    raise CommitError(
        f"container {info.name!r}: its image {info.image!r} ({info.image_id}) is no longer "
        f"in the store at {store.root}"
    )


def _small_blob(store: Store, digest: Digest) -> bool:
    try:
        return os.path.getsize(store.blobs.path(digest)) <= MAX_DOCUMENT_SIZE
    except OSError:
        return False


# -- the image -------------------------------------------------------------------------------------


def new_config(base: bytes, diff_id: Digest, created: str) -> bytes:
    """The image config ``base`` with the layer ``diff_id`` added on top."""
    doc = json.loads(base)
    rootfs = doc["rootfs"]
    rootfs["diff_ids"] = [*rootfs["diff_ids"], diff_id]
    doc["history"] = [*(doc.get("history") or []), {"created": created, "created_by": CREATED_BY}]
    doc["created"] = created
    return json_bytes(doc)


def _descriptor(media_type: str, data: bytes) -> Descriptor:
    return Descriptor(media_type, compute_digest(data), len(data))


def _blob_path(layout: str, digest: Digest) -> str:
    algorithm, encoded = split_digest(digest)
    return os.path.join(layout, "blobs", algorithm, encoded)


def _put(layout: str, data: bytes) -> None:
    path = _blob_path(layout, compute_digest(data))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _link_blob(store: Store, layout: str, digest: Digest) -> None:
    """The store's blob ``digest`` in ``layout``: a hard link (a copy across filesystems)."""
    target = _blob_path(layout, digest)
    if os.path.exists(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    source = store.blobs.path(digest)
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise CommitError(f"blob {digest} is missing from the store at {store.root}") from None
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        with open(source, "rb") as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)


def _write_layout(
    store: Store, layout: str, base: BaseImage, layer: LayerDigests, created: str
) -> None:
    config = new_config(base.config_bytes, layer.diff_id, created)
    config_desc = _descriptor(OCI_CONFIG, config)
    layers = [
        dataclasses.replace(d, media_type=oci_layer_type(d.media_type), data=None)
        for d in base.manifest.layers
    ]
    layers.append(Descriptor(OCI_LAYER_TAR_GZIP, layer.digest, layer.size))
    manifest = oci_manifest_bytes(
        config_desc, layers, {ANNOTATION_BASE_DIGEST: base.manifest_digest}
    )
    for d in base.manifest.layers:
        _link_blob(store, layout, d.digest)
    _put(layout, config)
    _put(layout, manifest)
    entry = Descriptor(
        OCI_MANIFEST,
        compute_digest(manifest),
        len(manifest),
        annotations={ANNOTATION_REF_NAME: _LAYOUT_REF},
    )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor_to_json(entry)]}
    with open(os.path.join(layout, IMAGE_LAYOUT_FILE), "wb") as f:
        f.write(json_bytes({"imageLayoutVersion": LAYOUT_VERSION}))
    with open(os.path.join(layout, IMAGE_INDEX_FILE), "wb") as f:
        f.write(json_bytes(index))


def commit_container(store: Store, name: str, new_image: str) -> ImageRecord:
    """Store the container ``name``'s changes as the image ``new_image`` (see the module doc)."""
    image_name = check_image_name(new_image)
    info = read_container(store, name)
    base = find_base_image(store, info)
    flush_mount(info)
    meta = read_upper_meta(info.work)
    lowers = [store.backend.diff_dir(c) for c in reversed(info.layers)]
    created = utc_now()
    with store.session() as session:
        layout = os.path.join(session.scratch, "layout")
        if ":" in layout:
            raise CommitError(f"{store.root}: commit needs a store path without ':'")
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        staged = os.path.join(layout, "layer.tmp")
        layer = write_layer(info.upper, meta, lowers, staged)
        final = _blob_path(layout, layer.digest)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(staged, final)
        _write_layout(store, layout, base, layer, created)
        record = pull_image(
            store, f"oci:{layout}:{_LAYOUT_REF}", PullOptions(name=image_name)
        ).record
    return _set_source(store, record, f"container:{name}")


def _set_source(store: Store, record: ImageRecord, source: str) -> ImageRecord:
    """Say where a committed image came from (not the scratch layout it was imported from)."""
    with store.lock():
        current = read_image_record(store.paths, record.name)
        if current is None or current.manifest_digest != record.manifest_digest:
            return record  # replaced meanwhile by another command: leave theirs alone
        record = dataclasses.replace(current, source=source)
        write_image_record(store.paths, record)
    return record
