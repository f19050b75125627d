"""The ``layerctl`` command as installed: the same as ``layerfs.cli.layerctl``, faster
where it mounts.

``layerctl create``, ``mount``, ``mount-image`` and ``rollback`` wait for a mount daemon
that imports pyfuse3, trio and the engine (~80 ms) after it is forked. Forked here, before
this process imports the rest of ``layerctl`` (~100 ms), the daemon loads on the other CPU
meanwhile; the mount then goes to it (`layerfs.fs.daemon.prefork`). Only the command line
does this: in-process callers of ``layerfs.cli.layerctl.main`` fork nothing ahead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

MOUNTING = frozenset({"create", "mount", "mount-image", "rollback"})
VALUED = "--root"  # the one global option that takes a value


def command(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv``, past the global options."""
    args = iter(argv)
    for arg in args:
        if len(arg) > 2 and VALUED.startswith(arg):  # argparse takes --ro for --root
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def layerctl() -> int:
    """Entry point of the ``layerctl`` script."""
    if command(sys.argv[1:]) in MOUNTING:
        from layerfs.fs.daemon import prefork

        prefork()
    from layerfs.cli.layerctl import main

    return main()


if __name__ == "__main__":
    sys.exit(layerctl())
