"""Reading a layer tar as a stream of checked member headers: the parsing half of unpacking.

`read_members` drives `tarfile` in stream mode (it never seeks) with a strict header reader and
yields each member with the position where its data ends; `unpack` does the writing. The helpers
here turn one header into what the unpacker needs: a normalized relative path (`member_path`),
timestamps in nanoseconds (`times_ns`) and xattrs (`member_xattrs`). Whatever a header says that
cannot be accepted raises `Refused`; a stream that is not a tar raises `UnpackError`.

Decisions (see `layerfs.store.unpack` for the rest):

- Names: leading ``/`` and ``./``, empty and ``.`` components are dropped; a ``..`` component, a
  NUL byte, a component over 255 bytes or a path of 4096 bytes or more is refused.
- Xattrs: from PAX ``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*`` (base64). The union filesystem's
  own namespaces (``trusted.overlay.*``, ``user.overlay.*``, ``user.layerfs.*``) are dropped with a
  warning: they would be hidden in the mount anyway but change how it merges.
- Stream: reading stops at the end-of-archive block (or a clean end of stream on a header
  boundary, as Go's archive/tar accepts); the rest of the stream is then read and discarded so
  that a verifying reader around it sees every byte. A damaged header is an error, never an end.

Caveat: tarfile parses headers in pure Python, half to two thirds of the CPU time of an unpack; a
PAX or GNU long-name header is read whole into memory, so those are capped at 16 MiB.
"""

from __future__ import annotations

import base64
import binascii
import logging
import tarfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "NAME_MAX",
    "PATH_MAX",
    "Refused",
    "TarReader",
    "UnpackError",
    "member_path",
    "member_xattrs",
    "read_members",
    "times_ns",
]

logger = logging.getLogger(__name__)

PATH_MAX = 4096
NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
_DRAIN_CHUNK = 1 << 20
# tarfile's stream buffer: every small read copies what is left in it, so it must stay small.
_TAR_BUFSIZE = 16 * 1024
_INTERNAL_XATTRS = ("trusted.overlay.", "user.overlay.", "user.layerfs.")
_META_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)
_META_MAX = 16 << 20  # PAX headers carry xattrs (64 KiB each at most); names are < 4 KiB


class UnpackError(ValueError):
    """The layer tar is malformed or hostile; the message names the member at fault."""


class Refused(Exception):
    """A member is refused; carries the reason, the unpacker adds the member name."""


class TarReader(Protocol):
    """The stream a member's data is read from, positioned at its data."""

    def read(self, size: int) -> bytes: ...
    def tell(self) -> int: ...


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile's header reader, made strict: a damaged header is an error, not a quiet end of
    the archive, and extended headers are bounded before tarfile reads them into memory."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):  # type: ignore[attr-defined]
            raise  # a zero block, or the stream ended on a header boundary: the end
        except tarfile.HeaderError as exc:
            raise tarfile.ReadError(f"damaged tar header: {exc}") from None

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        # tarfile reads a PAX or GNU long-name header whole into memory: bound it first.
        if self.type in _META_TYPES and self.size > _META_MAX:
            raise tarfile.ReadError(f"{self.size}-byte extended header (limit {_META_MAX})")
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


def quote_member(member: str) -> str:
    """A member name for a one-line message: quoted, and cut short when it is huge."""
    if len(member) <= 200:
        return repr(member)
    return f"{member[:160]!r}... ({len(member)} characters)"


def read_members(stream: BinaryIO) -> Iterator[tuple[tarfile.TarInfo, TarReader, int]]:
    """Each member of the tar ``stream`` with the reader its data comes from and the stream
    offset where that data ends; the rest of ``stream`` is drained after the last member.

    A stream that is not a tar, or a damaged header, raises `UnpackError`. The consumer must read
    a member's data (or none of it) before asking for the next one.
    """
    try:  # not a `with`: only the opening's errors mean "not a tar"; closed by the `with` below
        tf = tarfile.open(  # noqa: SIM115
            fileobj=stream,
            mode="r|",
            bufsize=_TAR_BUFSIZE,
            tarinfo=_StrictTarInfo,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except (tarfile.TarError, ValueError, OverflowError) as exc:
        raise UnpackError(f"not a readable tar archive: {exc}") from exc
    reader = cast(TarReader, tf.fileobj)
    # In stream mode tarfile still keeps every TarInfo it has read; nothing here needs them.
    seen = cast("list[tarfile.TarInfo]", tf.members)  # type: ignore[attr-defined]
    last = None
    with tf:
        while True:
            try:
                m = tf.next()
            except (tarfile.TarError, ValueError, OverflowError) as exc:
                where = f"after member {quote_member(last)}" if last is not None else "at the start"
                raise UnpackError(f"malformed tar {where}: {exc}") from exc
            if m is None:
                break
            seen.clear()
            yield m, reader, tf.offset
            last = m.name
    while stream.read(_DRAIN_CHUNK):  # let a verifying reader see the archive's padding too
        pass


def member_path(name: str) -> bytes:
    """A member name as a normalized path relative to the layer root (``b""``: the root)."""
    raw = name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise Refused("name contains a NUL byte")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    for p in parts:
        if p == b"..":
            raise Refused("'..' in the name would escape the layer")
        if len(p) > NAME_MAX:
            raise Refused(f"a name component is longer than {NAME_MAX} bytes")
    rel = b"/".join(parts)
    if len(rel) >= PATH_MAX:
        raise Refused(f"the name is {PATH_MAX} bytes or longer")
    return rel


def _pax_ns(value: str | None) -> int | None:
    """A PAX decimal timestamp in nanoseconds, exactly (a float would round)."""
    if not value:
        return None
    sec, _, frac = value.partition(".")
    try:
        whole = int(sec)
        part = int((frac + "000000000")[:9]) if frac else 0
    except ValueError:
        return None
    return whole * 1_000_000_000 + (-part if sec.startswith("-") else part)


def times_ns(m: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) of a member in nanoseconds; atime defaults to mtime."""
    pax = m.pax_headers
    mtime = _pax_ns(pax.get("mtime")) if pax else None
    if mtime is None:
        mtime = int(m.mtime) * 1_000_000_000
    atime = _pax_ns(pax.get("atime")) if pax else None
    return (mtime if atime is None else atime), mtime


def member_xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    """The xattrs a member's PAX headers carry, minus the union filesystem's own."""
    out: dict[str, bytes] = {}
    for key, value in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            raw = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = unquote_to_bytes(key[len("LIBARCHIVE.xattr.") :]).decode(
                "utf-8", "surrogateescape"
            )
            try:  # libarchive leaves out the '=' padding
                raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except binascii.Error:
                raise Refused(f"xattr {name!r}: value is not base64") from None
        else:
            continue
        encoded = name.encode("utf-8", "surrogateescape")
        if not encoded or b"\0" in encoded or len(encoded) > XATTR_NAME_MAX:
            raise Refused(f"invalid xattr name {name!r}")
        if len(raw) > XATTR_SIZE_MAX:
            raise Refused(f"xattr {name!r}: value larger than {XATTR_SIZE_MAX} bytes")
        if name.startswith(_INTERNAL_XATTRS):
            logger.warning("tar member %r: dropping union-filesystem xattr %r", m.name, name)
            continue
        out[name] = raw
    return out
