"""The store's JSON records: images, layers, and the references containers hold.

Image record, ``images/<escaped-name>.json`` (one per name; a new pull of a name replaces it)::

    {"version": 1, "name": "busybox:1.36", "id": "sha256:<config>",
     "manifest_digest": "sha256:...", "manifest_media_type": "application/vnd.oci...",
     "config_digest": "sha256:...", "layers": ["sha256:<chain id>", ...],   # bottom first
     "diff_ids": [...], "layer_digests": [...], "platform": "linux/amd64",
     "created": "<config's created>", "pulled": "<UTC time>", "source": "oci:...", "size": 123}

Every blob an image record names (manifest, config, layer blobs) is in ``blobs/`` and every
layer in ``layers/``: the record is written last, so a push can always write the image out
exactly as it was pulled.

Layer record, ``layers/<hex>/layer.json``: chain_id, diff_id, parent (the ChainID below, or
null), size (bytes of file data), tar_size, members, compressed (blob digests known to
decompress to this layer), unpacked (UTC time), owners_applied, xattr_sidecar, skipped_devices.

Container references, ``containers/<name>/container.json``, written by the container commands:
``{"image": "<name or ID>", "layers": [chain ids], "blobs": [digests]}`` (``blobs`` optional).
Only these keys are read here; whatever else a container record holds is its own business. A
container directory without ``container.json`` keeps nothing alive: write the record (under the
store lock) before the container relies on its layers.
Records that cannot be read raise `StoreDamagedError` (never silently skipped: `gc` must not
delete what an unreadable record might need).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from layerfs.oci import Digest, InvalidImageError, parse_digest
from layerfs.store.durable import write_atomic
from layerfs.store.errors import StoreDamagedError
from layerfs.store.layout import StorePaths
from layerfs.store.names import ImageName, escape_name, unescape_name

RECORD_VERSION = 1
CONTAINER_RECORD = "container.json"
LAYER_RECORD = "layer.json"
ENTRIES_FILE = "entries"
_SUFFIX = ".json"


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp (microseconds)."""
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ImageRecord:
    """One named image in the store."""

    name: ImageName
    manifest_digest: Digest
    manifest_media_type: str
    config_digest: Digest
    layers: tuple[Digest, ...]  # ChainIDs, bottom first
    diff_ids: tuple[Digest, ...]
    layer_digests: tuple[Digest, ...]  # blob digests, as in the manifest
    platform: str
    created: str | None
    pulled: str
    source: str
    size: int

    @property
    def id(self) -> Digest:
        """The image ID: its config digest (the same whichever transport it came from)."""
        return self.config_digest

    @property
    def blobs(self) -> tuple[Digest, ...]:
        """Every blob the image needs: manifest, config, layers."""
        return (self.manifest_digest, self.config_digest, *self.layer_digests)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "name": self.name,
            "id": self.id,
            "manifest_digest": self.manifest_digest,
            "manifest_media_type": self.manifest_media_type,
            "config_digest": self.config_digest,
            "layers": list(self.layers),
            "diff_ids": list(self.diff_ids),
            "layer_digests": list(self.layer_digests),
            "platform": self.platform,
            "created": self.created,
            "pulled": self.pulled,
            "source": self.source,
            "size": self.size,
        }


@dataclass(frozen=True)
class LayerRecord:
    """What the store knows of one unpacked layer."""

    chain_id: Digest
    diff_id: Digest
    parent: Digest | None
    size: int
    tar_size: int
    members: int
    compressed: tuple[Digest, ...]
    unpacked: str
    owners_applied: bool
    xattr_sidecar: bool
    skipped_devices: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "chain_id": self.chain_id,
            "diff_id": self.diff_id,
            "parent": self.parent,
            "size": self.size,
            "tar_size": self.tar_size,
            "members": self.members,
            "compressed": list(self.compressed),
            "unpacked": self.unpacked,
            "owners_applied": self.owners_applied,
            "xattr_sidecar": self.xattr_sidecar,
            "skipped_devices": self.skipped_devices,
        }


@dataclass(frozen=True)
class ContainerRef:
    """What a container record keeps alive."""

    name: str
    image: str | None
    layers: tuple[Digest, ...]
    blobs: tuple[Digest, ...]


# -- reading ------------------------------------------------------------------------------------


