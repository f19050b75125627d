"""Exit codes of ``layerfs`` and ``layerctl``, documented from here."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # the operation failed; stderr says why, nothing was changed
    USAGE = 2  # bad command line or options
    DAMAGED = 3  # layerctl fsck found problems (listed on stdout)
    INTERRUPTED = 130  # SIGINT or SIGTERM (128 + SIGINT, as shells report it)
