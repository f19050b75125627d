"""The image configuration: platform, runtime defaults, rootfs diff_ids, history.

Only the fields the image spec defines are modelled; Docker's extra ones
(``container_config``, ``Healthcheck``...) are accepted and ignored. Lists and
maps are immutable (tuples, read-only mappings). ``Entrypoint`` and ``Cmd``
stay ``None`` when absent or null, distinct from an empty list, because the
runtime-config conversion treats them differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from layerfs.oci.digest import Digest
from layerfs.oci.jsondoc import (
    JPath,
    as_digest,
    as_list,
    as_object,
    empty_map,
    load_json,
    opt_bool,
    opt_key_set,
    opt_list,
    opt_object,
    opt_str,
    opt_str_list,
    opt_str_map,
    req_str,
    require,
)


@dataclass(frozen=True)
class ContainerConfig:
    """Execution defaults for a container made from the image (``config`` member)."""

    user: str | None = None
    exposed_ports: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()
    working_dir: str | None = None
    labels: Mapping[str, str] = field(default_factory=empty_map, hash=False)
    stop_signal: str | None = None


@dataclass(frozen=True)
class RootFS:
    """The layer DiffIDs: digests of the uncompressed layer tars, bottom first."""

    diff_ids: tuple[Digest, ...]
    type: str = "layers"


@dataclass(frozen=True)
class History:
    """One entry of the build history; ``empty_layer`` entries made no layer."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False


@dataclass(frozen=True)
class ImageConfig:
    """The image configuration document."""

    architecture: str
    os: str
    rootfs: RootFS
    config: ContainerConfig = field(default_factory=ContainerConfig)
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()
    created: str | None = None
    author: str | None = None
    history: tuple[History, ...] = ()


def parse_config(data: bytes | str) -> ImageConfig:
    """An :class:`ImageConfig` from JSON; :class:`InvalidImageError` names the bad field."""
    path = JPath("config")
    obj = as_object(load_json(data, path.doc), path)
    container = opt_object(obj, "config", path)
    return ImageConfig(
        architecture=req_str(obj, "architecture", path),
        os=req_str(obj, "os", path),
        rootfs=_rootfs(require(obj, "rootfs", path), path.key("rootfs")),
        config=_container(container or {}, path.key("config")),
        variant=opt_str(obj, "variant", path) or None,
        os_version=opt_str(obj, "os.version", path),
        os_features=opt_str_list(obj, "os.features", path) or (),
        created=opt_str(obj, "created", path),
        author=opt_str(obj, "author", path),
        history=_history(obj, path),
    )


def _rootfs(value: object, path: JPath) -> RootFS:
    obj = as_object(value, path)
    kind = req_str(obj, "type", path)
    if kind != "layers":
        raise path.key("type").error(f'expected "layers", got {kind!r}')
    where = path.key("diff_ids")
    items = as_list(require(obj, "diff_ids", path), where)
    return RootFS(diff_ids=tuple(as_digest(item, where.at(i)) for i, item in enumerate(items)))


def _container(obj: Mapping[str, object], path: JPath) -> ContainerConfig:
    env = opt_str_list(obj, "Env", path) or ()
    for i, entry in enumerate(env):
        name, sep, _ = entry.partition("=")
        if not sep or not name:
            raise path.key("Env").at(i).error(f"expected NAME=value, got {entry!r}")
    return ContainerConfig(
        user=opt_str(obj, "User", path),
        exposed_ports=opt_key_set(obj, "ExposedPorts", path),
        env=env,
        entrypoint=opt_str_list(obj, "Entrypoint", path),
        cmd=opt_str_list(obj, "Cmd", path),
        volumes=opt_key_set(obj, "Volumes", path),
        working_dir=opt_str(obj, "WorkingDir", path),
        labels=opt_str_map(obj, "Labels", path),
        stop_signal=opt_str(obj, "StopSignal", path),
    )


def _history(obj: Mapping[str, object], path: JPath) -> tuple[History, ...]:
    items = opt_list(obj, "history", path) or []
    out = []
    for i, item in enumerate(items):
        where = path.key("history").at(i)
        entry = as_object(item, where)
        out.append(
            History(
                created=opt_str(entry, "created", where),
                created_by=opt_str(entry, "created_by", where),
                author=opt_str(entry, "author", where),
                comment=opt_str(entry, "comment", where),
                empty_layer=bool(opt_bool(entry, "empty_layer", where)),
            )
        )
    return tuple(out)
