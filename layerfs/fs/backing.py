"""Backing files for FUSE passthrough: the kernel reads and writes them itself.

With passthrough granted at INIT, an open reply may name a backing file; reads,
writes and mmap of that FUSE file then go straight to it, never to the daemon,
at the speed of the filesystem below. The kernel binds a backing file to the
FUSE *inode*: while any passthrough handle of an inode is open, every open of
it must name the same backing file, or fails. This module keeps that binding
per node; which files may have one is the caller's choice (`layerfs.fs.ops`).

Passthrough needs pyfuse3 built against libfuse 3.16 or newer with
`third_party/pyfuse3/passthrough.patch` (`tools/build-pyfuse3`), a kernel with
CONFIG_FUSE_PASSTHROUGH (6.9+) and CAP_SYS_ADMIN; without any of them every
open is answered as before.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

import pyfuse3

log = logging.getLogger(__name__)

# Built with the patch: pyfuse3 can register backing files and ask for passthrough.
SUPPORTED = hasattr(pyfuse3, "backing_open") and hasattr(pyfuse3.FileInfo(), "backing_id")


@dataclass(slots=True)
class _Binding:
    backing_id: int
    file: tuple[int, int]  # (st_dev, st_ino) of the backing file
    handles: int


class Backings:
    """The backing file bound to each node with passthrough handles open."""

    def __init__(self) -> None:
        self.active = False
        self._bound: dict[int, _Binding] = {}

    def start(self) -> None:
        """Take up what INIT negotiated: call from ``Operations.init``."""
        self.active = bool(getattr(pyfuse3, "passthrough", False))
        if self.active:
            log.debug("FUSE passthrough granted")

    def __len__(self) -> int:
        return len(self._bound)

    def bind(self, ino: int, fd: int) -> int:
        """The backing id for a new handle of node ``ino`` open on ``fd``; 0 for none."""
        if not self.active:
            return 0
        st = os.fstat(fd)
        file = (st.st_dev, st.st_ino)
        bound = self._bound.get(ino)
        if bound is not None:
            if bound.file != file:
                # The kernel fails this open (EIO): callers bind only files that stay
                # the same file while open.
                return 0
            bound.handles += 1
            return bound.backing_id
        try:
            backing_id: int = pyfuse3.backing_open(fd)
        except OSError as e:
            if e.errno == errno.EPERM:
                # The kernel did not enable passthrough after all: answer as without it.
                log.warning("FUSE passthrough refused by the kernel; reads go through layerfs")
                self.active = False
            else:
                # ELOOP: the backing file sits on a stacked filesystem (overlayfs, FUSE
                # passthrough), which the kernel does not stack over again.
                log.debug("no passthrough for inode %d: %s", ino, e)
            return 0
        self._bound[ino] = _Binding(backing_id, file, 1)
        return backing_id

    def unbind(self, ino: int) -> None:
        """One passthrough handle of node ``ino`` closed."""
        bound = self._bound[ino]
        bound.handles -= 1
        if bound.handles == 0:
            del self._bound[ino]
            pyfuse3.backing_close(bound.backing_id)
