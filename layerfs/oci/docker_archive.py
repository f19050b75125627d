"""The ``docker-archive:`` transport: the tar written by ``docker save``.

The archive's ``manifest.json`` lists images, each with ``Config`` (the path
of the config JSON), ``RepoTags`` and ``Layers`` (paths of layer tars, bottom
first). REF picks one by a ``NAME[:TAG]`` from ``RepoTags`` (compared in full
form, so ``busybox`` matches ``docker.io/library/busybox:latest``) or by
``@N``; without REF the archive must hold exactly one image.

There is no manifest in the archive, so one is synthesized (Docker schema 2,
as containers/image does): the config descriptor from the config file's
bytes, and one descriptor per layer. A layer's compression is read from its
magic bytes (``docker save`` writes plain tars; other tools gzip). A plain
layer's digest is its diff_id from the config; a compressed layer is hashed
once to learn its digest. Everything is verified again when read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from layerfs.oci import mediatypes
from layerfs.oci.archive import ArchiveTree
from layerfs.oci.compression import detect_compression
from layerfs.oci.config import parse_config
from layerfs.oci.descriptor import Descriptor, descriptor_to_json
from layerfs.oci.digest import Digest, compute_digest, new_hasher
from layerfs.oci.errors import InvalidImageError, OCIError, SourceError
from layerfs.oci.jsondoc import (
    MAX_DOCUMENT_SIZE,
    JPath,
    as_list,
    as_object,
    as_str,
    load_json,
    opt_str_list,
    req_str,
    require,
)
from layerfs.oci.manifest import parse_manifest
from layerfs.oci.mediatypes import Compression
from layerfs.oci.platform import Platform
from layerfs.oci.reference import SourceRef, normalize_docker_name
from layerfs.oci.resolve import ManifestChoice, finish_image
from layerfs.oci.source import ImageSource, ResolvedImage
from layerfs.oci.streams import ByteStream, read_some, read_up_to

_ARCHIVE_MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20
_LAYER_MEDIA_TYPES = {
    Compression.NONE: mediatypes.DOCKER_LAYER_TAR,
    Compression.GZIP: mediatypes.DOCKER_LAYER_TAR_GZIP,
    Compression.ZSTD: mediatypes.OCI_LAYER_TAR_ZSTD,
}


@dataclass(frozen=True)
class ArchiveEntry:
    """One image listed in the archive's ``manifest.json``."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def parse_archive_manifest(data: bytes) -> tuple[ArchiveEntry, ...]:
    """The entries of a ``docker save`` ``manifest.json``."""
    path = JPath(_ARCHIVE_MANIFEST)
    items = as_list(load_json(data, path.doc), path)
    entries = []
    for i, item in enumerate(items):
        where = path.at(i)
        obj = as_object(item, where)
        layers_at = where.key("Layers")
        layers = as_list(require(obj, "Layers", where), layers_at)
        entries.append(
            ArchiveEntry(
                config=req_str(obj, "Config", where),
                repo_tags=opt_str_list(obj, "RepoTags", where) or (),
                layers=tuple(as_str(v, layers_at.at(n)) for n, v in enumerate(layers)),
            )
        )
    return tuple(entries)


