"""Push: write a stored image out, so that other tools can use it.

`push_image(store, ref, dest)` writes the image ``ref`` (a name or an ID) to ``dest``:

- ``oci:DIR[:REF]``: into the OCI image layout ``DIR``, made if missing (or empty), added to
  otherwise; the ``index.json`` entry is named ``REF`` (``org.opencontainers.image.ref.name``)
  and replaces an entry already named so.
- ``oci-archive:FILE[:REF]``: a tar of a one-image layout, replacing ``FILE``.
- ``docker-archive:FILE[:NAME[:TAG]]``: what ``docker save`` writes (``manifest.json`` with
  ``Config``, ``RepoTags``, ``Layers``), replacing ``FILE``.

Without ``REF`` (or ``NAME:TAG``) the image's own name is used when it is a valid one for the
transport (``busybox:1.36`` is; then ``layerctl pull oci:DIR:busybox:1.36`` gives the same name
back), else the entry has no name (``oci:``) or no tag (``docker-archive:``).

The blobs are written exactly as the store holds them, each verified while it is copied, so
every digest (manifest, config, layers) is the one the store has; a ``docker-archive`` has no
manifest blob, its ``manifest.json`` is synthesized. Writing is atomic (see
`layerfs.oci.writer`): a failure leaves the destination as it was. ``docker://`` is refused
("not supported yet").
"""

from __future__ import annotations

from dataclasses import dataclass

from layerfs.oci import Descriptor, OCIError, Transport, parse_manifest, parse_source
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


def push_image(store: Store, ref: str, dest: str) -> PushResult:
    """Write the stored image ``ref`` to ``dest`` (see the module doc)."""
    target = parse_destination(dest)
    record = store.find_image(ref)
    try:
        manifest_bytes = store.blobs.read(record.manifest_digest)
    except FileNotFoundError:
        raise DestinationError(
            f"image {record.name!r}: its manifest {record.manifest_digest} is missing from the "
            f"store at {store.root} (run 'layerctl fsck')"
        ) from None
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
