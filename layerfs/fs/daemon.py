"""Mount lifecycle: checks before mounting, readiness, signals, clean unmount.

Without ``-f`` the caller forks: the child mounts and serves, the parent waits
on a pipe and returns only once the mount is live (exit 0) or the child
reported why it could not mount (one line, exit 1, nothing mounted).
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import resource
import select
import signal
import sys
from dataclasses import dataclass

import pyfuse3
import trio

from .ops import Operations
from .options import MountOptions
from .union import UnionFS
from .upper import UpperError

log = logging.getLogger(__name__)

READAHEAD_KB = 1024
# After each request the session loop polls for the next one this long before it sleeps
# (third_party/pyfuse3/session-loop.patch): a client issuing requests one after another
# (tar, rm -r, chmod over many files) has the next one ready within tens of microseconds,
# and waking a sleeping daemon costs more than that, most of all in a virtual machine
# (an untar of 10,000 files: 6.4-7.1 s without, 3.1-3.3 s with). Pointless on one CPU,
# where the client cannot run while the daemon polls.
SPIN_SECONDS = 50e-6


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


def fuse_options(opts: MountOptions, debug: bool) -> set[str]:
    out = set(opts.fuse_options) | {f"fsname={opts.fsname}", "subtype=layerfs"}
    if not opts.writable:
        out.add("ro")
    if debug:
        out.add("debug")
    return out


def _set_readahead(mountpoint: str) -> None:
    """Raise the readahead of our mount's bdi, found in mountinfo.

    ``mountpoint`` must already be a real path: resolving it now would touch
    our own mount before it serves requests, a deadlock.
    """
    target = mountpoint
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.readlines()
    except OSError:
        return
    for line in reversed(lines):
        fields = line.split()
        mnt = fields[4].encode().decode("unicode_escape")
        if mnt == target and " - fuse.layerfs " in line:
            try:
                with open(f"/sys/class/bdi/{fields[2]}/read_ahead_kb", "w") as ra:
                    ra.write(str(READAHEAD_KB))
            except OSError as exc:
                log.debug("readahead not set: %s", exc)
            return


async def _serve(ops: Operations, mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, ops)
        nursery.start_soon(_readahead_after_init, ops, mountpoint)
        if hasattr(pyfuse3._pyfuse3, "resume") and len(os.sched_getaffinity(0)) > 1:
            await pyfuse3.main(spin=SPIN_SECONDS)
        else:
            await pyfuse3.main()  # an unpatched pyfuse3 or a single CPU
        nursery.cancel_scope.cancel()


async def _readahead_after_init(ops: Operations, mountpoint: str) -> None:
    # The kernel caps the bdi's readahead when it processes the INIT reply: set ours after.
    await ops.initialized.wait()
    await trio.sleep(0.05)
    _set_readahead(mountpoint)


async def _on_signals(ops: Operations) -> None:
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    with trio.open_signal_receiver(*wanted) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                log.warning("stats: %s", " ".join(f"{k}={v}" for k, v in ops.stats().items()))
                continue
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


def _raise_nofile() -> None:
    # One fd per open file through the mount: the soft limit (often 1024) is too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _mount(cfg: DaemonConfig) -> tuple[UnionFS, Operations]:
    """Build the engine and mount; raises MountError with the reason."""
    _raise_nofile()
    try:
        fs = UnionFS(cfg.options)
    except (OSError, ValueError, UpperError) as exc:
        raise MountError(str(exc)) from exc
    ops = Operations(fs)
    # libfuse prints its reasons on stderr: catch them for the one-line error.
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        pyfuse3.init(ops, cfg.mountpoint, fuse_options(cfg.options, cfg.debug))
    except Exception as exc:
        os.dup2(saved, 2)
        os.close(w)
        msg = _drain(r).strip().replace("\n", "; ") or str(exc)
        fs.close()
        raise MountError(f"cannot mount {cfg.mountpoint}: {msg}") from exc
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass
    return fs, ops


def _drain(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


def serve(cfg: DaemonConfig, fs: UnionFS, ops: Operations) -> None:
    """Run the request loop until unmounted or signalled, then unmount and close."""
    terminated = False
    # The inode table is a large, long-lived graph of small objects (parent links): with
    # the default thresholds the cyclic collector rescans it over and over while a
    # listing adds thousands of nodes. Everything built so far is frozen out of its
    # scans, and young collections run ~70x less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        trio.run(_serve, ops, cfg.mountpoint)
        terminated = True
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            if terminated:
                log.debug("unmount after terminate failed", exc_info=True)
        fs.close()


def run(cfg: DaemonConfig) -> int:
    """Mount and serve; in the background unless ``cfg.foreground``. Returns an exit code."""
    if cfg.foreground:
        check(cfg.options, cfg.mountpoint)
        fs, ops = _mount(cfg)
        serve(cfg, fs, ops)
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
            fs, ops = _mount(cfg)
        except MountError as exc:
            os.write(w, str(exc).encode())
            return 1
        _detach_stdio()
        os.write(w, b"ok")
        os.close(w)
        serve(cfg, fs, ops)
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
