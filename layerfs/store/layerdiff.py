"""An upper directory, in overlay form, written as an OCI layer: a gzip'd PAX tar.

What the union filesystem keeps beside the upper — ``layerfs.db`` in the work directory
(`layerfs.fs.meta`) — says the two things the upper alone does not: *redirects* (a lower
directory renamed through the mount: the upper directory at the new path holds only what
changed, its lower contents come from the old path) and xattrs kept there because the upper's
filesystem has no xattr support. `read_upper_meta` reads them; `write_layer` writes the tar,
its digest and diff_id computed as it goes (`layerfs.oci.writer.GzipLayerWriter`):

- Whiteouts, in either upper form (character device 0/0, ``.wh.NAME`` file), become OCI
  ``.wh.NAME`` files; a ``.wh.NAME`` beside a real ``NAME`` is dropped (the upper's ``NAME``
  wins, as it does in the mount). Opaque directories (``.wh..wh..opq`` marker or
  ``trusted.overlay.opaque``/``user.overlay.opaque`` = ``y``) get a ``DIR/.wh..wh..opq``.
- A directory with a redirect is written whole: opaque, with the merged contents the mount
  showed (its upper entries over the image's tree at the old path), so that the new image
  holds it at its new path without any layerfs bookkeeping.
- Hard links are tar links to the first name written; owners, modes, mtimes (with their
  nanoseconds) and xattrs are kept, except the union filesystem's own (``trusted.overlay.*``,
  ``user.overlay.*``, ``user.layerfs.*``). Sockets have no tar form and are skipped (warned).
- A metadata-only copy (a lower file whose attributes changed, `layerfs.fs.metacopy`) is
  written with its upper attributes and the data of the lower file its marker names.
- Order is deterministic: a directory, its opaque marker, its whiteouts, then its entries by
  name, depth first; whiteout files have fixed attributes. The same upper gives the same layer.

Sparse files are written densely.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import tarfile
import urllib.parse
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from layerfs.fs import metacopy
from layerfs.fs import whiteout as overlay
from layerfs.fs.layers import Layer, Listing, LowerStack, child_stack
from layerfs.fs.meta import DB_NAME
from layerfs.fs.syscalls import fd_path, read_xattrs
from layerfs.oci.writer import (
    GzipLayerWriter,
    LayerDigests,
    layer_member,
    opaque_member,
    whiteout_member,
)
from layerfs.store.errors import StoreError

logger = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class UpperError(StoreError):
    """An upper directory or its metadata cannot be read as a layer; the message says where."""


@dataclass(frozen=True)
class UpperMeta:
    """What the union filesystem recorded about upper objects, by upper inode number."""

    redirects: Mapping[int, bytes]
    xattrs: Mapping[int, Mapping[str, bytes]]


def read_upper_meta(workdir: str) -> UpperMeta:
    """The redirects and fallback xattrs in ``workdir``'s database (none without one)."""
    path = os.path.join(workdir, DB_NAME)
    if not os.path.isfile(path):
        return UpperMeta({}, {})
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise UpperError(f"{path}: cannot read the container's metadata: {exc}") from None
    try:
        redirects = {int(i): bytes(p) for i, p in _rows(db, "SELECT ino, path FROM redirect")}
        xattrs: dict[int, dict[str, bytes]] = {}
        for ino, name, value in _rows(db, "SELECT ino, name, value FROM xattr"):
            xattrs.setdefault(int(ino), {})[str(name)] = bytes(value)
    except sqlite3.Error as exc:
        raise UpperError(f"{path}: cannot read the container's metadata: {exc}") from None
    finally:
        db.close()
    return UpperMeta(redirects, xattrs)


def _rows(db: sqlite3.Connection, query: str) -> list[Any]:
    try:
        return db.execute(query).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # a database from before that table existed
        raise


