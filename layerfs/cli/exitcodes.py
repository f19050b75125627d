"""Exit codes of ``layerfs`` and ``layerctl``, documented from here."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # the operation failed; stderr says why, nothing was changed
    USAGE = 2  # bad command line or options
