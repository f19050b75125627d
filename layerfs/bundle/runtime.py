"""Image config → runtime-spec ``config.json``: the conversion, a pure function.

:func:`runtime_config` follows the image-spec's ``conversion.md`` and adds the
implementation-defined rest from :mod:`layerfs.bundle.defaults` (what
``runc spec`` generates). It does no I/O: the user must already be resolved
against the rootfs (:func:`~layerfs.bundle.user.resolve_user`), and the result
is a JSON-ready ``dict`` for :func:`~layerfs.bundle.write.write_bundle_config`.

Fields, and the choices the spec leaves open:

- ``process.args`` — ``Entrypoint`` followed by ``Cmd``; an image with neither
  (or both empty) is a :class:`BundleError`: there is nothing to run.
- ``process.env`` — ``Env`` verbatim, then, only for names the image does not
  set: ``PATH`` (:data:`~layerfs.bundle.defaults.DEFAULT_PATH`), ``HOME`` (the
  resolved user's home, ``/`` when it has none) and, with a terminal,
  ``TERM=xterm``. The spec forbids a default from changing an image variable.
- ``process.cwd`` — ``WorkingDir``, else ``/``. A relative ``WorkingDir``
  (Docker's builder never writes one, hand-made configs might) is taken from
  ``/``, since the runtime-spec requires an absolute ``cwd``.
- ``process.user`` — the :class:`ResolvedUser`; ``additionalGids`` only when
  it has some.
- ``mounts`` — the system mounts, then one mount per ``Volumes`` entry,
  parents before children. An anonymous volume becomes a fresh ``tmpfs``
  (``nosuid,nodev,mode=755``) owned by the process user, so that the image's
  user can write to it as Docker's copied-ownership volumes usually allow; its
  data lives in memory (counted against the container's memory cgroup) and
  dies with the container, and it starts empty (the image's content at that
  path is hidden, not copied). The caller may instead map a volume to a host
  directory (``volume_sources``), which becomes a bind mount: that is how a
  persistent or seeded volume is made. Volumes at a system mount's own path,
  or under ``/proc`` or ``/sys`` (which the runtime already provides and runc
  refuses to mount over) are skipped with a warning.
- ``annotations`` — see :mod:`layerfs.bundle.annotations`.
- ``hostname`` — only when given: without it the container keeps a copy of
  the host's name in its own UTS namespace.

Only ``linux`` images are converted; other values of ``os`` are an error.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from layerfs.bundle import defaults
from layerfs.bundle.annotations import runtime_annotations
from layerfs.bundle.errors import BundleError
from layerfs.bundle.user import ResolvedUser
from layerfs.oci import ContainerConfig, ImageConfig

log = logging.getLogger(__name__)

#: Longest hostname the kernel accepts (``HOST_NAME_MAX``).
MAX_HOSTNAME = 64

#: Volume paths the runtime's own mounts already cover: a volume there is skipped.
_RESERVED_TREES = ("/proc", "/sys")


def runtime_config(
    image: ImageConfig,
    *,
    user: ResolvedUser,
    rootfs: str = "rootfs",
    tty: bool = False,
    hostname: str | None = None,
    readonly_rootfs: bool = False,
    annotations: Mapping[str, str] | None = None,
    volume_sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The runtime-spec ``config.json`` content for a container of ``image``.

    ``rootfs`` is ``root.path`` (relative to the bundle, or absolute);
    ``annotations`` are added last and win over the image's own;
    ``volume_sources`` maps image volume paths to host directories to bind
    mount instead of a tmpfs. Raises :class:`BundleError` when the image cannot
    be run as it is (no command, a non-Linux image, a bad volume path) or
    ``hostname`` is unusable.
    """
    if image.os != "linux":
        raise BundleError(f"image os is {image.os!r}: only linux images can be run as bundles")
    if not rootfs:
        raise ValueError("rootfs: expected a path, got ''")
    config = image.config
    process: dict[str, Any] = {
        "terminal": tty,
        "user": _process_user(user),
        "args": process_args(config),
        "env": process_env(config, user, tty=tty),
        "cwd": process_cwd(config),
        "capabilities": defaults.capabilities(),
        "rlimits": defaults.rlimits(),
        "noNewPrivileges": True,
    }
    out: dict[str, Any] = {
        "ociVersion": defaults.OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": readonly_rootfs},
    }
    if hostname is not None:
        out["hostname"] = _check_hostname(hostname)
    out["mounts"] = defaults.system_mounts() + volume_mounts(
        config.volumes, user, volume_sources or {}
    )
    out["linux"] = defaults.linux_section()
    out["annotations"] = runtime_annotations(image, annotations)
    return out


