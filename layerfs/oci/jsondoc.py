"""Bounded JSON loading and typed field access with error paths.

Image documents come from untrusted sources, so loading is bounded before the
parser sees them: at most :data:`MAX_DOCUMENT_SIZE` bytes, nesting at most
:data:`MAX_DEPTH` deep, UTF-8 only, no duplicate keys (parsers disagree on
which one wins), no ``NaN``/``Infinity``.

The field readers take the object, the key and a :class:`JPath` naming where
the object sits, so every error says which field is wrong:
``manifest: layers[2].size: expected an integer >= 0, got -1``. A JSON
``null`` reads the same as an absent key for optional fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from layerfs.oci.digest import Digest, DigestError, parse_digest
from layerfs.oci.errors import InvalidImageError

MAX_DOCUMENT_SIZE = 4 * 1024 * 1024
MAX_DEPTH = 64
MAX_SIZE_VALUE = 2**63 - 1  # sizes are int64 in every other implementation

_MEDIA_TYPE_RE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)

EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def empty_map() -> Mapping[str, str]:
    """The shared empty read-only map (a ``default_factory`` for dataclass fields)."""
    return EMPTY_MAP


@dataclass(frozen=True)
class JPath:
    """Where a value sits: the document kind and the field path inside it."""

    doc: str
    parts: tuple[str | int, ...] = ()

    def key(self, name: str) -> JPath:
        """The path of member ``name`` of this object."""
        return JPath(self.doc, (*self.parts, name))

    def at(self, index: int) -> JPath:
        """The path of element ``index`` of this array."""
        return JPath(self.doc, (*self.parts, index))

    def error(self, message: str) -> InvalidImageError:
        """An :class:`InvalidImageError` about the value at this path."""
        return InvalidImageError(f"{self}: {message}")

    def __str__(self) -> str:
        out = ""
        for part in self.parts:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += f".{part}" if out else part
        return f"{self.doc}: {out}" if out else self.doc


def load_json(data: bytes | str, doc: str) -> object:
    """Parse a JSON document of kind ``doc`` within the size and depth limits."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_DOCUMENT_SIZE:
        raise InvalidImageError(
            f"{doc}: document too large: {len(data)} bytes (limit {MAX_DOCUMENT_SIZE})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidImageError(f"{doc}: not valid UTF-8: {exc}") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidImageError(f"{doc}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidImageError(f"{doc}: invalid JSON: {exc}") from None
    _check_depth(value, doc)
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _check_depth(value: object, doc: str) -> None:
    # Iterative: the point is to refuse what recursion would choke on.
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise InvalidImageError(f"{doc}: nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)


def as_object(value: object, path: JPath) -> dict[str, object]:
    """``value`` as a JSON object, or an error at ``path``."""
    if not isinstance(value, dict):
        raise path.error(f"expected an object, got {_kind(value)}")
    return value


def as_list(value: object, path: JPath) -> list[object]:
    """``value`` as a JSON array, or an error at ``path``."""
    if not isinstance(value, list):
        raise path.error(f"expected an array, got {_kind(value)}")
    return value


def as_str(value: object, path: JPath) -> str:
    """``value`` as a string, or an error at ``path``."""
    if not isinstance(value, str):
        raise path.error(f"expected a string, got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def require(obj: Mapping[str, object], key: str, path: JPath) -> object:
    """The value of required member ``key``; an error if absent or null."""
    value = obj.get(key)
    if value is None:
        raise path.key(key).error("required field is missing")
    return value


def req_str(obj: Mapping[str, object], key: str, path: JPath) -> str:
    """Required string member."""
    return as_str(require(obj, key, path), path.key(key))


def opt_str(obj: Mapping[str, object], key: str, path: JPath) -> str | None:
    """Optional string member."""
    value = obj.get(key)
    return None if value is None else as_str(value, path.key(key))


def opt_bool(obj: Mapping[str, object], key: str, path: JPath) -> bool | None:
    """Optional boolean member."""
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise path.key(key).error(f"expected a boolean, got {_kind(value)}")


def req_int(obj: Mapping[str, object], key: str, path: JPath) -> int:
    """Required integer member (booleans and floats refused)."""
    value = require(obj, key, path)
    if isinstance(value, bool) or not isinstance(value, int):
        raise path.key(key).error(f"expected an integer, got {_kind(value)}")
    return value


def req_size(obj: Mapping[str, object], key: str, path: JPath) -> int:
    """Required size member: an integer in ``0 .. 2**63-1``."""
    value = require(obj, key, path)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE_VALUE:
        raise path.key(key).error(f"expected an integer >= 0, got {_kind(value)}")
    return value


def req_digest(obj: Mapping[str, object], key: str, path: JPath) -> Digest:
    """Required digest member."""
    return as_digest(require(obj, key, path), path.key(key))


def as_digest(value: object, path: JPath) -> Digest:
    """``value`` as a digest, or an error at ``path``."""
    try:
        return parse_digest(as_str(value, path))
    except DigestError as exc:
        raise path.error(str(exc)) from None


def as_media_type(value: object, path: JPath) -> str:
    """``value`` as a media type string of the RFC 6838 ``type/subtype`` form."""
    text = as_str(value, path)
    if _MEDIA_TYPE_RE.fullmatch(text) is None:
        raise path.error(f"invalid media type {text!r}: expected TYPE/SUBTYPE")
    return text


def opt_media_type(obj: Mapping[str, object], key: str, path: JPath) -> str | None:
    """Optional media type member."""
    value = obj.get(key)
    return None if value is None else as_media_type(value, path.key(key))


def opt_object(obj: Mapping[str, object], key: str, path: JPath) -> dict[str, object] | None:
    """Optional object member."""
    value = obj.get(key)
    return None if value is None else as_object(value, path.key(key))


def opt_list(obj: Mapping[str, object], key: str, path: JPath) -> list[object] | None:
    """Optional array member."""
    value = obj.get(key)
    return None if value is None else as_list(value, path.key(key))


def opt_str_list(obj: Mapping[str, object], key: str, path: JPath) -> tuple[str, ...] | None:
    """Optional array-of-strings member."""
    items = opt_list(obj, key, path)
    if items is None:
        return None
    where = path.key(key)
    return tuple(as_str(item, where.at(i)) for i, item in enumerate(items))


def opt_str_map(obj: Mapping[str, object], key: str, path: JPath) -> Mapping[str, str]:
    """Optional string-to-string object member; empty when absent."""
    members = opt_object(obj, key, path)
    if not members:
        return EMPTY_MAP
    where = path.key(key)
    return MappingProxyType({k: as_str(v, where.key(k)) for k, v in members.items()})


def opt_key_set(obj: Mapping[str, object], key: str, path: JPath) -> tuple[str, ...]:
    """Optional object used as a set (``{"80/tcp": {}}``): its keys, in order."""
    members = opt_object(obj, key, path)
    if not members:
        return ()
    where = path.key(key)
    for k, v in members.items():
        if v is not None:
            as_object(v, where.key(k))
    return tuple(members)
