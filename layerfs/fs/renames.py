"""Renames in the union: lower directories keep their contents (redirects), new places are
hidden where they must be (opaque), and every step is ordered so a crash shows the rename
either not done or done.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from . import whiteout
from .inodes import Node
from .syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, renameat2
from .syscalls import join as _join
from .syscalls import oserror as _err

if TYPE_CHECKING:
    from .union import UnionFS


def rename(
    fs: UnionFS, old_parent: Node, old: bytes, new_parent: Node, new: bytes, flags: int
) -> None:
    """Rename; non-directory sources (and targets for EXCHANGE) must be copied up first."""
    upper = fs._need_writable()
    fs._check_new_name(new)
    src, src_node = fs._existing(old_parent, old)
    dst = fs.resolve(new_parent, new)
    if flags & RENAME_NOREPLACE and dst is not None:
        raise _err(errno.EEXIST, new)
    exchange = bool(flags & RENAME_EXCHANGE)
    if exchange and dst is None:
        raise _err(errno.ENOENT, new)
    dst_node = fs.node_of(new_parent, new, dst) if dst is not None else None
    if dst_node is not None and dst_node.ino == src_node.ino:
        return  # two names of one object: POSIX says do nothing
    if dst is not None and not exchange:
        if src.kind == stat.S_IFDIR and dst.kind != stat.S_IFDIR:
            raise _err(errno.ENOTDIR, new)
        if src.kind != stat.S_IFDIR and dst.kind == stat.S_IFDIR:
            raise _err(errno.EISDIR, new)
        if dst_node is not None and dst.kind == stat.S_IFDIR and fs.list_dir(dst_node):
            raise _err(errno.ENOTEMPTY, new)
    for n in (src_node, dst_node) if exchange else (src_node,):
        if n is None:
            continue
        if n.is_dir:
            fs.ensure_upper_dir(n)
        elif not n.upper:
            raise _err(errno.EIO, b"rename source not copied up")
    fs.ensure_upper_dir(old_parent)
    fs.ensure_upper_dir(new_parent)
    old_path = _join(old_parent.path(), old)
    new_path = _join(new_parent.path(), new)
    old_needs_wh = fs.lower_has(old_parent, old)
    # What keeps a moved directory's own lower contents (a redirect) or hides those of
    # its new place (opaque) is recorded before the rename: a crash then leaves it either
    # unmoved with a harmless mark, or moved and complete.
    _prepare_moved_dir(fs, src_node, old_path, new_parent, new)
    if exchange:
        assert dst_node is not None
        _prepare_moved_dir(fs, dst_node, new_path, old_parent, old)
        renameat2(upper.fd, old_path, upper.fd, new_path, RENAME_EXCHANGE)
        _moved(fs, src_node, old_parent, old, new_parent, new)
        _moved(fs, dst_node, new_parent, new, old_parent, old)
    else:
        _rename_over(fs, old_parent, old, new_parent, new, src_node.is_dir, old_needs_wh)
        if dst_node is not None:
            fs.table.drop_name(dst_node, new_parent, new)
        _moved(fs, src_node, old_parent, old, new_parent, new)
    if src.kind == stat.S_IFDIR or (dst is not None and dst.kind == stat.S_IFDIR):
        old_parent.nlink_cache = None  # only directories count in a directory's links
        new_parent.nlink_cache = None


def _prepare_moved_dir(fs: UnionFS, node: Node, path: bytes, parent: Node, name: bytes) -> None:
    """Before a directory at ``path`` moves to ``parent/name``: keep its own lower
    contents (redirect), hide those of its new place (opaque)."""
    if not node.is_dir:
        return
    assert fs.upper is not None and fs.meta is not None
    st = fs.upper.lstat(path)
    assert st is not None
    if node.lower:
        lower_path = node.lower[0][1]
        if lower_path != parent.child_path(name) or st.st_ino in fs.meta.redirects:
            fs.meta.set_redirect(st.st_ino, lower_path)
    elif fs.lower_has(parent, name) and not fs.upper.is_opaque(path):
        fs.upper.make_opaque(path)


def _rename_over(
    fs: UnionFS,
    old_parent: Node,
    old: bytes,
    new_parent: Node,
    new: bytes,
    is_dir: bool,
    old_needs_wh: bool,
) -> None:
    """The upper side of a plain rename: replace what is at the target, whiteout the source."""
    upper = fs._need_writable()
    old_path = _join(old_parent.path(), old)
    new_path = _join(new_parent.path(), new)
    replaced = upper.lstat(new_path)
    if replaced is not None and stat.S_ISDIR(replaced.st_mode):
        # An empty merged directory: its whiteouts must not give way before it does.
        upper.remove_dir(new_path, whiteout_after=fs.lower_has(new_parent, new))
        assert fs.meta is not None
        fs.meta.forget_ino(replaced.st_ino)
        replaced = upper.lstat(new_path)
    if replaced is not None and whiteout.is_whiteout_stat(replaced):
        if is_dir:
            # A directory cannot be renamed over a whiteout device: swap the two, which
            # leaves the whiteout at the old name, where it may be wanted.
            try:
                renameat2(upper.fd, old_path, upper.fd, new_path, RENAME_EXCHANGE)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                upper.hide_while_replacing(new_parent.path(), new)
                os.rename(old_path, new_path, src_dir_fd=upper.fd, dst_dir_fd=upper.fd)
                if old_needs_wh:
                    upper.whiteout(old_parent.path(), old)
            else:
                if not old_needs_wh:
                    os.unlink(old_path, dir_fd=upper.fd)
            upper.drop_wh_file(new_parent.path(), new)
            return
        replaced = None
    if old_needs_wh and upper.char_whiteouts:
        try:
            renameat2(upper.fd, old_path, upper.fd, new_path, RENAME_WHITEOUT)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            os.rename(old_path, new_path, src_dir_fd=upper.fd, dst_dir_fd=upper.fd)
            upper.whiteout(old_parent.path(), old)
    else:
        os.rename(old_path, new_path, src_dir_fd=upper.fd, dst_dir_fd=upper.fd)
        if old_needs_wh:
            upper.whiteout(old_parent.path(), old)
    upper.drop_wh_file(new_parent.path(), new)
    if replaced is not None:
        fs._gone(replaced)


def _moved(
    fs: UnionFS, node: Node, old_parent: Node, old: bytes, parent: Node, name: bytes
) -> None:
    fs.table.drop_name(node, old_parent, old)
    fs.table.add_name(node, parent, name)
