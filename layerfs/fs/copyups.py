"""Copy-up over the union: what to copy for a node, and putting the copy in place.

Building a copy is `copyup` (I/O on file descriptors only, fit for a worker thread); here
is what decides which copy a node gets (whole, empty, or metadata-only, see `metacopy`) and
what puts it into the upper tree, records its origin and links its hard-link group. Entry
points are `UnionFS.ensure_upper_dir`, `copyup_job` and `copyup_finish`.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from . import copyup, metacopy
from .copyup import CopyJob
from .inodes import LowerRef, Node
from .syscalls import join as _join
from .syscalls import keep_times as _keep_times
from .syscalls import oserror as _err
from .syscalls import read_xattrs
from .upper import index_name

if TYPE_CHECKING:
    from .union import UnionFS


def ensure_upper_dir(fs: UnionFS, node: Node) -> None:
    """Copy up a directory (metadata only) and its parents."""
    if node.upper:
        return
    upper = fs._need_writable()
    if not node.lower:
        raise _err(errno.ENOENT, node.path())  # removed while open
    assert node.parent is not None and fs.meta is not None
    ensure_upper_dir(fs, node.parent)
    job = _lower_job(fs, node, fs.lower_xattrs(node.lower[0]), with_data=True, fsync=False)
    left = copyup.stage(job)
    if left:
        fs.meta.set_xattrs(os.lstat(job.tmp, dir_fd=upper.work_fd).st_ino, left)
    _place_copy(fs, job.tmp, node.parent.path(), node.name)
    node.upper = True


def copyup_job(
    fs: UnionFS, node: Node, *, with_data: bool = True, meta_only: bool = False
) -> CopyJob | None:
    """Prepare copying a lower non-directory up (parents are copied up here), or a
    metadata-only copy's data (``with_data``) or emptiness (not) into a full copy.

    ``meta_only``: the caller changes only attributes, so a file may be copied without
    its data (see `metacopy`). None when there is nothing to copy: the node's hard-link
    group already has its copy.
    """
    upper = fs._need_writable()
    assert node.parent is not None
    if node.upper:
        return _data_job(fs, node, with_data)
    entry = fs.resolve(node.parent, node.name)
    if entry is not None and entry.upper_st is not None and fs.ino_of(entry) == node.ino:
        node.upper, node.lower, node.lower_stat = True, (), None
        node.data = entry.data
        return None
    if entry is None or entry.upper_st is not None or entry.lower[:1] != node.lower[:1]:
        raise _err(errno.ENOENT, node.path())  # removed or replaced while it was open
    ensure_upper_dir(fs, node.parent)
    st = node.lower_stat
    assert isinstance(st, os.stat_result)
    xattrs = fs.lower_xattrs(node.lower[0])
    if meta_only and upper.xattrs and fs.opts.metacopy:
        marker = metacopy.encode(node.lower[0])
        if metacopy.eligible(st, xattrs, marker):
            upper.note_metacopy()
            return _lower_job(fs, node, xattrs, with_data=False, fsync=False, marker=marker)
    return _lower_job(fs, node, xattrs, with_data=with_data, fsync=fs.opts.fsync)


def _job(
    fs: UnionFS,
    src: LowerRef,
    st: os.stat_result,
    xattrs: dict[str, bytes],
    *,
    with_data: bool,
    fsync: bool,
    marker: bytes | None = None,
    replaces: int | None = None,
) -> CopyJob:
    upper = fs._need_writable()
    index, path = src
    return CopyJob(
        fs._data_layer(index).fd,
        path,
        st,
        xattrs,
        upper.work_fd,
        upper.tmpname(),
        with_data=with_data,
        fsync=fsync,
        xattrs_supported=upper.xattrs and fs.opts.xattrs,
        marker=marker,
        replaces=replaces,
    )


def _lower_job(
    fs: UnionFS,
    node: Node,
    xattrs: dict[str, bytes],
    *,
    with_data: bool,
    fsync: bool,
    marker: bytes | None = None,
) -> CopyJob:
    st = node.lower_stat
    assert isinstance(st, os.stat_result)
    return _job(fs, node.lower[0], st, xattrs, with_data=with_data, fsync=fsync, marker=marker)


def _data_job(fs: UnionFS, node: Node, with_data: bool) -> CopyJob:
    """A full copy to replace the metadata-only copy of ``node``: its attributes, the
    lower data (or none)."""
    upper = fs._need_writable()
    assert node.data is not None and node.parent is not None
    entry = fs.resolve(node.parent, node.name)
    if entry is None or entry.data != node.data or fs.ino_of(entry) != node.ino:
        raise _err(errno.ENOENT, node.path())  # removed or replaced while it was open
    assert entry.upper_st is not None
    xattrs = read_xattrs(upper.proc(node.path()))
    xattrs.pop(metacopy.MARKER, None)
    return _job(
        fs,
        node.data,
        entry.upper_st,
        xattrs,
        with_data=with_data,
        fsync=fs.opts.fsync,
        replaces=entry.upper_st.st_ino,
    )


def copyup_finish(
    fs: UnionFS, node: Node, job: CopyJob, left: dict[str, bytes], *, unchanged: bool = False
) -> None:
    """Put a staged copy in place, unless the tree changed under it meanwhile.

    ``unchanged``: nothing ran since `copyup_job` (the copy was staged inline), so what
    it resolved still holds.
    """
    upper = fs._need_writable()
    assert node.parent is not None and fs.meta is not None
    if job.replaces is not None:
        _replace_metacopy(fs, node, job, left, unchanged=unchanged)
        return
    src = node.lower[0] if node.lower else None
    if not unchanged:
        entry = None if node.upper else fs.resolve(node.parent, node.name)
        if entry is not None and entry.upper_st is not None and fs.ino_of(entry) == node.ino:
            node.upper = True  # its hard-link group's copy was linked here meanwhile
        if entry is None or entry.upper_st is not None or not entry.lower or entry.lower[0] != src:
            copyup.discard(upper.work_fd, job.tmp)
            if node.upper:
                return
            raise _err(errno.ENOENT, node.path())
        ensure_upper_dir(fs, node.parent)
    # A metadata-only copy's marker names its origin; any other copy records it,
    # before the rename: a crash in between leaves only a stale work file.
    if job.marker is None or left:
        tmp_ino = os.lstat(job.tmp, dir_fd=upper.work_fd).st_ino
        if job.marker is None:
            fs.meta.set_origin(tmp_ino, node.ino)
        if left:
            fs.meta.set_xattrs(tmp_ino, left)
    lower_st = node.lower_stat
    group = (
        isinstance(lower_st, os.stat_result)
        and stat.S_ISREG(lower_st.st_mode)
        and lower_st.st_nlink > 1
        and src is not None
    )
    if group:
        # The group's copy enters the index first: from then on every name of the group
        # resolves to it, whatever a crash interrupts below.
        os.link(job.tmp, index_name(node.ino), src_dir_fd=upper.work_fd, dst_dir_fd=upper.index_fd)
    # The name resolved to the lower object: the upper has neither the object nor a
    # whiteout of either form there, so a plain rename places the copy.
    _place_copy(fs, job.tmp, node.parent.path(), node.name, vacant=True)
    node.upper, node.lower, node.lower_stat = True, (), None
    node.data = src if job.marker is not None else None
    if group:
        assert src is not None and isinstance(lower_st, os.stat_result)
        _link_group(fs, src, lower_st)


def _replace_metacopy(
    fs: UnionFS, node: Node, job: CopyJob, left: dict[str, bytes], *, unchanged: bool
) -> None:
    """Rename a full copy over the metadata-only copy it was made from."""
    upper = fs._need_writable()
    assert node.parent is not None and fs.meta is not None and job.replaces is not None
    if not unchanged:
        entry = fs.resolve(node.parent, node.name)
        if entry is None or entry.upper_st is None or entry.upper_st.st_ino != job.replaces:
            copyup.discard(upper.work_fd, job.tmp)
            raise _err(errno.ENOENT, node.path())  # removed or replaced meanwhile
    tmp_ino = os.lstat(job.tmp, dir_fd=upper.work_fd).st_ino
    # Recorded before the rename: a crash in between leaves the metadata-only copy in
    # place, and records on a work file that the next mount drops.
    fs.meta.replace(job.replaces, tmp_ino, node.ino)
    if left:
        fs.meta.set_xattrs(tmp_ino, left | fs.meta.get_xattrs(tmp_ino))
    _place_copy(fs, job.tmp, node.parent.path(), node.name, vacant=True)
    node.data = None


def _place_copy(
    fs: UnionFS, tmp: bytes, parent_path: bytes, name: bytes, *, vacant: bool = False
) -> None:
    """Place a copy-up: invisible in the merged view, so the parent keeps its times.

    ``vacant``: the upper holds no whiteout at the name (nothing, or the copy it replaces),
    so a plain rename does.
    """
    upper = fs._need_writable()
    before = upper.lstat(parent_path)
    if vacant:
        dst = _join(parent_path, name)
        os.rename(tmp, dst, src_dir_fd=upper.work_fd, dst_dir_fd=upper.fd)
    else:
        upper.place(tmp, parent_path, name)
    if before is not None:
        _keep_times(upper.fd, parent_path, before)


def _link_group(fs: UnionFS, src: LowerRef, lower_st: os.stat_result) -> None:
    """Link every other visible name of a lower hard-link group to the group's copy.

    Resolving a name does it (see `_link_from_index`); names not at their lower path
    (below a renamed directory) are linked when they are first resolved.
    """
    index, path = src
    for other in fs.layers[index].hardlink_names(path, lower_st.st_ino):
        fs._walk(other)
