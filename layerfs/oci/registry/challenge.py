"""``WWW-Authenticate`` challenges (RFC 7235), as registries send them.

``Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull"``
parses to ``Challenge("bearer", {"realm": ..., "service": ..., "scope": ...})``. Scheme and
parameter names are case-insensitive (kept lowercase); values may be tokens or quoted strings
with backslash escapes. Several challenges in one header are split where a new scheme starts.
Anything unparsable is skipped rather than trusted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from layerfs.oci.jsondoc import empty_map

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})\s*(?:,|$)")
_SCHEME_RE = re.compile(rf"\s*,?\s*({_TOKEN})(?:\s+|$)")
_UNESCAPE_RE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: its scheme (lowercase) and parameters."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=empty_map, hash=False)


def parse_challenges(headers: Iterable[str]) -> tuple[Challenge, ...]:
    """Every challenge in the ``WWW-Authenticate`` header values ``headers``."""
    out: list[Challenge] = []
    for header in headers:
        pos = 0
        while pos < len(header):
            m = _SCHEME_RE.match(header, pos)
            if m is None:
                break
            scheme, pos = m.group(1).lower(), m.end()
            params: dict[str, str] = {}
            while (p := _PARAM_RE.match(header, pos)) is not None:
                name, value = p.group(1).lower(), p.group(2)
                if value.startswith('"'):
                    value = _UNESCAPE_RE.sub(r"\1", value[1:-1])
                params[name] = value
                pos = p.end()
            out.append(Challenge(scheme, params))
    return tuple(out)
