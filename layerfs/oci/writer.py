"""Writing OCI images out: new layer blobs, image layouts, ``oci-archive`` and ``docker-archive``.

The rest of ``layerfs.oci`` reads images; this module writes them, and only where its caller
says. Four jobs:

- `GzipLayerWriter` is the file a layer tar is written to: it gzips what it is given and hashes
  both sides as the bytes go by, so the blob's digest and the layer's diff_id are known when the
  tar is finished, without reading anything twice.
- `layer_member`, `whiteout_member` and `opaque_member` are the tar headers of a layer's
  members, in the forms the image spec defines (numeric owners, PAX times and xattrs, OCI
  whiteouts with fixed attributes).
- `oci_manifest_bytes` and `json_bytes` serialize the documents layerfs makes itself (compact,
  in a fixed key order, so equal images give equal digests).
- `write_oci_layout`, `write_oci_archive` and `write_docker_archive` write an existing image,
  given as `ImageBlobs` (its manifest and a function that finds each blob's file), exactly as
  its blobs are: every digest stays what it was. For ``docker-archive`` the archive's
  ``manifest.json`` is synthesized (``Config``, ``RepoTags``, ``Layers``; the config as
  ``<hex>.json``, each layer blob as ``<hex>.tar``, compressed or not: ``docker load`` and
  layerfs both detect the compression).

Blobs are never trusted: each is checked against its descriptor's size and digest while it is
copied, and a damaged one is an error (`BlobVerificationError`), not a damaged output.

Atomicity: an archive is written to a hidden temporary sibling and renamed over the target once
complete; a new layout directory likewise (its missing parents are made, as skopeo does, and
removed again on failure). Adding to an existing layout writes each missing blob
under a temporary name then renames it, and replaces ``index.json`` last, atomically; on failure
the blobs it had added are removed again. Concurrent writers to one layout are not coordinated
(neither are skopeo's).

Caveats: gzip output is deterministic for one zlib (header mtime 0, OS "unix"); a different
zlib may compress the same tar to other bytes (the diff_id does not change). ``docker://`` is
not written (`parse_destination` refuses it), nor are the deprecated ``repositories`` file and
per-layer ``json``/``VERSION`` files of old ``docker save`` archives (``docker load`` reads
``manifest.json``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from layerfs.oci import mediatypes
from layerfs.oci.blob import VerifiedReader
from layerfs.oci.descriptor import Descriptor, descriptor_to_json
from layerfs.oci.digest import Digest, DigestHasher, new_hasher, split_digest
from layerfs.oci.errors import OCIError
from layerfs.oci.jsondoc import JPath, as_list, as_object, load_json
from layerfs.oci.manifest import Manifest
from layerfs.oci.reference import SourceRef, parse_source

_CHUNK = 1 << 20
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer around the deflate stream
LAYOUT_VERSION = "1.0.0"
ARCHIVE_MANIFEST = "manifest.json"

# Docker schema 2 types and their OCI equivalents, for manifests layerfs writes itself.
_OCI_LAYER_TYPE = {
    mediatypes.DOCKER_LAYER_TAR: mediatypes.OCI_LAYER_TAR,
    mediatypes.DOCKER_LAYER_TAR_GZIP: mediatypes.OCI_LAYER_TAR_GZIP,
    mediatypes.DOCKER_LAYER_FOREIGN_TAR_GZIP: mediatypes.OCI_LAYER_NONDIST_TAR_GZIP,
}


class DestinationError(OCIError):
    """An image cannot be written where asked: a bad name, or a path that is something else."""


# -- layer blobs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerDigests:
    """What a finished layer blob is: its digest and size (compressed), and its diff_id."""

    digest: Digest
    size: int
    diff_id: Digest


class GzipLayerWriter(io.RawIOBase):
    """A write-only file for ``tarfile``: gzips into ``out``, hashing both sides.

    ``tell`` counts the uncompressed bytes (``tarfile`` asks). Call `finish` once the tar is
    closed; ``out`` stays open (the caller flushes, syncs and closes it).
    """

    def __init__(self, out: BinaryIO, level: int = 6) -> None:
        super().__init__()
        self._out = out
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        self._diff: DigestHasher = new_hasher()
        self._blob: DigestHasher = new_hasher()
        self._plain = 0
        self._size = 0
        self._result: LayerDigests | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._result is not None:
            raise ValueError("layer already finished")
        view = memoryview(data).cast("B")
        self._diff.update(view)
        self._plain += len(view)
        self._emit(self._zlib.compress(view))
        return len(view)

    def tell(self) -> int:
        return self._plain

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self._out.write(chunk)
            self._blob.update(chunk)
            self._size += len(chunk)

    def finish(self) -> LayerDigests:
        """End the gzip stream; the digests (the same on every later call)."""
        if self._result is None:
            self._emit(self._zlib.flush())
            self._result = LayerDigests(self._blob.digest(), self._size, self._diff.digest())
        return self._result


# -- layer tar members ----------------------------------------------------------------------------

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_NS = 1_000_000_000


def _pax_time(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    seconds, fraction = divmod(abs(ns), _NS)
    return f"{sign}{seconds}.{fraction:09d}".rstrip("0")


def layer_member(
    path: str,
    st: os.stat_result,
    *,
    linkname: str = "",
    hardlink: bool = False,
    xattrs: Mapping[str, bytes] | None = None,
) -> tarfile.TarInfo:
    """The header of a layer tar member for the object ``st`` at ``path`` (relative, no ``./``).

    Owners are numeric only (no user or group names: they would say nothing inside an image);
    times keep their nanoseconds in PAX ``mtime`` when they have any; ``xattrs`` become
    ``SCHILY.xattr.*`` records, binary values included. ``linkname`` is a symlink's target or,
    with ``hardlink``, the earlier member this one is a hard link to. Sockets have no tar form:
    `ValueError`.
    """
    info = tarfile.TarInfo(path)
    mode = st.st_mode
    if hardlink:
        info.type, info.linkname = tarfile.LNKTYPE, linkname
    elif stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, linkname
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        raise ValueError(f"{path}: {stat.filemode(mode)[0]!r} objects cannot go in a tar")
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime_ns // _NS
    headers: dict[str, str] = {}
    if st.st_mtime_ns % _NS:
        headers["mtime"] = _pax_time(st.st_mtime_ns)
    for name, value in sorted((xattrs or {}).items()):
        headers[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = headers
    return info


def whiteout_member(path: str) -> tarfile.TarInfo:
    """The OCI whiteout that removes ``path`` from the layers below (``DIR/.wh.NAME``)."""
    parent, _, name = path.rpartition("/")
    return _marker(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name)


def opaque_member(directory: str) -> tarfile.TarInfo:
    """The OCI marker hiding everything the layers below hold in ``directory`` ("" = root)."""
    return _marker(f"{directory}/{OPAQUE_MARKER}" if directory else OPAQUE_MARKER)


def _marker(path: str) -> tarfile.TarInfo:
    # Fixed attributes: a commit of the same changes gives the same layer whenever it runs.
    info = tarfile.TarInfo(path)
    info.type, info.mode, info.mtime = tarfile.REGTYPE, 0o600, 0
    return info


# -- documents ------------------------------------------------------------------------------------


def json_bytes(doc: object) -> bytes:
    """``doc`` as compact UTF-8 JSON, keys in the order given (stable digests)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def oci_layer_type(media_type: str) -> str:
    """The OCI media type of a layer of ``media_type`` (Docker types mapped, others kept)."""
    return _OCI_LAYER_TYPE.get(media_type, media_type)