class DockerArchiveSource(ImageSource):
    """A ``docker save`` archive."""

    def __init__(self, ref: SourceRef, scratch_dir: str | None = None) -> None:
        super().__init__(ref)
        self.tree = ArchiveTree(ref.path, scratch_dir)
        self._paths: dict[Digest, str] = {}

    def close(self) -> None:
        self.tree.close()

    def resolve(self, platform: Platform | None = None) -> ResolvedImage:
        try:
            entries = parse_archive_manifest(self._read_small(_ARCHIVE_MANIFEST))
            entry = self._select(entries)
            choice = self._synthesize(entry)
            return finish_image(str(self.ref), self._open_blob, choice, platform)
        except OCIError as exc:
            raise exc.with_context(str(self.ref)) from None

    def _read_small(self, name: str) -> bytes:
        try:
            f = self.tree.open(name)
        except FileNotFoundError:
            if name == _ARCHIVE_MANIFEST:
                raise SourceError(f"not a docker-archive: no {name} in the archive") from None
            raise InvalidImageError(f"{name!r} is missing from the archive") from None
        try:
            data = read_up_to(f, MAX_DOCUMENT_SIZE + 1)
        finally:
            f.close()
        if len(data) > MAX_DOCUMENT_SIZE:
            raise InvalidImageError(f"{name}: larger than {MAX_DOCUMENT_SIZE} bytes")
        return data

    def _select(self, entries: Sequence[ArchiveEntry]) -> ArchiveEntry:
        if not entries:
            raise SourceError("the archive holds no images")
        position = self.ref.source_index
        if position is not None:
            if position >= len(entries):
                raise SourceError(f"no image @{position}; the archive holds {len(entries)}")
            return entries[position]
        if self.ref.ref is None:
            if len(entries) == 1:
                return entries[0]
            raise SourceError(
                f"the archive holds {len(entries)} images; name one with "
                f"{self.ref}:NAME:TAG (available: {_names(entries)})"
            )
        wanted = normalize_docker_name(self.ref.ref)
        for entry in entries:
            if any(normalize_docker_name(tag) == wanted for tag in entry.repo_tags):
                return entry
        raise SourceError(f"no image tagged {self.ref.ref!r}; available: {_names(entries)}")

    def _synthesize(self, entry: ArchiveEntry) -> ManifestChoice:
        config_bytes = self._read_small(entry.config)
        config = parse_config(config_bytes)
        diff_ids = config.rootfs.diff_ids
        if len(diff_ids) != len(entry.layers):
            raise InvalidImageError(
                f"{entry.config}: {len(diff_ids)} diff_ids for {len(entry.layers)} layers"
            )
        config_desc = Descriptor(
            mediatypes.DOCKER_CONFIG, compute_digest(config_bytes), len(config_bytes)
        )
        self._paths[config_desc.digest] = entry.config
        layers = [self._layer_descriptor(p, d) for p, d in zip(entry.layers, diff_ids, strict=True)]
        doc = {
            "schemaVersion": 2,
            "mediaType": mediatypes.DOCKER_MANIFEST,
            "config": descriptor_to_json(config_desc),
            "layers": [descriptor_to_json(d) for d in layers],
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        manifest_desc = Descriptor(mediatypes.DOCKER_MANIFEST, compute_digest(raw), len(raw))
        return ManifestChoice(manifest_desc, raw, parse_manifest(raw), None)

    def _layer_descriptor(self, path: str, diff_id: Digest) -> Descriptor:
        try:
            size = self.tree.size(path)
            f = self.tree.open(path)
        except FileNotFoundError:
            raise InvalidImageError(f"layer {path!r} is missing from the archive") from None
        try:
            head = read_up_to(f, 4)
            compression = detect_compression(head)
            digest = diff_id if compression is Compression.NONE else _hash_rest(f, head)
        finally:
            f.close()
        self._paths[digest] = path
        return Descriptor(_LAYER_MEDIA_TYPES[compression], digest, size)

    def _open_blob(self, descriptor: Descriptor) -> ByteStream:
        path = self._paths.get(descriptor.digest)
        if path is None:
            raise FileNotFoundError(descriptor.digest)
        return self.tree.open(path)


def _hash_rest(f: ByteStream, head: bytes) -> Digest:
    hasher = new_hasher()
    hasher.update(head)
    while chunk := read_some(f, _HASH_CHUNK):
        hasher.update(chunk)
    return hasher.digest()


def _names(entries: Sequence[ArchiveEntry]) -> str:
    tags = [tag for entry in entries for tag in entry.repo_tags]
    return ", ".join([*dict.fromkeys(tags), _positions(len(entries))])


def open_docker_archive(ref: SourceRef, scratch_dir: str | None = None) -> DockerArchiveSource:
    """Open the ``docker-archive:`` source ``ref``."""
    try:
        return DockerArchiveSource(ref, scratch_dir)
    except OCIError as exc:
        raise exc.with_context(str(ref)) from None


def _positions(count: int) -> str:
    return "@0" if count == 1 else f"@0..@{count - 1}"
