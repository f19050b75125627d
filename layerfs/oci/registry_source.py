"""The ``docker://`` transport: an image in a registry, read over the distribution API.

``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`` (see :mod:`layerfs.oci.registry.names`). Resolving
asks for the tag's (or digest's) manifest with every media type layerfs reads, verifies its
bytes (against the digest asked for, else against the registry's ``Docker-Content-Digest``),
and then walks it like any other source: an index or manifest list is chosen from by platform,
its manifest fetched by digest, the config read and checked. Layers are fetched only when the
caller opens them, each through a :class:`~layerfs.oci.registry.blobreader.BlobReader` (which
resumes a dropped download) inside the caller's verifying reader; so layers the store already
has are never downloaded.

Where registries.conf lists mirrors for the image, they are tried in order before the
registry itself; the first that serves the manifest serves the blobs too.

A missing tag or repository is a one-line :class:`SourceError` listing the tags there are.
"""

from __future__ import annotations

import io
import json
import logging

from layerfs.oci import mediatypes
from layerfs.oci.descriptor import Descriptor
from layerfs.oci.digest import Digest, compute_digest, split_digest, verify_bytes
from layerfs.oci.errors import InvalidImageError, OCIError, SourceError, UnsupportedImageError
from layerfs.oci.platform import Platform
from layerfs.oci.reference import SourceRef
from layerfs.oci.registry.blobreader import BlobReader
from layerfs.oci.registry.client import RegistryClient
from layerfs.oci.registry.errors import NotFoundError, RegistryError
from layerfs.oci.registry.mirrors import endpoints, load_registries, registries_conf_path
from layerfs.oci.registry.names import RegistryRef, parse_registry_ref
from layerfs.oci.registry.options import RegistryOptions
from layerfs.oci.resolve import finish_image, walk_to_manifest
from layerfs.oci.source import ImageSource, ResolvedImage
from layerfs.oci.streams import ByteStream

logger = logging.getLogger(__name__)

_TAGS_SHOWN = 10


class RegistrySource(ImageSource):
    """An image in a registry; ``options`` say how to reach it."""

    def __init__(self, ref: SourceRef, options: RegistryOptions) -> None:
        super().__init__(ref)
        assert ref.ref is not None, "docker:// source refs always carry the image name"
        self.image_ref = parse_registry_ref(ref.ref)
        self.options = options

    def resolve(self, platform: Platform | None = None) -> ResolvedImage:
        try:
            client, where, top = self._find_manifest()

            def opener(descriptor: Descriptor) -> ByteStream:
                return _open(client, where, descriptor)

            choice = walk_to_manifest(opener, [top], platform)
            return finish_image(str(self.ref), opener, choice, platform)
        except OCIError as exc:
            raise exc.with_context(str(self.ref)) from None

    def _find_manifest(self) -> tuple[RegistryClient, RegistryRef, Descriptor]:
        """The first endpoint (mirrors, then the registry) that serves the manifest."""
        entries = load_registries(registries_conf_path(self.options.registries_conf))
        places = endpoints(self.image_ref, entries, pull=True)
        for i, place in enumerate(places):
            try:
                client = RegistryClient(place.ref, self.options, insecure=place.insecure)
                return client, place.ref, _top_descriptor(client, place.ref)
            except RegistryError as exc:
                if i == len(places) - 1:
                    raise
                logger.info("mirror %s failed (%s); trying the next place", place.ref.name, exc)
        raise AssertionError("endpoints() always returns the registry itself")


def _top_descriptor(client: RegistryClient, ref: RegistryRef) -> Descriptor:
    """The descriptor (with its bytes embedded) of the manifest or index ``ref`` names."""
    try:
        reply = client.get_manifest(ref.repository, ref.reference)
    except NotFoundError as exc:
        raise _not_found(client, ref, exc) from None
    data = reply.data
    if ref.digest is not None:
        verify_bytes(ref.digest, data)
        digest: Digest = ref.digest
    else:
        digest = compute_digest(data)
        header = reply.digest
        if header is not None and header != digest:
            if split_digest(header)[0] == split_digest(digest)[0]:
                raise InvalidImageError(
                    f"manifest {ref.reference}: content hashes to {digest}, but the registry "
                    f"says {header}"
                )
            verify_bytes(header, data)
    media_type = reply.media_type or _sniff_media_type(data, ref)
    return Descriptor(media_type, digest, len(data), data=data)


def _sniff_media_type(data: bytes, ref: RegistryRef) -> str:
    """The kind of a manifest sent without a useful ``Content-Type``."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise InvalidImageError(f"manifest {ref.reference}: not JSON") from None
    if not isinstance(doc, dict):
        raise InvalidImageError(f"manifest {ref.reference}: not a JSON object")
    declared = doc.get("mediaType")
    if mediatypes.is_manifest_type(declared) or mediatypes.is_index_type(declared):
        assert isinstance(declared, str)
        return declared
    if doc.get("schemaVersion") == 1:
        raise UnsupportedImageError(
            f"manifest {ref.reference} is Docker schema 1, which layerfs does not read"
        )
    if "manifests" in doc:
        return mediatypes.OCI_INDEX
    return mediatypes.OCI_MANIFEST


def _not_found(client: RegistryClient, ref: RegistryRef, exc: NotFoundError) -> SourceError:
    tags: list[str] = []
    if exc.code != "NAME_UNKNOWN":
        try:
            tags = client.list_tags(ref.repository, _TAGS_SHOWN + 1)
        except NotFoundError as listing:
            exc = listing
        except OCIError:
            pass
    if exc.code == "NAME_UNKNOWN":
        return SourceError(f"no repository {ref.repository!r} on {ref.domain}")
    if ref.digest is not None:
        return SourceError(f"no manifest {ref.digest} in {ref.name}")
    if not tags:
        return SourceError(f"no tag {ref.reference!r} in {ref.name} (it has no tags)")
    shown = ", ".join(tags[:_TAGS_SHOWN]) + (", ..." if len(tags) > _TAGS_SHOWN else "")
    return SourceError(f"no tag {ref.reference!r} in {ref.name}; tags: {shown}")


def _open(client: RegistryClient, ref: RegistryRef, descriptor: Descriptor) -> ByteStream:
    """The raw bytes of a document or blob the image names (the caller verifies them)."""
    if mediatypes.is_manifest_type(descriptor.media_type) or mediatypes.is_index_type(
        descriptor.media_type
    ):
        return io.BytesIO(client.get_manifest(ref.repository, descriptor.digest).data)
    return BlobReader(client, ref.repository, descriptor.digest, descriptor.size)


def open_registry_source(ref: SourceRef, options: RegistryOptions) -> RegistrySource:
    """Open the ``docker://`` source ``ref`` (nothing is fetched until it is resolved)."""
    return RegistrySource(ref, options)