def oci_manifest_bytes(
    config: Descriptor,
    layers: Sequence[Descriptor],
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """An OCI image manifest of ``config`` and ``layers`` (bottom first)."""
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": descriptor_to_json(config),
        "layers": [descriptor_to_json(d) for d in layers],
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    return json_bytes(doc)


# -- destinations ---------------------------------------------------------------------------------


def parse_destination(name: str) -> SourceRef:
    """Parse where to write an image: ``oci:DIR[:REF]``, ``oci-archive:FILE[:REF]`` or
    ``docker-archive:FILE[:NAME[:TAG]]``; `DestinationError` names what is wrong."""
    if name.startswith("docker://"):
        raise DestinationError(
            f"{name}: pushing to a registry (docker://) is not supported yet; "
            "use oci:DIR[:REF], oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG]"
        )
    try:
        ref = parse_source(name)
    except OCIError as exc:
        raise DestinationError(str(exc)) from None
    if ref.source_index is not None:
        raise DestinationError(f"{name!r}: @N selects an existing image; give a name instead")
    return ref


# -- writing images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBlobs:
    """An image to write out: its manifest blob's descriptor, the parsed manifest, and where
    each blob's file is (``locate(digest)``; the file is verified as it is read)."""

    manifest: Descriptor
    document: Manifest
    locate: Callable[[Digest], str]

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Every blob, once each: manifest, config, then the layers bottom first."""
        seen: dict[Digest, Descriptor] = {}
        for d in (self.manifest, self.document.config, *self.document.layers):
            seen.setdefault(d.digest, d)
        return tuple(seen.values())


def _blob_name(digest: Digest) -> str:
    algorithm, encoded = split_digest(digest)
    return f"blobs/{algorithm}/{encoded}"


def _open_verified(image: ImageBlobs, d: Descriptor) -> VerifiedReader:
    f = open(image.locate(d.digest), "rb")  # noqa: SIM115 - the reader closes it
    try:
        return VerifiedReader(f, d.digest, d.size)
    except BaseException:
        f.close()
        raise


def _copy_verified(image: ImageBlobs, d: Descriptor, out: BinaryIO) -> None:
    with _open_verified(image, d) as src:
        shutil.copyfileobj(src, out, _CHUNK)
        src.verify()


def _index_entry(image: ImageBlobs, ref: str | None) -> dict[str, object]:
    entry = descriptor_to_json(image.manifest)
    entry.pop("annotations", None)
    if ref is not None:
        entry["annotations"] = {mediatypes.ANNOTATION_REF_NAME: ref}
    return entry


def _new_index(image: ImageBlobs, ref: str | None) -> bytes:
    return json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [_index_entry(image, ref)],
        }
    )


def _layout_file() -> bytes:
    return json_bytes({"imageLayoutVersion": LAYOUT_VERSION})


def temp_sibling(path: str) -> str:
    """A unique hidden temporary name next to ``path``."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.{uuid.uuid4().hex[:12]}.tmp")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_parent(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DestinationError(f"{path}: cannot write the {what}: {parent} is not a directory")


def write_oci_layout(directory: str, image: ImageBlobs, ref: str | None) -> None:
    """Write ``image`` into the OCI image layout ``directory``, named ``ref``.

    A missing (or empty) directory becomes a new layout; an existing layout gets the blobs it
    lacks and an ``index.json`` entry, which replaces any entry already named ``ref``.
    """
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise DestinationError(f"{directory}: exists and is not a directory")
    if os.path.isdir(directory) and os.listdir(directory):
        _add_to_layout(directory, image, ref)
        return
    made = _make_parents(directory)
    tmp = temp_sibling(directory)
    try:
        os.mkdir(tmp, 0o755)
        _write_blob_files(tmp, image)
        _write_file(os.path.join(tmp, mediatypes.IMAGE_LAYOUT_FILE), _layout_file())
        _write_file(os.path.join(tmp, mediatypes.IMAGE_INDEX_FILE), _new_index(image, ref))
        _fsync_dir(tmp)
        if os.path.isdir(directory):
            os.rmdir(directory)  # empty: checked above
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(made):
            os.rmdir(parent)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(directory)))


