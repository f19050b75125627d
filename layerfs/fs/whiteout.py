"""Whiteout and opaque markers: every form overlayfs and OCI use, read and written.

Read forms: OCI ``.wh.NAME`` files and ``.wh..wh..opq`` markers, overlay
character devices 0/0, and ``trusted.overlay.opaque`` / ``user.overlay.opaque``
set to ``y``. None of these is ever visible through the mount, and names
starting with ``.wh.`` cannot be created through it (an OCI layer could not
carry them).
"""

from __future__ import annotations

import os
import stat

WH_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")

# Names the filesystem keeps for itself and never shows or accepts from users.
INTERNAL_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.layerfs.")


def is_whiteout_name(name: bytes) -> bool:
    """True for ``.wh.*`` names: OCI whiteouts, the opaque marker, reserved names."""
    return name.startswith(WH_PREFIX)


def whiteout_target(name: bytes) -> bytes | None:
    """The name an OCI whiteout file hides, or None for the marker / non-whiteouts."""
    if name.startswith(WH_PREFIX) and name != OPAQUE_MARKER and len(name) > len(WH_PREFIX):
        return name[len(WH_PREFIX) :]
    return None


def is_whiteout_stat(st: os.stat_result) -> bool:
    """An overlay whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_internal_xattr(name: str) -> bool:
    """Extended attributes that belong to the union machinery, not to users."""
    return name.startswith(INTERNAL_XATTR_PREFIXES)


def is_opaque_value(value: bytes | None) -> bool:
    return value is not None and value.strip(b"\0") == b"y"
