"""The ``oci:`` transport: an OCI image layout in a directory (or any file tree).

The layout must have an ``oci-layout`` file of ``imageLayoutVersion`` 1.x and
an ``index.json``. REF selects entries of ``index.json`` by their
``org.opencontainers.image.ref.name`` annotation, or ``@N`` by position.
Without REF a layout holding one entry uses it; a layout whose entries all
declare a platform and share one name (or none) is chosen from by platform;
anything else is an error listing the names available. Blobs are
``blobs/<algorithm>/<encoded>``.

The ``oci-archive:`` transport reuses this reader over a tar archive.
"""

from __future__ import annotations

import os

from layerfs.oci.descriptor import Descriptor
from layerfs.oci.digest import split_digest
from layerfs.oci.errors import InvalidImageError, OCIError, SourceError
from layerfs.oci.jsondoc import MAX_DOCUMENT_SIZE, JPath, as_object, load_json, req_str
from layerfs.oci.manifest import Index, parse_index
from layerfs.oci.mediatypes import ANNOTATION_REF_NAME, IMAGE_INDEX_FILE, IMAGE_LAYOUT_FILE
from layerfs.oci.platform import Platform
from layerfs.oci.reference import SourceRef
from layerfs.oci.resolve import finish_image, walk_to_manifest
from layerfs.oci.source import ImageSource, ResolvedImage
from layerfs.oci.streams import ByteStream, read_up_to
from layerfs.oci.tree import DirTree, FileTree


class OCILayoutSource(ImageSource):
    """An OCI image layout read through a :class:`FileTree`."""

    def __init__(self, ref: SourceRef, tree: FileTree) -> None:
        super().__init__(ref)
        self.tree = tree

    def resolve(self, platform: Platform | None = None) -> ResolvedImage:
        try:
            self._check_layout()
            index = parse_index(self._read_file(IMAGE_INDEX_FILE))
            candidates = self._select(index)
            choice = walk_to_manifest(self._open_blob, candidates, platform)
            return finish_image(str(self.ref), self._open_blob, choice, platform)
        except OCIError as exc:
            raise exc.with_context(str(self.ref)) from None

    def _read_file(self, name: str) -> bytes:
        try:
            f = self.tree.open(name)
        except FileNotFoundError:
            raise SourceError(f"not an OCI image layout: no {name} file") from None
        try:
            data = read_up_to(f, MAX_DOCUMENT_SIZE + 1)
        finally:
            f.close()
        if len(data) > MAX_DOCUMENT_SIZE:
            raise InvalidImageError(f"{name}: larger than {MAX_DOCUMENT_SIZE} bytes")
        return data

    def _check_layout(self) -> None:
        path = JPath(IMAGE_LAYOUT_FILE)
        obj = as_object(load_json(self._read_file(IMAGE_LAYOUT_FILE), path.doc), path)
        version = req_str(obj, "imageLayoutVersion", path)
        if version.split(".")[0] != "1":
            raise SourceError(f"unsupported imageLayoutVersion {version!r} (expected 1.x)")

    def _select(self, index: Index) -> list[Descriptor]:
        entries = list(index.manifests)
        if not entries:
            raise SourceError("the layout holds no images")
        ref, position = self.ref.ref, self.ref.source_index
        if position is not None:
            if position >= len(entries):
                raise SourceError(f"no image @{position}; the layout holds {len(entries)}")
            return [entries[position]]
        if ref is not None:
            named = [d for d in entries if d.annotations.get(ANNOTATION_REF_NAME) == ref]
            if not named:
                raise SourceError(f"no image named {ref!r}; available: {_names(entries)}")
            return named
        names = {d.annotations.get(ANNOTATION_REF_NAME) for d in entries} - {None}
        if len(entries) == 1 or (len(names) <= 1 and all(d.platform for d in entries)):
            return entries
        raise SourceError(
            f"the layout holds {len(entries)} images; name one with "
            f"{self.ref}:REF (available: {_names(entries)})"
        )

    def _open_blob(self, descriptor: Descriptor) -> ByteStream:
        algorithm, encoded = split_digest(descriptor.digest)
        return self.tree.open(f"blobs/{algorithm}/{encoded}")


def _names(entries: list[Descriptor]) -> str:
    names = [d.annotations.get(ANNOTATION_REF_NAME) for d in entries]
    listed = [n for n in dict.fromkeys(names) if n is not None]
    return ", ".join([*listed, _positions(len(entries))])


def open_oci_layout(ref: SourceRef) -> OCILayoutSource:
    """Open the ``oci:`` source ``ref`` (a directory)."""
    if not os.path.isdir(ref.path):
        raise SourceError(f"{ref}: no such directory")
    return OCILayoutSource(ref, DirTree(ref.path))


def _positions(count: int) -> str:
    return "@0" if count == 1 else f"@0..@{count - 1}"