def _make_parents(path: str) -> list[str]:
    """Create the missing parent directories of ``path`` (as skopeo does); those it made."""
    made: list[str] = []
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise DestinationError(f"{path}: cannot make the image layout: {parent} is a file")
        made.append(parent)
        parent = os.path.dirname(parent)
    made.reverse()
    try:
        for d in made:
            os.mkdir(d, 0o755)
    except BaseException:
        for d in reversed(made):
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise
    return made


def _write_file(path: str, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_blob_files(root: str, image: ImageBlobs) -> list[str]:
    """Copy every blob ``root`` lacks into it; the paths it created."""
    created: list[str] = []
    try:
        for d in image.blobs:
            path = os.path.join(root, _blob_name(d.digest))
            if os.path.isfile(path) and os.path.getsize(path) == d.size:
                continue  # same digest: same bytes
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            tmp = temp_sibling(path)
            try:
                with open(tmp, "xb") as out:
                    _copy_verified(image, d, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(tmp, path)
            except BaseException:
                _unlink(tmp)
                raise
            created.append(path)
        for directory in {os.path.dirname(p) for p in created}:
            _fsync_dir(directory)
    except BaseException:
        for path in created:
            _unlink(path)
        raise
    return created


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _add_to_layout(directory: str, image: ImageBlobs, ref: str | None) -> None:
    layout_path = os.path.join(directory, mediatypes.IMAGE_LAYOUT_FILE)
    index_path = os.path.join(directory, mediatypes.IMAGE_INDEX_FILE)
    if not os.path.isfile(layout_path):
        raise DestinationError(
            f"{directory}: not empty and not an OCI image layout (no "
            f"{mediatypes.IMAGE_LAYOUT_FILE} file); choose a new or empty directory"
        )
    manifests = _existing_entries(index_path)
    kept = [m for m in manifests if not _names(m, ref)]
    created = _write_blob_files(directory, image)
    try:
        doc = {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": [*kept, _index_entry(image, ref)],
        }
        tmp = temp_sibling(index_path)
        try:
            _write_file(tmp, json_bytes(doc))
            os.replace(tmp, index_path)
        except BaseException:
            _unlink(tmp)
            raise
        _fsync_dir(directory)
    except BaseException:
        for path in created:
            _unlink(path)
        raise


def _existing_entries(index_path: str) -> list[object]:
    path = JPath(index_path)
    try:
        with open(index_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    obj = as_object(load_json(data, path.doc), path)
    return list(as_list(obj.get("manifests", []), path.key("manifests")))


def _names(entry: object, ref: str | None) -> bool:
    """Whether the index entry ``entry`` is named ``ref``."""
    if ref is None or not isinstance(entry, dict):
        return False
    annotations = entry.get("annotations")
    return isinstance(annotations, dict) and annotations.get(mediatypes.ANNOTATION_REF_NAME) == ref


@contextmanager
def _archive(path: str, what: str) -> Iterator[tarfile.TarFile]:
    """A tar written to a temporary sibling of ``path``, renamed over it when complete."""
    if os.path.isdir(path):
        raise DestinationError(f"{path}: is a directory; the {what} must be a file")
    _check_parent(path, what)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "xb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                yield tar
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, name: str, image: ImageBlobs, d: Descriptor) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = d.size, 0o644
    with _open_verified(image, d) as src:
        tar.addfile(info, src)
        src.verify()


def write_oci_archive(path: str, image: ImageBlobs, ref: str | None) -> None:
    """Write ``image`` as an ``oci-archive`` (a tar of a one-image layout) at ``path``,
    replacing any file there."""
    with _archive(path, "oci-archive") as tar:
        _add_bytes(tar, mediatypes.IMAGE_LAYOUT_FILE, _layout_file())
        _add_bytes(tar, mediatypes.IMAGE_INDEX_FILE, _new_index(image, ref))
        made: set[str] = set()
        for d in image.blobs:
            name = _blob_name(d.digest)
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in made:
                    _add_dir(tar, parent)
                    made.add(parent)
            _add_blob(tar, name, image, d)


def write_docker_archive(path: str, image: ImageBlobs, repo_tags: Sequence[str]) -> None:
    """Write ``image`` as a ``docker save`` archive at ``path`` (replacing any file there),
    tagged ``repo_tags``."""
    config = image.document.config
    config_name = split_digest(config.digest)[1] + ".json"
    layer_names = [split_digest(d.digest)[1] + ".tar" for d in image.document.layers]
    manifest = [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_names}]
    with _archive(path, "docker-archive") as tar:
        _add_blob(tar, config_name, image, config)
        written = {config_name}
        for name, d in zip(layer_names, image.document.layers, strict=True):
            if name not in written:
                _add_blob(tar, name, image, d)
                written.add(name)
        _add_bytes(tar, ARCHIVE_MANIFEST, json_bytes(manifest))
