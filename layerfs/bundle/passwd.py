"""Parsing ``/etc/passwd`` and ``/etc/group`` as found in an image (pure, no I/O).

The files come from an untrusted image, so parsing is lenient in what it skips
and strict in what it keeps: blank lines, ``#`` comments, NIS ``+``/``-``
entries and lines whose id field is not a plain decimal number are ignored
(as glibc and runc's ``libcontainer/user`` ignore them), never an error. Bytes
that are not UTF-8 are kept through ``surrogateescape`` so that a name compares
equal only to itself.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Largest id the kernel accepts: ``(uid_t)-1`` means "no change" to setresuid.
MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class PasswdEntry:
    """One line of ``/etc/passwd``: ``name:password:uid:gid:gecos:home:shell``."""

    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    """One line of ``/etc/group``: ``name:password:gid:member,member...``."""

    name: str
    gid: int
    members: tuple[str, ...]


def parse_id(text: str) -> int | None:
    """A uid or gid from its decimal text; ``None`` unless it is ASCII digits in range.

    ``str.isdigit`` alone is not enough: it accepts ``"²"`` and other Unicode digits.
    """
    if not text or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _lines(data: bytes) -> list[list[str]]:
    out = []
    for raw in data.decode("utf-8", "surrogateescape").split("\n"):
        line = raw.rstrip("\r")
        if not line or line[0] in "#+-":
            continue
        out.append(line.split(":"))
    return out


def parse_passwd(data: bytes) -> tuple[PasswdEntry, ...]:
    """The well-formed entries of a passwd file, in file order."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 4 or not fields[0]:
            continue
        uid, gid = parse_id(fields[2]), parse_id(fields[3])
        if uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 else ""
        entries.append(PasswdEntry(name=fields[0], uid=uid, gid=gid, home=home))
    return tuple(entries)


def parse_group(data: bytes) -> tuple[GroupEntry, ...]:
    """The well-formed entries of a group file, in file order."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 3 or not fields[0]:
            continue
        gid = parse_id(fields[2])
        if gid is None:
            continue
        listed = fields[3] if len(fields) > 3 else ""
        members = tuple(m.strip() for m in listed.split(",") if m.strip())
        entries.append(GroupEntry(name=fields[0], gid=gid, members=members))
    return tuple(entries)
