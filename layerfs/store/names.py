"""Image names: what is allowed, how a name becomes a file name, and the default for a source.

A name is 1 to 200 characters with no whitespace or control characters, e.g. ``busybox:1.36``
or ``registry.example/team/app:v2``. Its record is ``images/<escaped>.json``, where the escape
keeps ``A-Z a-z 0-9 . _ - : @ +`` and percent-encodes every other UTF-8 byte (``/`` becomes
``%2F``), and a leading ``.`` too, so that no name can be ``.``, ``..`` or hidden. The escape is
reversible and distinct names give distinct files.

Default names (`default_name`) follow the source so that the three transports of one image agree:
``oci:DIR:REF``, ``oci-archive:FILE:REF`` -> ``<basename>:REF``, where basename is the last path
component without an archive suffix (``.tar``, ``.oci``, ...); a REF that is already a full name
(it has a ``/`` or ``:``) is used as it is. ``docker-archive:FILE:NAME[:TAG]`` -> ``NAME:TAG``
(``latest`` by default). No REF gives ``<basename>:latest`` and ``@N`` gives ``<basename>@N``.
"""

from __future__ import annotations

import os
import re
import string
from typing import NewType
from urllib.parse import quote, unquote

from layerfs.oci import SourceRef, Transport
from layerfs.store.errors import StoreError

ImageName = NewType("ImageName", str)
"""A name `check_image_name` accepted."""

MAX_NAME_LENGTH = 200
_SAFE = string.ascii_letters + string.digits + "._-:@+"
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.zst", ".tgz", ".tar", ".oci", ".docker")


def check_image_name(name: str) -> ImageName:
    """``name`` if it may name an image; a `StoreError` saying why not otherwise."""
    if not name:
        raise StoreError("image name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise StoreError(f"image name {name[:40]!r}...: longer than {MAX_NAME_LENGTH} characters")
    if _FORBIDDEN.search(name):
        raise StoreError(f"image name {name!r}: whitespace and control characters are not allowed")
    return ImageName(name)


def escape_name(name: ImageName) -> str:
    """The file name (without ``.json``) of the record of ``name``."""
    escaped = quote(name, safe=_SAFE)
    if escaped.startswith("."):
        escaped = "%2E" + escaped[1:]
    return escaped


def unescape_name(escaped: str) -> ImageName | None:
    """The name whose record file is ``escaped`` (without ``.json``); None if it is not one."""
    try:
        name = unquote(escaped, errors="strict")
    except UnicodeDecodeError:
        return None
    if escape_name(ImageName(name)) != escaped:
        return None  # not something this module wrote (a temporary file, a stray file)
    return ImageName(name)


def default_name(ref: SourceRef) -> ImageName:
    """The name an image pulled from ``ref`` gets when no ``--name`` is given."""
    base = os.path.basename(os.path.normpath(ref.path)) or "image"
    for suffix in _ARCHIVE_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    if ref.ref is None:
        name = f"{base}:latest"
    elif ref.source_index is not None:
        name = f"{base}{ref.ref}"
    elif ref.transport is Transport.DOCKER_ARCHIVE:
        name = ref.ref if ":" in ref.ref.rpartition("/")[2] else f"{ref.ref}:latest"
    elif "/" in ref.ref or ":" in ref.ref:
        name = ref.ref
    else:
        name = f"{base}:{ref.ref}"
    return check_image_name(name)
