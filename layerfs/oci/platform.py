"""Platforms: the ``platform`` object of index entries, and choosing among them.

Names are normalized the way containerd does before comparing:
``x86_64`` is ``amd64``, ``aarch64`` is ``arm64``, ``armv7l`` is ``arm`` variant
``v7``; ``arm64`` without a variant means ``v8`` and ``arm`` without a variant
means ``v7``. An ``arm`` host of variant vN also runs lower variants, preferred
in descending order after an exact match.

``os.version`` and ``os.features`` are kept but not matched: they only matter
for Windows images, which layerfs cannot run.
"""

from __future__ import annotations

import platform as _host
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from layerfs.oci.jsondoc import JPath, as_object, opt_str, opt_str_list, req_str

_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv5l": ("arm", "v5"),
    "armv6l": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv8l": ("arm", "v8"),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}

_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class Platform:
    """An OCI platform: what an image (or index entry) runs on."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


def parse_platform_object(value: object, path: JPath) -> Platform:
    """A :class:`Platform` from the JSON ``platform`` object at ``path``."""
    obj = as_object(value, path)
    return Platform(
        os=req_str(obj, "os", path),
        architecture=req_str(obj, "architecture", path),
        variant=opt_str(obj, "variant", path) or None,
        os_version=opt_str(obj, "os.version", path),
        os_features=opt_str_list(obj, "os.features", path) or (),
    )


def parse_platform(text: str) -> Platform:
    """A :class:`Platform` from ``OS/ARCH[/VARIANT]`` (the ``--platform`` syntax)."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT]")
    return normalize_platform(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))


def normalize_platform(p: Platform) -> Platform:
    """``p`` with canonical names; a default variant is spelled out (arm64 -> v8)."""
    arch, alias_variant = _ARCH_ALIASES.get(p.architecture.lower(), (p.architecture, None))
    variant = p.variant.lower() if p.variant else alias_variant
    if arch == "amd64" and variant == "v1":
        variant = None
    if variant is None:
        variant = _DEFAULT_VARIANT.get(arch)
    return Platform(p.os.lower(), arch, variant, p.os_version, p.os_features)


def host_platform() -> Platform:
    """The platform of this machine (``linux`` and the normalized machine name)."""
    return normalize_platform(Platform("linux", _host.machine() or "unknown"))


def _variant_rank(want: Platform, have: Platform) -> int | None:
    """How well ``have`` serves ``want`` (0 best), or None if it cannot run."""
    if have.variant == want.variant:
        return 0
    if want.architecture == "arm" and want.variant and have.variant:
        # An armvN host runs armvM binaries for M < N.
        w, h = want.variant.lstrip("v"), have.variant.lstrip("v")
        if w.isdigit() and h.isdigit() and int(h) < int(w):
            return int(w) - int(h)
    return None


def rank_platform(want: Platform, have: Platform) -> int | None:
    """The preference of ``have`` for a host ``want`` (0 best), None if unusable."""
    w, h = normalize_platform(want), normalize_platform(have)
    if w.os != h.os or w.architecture != h.architecture:
        return None
    return _variant_rank(w, h)


def choose_platform(want: Platform, candidates: Sequence[Platform | None]) -> int | None:
    """The index of the best candidate for ``want``, None if none fits.

    Among equally good candidates the first wins, as the image spec asks.
    """
    best: tuple[int, int] | None = None
    for i, have in enumerate(candidates):
        if have is None:
            continue
        rank = rank_platform(want, have)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, i)
    return None if best is None else best[1]


def platform_to_json(p: Platform) -> Mapping[str, object]:
    """The JSON ``platform`` object of ``p``."""
    out: dict[str, object] = {"architecture": p.architecture, "os": p.os}
    if p.os_version:
        out["os.version"] = p.os_version
    if p.os_features:
        out["os.features"] = list(p.os_features)
    if p.variant:
        out["variant"] = p.variant
    return out