class _Lowers:
    """The image's layer trees, top first, opened on first use (only redirects need them).

    Resolution follows `layerfs.fs.union`: the same stacks, the same whiteout rules.
    """

    def __init__(self, dirs: Sequence[str]) -> None:
        self._dirs = dirs
        self._layers: list[Layer] = []
        self._listings: dict[tuple[int, bytes], Listing] = {}

    @property
    def count(self) -> int:
        return len(self._dirs)

    def layer(self, index: int) -> Layer:
        if not self._layers:
            for i, path in enumerate(self._dirs):
                self._layers.append(Layer(i, path))
        return self._layers[index]

    def close(self) -> None:
        for layer in self._layers:
            layer.close()
        self._layers = []

    def listing(self, index: int, path: bytes) -> Listing:
        key = (index, path)
        if key not in self._listings:
            self._listings[key] = self.layer(index).read_listing(path)
        return self._listings[key]

    def root(self) -> LowerStack:
        stack: list[tuple[int, bytes]] = []
        for index in range(len(self._dirs)):
            stack.append((index, b"."))
            if self.listing(index, b".").opaque:
                break
        return tuple(stack)

    def child(self, parent: LowerStack, name: bytes) -> LowerStack:
        """Where ``name`` lives below a directory whose stack is ``parent`` (the union's rule)."""
        return child_stack(self.listing, parent, name)

    def at(self, path: bytes) -> LowerStack:
        """The directory stack of ``path`` (a redirect), from the root; () if not a directory."""
        stack = self.root()
        for name in path.strip(b"/").split(b"/"):
            if not stack:
                break
            stack = self.child(stack, name)
            if stack and not self.is_dir(stack):
                return ()
        return stack

    def is_dir(self, stack: LowerStack) -> bool:
        index, path = stack[0]
        return stat.S_ISDIR(self.layer(index).lstat(path).st_mode)

    def names(self, stack: LowerStack) -> list[bytes]:
        """The merged entries of the directory ``stack``."""
        seen: dict[bytes, None] = {}
        hidden: set[bytes] = set()
        for index, path in stack:
            listing = self.listing(index, path)
            for name in listing.entries:
                if name not in hidden:
                    seen.setdefault(name)
            hidden |= listing.whiteouts
        return list(seen)


def _join(parent: bytes, name: bytes) -> bytes:
    return name if parent in (b"", b".") else parent + b"/" + name


def _without_internal(xattrs: Mapping[str, bytes]) -> dict[str, bytes]:
    """``xattrs`` without the union filesystem's own (they describe the upper, not the image)."""
    return {k: v for k, v in xattrs.items() if not overlay.is_internal_xattr(k)}


@dataclass
class _UpperDir:
    """One upper directory's entries, markers sorted out, and its own xattrs."""

    objects: dict[bytes, os.stat_result]
    whiteouts: set[bytes]
    opaque: bool
    xattrs: dict[str, bytes]


Visit = Generator["Visit", None, None]
"""A directory being written: it yields the visits of its subdirectories, to be run in turn."""


