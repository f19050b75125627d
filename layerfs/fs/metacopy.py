"""Metadata-only copy-up: an upper file that holds a lower file's attributes, not its data.

chmod, chown, utimes, xattr removals and renames of a lower file need its attributes in the
upper, not its bytes. Such a copy-up (as kernel overlayfs's ``metacopy=on``) stages a sparse
file of the lower file's size with its owner, mode, times and xattrs plus a marker xattr
naming the layer and path the data lives at, and renames it into place: no data copied, no
fsync (there is no data whose durability the rename would have to wait for; the marker is
set before the rename, so a journal that keeps their order never shows the file without it).

Reads of such a file go to the lower data. Anything that needs the data itself (an open for
writing, a size change, a hard link) or could grow its xattrs (setxattr) first replaces the
file with a full copy, built aside and renamed over it. So a marked file never
holds data of its own, and its blocks are its xattrs' only: with at most `MAX_XATTR_BYTES`
of them, at most one filesystem block (ext4 and xfs keep that much in the inode plus one
block; btrfs and tmpfs count none). Only upper files that look like that are checked for the
marker: non-empty, at most one block.

The marker needs xattrs on the upper (``user.layerfs.metacopy``, hidden and refused like
every internal xattr); an upper without them (zfs-fuse) always copies data.
"""

from __future__ import annotations

import errno
import os
import stat

from .inodes import LowerRef

MARKER = "user.layerfs.metacopy"
MAX_XATTR_BYTES = 1024


def eligible(st: os.stat_result, xattrs: dict[str, bytes], marker: bytes) -> bool:
    """Whether a lower object may be copied up without its data.

    Members of hard-link groups are not: their copy goes to the hard-link index and
    every name shares it, data included.
    """
    size = len(MARKER) + len(marker) + sum(len(k) + len(v) for k, v in xattrs.items())
    return (
        stat.S_ISREG(st.st_mode) and st.st_size > 0 and st.st_nlink == 1 and size <= MAX_XATTR_BYTES
    )


def may_be_marked(st: os.stat_result) -> bool:
    """Whether an upper object could carry the marker (cheap test before any getxattr)."""
    return stat.S_ISREG(st.st_mode) and st.st_size > 0 and st.st_blocks * 512 <= st.st_blksize


def encode(ref: LowerRef) -> bytes:
    index, path = ref
    return b"%d:%s" % (index, path)


def decode(value: bytes) -> LowerRef | None:
    """The data reference of a marker value; None for anything malformed."""
    index, sep, path = value.partition(b":")
    if not sep or not index.isdigit() or not path or path.startswith(b"/"):
        return None
    if b".." in path.split(b"/") or b"\0" in path:
        return None
    return int(index), path


def read_marker(target: int | bytes) -> LowerRef | None:
    """The data reference of an upper file (an fd or a path never followed), or None."""
    try:
        value = os.getxattr(target, MARKER, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return decode(value)