def process_args(config: ContainerConfig) -> list[str]:
    """``Entrypoint`` + ``Cmd``; :class:`BundleError` when that is empty."""
    args = [*(config.entrypoint or ()), *(config.cmd or ())]
    if not args:
        raise BundleError("image config has neither Entrypoint nor Cmd: there is no command to run")
    return args


def process_env(config: ContainerConfig, user: ResolvedUser, *, tty: bool) -> list[str]:
    """``Env`` verbatim, then PATH, HOME and (with ``tty``) TERM where the image has none."""
    env = list(config.env)
    present = {entry.partition("=")[0] for entry in env}
    fallbacks = [("PATH", defaults.DEFAULT_PATH), ("HOME", user.home)]
    if tty:
        fallbacks.append(("TERM", defaults.DEFAULT_TERM))
    env.extend(f"{name}={value}" for name, value in fallbacks if name not in present)
    return env


def process_cwd(config: ContainerConfig) -> str:
    """``WorkingDir`` as an absolute path, ``/`` when unset."""
    if not config.working_dir:
        return "/"
    return _absolute(config.working_dir)


def volume_mounts(
    volumes: Sequence[str], user: ResolvedUser, sources: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One mount per usable volume, parents first; see the module docstring."""
    targets: dict[str, str] = {}  # normalised destination -> the image's spelling
    for volume in volumes:
        if not volume.startswith("/"):
            raise BundleError(f"image Volumes: {volume!r} is not an absolute path")
        dest = _absolute(volume)
        if dest == "/":
            raise BundleError(f"image Volumes: {volume!r} would hide the whole root filesystem")
        if _reserved(dest):
            log.warning("image volume %s skipped: the runtime provides that path", volume)
            continue
        targets.setdefault(dest, volume)

    normalised_sources = {_absolute(k): v for k, v in sources.items()}
    unknown = sorted(set(normalised_sources) - set(targets))
    if unknown:
        raise ValueError(f"volume_sources: {', '.join(unknown)} is not a volume of the image")

    mounts = []
    for dest in sorted(targets, key=lambda d: (d.count("/"), d)):
        source = normalised_sources.get(dest)
        if source is None:
            mounts.append(_tmpfs_volume(dest, user))
        elif not source.startswith("/"):
            raise ValueError(f"volume_sources[{dest!r}]: expected an absolute path, got {source!r}")
        else:
            mounts.append(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": source,
                    "options": ["rbind", "rprivate", "nosuid", "nodev"],
                }
            )
    return mounts


def _tmpfs_volume(dest: str, user: ResolvedUser) -> dict[str, Any]:
    return {
        "destination": dest,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=755", f"uid={user.uid}", f"gid={user.gid}"],
    }


def _process_user(user: ResolvedUser) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        out["additionalGids"] = list(user.additional_gids)
    return out


def _absolute(path: str) -> str:
    # "/" + lstrip: normpath keeps a leading "//", which POSIX leaves implementation-defined.
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def _reserved(dest: str) -> bool:
    if any(m["destination"] == dest for m in defaults.system_mounts()):
        return True
    return any(dest == tree or dest.startswith(tree + "/") for tree in _RESERVED_TREES)


def _check_hostname(hostname: str) -> str:
    encoded = hostname.encode("utf-8", "surrogateescape")
    if not encoded or len(encoded) > MAX_HOSTNAME or any(c <= 32 or c == 127 for c in encoded):
        raise BundleError(
            f"hostname {hostname!r}: expected 1 to {MAX_HOSTNAME} characters "
            "without spaces or control characters"
        )
    return hostname
