"""Per-layer xattr sidecar: extended attributes of a lower layer kept beside it.

A layer unpacked onto a filesystem without xattr support (zfs-fuse) cannot
carry ``security.capability`` and friends on its files, so the store writes
them to a sidecar file and the filesystem serves them as if they were real.

Contract: for a lower directory ``D`` the sidecar is the file ``D + ".xattrs"``
(a sibling, so it is never part of the tree). It is JSON::

    {"version": 1, "entries": {"<path>": {"<xattr name>": "<base64 value>"}}}

``<path>`` is relative to ``D`` without a leading slash, ``""`` for ``D``
itself; bytes that are not UTF-8 are carried with ``surrogateescape`` (JSON
escapes the lone surrogates, so any file name round-trips).

Lower layers are immutable, so entries are keyed by path, never by inode.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping

SIDECAR_SUFFIX = ".xattrs"
_VERSION = 1

XattrMap = dict[bytes, dict[str, bytes]]


class SidecarError(ValueError):
    """The sidecar file exists but cannot be read."""


def sidecar_path(layer_dir: str) -> str:
    """The sidecar file that belongs to ``layer_dir``."""
    return os.path.normpath(layer_dir) + SIDECAR_SUFFIX


def _key(path: bytes) -> str:
    return os.fsdecode(path.strip(b"/"))


def load_sidecar(layer_dir: str) -> XattrMap:
    """Read the sidecar of ``layer_dir``; an empty map when there is none."""
    try:
        with open(sidecar_path(layer_dir), "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SidecarError(f"{sidecar_path(layer_dir)}: unreadable xattr sidecar: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != _VERSION:
        raise SidecarError(f"{sidecar_path(layer_dir)}: unsupported xattr sidecar version")
    entries = doc.get("entries")
    if not isinstance(entries, dict):
        raise SidecarError(f"{sidecar_path(layer_dir)}: 'entries' is not an object")
    out: XattrMap = {}
    try:
        for path, attrs in entries.items():
            out[os.fsencode(path)] = {
                name: base64.b64decode(value, validate=True) for name, value in attrs.items()
            }
    except (AttributeError, TypeError, ValueError) as exc:
        raise SidecarError(f"{sidecar_path(layer_dir)}: malformed entry: {exc}") from exc
    return out


def write_sidecar(layer_dir: str, xattrs: Mapping[bytes, Mapping[str, bytes]]) -> None:
    """Write the sidecar of ``layer_dir`` atomically (temp file, fsync, rename).

    Nothing is written when ``xattrs`` is empty.
    """
    if not xattrs:
        return
    doc = {
        "version": _VERSION,
        "entries": {
            _key(path): {name: base64.b64encode(v).decode() for name, v in attrs.items()}
            for path, attrs in sorted(xattrs.items())
            if attrs
        },
    }
    target = sidecar_path(layer_dir)
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        json.dump(doc, f, ensure_ascii=True, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
