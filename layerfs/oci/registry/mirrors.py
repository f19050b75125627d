"""Where to fetch an image from: the ``[[registry]]`` tables of registries.conf(5).

A subset of the containers-registries.conf v2 format, read with ``tomllib``::

    [[registry]]
    prefix = "example.com/team"          # default: location
    location = "registry.internal/team"  # the prefix is rewritten to this
    insecure = false                     # true: no TLS verification, plain HTTP allowed
    blocked = false                      # true: refuse to pull or push
    mirror = [{ location = "mirror.local:5000/team", insecure = true }]
    pull-from-mirror = "all"             # or "digest-only", "tag-only"

The table whose ``prefix`` is the longest match of ``HOST/REPO`` applies (a prefix matches the
whole name or stops at ``/``; ``*.example.com`` matches subdomains). Pulls try the mirrors in
order and then the location; pushes go to the location only. The file is
``$CONTAINERS_REGISTRIES_CONF``, else ``/etc/containers/registries.conf`` if it exists.

Caveats: drop-in directories (``registries.conf.d``), short-name aliases, ``unqualified-search-
registries`` and the v1 format are not read.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass

from layerfs.oci.errors import SourceError
from layerfs.oci.registry.errors import RegistryError
from layerfs.oci.registry.names import RegistryRef, parse_registry_ref

DEFAULT_REGISTRIES_CONF = "/etc/containers/registries.conf"


@dataclass(frozen=True)
class Endpoint:
    """One place to try: the image's name there, and whether to skip TLS checks."""

    ref: RegistryRef
    insecure: bool = False
    mirror: bool = False


@dataclass(frozen=True)
class _Mirror:
    location: str
    insecure: bool


@dataclass(frozen=True)
class RegistryEntry:
    """One ``[[registry]]`` table."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirrors: tuple[_Mirror, ...] = ()
    pull_from_mirror: str = "all"


def registries_conf_path(explicit: str | None) -> str | None:
    """The registries.conf to read (None: none)."""
    if explicit is not None:
        return explicit or None
    env = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if env:
        return env
    return DEFAULT_REGISTRIES_CONF if os.path.exists(DEFAULT_REGISTRIES_CONF) else None


def load_registries(path: str | None) -> tuple[RegistryEntry, ...]:
    """The ``[[registry]]`` tables of ``path`` (none for None)."""
    if path is None:
        return ()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read registries.conf: {exc}") from None
    tables = doc.get("registry", [])
    if not isinstance(tables, list):
        raise RegistryError(f"{path}: 'registry' must be an array of tables ([[registry]])")
    return tuple(_entry(t, path, i) for i, t in enumerate(tables))


def _entry(table: object, path: str, index: int) -> RegistryEntry:
    where = f"{path}: registry[{index}]"
    if not isinstance(table, Mapping):
        raise RegistryError(f"{where}: not a table")
    location = _str(table, "location", where, "")
    prefix = _str(table, "prefix", where, location)
    if not prefix:
        raise RegistryError(f"{where}: needs 'location' or 'prefix'")
    mirrors = []
    for j, m in enumerate(table.get("mirror", [])):
        if not isinstance(m, Mapping) or not isinstance(m.get("location"), str):
            raise RegistryError(f"{where}: mirror[{j}]: needs a 'location'")
        mirrors.append(_Mirror(m["location"], _bool(m, "insecure", f"{where}: mirror[{j}]")))
    pull_from = _str(table, "pull-from-mirror", where, "all")
    if table.get("mirror-by-digest-only") is True:
        pull_from = "digest-only"
    if pull_from not in ("all", "digest-only", "tag-only"):
        raise RegistryError(f"{where}: pull-from-mirror: expected all, digest-only or tag-only")
    return RegistryEntry(
        prefix=prefix,
        location=location or prefix,
        insecure=_bool(table, "insecure", where),
        blocked=_bool(table, "blocked", where),
        mirrors=tuple(mirrors),
        pull_from_mirror=pull_from,
    )


def _str(table: Mapping[str, object], key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise RegistryError(f"{where}: {key}: expected a string")
    return value


def _bool(table: Mapping[str, object], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise RegistryError(f"{where}: {key}: expected true or false")
    return value


def _matches(prefix: str, name: str) -> bool:
    if prefix.startswith("*."):
        host = name.partition("/")[0]
        return host.endswith(prefix[1:])
    return name == prefix or name.startswith(prefix + "/")


def find_entry(entries: tuple[RegistryEntry, ...], ref: RegistryRef) -> RegistryEntry | None:
    """The table that applies to ``ref``: the longest matching prefix."""
    found = [e for e in entries if _matches(e.prefix, ref.name)]
    return max(found, key=lambda e: len(e.prefix), default=None)


def _rewrite(ref: RegistryRef, entry: RegistryEntry, location: str) -> RegistryRef:
    if entry.prefix.startswith("*."):
        return ref  # a wildcard table only sets options; the name stays
    rest = ref.name[len(entry.prefix) :]
    try:
        moved = parse_registry_ref(location + rest)
    except SourceError as exc:
        raise RegistryError(f"registries.conf: location {location!r}: {exc}") from None
    return moved.with_reference(tag=ref.tag, digest=ref.digest)


def endpoints(
    ref: RegistryRef, entries: tuple[RegistryEntry, ...], *, pull: bool
) -> list[Endpoint]:
    """Where to pull ``ref`` from (mirrors first), or push it to; raise if blocked."""
    entry = find_entry(entries, ref)
    if entry is None:
        return [Endpoint(ref)]
    if entry.blocked:
        raise RegistryError(f"{ref.name} is blocked by registries.conf (prefix {entry.prefix!r})")
    out: list[Endpoint] = []
    use_mirrors = pull and (
        entry.pull_from_mirror == "all"
        or (entry.pull_from_mirror == "digest-only" and ref.digest is not None)
        or (entry.pull_from_mirror == "tag-only" and ref.digest is None)
    )
    if use_mirrors:
        out.extend(
            Endpoint(_rewrite(ref, entry, m.location), m.insecure, mirror=True)
            for m in entry.mirrors
        )
    out.append(Endpoint(_rewrite(ref, entry, entry.location), entry.insecure))
    return out
