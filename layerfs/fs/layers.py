"""Lower layers: immutable directory trees, indexed lazily for cheap lookups.

Lower layers never change while mounted, so what is learnt about them is kept:
one listing per (layer, directory) answers every lookup, readdir and link
count there (an LRU bounded by entry count), and stats of lower objects are
cached by the caller. Paths inside a layer are only ever built from
components proven to be directories in that layer, so a symlink in a layer
is never followed out of it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from . import whiteout
from .sidecar import XattrMap, load_sidecar
from .syscalls import fd_path, read_xattrs

# Directory-entry types as scandir reports them; DT_UNKNOWN falls back to lstat.
DT_DIR = stat.S_IFDIR
DT_OTHER = 0
STAT_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class Listing:
    """What one directory of one layer holds, markers already sorted out."""

    entries: dict[bytes, int]  # name -> S_IFMT of the entry (whiteouts excluded)
    whiteouts: frozenset[bytes]  # names this layer hides in the layers below it
    opaque: bool  # the directory hides everything below it


class Layer:
    """One read-only lower directory."""

    def __init__(self, index: int, path: str) -> None:
        self.index = index
        self.path = path
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.sidecar: XattrMap = load_sidecar(path)
        self._hardlinks: dict[int, list[bytes]] | None = None
        # Stats of an immutable tree never go stale: readdir re-resolves every entry
        # of every listing, and this spares it a syscall each.
        self._stats: OrderedDict[bytes, os.stat_result] = OrderedDict()

    def close(self) -> None:
        os.close(self.fd)

    def lstat(self, path: bytes) -> os.stat_result:
        st = self._stats.get(path)
        if st is None:
            st = self._stats[path] = os.lstat(path, dir_fd=self.fd)
            if len(self._stats) > STAT_CACHE_SIZE:
                self._stats.popitem(last=False)
        return st

    def read_listing(self, path: bytes) -> Listing:
        """List ``path`` (a directory of this layer) and classify its entries."""
        entries: dict[bytes, int] = {}
        hidden: set[bytes] = set()
        opaque = False
        fd = os.open(
            path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd
        )
        try:
            with os.scandir(fd) as it:
                for ent in it:
                    name = os.fsencode(ent.name)
                    if name.startswith(whiteout.WH_PREFIX):
                        if name == whiteout.OPAQUE_MARKER:
                            opaque = True
                        else:
                            target = whiteout.whiteout_target(name)
                            if target:
                                hidden.add(target)
                        continue
                    st_mode = _dtype(ent)
                    if st_mode == stat.S_IFCHR or st_mode == 0:
                        st = ent.stat(follow_symlinks=False)
                        if whiteout.is_whiteout_stat(st):
                            hidden.add(name)
                            continue
                        st_mode = stat.S_IFMT(st.st_mode)
                    entries[name] = st_mode
            if not opaque:
                opaque = self._opaque_xattr(fd, path)
        finally:
            os.close(fd)
        return Listing(entries, frozenset(hidden), opaque)

    def _opaque_xattr(self, fd: int, path: bytes) -> bool:
        side = self.sidecar.get(path.strip(b"/") if path != b"." else b"")
        if side and any(whiteout.is_opaque_value(side.get(n)) for n in whiteout.OPAQUE_XATTRS):
            return True
        for name in whiteout.OPAQUE_XATTRS:
            try:
                if whiteout.is_opaque_value(os.getxattr(fd, name)):
                    return True
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    return False
                if exc.errno not in (errno.ENODATA, errno.EPERM, errno.EACCES):
                    raise
        return False

    def xattrs(self, path: bytes) -> dict[str, bytes]:
        """Real and sidecar extended attributes of ``path`` (sidecar wins)."""
        out = read_xattrs(fd_path(self.fd, path))
        key = b"" if path == b"." else path.strip(b"/")
        out.update(self.sidecar.get(key, {}))
        return out

    def hardlink_names(self, path: bytes, ino: int) -> list[bytes]:
        """Every path of this layer that is the same inode as ``path`` (walked once)."""
        if self._hardlinks is None:
            links: dict[int, list[bytes]] = {}
            stack = [b"."]
            while stack:
                d = stack.pop()
                fd = os.open(
                    d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd
                )
                try:
                    with os.scandir(fd) as it:
                        for ent in it:
                            name = os.fsencode(ent.name)
                            child = name if d == b"." else d + b"/" + name
                            if ent.is_dir(follow_symlinks=False):
                                stack.append(child)
                            elif ent.is_file(follow_symlinks=False):
                                st = ent.stat(follow_symlinks=False)
                                if st.st_nlink > 1:
                                    links.setdefault(st.st_ino, []).append(child)
                finally:
                    os.close(fd)
            self._hardlinks = links
        return [p for p in self._hardlinks.get(ino, []) if p != path]


def _dtype(ent: os.DirEntry[str]) -> int:
    try:
        if ent.is_dir(follow_symlinks=False):
            return stat.S_IFDIR
        if ent.is_symlink():
            return stat.S_IFLNK
        if ent.is_file(follow_symlinks=False):
            return stat.S_IFREG
    except OSError:
        pass
    return 0


class ListingCache:
    """LRU of lower-layer listings, bounded by the number of entries held."""

    def __init__(self, layers: list[Layer], max_entries: int = 500_000) -> None:
        self._layers = layers
        self._max = max_entries
        self._held = 0
        self._cache: OrderedDict[tuple[int, bytes], Listing] = OrderedDict()

    def get(self, index: int, path: bytes) -> Listing:
        key = (index, path)
        listing = self._cache.get(key)
        if listing is not None:
            self._cache.move_to_end(key)
            return listing
        listing = self._layers[index].read_listing(path)
        self._cache[key] = listing
        self._held += len(listing.entries) + 1
        while self._held > self._max and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._held -= len(old.entries) + 1
        return listing


# (layer index, path inside that layer), top layer first.
LowerStack = tuple[tuple[int, bytes], ...]


def child_stack(
    listing: Callable[[int, bytes], Listing], parent: LowerStack, name: bytes
) -> LowerStack:
    """Where ``name`` lives below a directory whose lower stack is ``parent``.

    The one rule of the union, shared by the filesystem and by commit: a directory stack
    (top first, ending at an opaque layer), or the single topmost non-directory, or nothing.
    """
    stack: list[tuple[int, bytes]] = []
    for index, path in parent:
        here = listing(index, path)
        kind = here.entries.get(name)
        if kind is None:
            if name in here.whiteouts:
                break
            continue
        child = name if path == b"." else path + b"/" + name
        if kind == stat.S_IFDIR:
            stack.append((index, child))
            if listing(index, child).opaque or name in here.whiteouts:
                break
        else:
            if not stack:
                stack.append((index, child))
            break
    return tuple(stack)
