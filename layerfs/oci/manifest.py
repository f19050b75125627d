"""Image manifests and image indexes (OCI and Docker schema 2).

Both documents are ``schemaVersion`` 2. A manifest's ``mediaType``, when
present, must be a manifest type and an index's an index type; a document
carrying the other kind's fields (``manifests`` in a manifest, ``config`` or
``layers`` in an index) is refused, since a reader guessing the kind from the
fields could be told one thing while another reader sees the other.
Layer media types are not checked here: unknown ones are allowed by the spec
and only fail when unpacked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from layerfs.oci import mediatypes
from layerfs.oci.descriptor import Descriptor, descriptor_from_json
from layerfs.oci.jsondoc import (
    JPath,
    as_list,
    as_object,
    empty_map,
    load_json,
    opt_media_type,
    opt_str_map,
    req_int,
    require,
)


@dataclass(frozen=True)
class Manifest:
    """An image manifest: one config blob and an ordered list of layers (bottom first)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None = None
    schema_version: int = 2
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = field(default_factory=empty_map, hash=False)


@dataclass(frozen=True)
class Index:
    """An image index (or Docker manifest list): descriptors of manifests or indexes."""

    manifests: tuple[Descriptor, ...]
    media_type: str | None = None
    schema_version: int = 2
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = field(default_factory=empty_map, hash=False)


def _check_header(obj: Mapping[str, object], path: JPath, allowed: frozenset[str]) -> str | None:
    version = req_int(obj, "schemaVersion", path)
    if version != 2:
        raise path.key("schemaVersion").error(f"expected 2, got {version}")
    media_type = opt_media_type(obj, "mediaType", path)
    if media_type is not None and media_type not in allowed:
        raise path.key("mediaType").error(
            f"{media_type!r} is not {_a(path.doc)} media type (expected one of "
            f"{', '.join(sorted(allowed))})"
        )
    return media_type


def _forbid(obj: Mapping[str, object], keys: tuple[str, ...], path: JPath) -> None:
    for key in keys:
        if key in obj:
            raise path.key(key).error(f"not allowed in {_a(path.doc)}")


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _descriptors(obj: Mapping[str, object], key: str, path: JPath) -> tuple[Descriptor, ...]:
    where = path.key(key)
    items = as_list(require(obj, key, path), where)
    return tuple(descriptor_from_json(item, where.at(i)) for i, item in enumerate(items))


def _subject(obj: Mapping[str, object], path: JPath) -> Descriptor | None:
    value = obj.get("subject")
    return None if value is None else descriptor_from_json(value, path.key("subject"))


def parse_manifest(data: bytes | str) -> Manifest:
    """A :class:`Manifest` from JSON; :class:`InvalidImageError` names the bad field."""
    path = JPath("manifest")
    obj = as_object(load_json(data, path.doc), path)
    media_type = _check_header(obj, path, mediatypes.MANIFEST_TYPES)
    _forbid(obj, ("manifests",), path)
    return Manifest(
        config=descriptor_from_json(require(obj, "config", path), path.key("config")),
        layers=_descriptors(obj, "layers", path),
        media_type=media_type,
        artifact_type=opt_media_type(obj, "artifactType", path),
        subject=_subject(obj, path),
        annotations=opt_str_map(obj, "annotations", path),
    )


def parse_index(data: bytes | str) -> Index:
    """An :class:`Index` from JSON; :class:`InvalidImageError` names the bad field."""
    path = JPath("index")
    obj = as_object(load_json(data, path.doc), path)
    media_type = _check_header(obj, path, mediatypes.INDEX_TYPES)
    _forbid(obj, ("config", "layers"), path)
    return Index(
        manifests=_descriptors(obj, "manifests", path),
        media_type=media_type,
        artifact_type=opt_media_type(obj, "artifactType", path),
        subject=_subject(obj, path),
        annotations=opt_str_map(obj, "annotations", path),
    )
