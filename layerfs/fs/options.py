"""Mount options, parsed the way fuse-overlayfs takes them (``-o a=b,c``)."""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class OptionError(ValueError):
    """A mount option the user gave cannot be honoured."""


@dataclass(frozen=True)
class IdMap:
    """uid/gid mapping ``inside:outside:count[:...]``, as fuse-overlayfs takes it.

    ``outside`` ids are those stored on disk; ``inside`` ids are what the mount shows.
    Ids outside every range show as the overflow id 65534.
    """

    ranges: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def parse(cls, text: str, what: str) -> IdMap:
        parts = text.split(":")
        if len(parts) % 3 or not parts:
            raise OptionError(f"{what}={text}: expected inside:outside:count triples")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise OptionError(f"{what}={text}: ids must be numbers") from None
        ranges = tuple((nums[i], nums[i + 1], nums[i + 2]) for i in range(0, len(nums), 3))
        if any(n < 0 for n in nums) or any(r[2] == 0 for r in ranges):
            raise OptionError(f"{what}={text}: ids must be >= 0 and counts > 0")
        return cls(ranges)

    def to_inside(self, outside: int) -> int:
        if not self.ranges:
            return outside
        for ins, out, cnt in self.ranges:
            if out <= outside < out + cnt:
                return ins + outside - out
        return 65534

    def to_outside(self, inside: int) -> int:
        if not self.ranges:
            return inside
        for ins, out, cnt in self.ranges:
            if ins <= inside < ins + cnt:
                return out + inside - ins
        # Like a user namespace: an id with no mapping cannot be written.
        raise OSError(errno.EINVAL, f"id {inside} is not mapped")


@dataclass(frozen=True)
class MountOptions:
    """Everything the filesystem needs to know about one mount."""

    lowerdirs: tuple[str, ...]
    upperdir: str | None = None
    workdir: str | None = None
    readonly: bool = False
    fsync: bool = True
    timeout: float = 1.0
    xattrs: bool = True
    uidmap: IdMap = field(default_factory=IdMap)
    gidmap: IdMap = field(default_factory=IdMap)
    squash_uid: int | None = None
    squash_gid: int | None = None
    fsname: str = "layerfs"
    # How the upper records whiteouts: "auto" (char 0/0 where mknod works), "char", "oci".
    whiteout: str = "auto"
    # Attribute changes of lower files may copy them up without their data (see
    # `layerfs.fs.metacopy`); off by default with whiteout=oci, whose upper must stand alone.
    metacopy: bool = True
    # Let the kernel read and write files' backing files itself (FUSE passthrough,
    # see `layerfs.fs.backing`) where it and pyfuse3 can.
    passthrough: bool = True
    # Options handed to the kernel/libfuse as they are.
    fuse_options: frozenset[str] = frozenset()

    @property
    def writable(self) -> bool:
        return self.upperdir is not None and not self.readonly


_KERNEL_FLAGS = {
    "allow_other",
    "allow_root",
    "default_permissions",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "sync",
    "async",
    "dirsync",
}
# mount(8)/fstab words that mean nothing to a FUSE filesystem.
_SILENT = {"rw", "defaults", "auto", "noauto", "user", "nouser", "users", "nofail", "_netdev"}


def split_options(items: Iterable[str]) -> list[str]:
    """Flatten several ``-o`` arguments into single options (commas separate)."""
    out: list[str] = []
    for item in items:
        out.extend(p for p in item.split(",") if p)
    return out


def parse_options(opts: Sequence[str]) -> tuple[MountOptions, list[str]]:
    """Build MountOptions from single options; returns them and warnings for unknown ones."""
    values: dict[str, object] = {}
    fuse: set[str] = set()
    warnings: list[str] = []
    lower: tuple[str, ...] = ()
    for opt in opts:
        key, eq, val = opt.partition("=")
        if key == "lowerdir":
            parts = tuple(p for p in val.split(":") if p)
            if not parts:
                raise OptionError("lowerdir= is empty: give at least one directory")
            lower = parts
        elif key in ("upperdir", "workdir"):
            if not val:
                raise OptionError(f"{key}= is empty")
            values[key] = val
        elif key == "ro":
            values["readonly"] = True
        elif key == "fsync":
            if val not in ("0", "1"):
                raise OptionError(f"fsync={val}: expected 0 or 1")
            values["fsync"] = val == "1"
        elif key == "volatile":
            values["fsync"] = False
        elif key == "timeout":
            try:
                t = float(val)
            except ValueError:
                raise OptionError(f"timeout={val}: expected seconds") from None
            if t < 0:
                raise OptionError(f"timeout={val}: must be >= 0")
            values["timeout"] = t
        elif key == "noxattrs":
            values["xattrs"] = False
        elif key in ("uidmapping", "gidmapping"):
            values["uidmap" if key[0] == "u" else "gidmap"] = IdMap.parse(val, key)
        elif key == "squash_to_root":
            values["squash_uid"] = 0
            values["squash_gid"] = 0
        elif key in ("squash_to_uid", "squash_to_gid"):
            if not val.isdigit():
                raise OptionError(f"{key}={val}: expected a number")
            values["squash_uid" if key.endswith("uid") else "squash_gid"] = int(val)
        elif key == "whiteout":
            if val not in ("auto", "char", "oci"):
                raise OptionError(f"whiteout={val}: expected auto, char or oci")
            values["whiteout"] = val
        elif key == "metacopy":
            if val not in ("on", "off"):
                raise OptionError(f"metacopy={val}: expected on or off")
            values["metacopy"] = val == "on"
        elif key == "passthrough":
            if val not in ("on", "off"):
                raise OptionError(f"passthrough={val}: expected on or off")
            values["passthrough"] = val == "on"
        elif key == "fsname":
            if not val:
                raise OptionError("fsname= is empty")
            values["fsname"] = val
        elif key in _KERNEL_FLAGS and not eq:
            fuse.add(key)
        elif key in _SILENT:
            continue
        else:
            warnings.append(f"unknown option '{opt}' ignored")
    if not lower:
        raise OptionError("missing lowerdir=: give -o lowerdir=TOP:...:BOTTOM")
    if ("upperdir" in values) != ("workdir" in values):
        raise OptionError("upperdir= and workdir= must be given together")
    values.setdefault("metacopy", values.get("whiteout") != "oci")
    # Permissions are always checked by the kernel: the daemon runs as root.
    fuse.add("default_permissions")
    opts_obj = MountOptions(lowerdirs=lower, fuse_options=frozenset(fuse))
    return dataclasses.replace(opts_obj, **values), warnings  # type: ignore[arg-type]


def absolute(opts: MountOptions) -> MountOptions:
    """Resolve every directory to an absolute path (the daemon changes to /)."""
    return dataclasses.replace(
        opts,
        lowerdirs=tuple(os.path.abspath(p) for p in opts.lowerdirs),
        upperdir=os.path.abspath(opts.upperdir) if opts.upperdir else None,
        workdir=os.path.abspath(opts.workdir) if opts.workdir else None,
    )