class LayerTarWriter:
    """Writes the upper directory ``upper`` as an OCI layer into ``tar`` (see the module doc).

    The walk runs on an explicit stack of visits (generators), so depth costs no Python
    recursion; each upper directory on the way down holds one descriptor, and nothing is
    ever followed through a symbolic link.
    """

    def __init__(
        self, tar: tarfile.TarFile, upper: str, meta: UpperMeta, lowers: Sequence[str]
    ) -> None:
        self._tar = tar
        self._upper = upper
        self._meta = meta
        self._lowers = _Lowers(lowers)
        self._links: dict[tuple[int, int], str] = {}  # (layer or -1, inode) -> first name

    def write(self) -> None:
        """Write every member; the caller closes the tar."""
        stack: list[Visit] = [self._upper_dir(None, b"", b"", None)]
        try:
            while stack:
                child = next(stack[-1], None)
                if child is None:
                    stack.pop()
                else:
                    stack.append(child)
        finally:
            for visit in reversed(stack):
                visit.close()
            self._lowers.close()

    # Upper directories ---------------------------------------------------------------------

    def _upper_dir(
        self, parent_fd: int | None, name: bytes, rel: bytes, parent_lower: LowerStack | None
    ) -> Visit:
        """Write the upper directory ``name`` of ``parent_fd`` (the root: None) and its contents.

        ``parent_lower`` None: the parent is written as changes to the image's own tree. A
        stack: the parent is written whole (it is below a redirect), merged with that stack.
        """
        if parent_fd is None:
            fd = os.open(self._upper, _DIR_FLAGS)
        else:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
            entries = self._read_dir(fd, st)
            lower = self._lower_of(st, name, rel, parent_lower, entries.opaque)
            path = os.fsdecode(rel)
            if rel:
                self._tar.addfile(layer_member(path, st, xattrs=entries.xattrs))
            if parent_lower is None and (entries.opaque or lower is not None):
                # Opaque, or the top of a tree written whole: hide the image's tree here.
                self._tar.addfile(opaque_member(path))
            names = set(entries.objects)
            if lower is None:
                for gone in sorted(entries.whiteouts - names):
                    self._tar.addfile(whiteout_member(os.fsdecode(_join(rel, gone))))
            elif lower:
                names |= {n for n in self._lowers.names(lower) if n not in entries.whiteouts}
            for child in sorted(names):
                child_rel = _join(rel, child)
                child_st = entries.objects.get(child)
                if child_st is None:
                    assert lower
                    yield self._lower_tree(child_rel, self._lowers.child(lower, child))
                elif stat.S_ISDIR(child_st.st_mode):
                    yield self._upper_dir(fd, child, child_rel, lower)
                else:
                    self._upper_object(fd, child, child_rel, child_st)
        finally:
            os.close(fd)

    def _lower_of(
        self,
        st: os.stat_result,
        name: bytes,
        rel: bytes,
        parent_lower: LowerStack | None,
        opaque: bool,
    ) -> LowerStack | None:
        """None: write this directory as changes; a stack: write it whole, merged with that."""
        if not rel or opaque:
            return None if parent_lower is None else ()
        redirect = self._meta.redirects.get(st.st_ino)
        if redirect is not None:
            return self._lowers.at(redirect)
        if parent_lower is None:
            return None
        lower = self._lowers.child(parent_lower, name) if parent_lower else ()
        return lower if lower and self._lowers.is_dir(lower) else ()

    def _read_dir(self, fd: int, st: os.stat_result) -> _UpperDir:
        objects: dict[bytes, os.stat_result] = {}
        whiteouts: set[bytes] = set()
        opaque = False
        for entry in os.listdir(fd):
            name = os.fsencode(entry)
            if name.startswith(overlay.WH_PREFIX):
                target = overlay.whiteout_target(name)
                if name == overlay.OPAQUE_MARKER:
                    opaque = True
                elif target and not target.startswith(overlay.WH_PREFIX):
                    whiteouts.add(target)
                continue  # other .wh..wh.* names are another union's bookkeeping
            child = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if overlay.is_whiteout_stat(child):
                whiteouts.add(name)
            else:
                objects[name] = child
        xattrs = read_xattrs(fd) | dict(self._meta.xattrs.get(st.st_ino, {}))
        opaque = opaque or any(
            overlay.is_opaque_value(xattrs.get(n)) for n in overlay.OPAQUE_XATTRS
        )
        return _UpperDir(objects, whiteouts, opaque, _without_internal(xattrs))

    def _upper_object(self, parent_fd: int, name: bytes, rel: bytes, st: os.stat_result) -> None:
        path = os.fsdecode(rel)
        if stat.S_ISSOCK(st.st_mode):
            logger.warning("commit: skipping the socket /%s (a tar cannot hold sockets)", path)
            return
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            with open(fd, "rb", buffering=_CHUNK) as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):  # replaced meanwhile: write it next time
                    return
                raw = read_xattrs(fd)
                data = self._metacopy_data(raw, st, path)
                xattrs = _without_internal(raw | dict(self._meta.xattrs.get(st.st_ino, {})))
                if data is None:
                    self._regular(path, st, (-1, st.st_ino), xattrs, f)
                    return
                with data:
                    self._regular(path, st, (-1, st.st_ino), xattrs, data)
            return
        target = ""
        if stat.S_ISLNK(st.st_mode):
            target = os.fsdecode(os.readlink(name, dir_fd=parent_fd))
        xattrs = self._xattrs(fd_path(parent_fd, name), st)
        self._tar.addfile(layer_member(path, st, linkname=target, xattrs=xattrs))

    def _regular(
        self,
        path: str,
        st: os.stat_result,
        key: tuple[int, int],
        xattrs: Mapping[str, bytes],
        data: BinaryIO,
    ) -> None:
        if st.st_nlink > 1:
            first = self._links.get(key)
            if first is not None:
                self._tar.addfile(
                    layer_member(path, st, linkname=first, hardlink=True, xattrs=xattrs)
                )
                return
            self._links[key] = path
        self._tar.addfile(layer_member(path, st, xattrs=xattrs), data)

    def _metacopy_data(
        self, raw: Mapping[str, bytes], st: os.stat_result, path: str
    ) -> BinaryIO | None:
        """The lower file a metadata-only copy (`layerfs.fs.metacopy`) holds the data of."""
        value = raw.get(metacopy.MARKER)
        if value is None or not metacopy.may_be_marked(st):
            return None
        ref = metacopy.decode(value)
        if ref is None or ref[0] >= self._lowers.count:
            raise UpperError(f"/{path}: the mount's record of where its data lies is broken")
        index, lower_path = ref
        try:
            fd = os.open(
                lower_path,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=self._lowers.layer(index).fd,
            )
        except OSError as exc:
            raise UpperError(
                f"/{path}: its data, {os.fsdecode(lower_path)} in layer {index + 1} from the "
                f"top, cannot be read: {exc.strerror}"
            ) from None
        return open(fd, "rb", buffering=_CHUNK)

    def _xattrs(self, target: int | bytes, st: os.stat_result) -> dict[str, bytes]:
        return _without_internal(read_xattrs(target) | dict(self._meta.xattrs.get(st.st_ino, {})))

    # Lower trees (below a redirect) ------------------------------------------------------------

    def _lower_tree(self, rel: bytes, stack: LowerStack) -> Visit:
        """Write the lower object ``stack`` names at ``rel``, and everything below it."""
        index, path = stack[0]
        layer = self._lowers.layer(index)
        st = layer.lstat(path)
        name = os.fsdecode(rel)
        xattrs = _without_internal(layer.xattrs(path))
        if stat.S_ISDIR(st.st_mode):
            self._tar.addfile(layer_member(name, st, xattrs=xattrs))
            for child in sorted(self._lowers.names(stack)):
                yield self._lower_tree(_join(rel, child), self._lowers.child(stack, child))
        elif stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=layer.fd)
            with open(fd, "rb", buffering=_CHUNK) as f:
                self._regular(name, os.fstat(fd), (index, st.st_ino), xattrs, f)
        elif stat.S_ISSOCK(st.st_mode):
            logger.warning("commit: skipping the socket /%s (a tar cannot hold sockets)", name)
        else:
            target = os.readlink(path, dir_fd=layer.fd) if stat.S_ISLNK(st.st_mode) else b""
            self._tar.addfile(layer_member(name, st, linkname=os.fsdecode(target), xattrs=xattrs))


def write_layer(upper: str, meta: UpperMeta, lowers: Sequence[str], out: str) -> LayerDigests:
    """Write the layer blob (tar+gzip) of ``upper`` over ``lowers`` (the image's layer
    directories, top first) to the new file ``out``; its digests."""
    with open(out, "xb") as f:
        sink = GzipLayerWriter(f)
        with tarfile.TarFile(
            fileobj=sink,
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            copybufsize=_CHUNK,
        ) as tar:
            LayerTarWriter(tar, upper, meta, lowers).write()
        return sink.finish()  # no fsync: the import copies the blob (and syncs its copy)
