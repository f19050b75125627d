"""Push: write a stored image out, so that other tools can use it.

`push_image(store, ref, dest)` writes the image ``ref`` (a name or an ID) to ``dest``:

- ``oci:DIR[:REF]``: into the OCI image layout ``DIR``, made if missing (or empty), added to
  otherwise; the ``index.json`` entry is named ``REF`` (``org.opencontainers.image.ref.name``)
  and replaces an entry already named so.
- ``oci-archive:FILE[:REF]``: a tar of a one-image layout, replacing ``FILE``.
- ``docker-archive:FILE[:NAME[:TAG]]``: what ``docker save`` writes (``manifest.json`` with
  ``Config``, ``RepoTags``, ``Layers``), replacing ``FILE``.
- ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``: into a registry (`layerfs.oci.registry.push`):
  blobs the repository has are skipped, blobs that a stored image was pulled with from another
  repository of the same registry are mounted from there (so the base layers of a committed
  image are not sent again), the rest uploaded; the manifest goes last, under ``TAG``
  (``latest`` by default). ``registry`` gives credentials and TLS settings.

Without ``REF`` (or ``NAME:TAG``) the image's own name is used when it is a valid one for the
transport (``busybox:1.36`` is; then ``layerctl pull oci:DIR:busybox:1.36`` gives the same name
back), else the entry has no name (``oci:``) or no tag (``docker-archive:``).

The blobs are written exactly as the store holds them, each verified while it is copied, so
every digest (manifest, config, layers) is the one the store has; a ``docker-archive`` has no
manifest blob, its ``manifest.json`` is synthesized. Writing is atomic (see
`layerfs.oci.writer`): a failure leaves the destination as it was. A registry push is not
atomic, but a failed one never moves the tag: at most unreferenced blobs are left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from layerfs.oci import Descriptor, Digest, OCIError, Transport, parse_manifest, parse_source
from layerfs.oci.registry import (
    PushImage,
    RegistryOptions,
    RegistryPushResult,
    RegistryRef,
    parse_registry_ref,
    push_to_registry,
)
from layerfs.oci.writer import (
    DestinationError,
    ImageBlobs,
    parse_destination,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
)
from layerfs.store.records import ImageRecord
from layerfs.store.store import Store


@dataclass(frozen=True)
class PushResult:
    """What was written where."""

    record: ImageRecord
    transport: Transport
    path: str
    ref: str | None  # the REF or NAME:TAG given to the image, if any
    registry: RegistryPushResult | None = None  # for docker://: what each blob took


def push_image(
    store: Store, ref: str, dest: str, registry: RegistryOptions | None = None
) -> PushResult:
    """Write the stored image ``ref`` to ``dest`` (see the module doc)."""
    if dest.startswith("docker://"):
        return _push_to_registry(store, ref, dest, registry or RegistryOptions())
    target = parse_destination(dest)
    record = store.find_image(ref)
    manifest_bytes = _manifest_bytes(store, record)
    image = ImageBlobs(
        Descriptor(record.manifest_media_type, record.manifest_digest, len(manifest_bytes)),
        parse_manifest(manifest_bytes),
        store.blobs.path,
    )
    name = target.ref if target.ref is not None else _default_ref(record.name, target.transport)
    try:
        if target.transport is Transport.OCI:
            write_oci_layout(target.path, image, name)
        elif target.transport is Transport.OCI_ARCHIVE:
            write_oci_archive(target.path, image, name)
        else:
            write_docker_archive(target.path, image, [_docker_tag(name)] if name else [])
    except FileNotFoundError as exc:
        if exc.filename and str(exc.filename).startswith(store.paths.blobs):
            raise DestinationError(
                f"image {record.name!r}: blob {exc.filename} is missing from the store "
                f"(run 'layerctl fsck')"
            ) from None
        raise
    except OCIError as exc:
        raise exc.with_context(f"image {record.name!r}") from None
    return PushResult(record, target.transport, target.path, name)


def _manifest_bytes(store: Store, record: ImageRecord) -> bytes:
    try:
        return store.blobs.read(record.manifest_digest)
    except FileNotFoundError:
        raise DestinationError(
            f"image {record.name!r}: its manifest {record.manifest_digest} is missing from the "
            f"store at {store.root} (run 'layerctl fsck')"
        ) from None


def _push_to_registry(store: Store, ref: str, dest: str, options: RegistryOptions) -> PushResult:
    target = parse_source(dest)
    assert target.ref is not None
    record = store.find_image(ref)
    manifest_bytes = _manifest_bytes(store, record)
    manifest = parse_manifest(manifest_bytes)

    def open_blob(d: Descriptor) -> BinaryIO:
        try:
            return open(store.blobs.path(d.digest), "rb")
        except FileNotFoundError:
            raise DestinationError(
                f"image {record.name!r}: blob {d.digest} is missing from the store "
                "(run 'layerctl fsck')"
            ) from None

    image = PushImage(
        manifest_bytes,
        record.manifest_media_type,
        (manifest.config, *manifest.layers),
        open_blob,
        mount_from=_mount_sources(store, record),
    )
    result = push_to_registry(image, parse_registry_ref(target.ref), options)
    return PushResult(record, Transport.DOCKER, target.path, str(result.ref), result)


def _mount_sources(store: Store, record: ImageRecord) -> dict[Digest, RegistryRef]:
    """For blobs of ``record`` that images in the store were pulled with: where from."""
    wanted = {record.config_digest, *record.layer_digests}
    out: dict[Digest, RegistryRef] = {}
    for other in [record, *store.images()]:
        ref = _pulled_from(other.source)
        if ref is not None:
            for digest in (other.config_digest, *other.layer_digests):
                if digest in wanted:
                    out.setdefault(digest, ref)
    return out


def _pulled_from(source: str) -> RegistryRef | None:
    """The registry repository an image was pulled from, if it was."""
    if not source.startswith("docker://"):
        return None
    try:
        return parse_registry_ref(source[len("docker://") :])
    except OCIError:
        return None


def _default_ref(name: str, transport: Transport) -> str | None:
    """``name`` if it is a valid REF (``NAME:TAG``) for ``transport``, else None."""
    try:
        parse_source(f"{transport.value}:x:{name}")
    except OCIError:
        return None
    return name


def _docker_tag(name: str) -> str:
    """``NAME:TAG`` for ``RepoTags`` (``latest`` when ``name`` has no tag)."""
    return name if ":" in name.rpartition("/")[2] else f"{name}:latest"
