"""Mount lifecycle: checks before mounting, forking, readiness.

Without ``-f`` the caller forks: the child mounts and serves (`layerfs.fs.serving`),
the parent waits on a pipe and returns only once the mount is live (exit 0) or the
child reported why it could not mount (one line, exit 1, nothing mounted).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import sys
from dataclasses import dataclass

from .options import MountOptions

log = logging.getLogger(__name__)


class MountError(Exception):
    """The mount cannot be made; the message says what to change."""


@dataclass(frozen=True)
class DaemonConfig:
    mountpoint: str  # resolved (realpath) before mounting
    options: MountOptions
    foreground: bool = False
    debug: bool = False


def _inside(path: str, top: str) -> bool:
    return os.path.commonpath([path, top]) == top


def check(opts: MountOptions, mountpoint: str) -> None:
    """Everything that can be known wrong before mounting; raises MountError."""
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint}: not an existing directory")
    mnt = os.path.realpath(mountpoint)
    dirs: list[tuple[str, str]] = [("lowerdir", d) for d in opts.lowerdirs]
    if opts.upperdir and opts.workdir:
        dirs += [("upperdir", opts.upperdir), ("workdir", opts.workdir)]
    for what, d in dirs:
        if not os.path.isdir(d):
            raise MountError(f"{what} {d}: not an existing directory")
        real = os.path.realpath(d)
        if _inside(mnt, real):
            raise MountError(f"mountpoint {mountpoint} is inside {what} {d}")
        if _inside(real, mnt):
            raise MountError(f"{what} {d} is inside the mountpoint {mountpoint}")
    if opts.upperdir and opts.workdir:
        up, work = os.path.realpath(opts.upperdir), os.path.realpath(opts.workdir)
        if _inside(work, up) or _inside(up, work):
            raise MountError(f"upperdir {opts.upperdir} and workdir {opts.workdir} must not nest")
        if os.stat(up).st_dev != os.stat(work).st_dev:
            raise MountError(
                f"workdir {opts.workdir} must be on the same filesystem as upperdir {opts.upperdir}"
            )
        if not opts.readonly:
            for what, d in (("upperdir", up), ("workdir", work)):
                if os.statvfs(d).f_flag & os.ST_RDONLY:
                    raise MountError(f"{what} {d} is on a read-only filesystem")
                if not os.access(d, os.W_OK):
                    raise MountError(f"{what} {d} is not writable")
        for d in opts.lowerdirs:
            real = os.path.realpath(d)
            if _inside(real, up) or _inside(up, real):
                raise MountError(f"lowerdir {d} and upperdir {opts.upperdir} must not nest")


def run(cfg: DaemonConfig) -> int:
    """Mount and serve; in the background unless ``cfg.foreground``. Returns an exit code."""
    if cfg.foreground:
        check(cfg.options, cfg.mountpoint)
        from . import serving  # the engine loads only where it serves (see serving)

        fs, ops = serving.mount(cfg)
        serving.serve(cfg, fs, ops)
        return 0
    spawn(cfg)
    return 0


def spawn(cfg: DaemonConfig) -> int:
    """Mount with a daemon forked from this process; its pid, once the mount is live."""
    check(cfg.options, cfg.mountpoint)
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            msg = pipe.read().decode(errors="replace")
        if msg == "ok":
            return pid
        os.waitpid(pid, 0)
        raise MountError(msg or "the mount daemon exited before the mount was ready")
    os.close(r)
    code = 1
    try:
        # A daemon keeps nothing of its caller: not its locks, not its pipes (the caller
        # may be layerctl, or a test process, rather than our own command line).
        os.closerange(3, w)
        os.closerange(w + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        os.setsid()
        _name_process()
        try:
            from . import serving  # the engine loads only where it serves (see serving)

            fs, ops = serving.mount(cfg)
        except MountError as exc:
            os.write(w, str(exc).encode())
            return 1
        _detach_stdio()
        os.write(w, b"ok")
        os.close(w)
        serving.serve(cfg, fs, ops)
        code = 0
    except BaseException:
        log.exception("daemon failed")
    finally:
        os._exit(code)


def _name_process() -> None:
    # Forked from layerctl, the daemon would show in top/ps -o comm as its caller.
    try:
        with open("/proc/self/comm", "w") as f:
            f.write("layerfs")
    except OSError:
        pass


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd == 2 and any(isinstance(h, logging.FileHandler) for h in logging.root.handlers):
            continue
        try:
            os.dup2(null, fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
    os.close(null)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the daemon
