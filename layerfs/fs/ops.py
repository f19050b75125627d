"""pyfuse3 request handlers: translate FUSE requests to the union engine, nothing more.

Only ``FUSEError`` leaves a handler: ``OSError`` becomes its errno, anything
else is logged with its traceback and answered with EIO, so no bug can take
the mount down. Data copy-up of large files runs on a worker thread; every
other call stays on the trio thread (a thread hop per read would cost more
than the read).
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from . import backing, copyup
from .inodes import InodeTableError, Node
from .union import LOWER_TIMEOUT, Entry, UnionFS

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Copy-ups of files larger than this go to a worker thread.
THREAD_COPY_BYTES = 1 << 20
# Reads of at least this size (readahead of big files) go to a worker thread.
THREAD_READ_BYTES = 512 << 10


def handler(
    fn: Callable[Concatenate[Operations, _P], Coroutine[Any, Any, _R]],
) -> Callable[Concatenate[Operations, _P], Coroutine[Any, Any, _R]]:
    """Map exceptions to FUSE errors at the boundary (see the module docstring)."""

    @functools.wraps(fn)
    async def wrapper(self: Operations, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s%r", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class FileHandle:
    fd: int
    node: Node
    on_upper: bool
    # The kernel reads and writes this handle's backing file itself (passthrough).
    passthrough: bool = False


@dataclass
class DirHandle:
    node: Node
    names: list[bytes]
    # For a directory only in lower layers: every entry resolved, with its attributes.
    resolved: list[tuple[Entry, pyfuse3.EntryAttributes]] | None = None


# opendir may hand the kernel FOPEN_CACHE_DIR only with the patched pyfuse3
# (third_party/pyfuse3); the plain one takes a bare handle.
CACHE_READDIR = hasattr(pyfuse3.FileInfo(), "cache_readdir")
# A pyfuse3 with third_party/pyfuse3/file-range.patch can answer a read from a file.
FILE_RANGE = hasattr(pyfuse3, "FileRange")

# Entries whose readdir attributes are kept for lower-only directories.
LISTING_CACHE_ENTRIES = 200_000


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, fs: UnionFS) -> None:
        super().__init__()
        self.fs = fs
        self.table = fs.table
        self.enable_writeback_cache = fs.writable
        self.enable_passthrough = fs.opts.passthrough and backing.SUPPORTED
        self.backings = backing.Backings()
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._fh = itertools.count(1)
        self._copy_locks: dict[int, trio.Lock] = {}
        self.initialized = trio.Event()
        # A lower-only directory cannot change until it is copied up, so its resolved
        # listing serves every later readdir (find over a warm tree reads it again).
        self._listings: OrderedDict[
            int, tuple[list[bytes], list[tuple[Entry, pyfuse3.EntryAttributes]]]
        ] = OrderedDict()
        self._listed = 0
        self._readdirs = 0

    def init(self) -> None:
        self.backings.start()
        if self.backings.active:
            self.enable_writeback_cache = False  # the kernel grants one or the other
        self.initialized.set()

    def stats(self) -> dict[str, int]:
        """Counters for SIGUSR1 and tests: what the daemon holds right now."""
        return {
            "inodes": len(self.table),
            "files": len(self._files),
            "dirs": len(self._dirs),
            "readdirs": self._readdirs,
            "passthrough": int(self.backings.active),
            "backings": len(self.backings),
        }

    # Helpers ---------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        return self.table.get(ino)

    def _any_fd(self, node: Node) -> int | None:
        # An open upper file answers for its inode even after its name is gone or reused.
        for fh in node.handles:
            h = self._files[fh]
            if h.on_upper:
                return h.fd
        return None

    def _attrs(self, node: Node, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        if st is None:
            st = self.fs.stat(node, self._any_fd(node))
        a = self._fill(node.ino, st, self.fs.nlink(node, st), self.fs.timeout(node))
        if node.data is not None:
            a.st_blocks = self.fs.data_stat(node).st_blocks  # `du` counts the data it reads
        return a

    def _fill(
        self, ino: int, st: os.stat_result, nlink: int, timeout: float
    ) -> pyfuse3.EntryAttributes:
        opts = self.fs.opts
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(ino)
        a.generation = 0
        a.st_mode = pyfuse3.ModeT(st.st_mode)
        a.st_nlink = nlink
        a.st_uid = (
            opts.squash_uid if opts.squash_uid is not None else opts.uidmap.to_inside(st.st_uid)
        )
        a.st_gid = (
            opts.squash_gid if opts.squash_gid is not None else opts.gidmap.to_inside(st.st_gid)
        )
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        a.st_atime_ns = st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        a.entry_timeout = timeout
        a.attr_timeout = timeout
        return a

    def _listing_attrs(self, parent: Node, name: bytes, entry: Entry) -> pyfuse3.EntryAttributes:
        """Attributes of a lower-only entry; no node is built for a plain one (cold listings
        of big trees spent a sixth of their time constructing nodes nobody kept)."""
        st = entry.lower_st
        ino = self.fs.ino_of(entry)
        if (
            st is not None
            and entry.upper_st is None
            and (entry.kind != stat.S_IFDIR or len(entry.lower) == 1)
            and self.table.find(ino) is None
        ):
            return self._fill(ino, st, st.st_nlink, LOWER_TIMEOUT)
        return self._attrs(self.fs.node_of(parent, name, entry))

    def _ids(self, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        opts = self.fs.opts
        return opts.uidmap.to_outside(ctx.uid), opts.gidmap.to_outside(ctx.gid)

    async def _copy_up(
        self, node: Node, *, with_data: bool = True, meta_only: bool = False
    ) -> bool:
        """Give ``node`` an upper copy; concurrent callers for one node wait for one copy.

        ``meta_only``: the caller changes attributes only, a copy without data will do.
        True when this call made the copy (its name leads to it now).
        """
        while True:
            if node.upper and (node.data is None or meta_only):
                return False
            if node.is_dir:
                self.fs.ensure_upper_dir(node)
                return True
            busy = self._copy_locks.get(node.ino)
            if busy is None:
                break
            async with busy:  # a copy of this node runs on a worker: wait, then look again
                pass
        job = self.fs.copyup_job(node, with_data=with_data, meta_only=meta_only)
        if job is None:
            self._reopen_readers(node)
            return False
        if not (with_data and job.marker is None and job.st.st_size > THREAD_COPY_BYTES):
            # Inline, nothing else runs until it is done: no lock, no second look.
            left = copyup.stage(job)
            self.fs.copyup_finish(node, job, left, unchanged=True)
            self._reopen_readers(node)
            return True
        lock = self._copy_locks[node.ino] = trio.Lock()
        try:
            async with lock:
                left = await trio.to_thread.run_sync(copyup.stage, job)
                self.fs.copyup_finish(node, job, left)
                self._reopen_readers(node)
        finally:
            del self._copy_locks[node.ino]
        return True

    def _reopen_readers(self, node: Node) -> None:
        # Handles opened before the copy-up read the lower file: point them at the copy.
        if node.data is not None:
            return  # a copy without data: they read the right file already
        for fh in node.handles:
            h = self._files[fh]
            if not h.on_upper:
                fd = self.fs.open_fd(node, os.O_RDONLY)
                os.close(h.fd)
                h.fd, h.on_upper = fd, True

    def _real_flags(self, flags: int) -> int:
        """Open flags for the backing file of a FUSE open."""
        # The kernel gives every write its offset (writeback cache): O_APPEND here
        # would make pwrite ignore it. With the writeback cache the kernel also reads
        # through write-only handles to fill partial pages, so those must be O_RDWR.
        flags &= ~os.O_APPEND
        if self.enable_writeback_cache and flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags

    def _dot_attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        # The kernel reads only the number and type of "." and ".."; a directory
        # removed while open has nothing more to give.
        try:
            return self._attrs(node)
        except OSError:
            a = pyfuse3.EntryAttributes()
            a.st_ino = pyfuse3.InodeT(node.ino)
            a.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o755)
            return a

    def _negative(self, parent: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(0)
        a.entry_timeout = LOWER_TIMEOUT if not parent.upper else self.fs.opts.timeout
        return a

    # Lookups and attributes -------------------------------------------------------------

    @handler
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        log.debug("lookup %d %r", parent_inode, name)
        parent = self._node(parent_inode)
        try:
            node = self.fs.lookup(parent, name)
        except FileNotFoundError:
            return self._negative(parent)
        try:
            return self._attrs(node)
        except BaseException:
            self.table.forget(node.ino, 1)
            raise

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for ino, count in inode_list:
            try:
                self.table.forget(ino, count)
            except InodeTableError:
                log.exception("forget of inode %d", ino)

    @handler
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @handler
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        log.debug("setattr %d", inode)
        node = self._node(inode)
        handle = self._files.get(fh) if fh is not None else None
        if handle is None:
            # fchmod/fchown/futimens come without a handle: an unlinked open file is
            # still reachable through any of its own.
            fd = self._any_fd(node)
            handle = FileHandle(fd, node, True) if fd is not None else None
        resizing = bool(fields.update_size)
        truncating = resizing and attr.st_size == 0
        other = (
            fields.update_mode
            or fields.update_uid
            or fields.update_gid
            or fields.update_size
            or fields.update_atime
        )
        if not other and not node.upper:
            # The writeback cache flushes ctime, and an mtime it never changed, after an
            # unlink or a rename (and on close): nothing worth a copy-up. A lower object
            # that lost its name keeps its attributes (an error here fails close(2)).
            st = self.fs.stat(node)
            if (
                not fields.update_mtime
                or attr.st_mtime_ns == st.st_mtime_ns
                or not self.fs.is_linked(node)
            ):
                return self._attrs(node, st)
        if not self.fs.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        copied = await self._copy_up(node, with_data=not truncating, meta_only=not resizing)
        opts = self.fs.opts
        times = None
        if fields.update_atime or fields.update_mtime:
            times = (
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        self.fs.setattr(
            node,
            mode=attr.st_mode if fields.update_mode else None,
            uid=opts.uidmap.to_outside(attr.st_uid) if fields.update_uid else None,
            gid=opts.gidmap.to_outside(attr.st_gid) if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            times=times,
            fd=handle.fd if handle is not None and handle.on_upper else None,
            linked=copied,
        )
        return self._attrs(node)

    @handler
    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        return pyfuse3.FileNameT(self.fs.readlink(self._node(inode)))

    # Namespace -------------------------------------------------------------------------

    @handler
    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        uid, gid = self._ids(ctx)
        node = self.fs.mknod(self._node(parent_inode), name, mode, rdev, uid, gid)
        return self._attrs(node)

    @handler
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        uid, gid = self._ids(ctx)
        node = self.fs.mkdir(self._node(parent_inode), name, mode, uid, gid)
        return self._attrs(node)

    @handler
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        uid, gid = self._ids(ctx)
        node = self.fs.symlink(self._node(parent_inode), name, target, uid, gid)
        return self._attrs(node)

    @handler
    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if not self.fs.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        await self._copy_up(node)
        new = self.fs.link(node, self._node(new_parent_inode), new_name)
        return self._attrs(new)

    @handler
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self.fs.unlink(self._node(parent_inode), name)

    @handler
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self.fs.rmdir(self._node(parent_inode), name)

    @handler
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old_parent = self._node(parent_inode_old)
        new_parent = self._node(parent_inode_new)
        if not self.fs.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        names = [(old_parent, name_old)]
        if flags & pyfuse3.RENAME_EXCHANGE:
            names.append((new_parent, name_new))
        for parent, name in names:
            entry = self.fs.resolve(parent, name)
            if entry is not None and entry.kind != stat.S_IFDIR:
                await self._copy_up(self.fs.node_of(parent, name, entry), meta_only=True)
        self.fs.rename(old_parent, name_old, new_parent, name_new, flags)

    # Files -----------------------------------------------------------------------------

    def _file_info(self, node: Node, fd: int) -> pyfuse3.FileInfo:
        """A new handle of ``node`` on ``fd``, and how the kernel is to use it."""
        fh = next(self._fh)
        handle = FileHandle(fd, node, node.upper and node.data is None)
        backing_id = 0
        if self.backings.active and self._may_pass_through(node, handle):
            backing_id = self.backings.bind(node.ino, fd)
        handle.passthrough = backing_id > 0
        self._files[fh] = handle
        node.handles.add(fh)
        node.opens += 1
        if backing_id:
            return pyfuse3.FileInfo(
                fh=pyfuse3.FileHandleT(fh), keep_cache=False, backing_id=backing_id
            )
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True)

    def _may_pass_through(self, node: Node, handle: FileHandle) -> bool:
        # The kernel keeps one backing file per inode while any passthrough handle is
        # open, and fails every other open of it: so only a file that cannot become
        # another file while open gets one. A lower file would (a writer's copy-up,
        # which its readers must follow); its data in the upper, or any file of a
        # mount that never copies up, will not. Nor may passthrough join cached opens.
        if not handle.on_upper and self.fs.writable:
            return False
        return all(self._files[fh].passthrough for fh in node.handles)

    @handler
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        writing = (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC
        if writing:
            if not self.fs.writable:
                raise pyfuse3.FUSEError(errno.EROFS)
            await self._copy_up(node, with_data=not flags & os.O_TRUNC)
        fd = self.fs.open_fd(node, self._real_flags(flags))
        return self._file_info(node, fd)

    @handler
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        uid, gid = self._ids(ctx)
        node, fd = self.fs.create(
            self._node(parent_inode), name, mode, self._real_flags(flags), uid, gid
        )
        return self._file_info(node, fd), self._attrs(node)

    @handler
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes | pyfuse3.FileRange:
        fd = self._files[fh].fd
        if size < THREAD_READ_BYTES:
            return os.pread(fd, size, off)
        # Readahead sends several big reads at once: answering them on workers keeps more
        # than one disk read in flight. The worker gets its own fd: a copy-up may close
        # and reuse the handle's meanwhile (see _reopen_readers).
        fd = os.dup(fd)
        if FILE_RANGE:
            # The worker reads and answers by itself, from a buffer pyfuse3 keeps: the
            # trio thread no longer copies every byte out to the kernel, and no Python
            # object per MiB (PERFORMANCE.md, "Cold reads").
            return pyfuse3.FileRange(fd, off, size, in_thread=True, close_fd=True)
        try:
            return await trio.to_thread.run_sync(os.pread, fd, size, off)
        finally:
            os.close(fd)

    @handler
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        return os.pwrite(self._files[fh].fd, buf, off)

    # No flush handler: pyfuse3 answers ENOSYS and the kernel stops sending FLUSH, one
    # request less per close(2). Data goes to the backing file on every write already.

    @handler
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        h = self._files.pop(fh)
        os.close(h.fd)
        if h.passthrough:
            self.backings.unbind(h.node.ino)
        h.node.handles.discard(fh)
        self.table.release(h.node)

    @handler
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        if not self.fs.opts.fsync:
            return
        fd = self._files[fh].fd
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)

    # Directories -----------------------------------------------------------------------

    @handler
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT | pyfuse3.FileInfo:
        node = self._node(inode)
        # One merge per open handle: offsets index this snapshot, so they stay stable
        # while entries come and go during the listing.
        if node.upper:
            if self._listings.pop(node.ino, None) is not None:
                self._listed = sum(len(n) for n, _ in self._listings.values())
            handle = DirHandle(node, [b".", b"..", *self.fs.list_dir(node)])
        else:
            names, resolved = self._lower_listing(node)
            handle = DirHandle(node, names, resolved)
        fh = next(self._fh)
        self._dirs[fh] = handle
        node.opens += 1
        if not CACHE_READDIR:
            return pyfuse3.FileHandleT(fh)
        # The kernel keeps the listing and answers later getdents itself; it drops it when
        # the directory changes through this mount (or its mtime changes on a refresh).
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=True, cache_readdir=True)

    def _lower_listing(
        self, node: Node
    ) -> tuple[list[bytes], list[tuple[Entry, pyfuse3.EntryAttributes]]]:
        cached = self._listings.get(node.ino)
        if cached is not None:
            self._listings.move_to_end(node.ino)
            return cached
        names: list[bytes] = [b".", b".."]
        resolved: list[tuple[Entry, pyfuse3.EntryAttributes]] = []
        for name in self.fs.list_dir(node):
            entry = self.fs.resolve(node, name)
            if entry is not None:
                names.append(name)
                resolved.append((entry, self._listing_attrs(node, name, entry)))
        self._listings[node.ino] = (names, resolved)
        self._listed += len(names)
        while self._listed > LISTING_CACHE_ENTRIES and len(self._listings) > 1:
            _, (old, _) = self._listings.popitem(last=False)
            self._listed -= len(old)
        return names, resolved

    @handler
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        self._readdirs += 1
        dh = self._dirs[fh]
        node = dh.node
        for index in range(start_id, len(dh.names)):
            name = dh.names[index]
            if name in (b".", b".."):
                # The kernel takes no lookup reference for these two.
                target = node if name == b"." or node.parent is None else node.parent
                if not pyfuse3.readdir_reply(
                    token, pyfuse3.FileNameT(name), self._dot_attrs(target), index + 1
                ):
                    return
                continue
            if dh.resolved is not None and not node.upper:
                entry, attrs = dh.resolved[index - 2]
                if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), attrs, index + 1):
                    return
                child = self.table.find(attrs.st_ino)
                if child is None:
                    child = self.table.add(self.fs.node_of(node, name, entry))
                child.nlookup += 1
                continue
            found = self.fs.resolve(node, name)
            if found is None:
                continue
            child = self.fs.node_of(node, name, found)
            attrs = self._attrs(child)
            if not pyfuse3.readdir_reply(token, pyfuse3.FileNameT(name), attrs, index + 1):
                return
            if self.table.find(child.ino) is None:
                self.table.add(child)
            child.nlookup += 1

    @handler
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        dh = self._dirs.pop(fh)
        self.table.release(dh.node)

    @handler
    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        return None

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = self.fs.statvfs()
        out = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(out, name, getattr(sv, name))
        return out

    # Extended attributes ---------------------------------------------------------------

    @handler
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        node = self._node(inode)
        try:
            return self.fs.getxattr(node, os.fsdecode(name), self._any_fd(node))
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @handler
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        names = self.fs.xattrs(self._node(inode))
        return [pyfuse3.XAttrNameT(os.fsencode(n)) for n in names]

    @handler
    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        node = self._node(inode)
        if not self.fs.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        self.fs.check_xattr_name(os.fsdecode(name))
        # A metadata-only copy's xattrs must not outgrow one block (see `metacopy`): a
        # new xattr needs a full copy.
        await self._copy_up(node)
        self.fs.setxattr(node, os.fsdecode(name), value)

    @handler
    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self._node(inode)
        if not self.fs.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        self.fs.getxattr(node, os.fsdecode(name))  # ENODATA before any copy-up
        await self._copy_up(node, meta_only=True)  # removing only shrinks the xattrs
        self.fs.removexattr(node, os.fsdecode(name))

    @handler
    async def access(
        self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext
    ) -> bool:
        return True
