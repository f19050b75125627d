"""Resolving an image's ``User`` to the uid, gid, groups and home of the process.

The image-spec (``conversion.md``, "Config.User") says: numeric parts are
copied verbatim; names are looked up in the image's own ``/etc/passwd`` and
``/etc/group``; a user the image does not know is an error; and
``additionalGids`` come from the group file *only* when ``User`` names the user
without a group. Accepted forms::

    ""            root (uid 0, gid 0)
    "name"        uid, gid and home from passwd; additional gids from group
    "uid"         uid verbatim; gid and home from passwd if it has the uid, else 0 and "/"
    "name:group"  "name:gid"  "uid:group"  "uid:gid"   group part overrides the gid

An empty part means its default (``":staff"`` is root in group staff, ``"app:"``
is ``"app"``), as in runc's ``libcontainer/user``. A part made of ASCII digits
is always an id, never a name. When a name is not found the error names it:
``user 'app' not found in /etc/passwd of the image``.

``additional_gids`` of the named form hold the primary gid first, then every
group whose member list names the user, without duplicates. Other forms get
none (the spec's "SHOULD NOT"); the process then has no supplementary groups.

:func:`resolve_user` reads only through an :data:`ImageFileReader`; given a
directory it uses :func:`~layerfs.bundle.rootfs.rootfs_reader`, which never
leaves the rootfs. ``/etc/passwd`` is always read (it gives ``HOME``, even for
a numeric uid); ``/etc/group`` only when a group name or the user's groups are
needed. A missing file is no error unless a name must be looked up in it.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerfs.bundle.errors import BundleError
from layerfs.bundle.passwd import (
    MAX_ID,
    GroupEntry,
    PasswdEntry,
    parse_group,
    parse_id,
    parse_passwd,
)
from layerfs.bundle.rootfs import ImageFileReader, StrPath, rootfs_reader

PASSWD_PATH = "/etc/passwd"
GROUP_PATH = "/etc/group"


@dataclass(frozen=True)
class ResolvedUser:
    """Who the container process runs as: ``process.user`` plus the ``HOME`` default."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    home: str = "/"

    def __post_init__(self) -> None:
        for name, value in (("uid", self.uid), ("gid", self.gid)):
            if not 0 <= value <= MAX_ID:
                raise ValueError(f"ResolvedUser.{name}: expected 0..{MAX_ID}, got {value}")
        for value in self.additional_gids:
            if not 0 <= value <= MAX_ID:
                raise ValueError(f"ResolvedUser.additional_gids: expected 0..{MAX_ID}, got {value}")
        if not self.home.startswith("/"):
            raise ValueError(f"ResolvedUser.home: expected an absolute path, got {self.home!r}")


#: What an image without ``User`` runs as when its passwd is not consulted.
ROOT = ResolvedUser()


def resolve_user(spec: str | None, rootfs: StrPath | ImageFileReader) -> ResolvedUser:
    """Resolve an image config's ``User`` against the image's passwd and group files.

    ``rootfs`` is the image's root directory, or a function reading an absolute
    in-image path (``None`` when absent). Raises :class:`BundleError` naming the
    user or group that the image does not define, or a malformed ``spec``.
    """
    read = rootfs if callable(rootfs) else rootfs_reader(rootfs)
    user_part, _, group_part = (spec or "").partition(":")
    files = _Files(read)

    if not user_part:
        user_part = "0"  # libcontainer: an empty user is root
    uid = _parse_numeric("uid", user_part, spec)
    by_name = uid is None
    entry: PasswdEntry | None
    if uid is not None:
        entry = next((e for e in files.passwd() if e.uid == uid), None)
    else:
        entry = next((e for e in files.passwd() if e.name == user_part), None)
        if entry is None:
            raise files.not_found("user", user_part, PASSWD_PATH)
        uid = entry.uid

    additional: tuple[int, ...] = ()
    if group_part:
        gid = _resolve_group(group_part, spec, files)
    elif entry is not None:
        gid = entry.gid
        if by_name:
            additional = _groups_of(entry, files.group())
    else:
        gid = 0

    home = entry.home if entry is not None and _usable_home(entry.home) else "/"
    return ResolvedUser(uid=uid, gid=gid, additional_gids=additional, home=home)


class _Files:
    """The passwd and group files, each read and parsed at most once."""

    def __init__(self, read: ImageFileReader) -> None:
        self._read = read
        self._raw: dict[str, bytes | None] = {}

    def _get(self, path: str) -> bytes | None:
        if path not in self._raw:
            self._raw[path] = self._read(path)
        return self._raw[path]

    def passwd(self) -> tuple[PasswdEntry, ...]:
        data = self._get(PASSWD_PATH)
        return parse_passwd(data) if data is not None else ()

    def group(self) -> tuple[GroupEntry, ...]:
        data = self._get(GROUP_PATH)
        return parse_group(data) if data is not None else ()

    def not_found(self, kind: str, name: str, path: str) -> BundleError:
        """The error for a ``kind`` name missing from ``path``, saying if the file is absent."""
        note = " (the image has no such file)" if self._get(path) is None else ""
        return BundleError(f"{kind} {name!r} not found in {path} of the image{note}")


def _parse_numeric(kind: str, part: str, spec: str | None) -> int | None:
    """The id ``part`` stands for, ``None`` if it is a name; out-of-range ids are errors."""
    value = parse_id(part)
    if value is None and part.isascii() and part.isdigit():
        raise BundleError(f"image User {spec!r}: {kind} {part} is out of range (0..{MAX_ID})")
    return value


def _resolve_group(group_part: str, spec: str | None, files: _Files) -> int:
    gid = _parse_numeric("gid", group_part, spec)
    if gid is not None:
        return gid
    found = next((g for g in files.group() if g.name == group_part), None)
    if found is None:
        raise files.not_found("group", group_part, GROUP_PATH)
    return found.gid


def _usable_home(home: str) -> bool:
    # Relative or undecodable (surrogate-escaped) homes cannot go into HOME in
    # a JSON config; "/" is what login(1) falls back to as well.
    return home.startswith("/") and home.isprintable()


def _groups_of(entry: PasswdEntry, groups: tuple[GroupEntry, ...]) -> tuple[int, ...]:
    gids = [entry.gid]
    for group in groups:
        if entry.name in group.members and group.gid not in gids:
            gids.append(group.gid)
    return tuple(gids)


__all__ = ["GROUP_PATH", "PASSWD_PATH", "ROOT", "ResolvedUser", "resolve_user"]