class JsonDoc:
    """Typed access to one JSON object; every failure names the file and the key."""

    def __init__(self, path: str, doc: object) -> None:
        if not isinstance(doc, dict):
            raise StoreDamagedError(f"{path}: not a JSON object")
        self.path, self.doc = path, doc

    def bad(self, key: str, what: str) -> StoreDamagedError:
        return StoreDamagedError(f"{self.path}: {key!r} {what}")

    def get(self, key: str, kind: type, *, optional: bool = False) -> Any:
        value = self.doc.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.bad(key, f"is missing or not a {kind.__name__}")
        return value

    def digest(self, key: str, *, optional: bool = False) -> Digest | None:
        value = self.get(key, str, optional=optional)
        return None if value is None else self._parse(key, value)

    def digests(self, key: str, *, optional: bool = False) -> tuple[Digest, ...]:
        values = self.get(key, list, optional=optional) or []
        if not all(isinstance(v, str) for v in values):
            raise self.bad(key, "is not a list of digests")
        return tuple(self._parse(key, v) for v in values)

    def _parse(self, key: str, value: str) -> Digest:
        try:
            return parse_digest(value)
        except InvalidImageError as exc:
            raise self.bad(key, f"holds an invalid digest: {exc}") from None


def load_doc(path: str) -> JsonDoc:
    """The JSON object in ``path``; StoreDamagedError naming the file when it is not one."""
    try:
        with open(path, "rb") as f:
            return JsonDoc(path, json.load(f))
    except ValueError as exc:
        raise StoreDamagedError(f"{path}: not valid JSON: {exc}") from exc


def _image_from(d: JsonDoc) -> ImageRecord:
    record = ImageRecord(
        name=ImageName(d.get("name", str)),
        manifest_digest=d.digest("manifest_digest") or Digest(""),
        manifest_media_type=d.get("manifest_media_type", str),
        config_digest=d.digest("config_digest") or Digest(""),
        layers=d.digests("layers"),
        diff_ids=d.digests("diff_ids"),
        layer_digests=d.digests("layer_digests"),
        platform=d.get("platform", str),
        created=d.get("created", str, optional=True),
        pulled=d.get("pulled", str),
        source=d.get("source", str),
        size=d.get("size", int),
    )
    if not len(record.layers) == len(record.diff_ids) == len(record.layer_digests):
        raise d.bad("layers", "differs in length from 'diff_ids' or 'layer_digests'")
    return record


def image_record_path(paths: StorePaths, name: ImageName) -> str:
    """``images/<escaped name>.json``."""
    return os.path.join(paths.images, escape_name(name) + _SUFFIX)


def read_image_record(paths: StorePaths, name: ImageName) -> ImageRecord | None:
    """The record of ``name``; None when there is none."""
    path = image_record_path(paths, name)
    try:
        record = _image_from(load_doc(path))
    except FileNotFoundError:
        return None
    if record.name != name:
        raise StoreDamagedError(f"{path}: holds the record of {record.name!r}, not {name!r}")
    return record


def list_image_records(paths: StorePaths) -> list[ImageRecord]:
    """Every image record, sorted by name."""
    out = []
    for name in _listdir(paths.images):
        if not name.endswith(_SUFFIX) or unescape_name(name[: -len(_SUFFIX)]) is None:
            continue  # temporary files of an update in progress, or strays
        try:
            out.append(_image_from(load_doc(os.path.join(paths.images, name))))
        except FileNotFoundError:
            continue  # removed meanwhile
    return sorted(out, key=lambda r: r.name)


def write_image_record(paths: StorePaths, record: ImageRecord) -> None:
    """Write (or replace) the record of ``record.name`` atomically."""
    write_atomic(image_record_path(paths, record.name), _dump(record.to_json()))


def read_layer_record(layer_dir: str) -> LayerRecord:
    """``layer.json`` of the layer at ``layer_dir`` (FileNotFoundError when there is none)."""
    d = load_doc(os.path.join(layer_dir, LAYER_RECORD))
    return LayerRecord(
        chain_id=d.digest("chain_id") or Digest(""),
        diff_id=d.digest("diff_id") or Digest(""),
        parent=d.digest("parent", optional=True),
        size=d.get("size", int),
        tar_size=d.get("tar_size", int),
        members=d.get("members", int),
        compressed=d.digests("compressed"),
        unpacked=d.get("unpacked", str),
        owners_applied=d.get("owners_applied", bool),
        xattr_sidecar=d.get("xattr_sidecar", bool),
        skipped_devices=d.get("skipped_devices", int),
    )


def write_layer_record(layer_dir: str, record: LayerRecord) -> None:
    """Write (or replace) ``layer.json`` atomically."""
    write_atomic(os.path.join(layer_dir, LAYER_RECORD), _dump(record.to_json()))


def list_container_refs(paths: StorePaths) -> list[ContainerRef]:
    """What every container record keeps alive."""
    out = []
    for name in sorted(_listdir(paths.containers)):
        path = os.path.join(paths.containers, name, CONTAINER_RECORD)
        try:
            d = load_doc(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        out.append(
            ContainerRef(
                name=name,
                image=d.get("image", str, optional=True),
                layers=d.digests("layers"),
                blobs=d.digests("blobs", optional=True),
            )
        )
    return out


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _dump(doc: Mapping[str, object] | Sequence[object]) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"
