"""The OCI image model: digests, descriptors, index/manifest/config, media types, sources.

This package reads images (``oci:``, ``oci-archive:``, ``docker-archive:``, ``docker://``)
and writes them (`writer`: layouts and archives; `registry`: pushes); it must not import
``layerfs.fs``, ``layerfs.store`` or ``layerfs.bundle``, and it writes only where its caller
says: a scratch directory, or the destination of a push.

Documents — ``parse_descriptor``, ``parse_manifest``, ``parse_index`` and
``parse_config`` take JSON (``bytes`` or ``str``) and return frozen
dataclasses (:class:`Descriptor`, :class:`Manifest`, :class:`Index`,
:class:`ImageConfig`), field names in snake_case. Anything malformed raises
:class:`InvalidImageError` (a ``ValueError``) naming the field, e.g.
``manifest: layers[2].digest: ...``. Unknown fields and unknown layer media
types are accepted; documents over 4 MiB or nested deeper than 64 are not.

Digests — :data:`Digest`, :func:`parse_digest`, :func:`new_hasher`,
:func:`compute_digest`, :func:`chain_id`/:func:`chain_ids`.

Blobs — :class:`VerifiedReader` checks size and digest while a blob is read
(:class:`VerifiedStream` is its buffered ``BinaryIO`` form, what sources return);
:func:`open_decompressed` streams gzip/zstd/plain with a bomb guard
(:class:`DecompressionLimits`); :func:`layer_compression` maps a media type
to a :class:`Compression`.

Sources — the store's entry point::

    with open_source("oci-archive:img.tar:v1", scratch_dir=tmp) as source:
        image = source.resolve(parse_platform("linux/arm64"))  # None: host
        image.manifest, image.manifest_bytes, image.manifest_digest
        image.config, image.config_bytes, image.config_digest
        for layer in image.layers:          # bottom first
            layer.diff_id, layer.chain_id, layer.compression
            with image.open_layer_tar(layer) as tar_stream:
                tarfile.open(fileobj=tar_stream, mode="r|")...
                tar_stream.verify()         # drain and check the diff_id

``image.open_layer(layer)`` gives the compressed blob instead, verified
against its descriptor. Names follow skopeo: ``oci:DIR[:REF]``,
``oci-archive:FILE[:REF]``, ``docker-archive:FILE[:REF]`` (REF may be
``@N``). Source problems (unknown transport, no such REF or platform, missing
files) raise :class:`SourceError`. A resolved image reads through its source:
use it only while the source is open.

Caveats: foreign layers whose blob is
absent cannot be fetched from their URLs; an ``oci-archive`` or
``docker-archive`` that is itself compressed is decompressed into the scratch
directory first.
"""

from __future__ import annotations

from layerfs.oci.blob import DEFAULT_MAX_BLOB_SIZE, VerifiedReader, VerifiedStream, read_verified
from layerfs.oci.compression import (
    DEFAULT_LIMITS,
    DecompressionLimits,
    detect_compression,
    open_decompressed,
)
from layerfs.oci.config import ContainerConfig, History, ImageConfig, RootFS, parse_config
from layerfs.oci.descriptor import Descriptor, descriptor_to_json, parse_descriptor
from layerfs.oci.digest import (
    Digest,
    DigestError,
    DigestHasher,
    chain_id,
    chain_ids,
    compute_digest,
    hasher_for,
    new_hasher,
    parse_digest,
    split_digest,
    verify_bytes,
)
from layerfs.oci.errors import (
    BlobVerificationError,
    DecompressionBombError,
    InvalidImageError,
    OCIError,
    SourceError,
    UnsupportedImageError,
)
from layerfs.oci.manifest import Index, Manifest, parse_index, parse_manifest
from layerfs.oci.mediatypes import Compression, layer_compression
from layerfs.oci.platform import Platform, host_platform, normalize_platform, parse_platform
from layerfs.oci.reference import SourceRef, Transport, parse_source
from layerfs.oci.source import ImageSource, Layer, ResolvedImage
from layerfs.oci.transports import open_source

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_BLOB_SIZE",
    "BlobVerificationError",
    "Compression",
    "ContainerConfig",
    "DecompressionBombError",
    "DecompressionLimits",
    "Descriptor",
    "Digest",
    "DigestError",
    "DigestHasher",
    "History",
    "ImageConfig",
    "ImageSource",
    "Index",
    "InvalidImageError",
    "Layer",
    "Manifest",
    "OCIError",
    "Platform",
    "ResolvedImage",
    "RootFS",
    "SourceError",
    "SourceRef",
    "Transport",
    "UnsupportedImageError",
    "VerifiedReader",
    "VerifiedStream",
    "chain_id",
    "chain_ids",
    "compute_digest",
    "descriptor_to_json",
    "detect_compression",
    "hasher_for",
    "host_platform",
    "layer_compression",
    "new_hasher",
    "normalize_platform",
    "open_decompressed",
    "open_source",
    "parse_config",
    "parse_descriptor",
    "parse_digest",
    "parse_index",
    "parse_manifest",
    "parse_platform",
    "parse_source",
    "read_verified",
    "split_digest",
    "verify_bytes",
]
