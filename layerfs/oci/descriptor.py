"""Content descriptors: what a manifest or index says about a blob it points to.

A descriptor names a blob by media type, digest and size. When it embeds the
blob in ``data`` (image-spec 1.1) the parser checks that the data is strict
base64, as long as ``size`` and hashes to ``digest``, so an embedded blob can
be used without further verification.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from layerfs.oci.digest import Digest, verify_bytes
from layerfs.oci.errors import InvalidImageError
from layerfs.oci.jsondoc import (
    JPath,
    as_media_type,
    as_object,
    empty_map,
    load_json,
    opt_media_type,
    opt_str,
    opt_str_list,
    opt_str_map,
    req_digest,
    req_size,
    require,
)
from layerfs.oci.platform import Platform, parse_platform_object, platform_to_json


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (JSON names in snake_case)."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=empty_map, hash=False)
    platform: Platform | None = None
    data: bytes | None = None
    artifact_type: str | None = None


def parse_descriptor(data: bytes | str) -> Descriptor:
    """A :class:`Descriptor` from a JSON document holding one descriptor."""
    path = JPath("descriptor")
    return descriptor_from_json(load_json(data, path.doc), path)


def descriptor_from_json(value: object, path: JPath) -> Descriptor:
    """A :class:`Descriptor` from the parsed JSON ``value`` found at ``path``."""
    obj = as_object(value, path)
    media_type = as_media_type(require(obj, "mediaType", path), path.key("mediaType"))
    digest = req_digest(obj, "digest", path)
    size = req_size(obj, "size", path)
    platform = obj.get("platform")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        urls=opt_str_list(obj, "urls", path) or (),
        annotations=opt_str_map(obj, "annotations", path),
        platform=None
        if platform is None
        else parse_platform_object(platform, path.key("platform")),
        data=_embedded_data(obj, path, digest, size),
        artifact_type=opt_media_type(obj, "artifactType", path),
    )


def _embedded_data(
    obj: Mapping[str, object], path: JPath, digest: Digest, size: int
) -> bytes | None:
    text = opt_str(obj, "data", path)
    if text is None:
        return None
    where = path.key("data")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise where.error(f"invalid base64: {exc}") from None
    # b64decode tolerates non-zero padding bits; strict base64 has one spelling.
    if base64.b64encode(raw).decode("ascii") != text:
        raise where.error("invalid base64: not in canonical form")
    if len(raw) != size:
        raise where.error(f"decodes to {len(raw)} bytes but size is {size}")
    try:
        verify_bytes(digest, raw)
    except InvalidImageError as exc:
        raise where.error(str(exc)) from None
    return raw


def descriptor_to_json(d: Descriptor) -> dict[str, object]:
    """The JSON object of ``d``, for documents layerfs writes itself."""
    out: dict[str, object] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.urls:
        out["urls"] = list(d.urls)
    if d.annotations:
        out["annotations"] = dict(d.annotations)
    if d.platform is not None:
        out["platform"] = dict(platform_to_json(d.platform))
    if d.data is not None:
        out["data"] = base64.b64encode(d.data).decode("ascii")
    if d.artifact_type is not None:
        out["artifactType"] = d.artifact_type
    return out
