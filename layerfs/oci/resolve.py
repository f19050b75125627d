"""From candidate descriptors to one verified image: the part every transport shares.

:func:`walk_to_manifest` follows a descriptor through (possibly nested)
indexes, choosing by platform where there is a choice, until it reaches a
manifest; :func:`finish_image` reads and checks the config and builds the
:class:`~layerfs.oci.source.ResolvedImage`. Every document read on the way
is verified against its descriptor and bounded in size before it is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from layerfs.oci import mediatypes
from layerfs.oci.blob import check_expected, read_verified
from layerfs.oci.config import ImageConfig, parse_config
from layerfs.oci.descriptor import Descriptor
from layerfs.oci.digest import chain_ids
from layerfs.oci.errors import InvalidImageError, OCIError, SourceError, UnsupportedImageError
from layerfs.oci.jsondoc import MAX_DOCUMENT_SIZE
from layerfs.oci.manifest import Manifest, parse_index, parse_manifest
from layerfs.oci.platform import Platform, choose_platform, host_platform, rank_platform
from layerfs.oci.source import BlobOpener, Layer, ResolvedImage

MAX_INDEX_NESTING = 8

_T = TypeVar("_T")


@dataclass(frozen=True)
class ManifestChoice:
    """The manifest an index walk arrived at."""

    descriptor: Descriptor
    raw: bytes
    manifest: Manifest
    platform: Platform | None  # from the index entry, when one was chosen by platform


def read_document(opener: BlobOpener, descriptor: Descriptor, what: str) -> bytes:
    """The verified bytes of a JSON blob (manifest, index, config), size-bounded."""
    if descriptor.data is not None:
        return descriptor.data  # checked against size and digest when parsed
    if descriptor.size > MAX_DOCUMENT_SIZE:
        raise InvalidImageError(
            f"{what} {descriptor.digest}: size {descriptor.size} exceeds the "
            f"{MAX_DOCUMENT_SIZE}-byte limit for documents"
        )
    try:
        check_expected(descriptor.digest, descriptor.size, MAX_DOCUMENT_SIZE)
        try:
            raw = opener(descriptor)
        except FileNotFoundError:
            raise SourceError(f"blob {descriptor.digest} is missing") from None
        return read_verified(raw, descriptor.digest, descriptor.size, max_size=MAX_DOCUMENT_SIZE)
    except OCIError as exc:
        raise exc.with_context(what) from None


def describe_platforms(descriptors: Sequence[Descriptor]) -> str:
    """The platforms of ``descriptors`` for an error message."""
    names = [str(d.platform) for d in descriptors if d.platform is not None]
    return ", ".join(dict.fromkeys(names)) or "none declared"


def choose_descriptor(candidates: Sequence[Descriptor], want: Platform, where: str) -> Descriptor:
    """The candidate for platform ``want``; the sole one if none declares a platform."""
    pick = choose_platform(want, [d.platform for d in candidates])
    if pick is not None:
        return candidates[pick]
    bare = [d for d in candidates if d.platform is None]
    if len(candidates) == 1 and bare:
        return bare[0]
    prefix = f"{where}: " if where else ""
    raise SourceError(
        f"{prefix}no image for platform {want}; available: {describe_platforms(candidates)}"
    )


def walk_to_manifest(
    opener: BlobOpener, candidates: Sequence[Descriptor], platform: Platform | None
) -> ManifestChoice:
    """Follow ``candidates`` through indexes to a manifest for ``platform``.

    A single candidate is taken as it is (it is what the user named); among
    several, and inside every index, the platform decides (None: the host's).
    """
    want = platform or host_platform()
    if not candidates:
        raise SourceError("no images")
    chosen_platform: Platform | None = None
    if len(candidates) == 1:
        descriptor = candidates[0]
    else:
        descriptor = choose_descriptor(candidates, want, "")
        chosen_platform = descriptor.platform
    for _ in range(MAX_INDEX_NESTING + 1):
        media_type = descriptor.media_type
        if mediatypes.is_manifest_type(media_type):
            raw = read_document(opener, descriptor, "manifest")
            manifest = _parse(parse_manifest, raw, descriptor)
            _check_declared_type(manifest.media_type, media_type, descriptor)
            return ManifestChoice(descriptor, raw, manifest, chosen_platform)
        if not mediatypes.is_index_type(media_type):
            raise UnsupportedImageError(
                f"{descriptor.digest} has media type {media_type!r}, not an image manifest or index"
            )
        raw = read_document(opener, descriptor, "index")
        index = _parse(parse_index, raw, descriptor)
        _check_declared_type(index.media_type, media_type, descriptor)
        descriptor = choose_descriptor(index.manifests, want, f"index {descriptor.digest}")
        chosen_platform = descriptor.platform
    raise InvalidImageError(f"indexes nested deeper than {MAX_INDEX_NESTING} levels")


def _parse(parse: Callable[[bytes], _T], raw: bytes, descriptor: Descriptor) -> _T:
    try:
        return parse(raw)
    except InvalidImageError as exc:
        raise exc.with_context(str(descriptor.digest)) from None


def _check_declared_type(actual: str | None, declared: str, descriptor: Descriptor) -> None:
    # The descriptor and the document must agree, or two readers may disagree on the image.
    if actual is not None and actual != declared:
        raise InvalidImageError(
            f"{descriptor.digest}: document media type {actual!r} differs from "
            f"its descriptor's {declared!r}"
        )


def finish_image(
    source: str,
    opener: BlobOpener,
    choice: ManifestChoice,
    requested: Platform | None,
) -> ResolvedImage:
    """Read and check the config of ``choice`` and build the :class:`ResolvedImage`.

    ``source`` names the image in the result; errors raised here do not carry it.
    """
    manifest = choice.manifest
    config_desc = manifest.config
    if config_desc.media_type not in mediatypes.CONFIG_TYPES:
        raise UnsupportedImageError(
            f"not a container image: config media type {config_desc.media_type!r}"
        )
    config_bytes = read_document(opener, config_desc, "config")
    config = _parse(parse_config, config_bytes, config_desc)
    diff_ids = config.rootfs.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise InvalidImageError(
            f"manifest {choice.descriptor.digest} has {len(manifest.layers)} layers "
            f"but its config lists {len(diff_ids)} diff_ids"
        )
    if requested is not None and choice.platform is None:
        _check_config_platform(config, requested)
    chains = chain_ids(diff_ids)
    layers = tuple(Layer(i, desc, diff_ids[i], chains[i]) for i, desc in enumerate(manifest.layers))
    return ResolvedImage(
        source=source,
        manifest=manifest,
        manifest_bytes=choice.raw,
        manifest_digest=choice.descriptor.digest,
        config=config,
        config_bytes=config_bytes,
        layers=layers,
        platform=choice.platform
        or Platform(config.os, config.architecture, config.variant, config.os_version),
        opener=opener,
    )


def _check_config_platform(config: ImageConfig, requested: Platform) -> None:
    have = Platform(config.os, config.architecture, config.variant)
    if rank_platform(requested, have) is None:
        raise SourceError(f"image is for {have}, not {requested}")
