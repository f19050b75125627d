"""Pushing an image to a registry: its blobs (in parallel), then its manifest.

:func:`push_to_registry` takes the image as :class:`PushImage` (the manifest's exact bytes and
media type, the blobs it names, and a way to open each blob's local file) and puts it at
``dest``: each blob through :func:`~layerfs.oci.registry.upload.upload_blob` (skipped when the
repository has it, mounted from the repository ``mount_from`` names for it when that is on the
same registry, uploaded otherwise), then the manifest under ``dest``'s tag (or digest). The
manifest goes last, so a failed push leaves at most some unreferenced blobs, never a tag
naming missing ones.

The destination goes through registries.conf (its ``location`` and ``insecure``; mirrors are
for pulls only). The digests stay what they are: blobs and manifest are sent byte for byte.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from layerfs.oci.descriptor import Descriptor
from layerfs.oci.digest import Digest, compute_digest, digests_equal
from layerfs.oci.errors import InvalidImageError, OCIError
from layerfs.oci.registry.client import RegistryClient
from layerfs.oci.registry.errors import RegistryError
from layerfs.oci.registry.mirrors import endpoints, load_registries, registries_conf_path
from layerfs.oci.registry.names import DEFAULT_TAG, RegistryRef
from layerfs.oci.registry.options import RegistryOptions
from layerfs.oci.registry.upload import BlobOpener, UploadAction, upload_blob


@dataclass(frozen=True)
class PushImage:
    """An image to push: manifest bytes and media type, its blobs, how to open them."""

    manifest: bytes
    media_type: str
    blobs: tuple[Descriptor, ...]  # config and layers; duplicates are pushed once
    open_blob: BlobOpener
    # Repositories that may hold some blobs already (blob digest -> where it was pulled from).
    mount_from: Mapping[Digest, RegistryRef] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class RegistryPushResult:
    """Where the image went, its manifest digest, and what each blob took."""

    ref: RegistryRef  # after registries.conf, with the tag it was pushed under
    digest: Digest
    actions: tuple[tuple[Digest, UploadAction], ...]

    def count(self, action: UploadAction) -> int:
        """How many blobs took ``action``."""
        return sum(1 for _, a in self.actions if a is action)


def push_to_registry(
    image: PushImage, dest: RegistryRef, options: RegistryOptions
) -> RegistryPushResult:
    """Push ``image`` to ``dest``; see the module doc. Errors name ``docker://DEST``."""
    try:
        return _push(image, dest, options)
    except OCIError as exc:
        raise exc.with_context(f"docker://{dest}") from None


def _push(image: PushImage, dest: RegistryRef, options: RegistryOptions) -> RegistryPushResult:
    digest = compute_digest(image.manifest)
    if dest.digest is not None and not digests_equal(dest.digest, digest):
        raise InvalidImageError(f"the image's manifest digest is {digest}, not {dest.digest}")
    entries = load_registries(registries_conf_path(options.registries_conf))
    endpoint = endpoints(dest, entries, pull=False)[-1]
    target = endpoint.ref
    client = RegistryClient(target, options, insecure=endpoint.insecure)
    mount_from = {
        digest: ref.repository
        for digest, ref in image.mount_from.items()
        if ref.api_host == target.api_host
    }
    blobs = list({d.digest: d for d in image.blobs}.values())
    actions = _upload_all(client, target, blobs, image, mount_from, options.parallel_uploads)
    reference = target.tag or (target.digest or DEFAULT_TAG)
    reported = client.put_manifest(target.repository, reference, image.manifest, image.media_type)
    if reported is not None and reported.startswith("sha256:") and reported != digest:
        raise RegistryError(f"the registry stored the manifest as {reported}, not {digest}")
    if target.tag is None and target.digest is None:
        target = target.with_reference(tag=DEFAULT_TAG)
    return RegistryPushResult(target, digest, actions)


def _upload_all(
    client: RegistryClient,
    target: RegistryRef,
    blobs: Sequence[Descriptor],
    image: PushImage,
    mount_from: Mapping[Digest, str],
    workers: int,
) -> tuple[tuple[Digest, UploadAction], ...]:
    if not blobs:
        return ()
    with concurrent.futures.ThreadPoolExecutor(
        max(1, min(workers, len(blobs))), thread_name_prefix="upload"
    ) as pool:
        futures = [
            pool.submit(
                upload_blob,
                client,
                target.repository,
                d,
                image.open_blob,
                mount_from=mount_from.get(d.digest),
            )
            for d in blobs
        ]
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for f in futures:
            if f.done() and f.exception() is not None:
                for other in futures:
                    other.cancel()
                exc = f.exception()
                assert exc is not None
                raise exc
        return tuple((d.digest, f.result()) for d, f in zip(blobs, futures, strict=True))
