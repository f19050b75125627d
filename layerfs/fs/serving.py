"""The serving daemon: build the engine, mount, run the request loop, unmount.

Only the process that serves imports this module (and with it pyfuse3, trio and the
engine): `layerfs.fs.daemon` checks and forks without them, so that every ``layerctl``
command that only spawns or inspects mounts starts ~80 ms sooner.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import select
import signal

import pyfuse3
import trio

from .daemon import DaemonConfig, MountError
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
    # It does so inside the daemon's write of that reply, which libfuse makes as soon as
    # init() returns, before this task can run; the task runs at the loop's first idle
    # moment, with no timer (which could fire at any point of a client's first requests).
    await ops.initialized.wait()
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


def mount(cfg: DaemonConfig) -> tuple[UnionFS, Operations]:
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
