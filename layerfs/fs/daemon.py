"""Mount lifecycle: checks before mounting, forking, readiness.

Without ``-f`` the caller forks: the child mounts and serves (`layerfs.fs.serving`),
the parent waits on a pipe and returns only once the mount is live (exit 0) or the
child reported why it could not mount (one line, exit 1, nothing mounted).
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import pickle
import resource
import signal
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


@dataclass(frozen=True)
class _Standby:
    """A daemon forked ahead of its mount (`prefork`), waiting for its config."""

    pid: int
    orders: int  # we write the pickled DaemonConfig here, then close it
    status: int  # it answers "ok" or why it could not mount


_standby: _Standby | None = None


def prefork() -> None:
    """Fork the next mount's daemon now, so that it loads the engine (~80 ms of imports)
    while this process loads and does the rest; the next `spawn` hands it its mount.
    Unused, it is killed and reaped when this process exits."""
    if _standby is None:
        try:
            _start_standby()
        except OSError:
            pass  # only time is lost: `spawn` forks then


def spawn(cfg: DaemonConfig) -> int:
    """Mount with a daemon forked from this process (ahead, by `prefork`, or now); its
    pid, once the mount is live."""
    global _standby
    check(cfg.options, cfg.mountpoint)
    orders = pickle.dumps((cfg, logging.getLogger("layerfs").getEffectiveLevel()))
    for _ in range(2):  # a standby that died meanwhile is replaced once
        if _standby is None:
            _start_standby()
        s = _standby
        assert s is not None
        try:
            rest = memoryview(orders)
            while rest:
                rest = rest[os.write(s.orders, rest) :]
        except OSError:
            _drop_standby()
            continue
        except BaseException:
            # Interrupted halfway: it must not mount behind our back.
            _drop_standby()
            raise
        _standby = None
        os.close(s.orders)
        return _await_ready(s.pid, s.status)
    raise MountError("the mount daemon exited before it was given its mount")


def _start_standby() -> None:
    global _standby
    orders_r, orders_w = os.pipe()
    status_r, status_w = os.pipe()
    try:
        pid = _fork()
    except OSError:
        for fd in (orders_r, orders_w, status_r, status_w):
            os.close(fd)
        raise
    if pid:
        os.close(orders_r)
        os.close(status_w)
        _standby = _Standby(pid, orders_w, status_r)
        return
    code = 1
    try:
        os.close(orders_w)
        os.close(status_r)
        _leave_caller(orders_r, status_w)
        from . import serving  # noqa: F401 - loaded while the caller works

        with os.fdopen(orders_r, "rb") as orders:
            data = orders.read()
        if data:  # nothing: the caller exited without a mount for us
            cfg, log_level = pickle.loads(data)
            _log_like_caller(log_level)
            code = _serve(cfg, status_w)
        else:
            code = 0
    except BaseException:
        log.exception("daemon failed")
    finally:
        os._exit(code)


@atexit.register
def _drop_standby() -> None:
    global _standby
    s, _standby = _standby, None
    if s is None:
        return
    for fd in (s.orders, s.status):
        os.close(fd)
    try:
        os.kill(s.pid, signal.SIGKILL)
        os.waitpid(s.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


_CALLER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _fork() -> int:
    # Until the child has left the caller's session (`_leave_caller`), a Ctrl-C or SIGTERM
    # would raise in it inside the caller's code: both stay blocked across the fork.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _CALLER_SIGNALS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return pid


def _log_like_caller(level: int) -> None:
    # Forked before the caller set up its logging (`prefork`): take its level, on stderr
    # until the mount is live (then stderr goes to /dev/null, as for every daemon).
    # Forked after, the caller's handlers came along.
    if logging.getLogger("layerfs").handlers or logging.root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("layerfs: %(message)s"))
    logger = logging.getLogger("layerfs")
    logger.addHandler(handler)
    logger.setLevel(level)


def _await_ready(pid: int, status: int) -> int:
    with os.fdopen(status, "rb") as pipe:
        msg = pipe.read().decode(errors="replace")
    if msg == "ok":
        return pid
    os.waitpid(pid, 0)
    raise MountError(msg or "the mount daemon exited before the mount was ready")


def _leave_caller(*keep: int) -> None:
    # A daemon keeps nothing of its caller: not its locks, not its pipes (the caller
    # may be layerctl, or a test process, rather than our own command line).
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    os.setsid()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _CALLER_SIGNALS)
    _name_process()


def _serve(cfg: DaemonConfig, status: int) -> int:
    """Mount, report on ``status``, serve until unmounted: the daemon's exit code."""
    from . import serving  # the engine loads only where it serves (see serving)

    try:
        fs, ops = serving.mount(cfg)
    except MountError as exc:
        os.write(status, str(exc).encode())
        return 1
    _detach_stdio()
    os.write(status, b"ok")
    os.close(status)
    serving.serve(cfg, fs, ops)
    return 0


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
