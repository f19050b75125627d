"""The union engine: overlay semantics over a stack of directories, no FUSE in sight.

Every method is synchronous and raises ``OSError`` with the errno a user
should see; ``ops`` translates. Copy-up of file data is split in three
(``copyup_job`` / ``copyup.stage`` / ``copyup_finish``, the first and last in
``copyups``) so that the data copy can run on a worker thread while this object
is only touched from one thread.

Caveats:
- The upper layer must be changed only through the mount while it is mounted
  (as with kernel overlayfs); lower layers must not change at all.
- Hard-link groups of a lower layer are copied up whole when one member is;
  a member below a directory that was renamed is not linked (it keeps the
  lower data).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from . import attrs, copyups, layers, metacopy, renames, whiteout
from .copyup import CopyJob
from .inodes import (
    MAX_REAL_INO,
    OVERFLOW_TAG,
    ROOT_INO,
    TAG_SHIFT,
    UPPER_TAG,
    InodeTable,
    LowerRef,
    Node,
    encode_ino,
    lower_tag,
)
from .layers import Layer, ListingCache
from .meta import MetaStore
from .options import MountOptions
from .syscalls import join as _join
from .syscalls import keep_times as _keep_times
from .syscalls import oserror as _err
from .upper import INDEX_DIR, Upper, index_name

# Lower layers are immutable: the kernel may keep what it learnt of them for long.
LOWER_TIMEOUT = 86400.0


@dataclass(frozen=True)
class Entry:
    """What a name resolves to right now."""

    kind: int
    upper_st: os.stat_result | None
    lower: tuple[LowerRef, ...]
    lower_st: os.stat_result | None
    data: LowerRef | None = None  # a metadata-only copy's data (see `metacopy`)


class UnionFS:
    """The merged view of ``opts.lowerdirs`` under ``opts.upperdir``."""

    def __init__(self, opts: MountOptions) -> None:
        self.opts = opts
        self.layers = [Layer(i, p) for i, p in enumerate(opts.lowerdirs)]
        self.listings = ListingCache(self.layers)
        self.upper: Upper | None = None
        self.meta: MetaStore | None = None
        if opts.upperdir and opts.workdir:
            self.upper = Upper(opts.upperdir, opts.workdir, opts.whiteout)
            self.meta = MetaStore(opts.workdir, durable=opts.fsync)
            for ino in self.upper.leftover_inos:
                self.meta.forget_ino(ino)
        self.writable = self.upper is not None and not opts.readonly
        self._overflow: dict[tuple[int, int], int] = {}
        self.table = InodeTable(self._make_root())
        if self.writable:
            self._complete_groups()

    def close(self) -> None:
        for layer in self.layers:
            layer.close()
        if self.meta:
            self.meta.close()
        if self.upper:
            self.upper.close()

    def _complete_groups(self) -> None:
        """Link every name of each indexed hard-link group a crash left unlinked.

        Done at mount so that link counts are whole before anyone looks; names that
        moved with a renamed directory are linked when first resolved.
        """
        assert self.upper is not None
        for entry in os.listdir(os.path.join(self.upper.workdir, INDEX_DIR)):
            try:
                ino = int(entry, 16)
            except ValueError:
                continue
            layer = (ino >> TAG_SHIFT) - lower_tag(0)
            if 0 <= layer < len(self.layers):
                for name in self.layers[layer].hardlink_names(b"", ino & MAX_REAL_INO):
                    self._walk(name)

    def _make_root(self) -> Node:
        stack: list[LowerRef] = []
        if not (self.upper and self.upper.is_opaque(b".")):
            for layer in self.layers:
                stack.append((layer.index, b"."))
                if self.listings.get(layer.index, b".").opaque:
                    break
        lower_st = self.layers[0].lstat(b".") if stack else None
        root = Node(ROOT_INO, None, b"", stat.S_IFDIR, self.upper is not None, tuple(stack))
        root.lower_stat = lower_st
        return root

    # Resolution ------------------------------------------------------------------

    def child_stack(self, parent_lower: tuple[LowerRef, ...], name: bytes) -> tuple[LowerRef, ...]:
        """Where ``name`` lives below a directory with lower stack ``parent_lower``."""
        return layers.child_stack(self.listings.get, parent_lower, name)

    def stack_at(self, path: bytes) -> tuple[LowerRef, ...]:
        """The lower directory stack of ``path`` (a redirect), walked from the root."""
        stack = self.table.root.lower
        for comp in path.split(b"/"):
            if not stack:
                break
            stack = self.child_stack(stack, comp)
            if stack and self._lower_kind(stack[0]) != stat.S_IFDIR:
                return ()
        return stack

    def _lower_kind(self, ref: LowerRef) -> int:
        index, path = ref
        parent, _, name = path.rpartition(b"/")
        return self.listings.get(index, parent or b".").entries.get(name, 0)

    def lower_has(self, parent: Node, name: bytes) -> bool:
        """Whether a lower layer shows ``name`` in ``parent`` (removing it needs a whiteout)."""
        return bool(parent.lower) and bool(self.child_stack(parent.lower, name))

    def resolve(self, parent: Node, name: bytes) -> Entry | None:
        """What ``name`` in ``parent`` is, or None when nothing visible has that name."""
        if whiteout.is_whiteout_name(name):
            return None
        upper_st = None
        path = b""
        if parent.upper and self.upper:
            path = parent.child_path(name)
            upper_st = self.upper.lstat(path)
            if upper_st is not None and whiteout.is_whiteout_stat(upper_st):
                return None
            if upper_st is None and parent.lower and self.upper.has_wh_file(parent.path(), name):
                return None
        if upper_st is not None:
            assert self.upper is not None and self.meta is not None
            kind = stat.S_IFMT(upper_st.st_mode)
            if kind != stat.S_IFDIR:
                data = None
                if self.upper.has_metacopies and metacopy.may_be_marked(upper_st):
                    data = metacopy.read_marker(self.upper.proc(path))
                return Entry(kind, upper_st, (), None, data)
            lower: tuple[LowerRef, ...] = ()
            redirect = self.meta.redirects.get(upper_st.st_ino)
            if redirect is not None or parent.lower:
                if self.upper.is_opaque(path):
                    lower = ()
                elif redirect is not None:
                    lower = self.stack_at(redirect)
                else:
                    lower = self.child_stack(parent.lower, name)
                if lower and self._lower_kind(lower[0]) != stat.S_IFDIR:
                    lower = ()
            lower_st = self.layers[lower[0][0]].lstat(lower[0][1]) if lower else None
            return Entry(kind, upper_st, lower, lower_st)
        if not parent.lower:
            return None
        lower = self.child_stack(parent.lower, name)
        if not lower:
            return None
        lower_st = self.layers[lower[0][0]].lstat(lower[0][1])
        if lower_st.st_nlink > 1 and stat.S_ISREG(lower_st.st_mode) and self.meta:
            ino = self._encode(lower_tag(lower[0][0]), lower_st.st_ino)
            if ino in self.meta.claimed:
                linked = self._link_from_index(parent, name, ino)
                if linked is not None:
                    return Entry(stat.S_IFREG, linked, (), None)
        return Entry(stat.S_IFMT(lower_st.st_mode), None, lower, lower_st)

    def _link_from_index(self, parent: Node, name: bytes, ino: int) -> os.stat_result | None:
        """A lower name of a hard-link group whose copy is in the index: link it there.

        Copy-up links every name it can find; this catches the rest (names below renamed
        directories, names a crash left behind) the first time anything resolves them.
        """
        if not self.writable or self.upper is None:
            return None
        upper = self.upper
        try:
            os.lstat(index_name(ino), dir_fd=upper.index_fd)
        except FileNotFoundError:
            return None
        self.ensure_upper_dir(parent)
        ppath = parent.path()
        before = upper.lstat(ppath)
        path = _join(ppath, name)
        os.link(
            index_name(ino),
            path,
            src_dir_fd=upper.index_fd,
            dst_dir_fd=upper.fd,
            follow_symlinks=False,
        )
        if before is not None:
            _keep_times(upper.fd, ppath, before)
        return os.lstat(path, dir_fd=upper.fd)

    def ino_of(self, entry: Entry) -> int:
        """The stable inode number of a resolved object (see ``inodes``)."""
        if entry.lower_st is not None and (entry.upper_st is None or entry.kind == stat.S_IFDIR):
            index = entry.lower[0][0]
            return self._encode(lower_tag(index), entry.lower_st.st_ino)
        assert entry.upper_st is not None and self.meta is not None
        origin = self.meta.origins.get(entry.upper_st.st_ino)
        if origin is not None:
            return origin
        if entry.data is not None:  # a metadata-only copy keeps its data's number
            index, path = entry.data
            return self._encode(lower_tag(index), self._data_layer(index).lstat(path).st_ino)
        return self._encode(UPPER_TAG, entry.upper_st.st_ino)

    def _encode(self, tag: int, real: int) -> int:
        ino = encode_ino(tag, real)
        if ino is not None:
            return ino
        # Rare: a real inode number too large for the tag scheme gets a counter value.
        key = (tag, real)
        if key not in self._overflow:
            n = self.meta.next_counter("overflow", 1) if self.meta else len(self._overflow) + 1
            ino = encode_ino(OVERFLOW_TAG, n)
            assert ino is not None
            self._overflow[key] = ino
        return self._overflow[key]

    def node_of(self, parent: Node, name: bytes, entry: Entry) -> Node:
        """The table node for ``entry`` (refreshed), or a detached one not in the table."""
        ino = self.ino_of(entry)
        node = self.table.find(ino)
        if node is None:
            node = Node(ino, parent, name, entry.kind, entry.upper_st is not None, entry.lower)
        else:
            self.table.add_name(node, parent, name)
            node.kind = entry.kind
            node.upper = entry.upper_st is not None
            node.lower = entry.lower
        node.lower_stat = entry.lower_st
        node.data = entry.data
        return node

    def lookup(self, parent: Node, name: bytes) -> Node:
        """Resolve ``name`` and take one lookup reference on its node."""
        entry = self.resolve(parent, name)
        if entry is None:
            raise _err(errno.ENOENT, name)
        return self._take(parent, name, entry)

    def _take(self, parent: Node, name: bytes, entry: Entry) -> Node:
        node = self.node_of(parent, name, entry)
        if self.table.find(node.ino) is None:
            self.table.add(node)
        node.nlookup += 1
        return node

    def _existing(self, parent: Node, name: bytes) -> tuple[Entry, Node]:
        entry = self.resolve(parent, name)
        if entry is None:
            raise _err(errno.ENOENT, name)
        return entry, self.node_of(parent, name, entry)

    def is_linked(self, node: Node) -> bool:
        """Whether ``node``'s recorded name still leads to it."""
        if node.parent is None:
            return True
        entry = self.resolve(node.parent, node.name)
        return entry is not None and self.ino_of(entry) == node.ino

    def timeout(self, node: Node) -> float:
        return self.opts.timeout if node.upper else LOWER_TIMEOUT

    # Attributes --------------------------------------------------------------------

    def stat(self, node: Node, fd: int | None = None) -> os.stat_result:
        if not node.upper:
            assert isinstance(node.lower_stat, os.stat_result)
            return node.lower_stat
        assert self.upper is not None
        if fd is not None:
            return os.fstat(fd)
        st = self.upper.lstat(node.path())
        if st is None or whiteout.is_whiteout_stat(st):
            raise _err(errno.ENOENT, node.path())
        return st

    def nlink(self, node: Node, st: os.stat_result) -> int:
        """Link count; for directories 2 + the merged number of subdirectories."""
        if not node.is_dir and node.upper and st.st_nlink > 1 and self._indexed(st):
            return st.st_nlink - 1  # the hard-link index holds one link that is not a name
        if (
            not node.is_dir
            or (node.upper and not node.lower)
            or (not node.upper and len(node.lower) == 1)
        ):
            return st.st_nlink
        if node.nlink_cache is None:
            entries = self.list_dir(node)
            node.nlink_cache = 2 + sum(1 for k in entries.values() if k == stat.S_IFDIR)
        return node.nlink_cache

    def _indexed(self, st: os.stat_result) -> bool:
        assert self.meta is not None and self.upper is not None
        origin = self.meta.origins.get(st.st_ino)
        if origin is None:
            return False
        try:
            return os.lstat(index_name(origin), dir_fd=self.upper.index_fd).st_ino == st.st_ino
        except FileNotFoundError:
            return False

    def list_dir(self, node: Node) -> dict[bytes, int]:
        """The merged entries of a directory: name -> S_IFMT, no markers, no duplicates."""
        names: dict[bytes, int] = {}
        hidden: set[bytes] = set()
        if node.upper and self.upper and not self.is_linked(node):
            return names  # removed while open: empty, as POSIX has it
        if node.upper and self.upper:
            fd = os.open(
                node.path(),
                os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                dir_fd=self.upper.fd,
            )
            try:
                with os.scandir(fd) as it:
                    for ent in it:
                        name = os.fsencode(ent.name)
                        if name.startswith(whiteout.WH_PREFIX):
                            target = whiteout.whiteout_target(name)
                            if target:
                                hidden.add(target)
                            continue
                        st = ent.stat(follow_symlinks=False)
                        if whiteout.is_whiteout_stat(st):
                            hidden.add(name)
                            continue
                        names[name] = stat.S_IFMT(st.st_mode)
            finally:
                os.close(fd)
        for index, path in node.lower:
            listing = self.listings.get(index, path)
            for name, kind in listing.entries.items():
                if name not in names and name not in hidden:
                    names[name] = kind
            hidden |= listing.whiteouts
        return names

    def readlink(self, node: Node) -> bytes:
        if node.upper:
            assert self.upper is not None
            return os.readlink(node.path(), dir_fd=self.upper.fd)
        index, path = node.lower[0]
        return os.readlink(path, dir_fd=self.layers[index].fd)

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.upper.path if self.upper else self.layers[0].path)

    # Opening -----------------------------------------------------------------------

    def open_fd(self, node: Node, flags: int) -> int:
        """The backing file of an open: the upper object, else (reading) the lower data."""
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        if node.upper and node.data is None:
            assert self.upper is not None
            return os.open(node.path(), flags, dir_fd=self.upper.fd)
        index, path = node.data if node.data is not None else node.lower[0]
        return os.open(
            path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._data_layer(index).fd
        )

    def _data_layer(self, index: int) -> Layer:
        if index >= len(self.layers):
            # A metadata-only copy made over another stack of layers.
            raise _err(errno.EIO, b"data of a metadata-only copy: no layer %d" % index)
        return self.layers[index]

    def data_stat(self, node: Node) -> os.stat_result:
        """The lower file a metadata-only copy reads its data from."""
        assert node.data is not None
        index, path = node.data
        return self._data_layer(index).lstat(path)

    # Copy-up ------------------------------------------------------------------------

    def _need_writable(self) -> Upper:
        if not self.writable or self.upper is None:
            raise _err(errno.EROFS)
        return self.upper

    def lower_xattrs(self, ref: LowerRef) -> dict[str, bytes]:
        index, path = ref
        return {
            k: v
            for k, v in self.layers[index].xattrs(path).items()
            if not whiteout.is_internal_xattr(k)
        }

    def ensure_upper_dir(self, node: Node) -> None:
        """Copy up a directory (metadata only) and its parents."""
        copyups.ensure_upper_dir(self, node)

    def copyup_job(
        self, node: Node, *, with_data: bool = True, meta_only: bool = False
    ) -> CopyJob | None:
        """Prepare the copy-up of a non-directory (see `copyups.copyup_job`)."""
        return copyups.copyup_job(self, node, with_data=with_data, meta_only=meta_only)

    def copyup_finish(
        self, node: Node, job: CopyJob, left: dict[str, bytes], *, unchanged: bool = False
    ) -> None:
        """Put a staged copy in place (see `copyups.copyup_finish`)."""
        copyups.copyup_finish(self, node, job, left, unchanged=unchanged)

    def _walk(self, path: bytes) -> tuple[Node, bytes, Entry] | None:
        """Resolve a merged path from the root: (parent node, name, entry)."""
        *dirs, name = path.split(b"/")
        node = self.table.root
        for comp in dirs:
            entry = self.resolve(node, comp)
            if entry is None or entry.kind != stat.S_IFDIR:
                return None
            node = self.node_of(node, comp, entry)
        entry = self.resolve(node, name)
        return None if entry is None else (node, name, entry)

    # Namespace changes ------------------------------------------------------------------

    def _check_new_name(self, name: bytes) -> None:
        if whiteout.is_whiteout_name(name):
            raise _err(errno.EINVAL, name)

    def _make(self, parent: Node, name: bytes, maker: Callable[[int, bytes], None]) -> bytes:
        """Create a new object at ``parent/name`` via ``maker(dir_fd, name)``; returns its path."""
        upper = self._need_writable()
        self._check_new_name(name)
        if self.resolve(parent, name) is not None:
            raise _err(errno.EEXIST, name)
        self.ensure_upper_dir(parent)
        ppath = parent.path()
        path = _join(ppath, name)
        # Nothing visible has the name, so the upper holds at most a whiteout there: try
        # the plain create first (one syscall on the common path) and build the object
        # aside only when a whiteout answers EEXIST.
        try:
            maker(upper.fd, path)
        except FileExistsError:
            existing = upper.lstat(path)
            if existing is None or not whiteout.is_whiteout_stat(existing):
                raise
            tmp = upper.tmpname()
            maker(upper.work_fd, tmp)
            upper.place(tmp, ppath, name)
        else:
            if parent.lower:  # `.wh.` files are written only over lower names
                upper.drop_wh_file(ppath, name)
        return path

    def _owner(self, parent: Node, uid: int, gid: int, mode: int) -> tuple[int, int, int]:
        pst = self.stat(parent)
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return uid, gid, mode

    def create(
        self, parent: Node, name: bytes, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[Node, int]:
        """Create and open a regular file; returns its node (looked up once) and fd."""
        uid, gid, mode = self._owner(parent, uid, gid, mode)
        fds: list[int] = []

        def maker(dir_fd: int, path: bytes) -> None:
            fd = os.open(
                path,
                (flags & ~os.O_TRUNC) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                stat.S_IMODE(mode),
                dir_fd=dir_fd,
            )
            fds.append(fd)
            os.fchown(fd, uid, gid)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.fchmod(fd, stat.S_IMODE(mode))

        try:
            self._make(parent, name, maker)
            # The new file is upper-only and open: its entry needs no second resolve.
            node = self._take(parent, name, Entry(stat.S_IFREG, os.fstat(fds[0]), (), None))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return node, fds[0]

    def mkdir(self, parent: Node, name: bytes, mode: int, uid: int, gid: int) -> Node:
        upper = self._need_writable()
        uid, gid, mode = self._owner(parent, uid, gid, mode | stat.S_IFDIR)
        opaque = self.lower_has(parent, name)

        def maker(dir_fd: int, path: bytes) -> None:
            if opaque and dir_fd == upper.fd:
                # Over a whited-out lower name the new directory must hide what was below:
                # build it opaque aside, then place it.
                tmp = upper.tmpname()
                maker(upper.work_fd, tmp)
                upper.place(tmp, parent.path(), name)
                return
            os.mkdir(path, 0o700, dir_fd=dir_fd)
            os.chown(path, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(mode), dir_fd=dir_fd)
            if opaque:
                upper.make_opaque_in_work(path)

        self._make(parent, name, maker)
        parent.nlink_cache = None
        return self.lookup(parent, name)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Node:
        uid, gid, mode = self._owner(parent, uid, gid, mode)

        def maker(dir_fd: int, path: bytes) -> None:
            os.mknod(path, mode, rdev, dir_fd=dir_fd)
            os.chown(path, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
            if mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(mode), dir_fd=dir_fd)

        self._make(parent, name, maker)
        return self.lookup(parent, name)

    def symlink(self, parent: Node, name: bytes, target: bytes, uid: int, gid: int) -> Node:
        uid, gid, _ = self._owner(parent, uid, gid, stat.S_IFLNK)

        def maker(dir_fd: int, path: bytes) -> None:
            os.symlink(target, path, dir_fd=dir_fd)
            os.chown(path, uid, gid, dir_fd=dir_fd, follow_symlinks=False)

        self._make(parent, name, maker)
        return self.lookup(parent, name)

    def link(self, node: Node, parent: Node, name: bytes) -> Node:
        """Hard-link an (already copied-up) object under a new name."""
        upper = self._need_writable()
        if node.is_dir:
            raise _err(errno.EPERM, name)
        if not node.upper:
            raise _err(errno.EIO, b"link source not copied up")
        src = node.path()

        def maker(dir_fd: int, path: bytes) -> None:
            os.link(src, path, src_dir_fd=upper.fd, dst_dir_fd=dir_fd, follow_symlinks=False)

        self._make(parent, name, maker)
        return self.lookup(parent, name)

    def unlink(self, parent: Node, name: bytes) -> None:
        upper = self._need_writable()
        entry = self.resolve(parent, name)
        if entry is None:
            raise _err(errno.ENOENT, name)
        if entry.kind == stat.S_IFDIR:
            raise _err(errno.EISDIR, name)
        need_wh = self.lower_has(parent, name)
        if need_wh:
            self.ensure_upper_dir(parent)
        ppath = parent.path()
        if entry.upper_st is not None:
            if need_wh:
                upper.whiteout(ppath, name)
            else:
                os.unlink(_join(ppath, name), dir_fd=upper.fd)
            self._gone(entry.upper_st)
        else:
            upper.whiteout(ppath, name, vacant=True)
        self._name_gone(entry, parent, name)

    def _name_gone(self, entry: Entry, parent: Node, name: bytes) -> None:
        node = self.table.find(self.ino_of(entry))
        if node is not None:
            self.table.drop_name(node, parent, name)

    def _gone(self, st: os.stat_result) -> None:
        """A name of the upper object ``st`` (stat before the removal) is gone."""
        if self.meta is None or self.upper is None:
            return
        if st.st_nlink == 2:
            # Only the hard-link index may hold it now: then the group is gone.
            origin = self.meta.origins.get(st.st_ino)
            if origin is None:
                return
            try:
                if os.lstat(index_name(origin), dir_fd=self.upper.index_fd).st_ino != st.st_ino:
                    return
            except FileNotFoundError:
                return
            os.unlink(index_name(origin), dir_fd=self.upper.index_fd)
        elif st.st_nlink > 2:
            return
        self.meta.forget_ino(st.st_ino)

    def rmdir(self, parent: Node, name: bytes) -> None:
        upper = self._need_writable()
        entry, node = self._existing(parent, name)
        if entry.kind != stat.S_IFDIR:
            raise _err(errno.ENOTDIR, name)
        if self.list_dir(node):
            raise _err(errno.ENOTEMPTY, name)
        need_wh = self.lower_has(parent, name)
        ppath = parent.path()
        if entry.upper_st is not None:
            gone = self.stat(node)
            upper.remove_dir(_join(ppath, name), whiteout_after=need_wh)
            assert self.meta is not None
            self.meta.forget_ino(entry.upper_st.st_ino)
            # Still open somewhere, maybe: it answers fstat with what it last was, empty.
            node.upper, node.lower, node.lower_stat = False, (), gone
        else:
            self.ensure_upper_dir(parent)
            upper.whiteout(ppath, name, vacant=True)
        parent.nlink_cache = None

    # Renames and attributes live in their own modules; these are their entry points.

    def rename(
        self, old_parent: Node, old: bytes, new_parent: Node, new: bytes, flags: int
    ) -> None:
        """Rename; non-directory sources (and targets for EXCHANGE) must be copied up first."""
        renames.rename(self, old_parent, old, new_parent, new, flags)

    def setattr(
        self,
        node: Node,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        times: tuple[int | None, int | None] | None = None,
        fd: int | None = None,
        linked: bool = False,
    ) -> None:
        """Change attributes of an object already in the upper (see `attrs.setattr`)."""
        attrs.setattr(
            self, node, mode=mode, uid=uid, gid=gid, size=size, times=times, fd=fd, linked=linked
        )

    def check_xattr_name(self, name: str) -> None:
        attrs.check_xattr_name(self, name)

    def xattrs(self, node: Node) -> dict[str, bytes]:
        return attrs.xattrs(self, node)

    def getxattr(self, node: Node, name: str, fd: int | None = None) -> bytes:
        return attrs.getxattr(self, node, name, fd)

    def setxattr(self, node: Node, name: str, value: bytes) -> None:
        attrs.setxattr(self, node, name, value)

    def removexattr(self, node: Node, name: str) -> None:
        attrs.removexattr(self, node, name)
