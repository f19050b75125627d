"""Media types of OCI and Docker schema 2 images, and the compression of layers.

Docker schema 2 types are the historical equivalents of the OCI ones and are
treated the same way. Layer media types outside the known set still parse
(the spec allows them); :func:`layer_compression` is where an unsupported one
becomes an error, when a layer has to be unpacked.
"""

from __future__ import annotations

import enum

from layerfs.oci.errors import UnsupportedImageError

# Manifests and indexes.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# Image configuration.
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# Layers.
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Non-distributable layers are deprecated by image-spec 1.1 but still found.
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_TAR_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_TAR_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_TAR_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_TAR_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Foreign / non-distributable layers may be missing from a layout: their blob
# is meant to be fetched from the descriptor's urls.
FOREIGN_LAYER_TYPES = frozenset(
    {
        OCI_LAYER_NONDIST_TAR,
        OCI_LAYER_NONDIST_TAR_GZIP,
        OCI_LAYER_NONDIST_TAR_ZSTD,
        DOCKER_LAYER_FOREIGN_TAR_GZIP,
    }
)

# Image layout file names.
IMAGE_LAYOUT_FILE = "oci-layout"
IMAGE_INDEX_FILE = "index.json"

# Annotations.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


class Compression(enum.Enum):
    """How a layer blob is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_COMPRESSION: dict[str, Compression] = {
    OCI_LAYER_TAR: Compression.NONE,
    OCI_LAYER_TAR_GZIP: Compression.GZIP,
    OCI_LAYER_TAR_ZSTD: Compression.ZSTD,
    OCI_LAYER_NONDIST_TAR: Compression.NONE,
    OCI_LAYER_NONDIST_TAR_GZIP: Compression.GZIP,
    OCI_LAYER_NONDIST_TAR_ZSTD: Compression.ZSTD,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_LAYER_TAR_GZIP: Compression.GZIP,
    DOCKER_LAYER_FOREIGN_TAR_GZIP: Compression.GZIP,
}

LAYER_TYPES = frozenset(_LAYER_COMPRESSION)


def layer_compression(media_type: str) -> Compression:
    """The compression of a layer of ``media_type``.

    Raises :class:`UnsupportedImageError` for anything that is not a (possibly
    compressed) tar layer layerfs can unpack.
    """
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        pass
    if "+encrypted" in media_type:
        reason = "encrypted layers are not supported"
    else:
        reason = "not a layer type layerfs can unpack (tar, tar+gzip or tar+zstd)"
    raise UnsupportedImageError(f"layer media type {media_type!r}: {reason}")


def is_manifest_type(media_type: str | None) -> bool:
    """Whether ``media_type`` names an image manifest (OCI or Docker schema 2)."""
    return media_type in MANIFEST_TYPES


def is_index_type(media_type: str | None) -> bool:
    """Whether ``media_type`` names an image index or Docker manifest list."""
    return media_type in INDEX_TYPES
