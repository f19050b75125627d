"""The image-source interface: what every transport hands to the store.

An :class:`ImageSource` is opened on a source name and closed after use (it
is a context manager). :meth:`ImageSource.resolve` picks one image, for one
platform, and returns a :class:`ResolvedImage`: the parsed manifest and
config with their exact bytes, and the layers (bottom first) with their
diff_ids and ChainIDs. Each layer blob opens as a stream verified against its
descriptor, or directly as the uncompressed tar verified against its diff_id.

A :class:`ResolvedImage` reads through its source, so it is only usable while
the source is open. Every open blob has its own stream (files are opened
afresh, archive members read with ``pread``), so layers can be read in
parallel from several threads.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from layerfs.oci.blob import DEFAULT_MAX_BLOB_SIZE, VerifiedReader, VerifiedStream, check_expected
from layerfs.oci.compression import DEFAULT_LIMITS, DecompressionLimits, open_decompressed
from layerfs.oci.config import ImageConfig
from layerfs.oci.descriptor import Descriptor
from layerfs.oci.digest import Digest
from layerfs.oci.errors import SourceError
from layerfs.oci.manifest import Manifest
from layerfs.oci.mediatypes import Compression, layer_compression
from layerfs.oci.platform import Platform
from layerfs.oci.reference import SourceRef
from layerfs.oci.streams import ByteStream

BlobOpener = Callable[[Descriptor], ByteStream]
"""Opens the raw (unverified) content of the blob a descriptor names."""


@dataclass(frozen=True)
class Layer:
    """One layer of a resolved image."""

    index: int
    descriptor: Descriptor
    diff_id: Digest
    chain_id: Digest

    @property
    def compression(self) -> Compression:
        """The blob's compression; :class:`UnsupportedImageError` if layerfs cannot unpack it."""
        return layer_compression(self.descriptor.media_type)


@dataclass(frozen=True)
class ResolvedImage:
    """One image, chosen and verified down to its config; layers open on demand."""

    source: str
    manifest: Manifest
    manifest_bytes: bytes
    manifest_digest: Digest
    config: ImageConfig
    config_bytes: bytes
    layers: tuple[Layer, ...]
    platform: Platform | None = None
    opener: BlobOpener = field(repr=False, compare=False, kw_only=True)

    @property
    def config_digest(self) -> Digest:
        """The digest of the config blob, the image's ID."""
        return self.manifest.config.digest

    def open_blob(
        self, descriptor: Descriptor, *, max_size: int = DEFAULT_MAX_BLOB_SIZE
    ) -> VerifiedStream:
        """The blob of ``descriptor``, verified against its size and digest as it is read."""
        return VerifiedStream(self._open_verified(descriptor, max_size))

    def _open_verified(self, descriptor: Descriptor, max_size: int) -> VerifiedReader:
        # Checked before opening: a bad size or algorithm must cost no I/O.
        check_expected(descriptor.digest, descriptor.size, max_size)
        raw: ByteStream
        if descriptor.data is not None:
            raw = io.BytesIO(descriptor.data)
        else:
            try:
                raw = self.opener(descriptor)
            except FileNotFoundError:
                raise self._missing(descriptor) from None
        try:
            return VerifiedReader(raw, descriptor.digest, descriptor.size, max_size=max_size)
        except BaseException:
            raw.close()
            raise

    def _missing(self, descriptor: Descriptor) -> SourceError:
        hint = ""
        if descriptor.urls:
            hint = f" (a foreign layer, to be fetched from {descriptor.urls[0]}: not supported)"
        return SourceError(f"{self.source}: blob {descriptor.digest} is missing{hint}")

    def open_layer(self, layer: Layer) -> VerifiedStream:
        """The compressed blob of ``layer``, verified against its descriptor."""
        return self.open_blob(layer.descriptor)

    def open_layer_tar(
        self, layer: Layer, *, limits: DecompressionLimits = DEFAULT_LIMITS
    ) -> VerifiedStream:
        """The uncompressed tar of ``layer``, verified against its diff_id.

        Reading to the end verifies the diff_id and, through it, the blob's
        size and digest; a consumer that stops early calls ``verify()``.
        """
        compression = layer.compression
        blob = self._open_verified(layer.descriptor, DEFAULT_MAX_BLOB_SIZE)
        if compression is Compression.NONE and layer.descriptor.digest == layer.diff_id:
            return VerifiedStream(blob)  # the blob is the tar: one check covers both
        try:
            tar = open_decompressed(
                blob, compression, limits=limits, name=f"layer {layer.descriptor.digest}"
            )
            return VerifiedStream(VerifiedReader(tar, layer.diff_id, None))
        except BaseException:
            blob.close()
            raise


class ImageSource(abc.ABC):
    """An opened image source (one transport); close it when done."""

    def __init__(self, ref: SourceRef) -> None:
        self.ref = ref

    @abc.abstractmethod
    def resolve(self, platform: Platform | None = None) -> ResolvedImage:
        """Choose the image named by the source's REF for ``platform``.

        ``None`` means the host platform, where a choice between platforms is
        needed; an explicit platform is also checked against a single-platform
        image's config. Raises :class:`SourceError` when no image fits, and
        :class:`InvalidImageError` when the image is malformed.
        """

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release files and scratch space; resolved images stop working."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
