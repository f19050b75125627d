"""``layerfs``: mount a union of directories (fuse-overlayfs compatible command line)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import logging.handlers
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..fs.daemon import DaemonConfig, MountError, run
from ..fs.options import OptionError, absolute, parse_options, split_options
from .exitcodes import ExitCode


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="layerfs",
        description="Mount read-only lower directories merged under a writable upper "
        "directory, with overlayfs semantics and OCI whiteouts.",
        epilog="Example: layerfs -o lowerdir=/l2:/l1,upperdir=/u,workdir=/w /mnt",
    )
    p.add_argument("source", nargs="?", help="ignored (the form mount.fuse3 uses)")
    p.add_argument("mountpoint", help="directory to mount on")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="comma-separated mount options: lowerdir=TOP:...:BOTTOM, upperdir=, "
        "workdir=, ro, volatile, fsync=0, timeout=, noxattrs, uidmapping=, "
        "gidmapping=, squash_to_root, squash_to_uid=, squash_to_gid=, allow_other, "
        "allow_root, default_permissions, [no]suid, [no]dev, [no]exec, noatime, "
        "fsname=",
    )
    p.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", dest="debug", action="store_true", help="debug output (implies -f)")
    p.add_argument("--log", metavar="FILE", help="log to FILE instead of syslog when detached")
    p.add_argument("-V", "--version", action="version", version=f"layerfs {__version__}")
    return p


def _setup_logging(foreground: bool, debug: bool, log_file: str | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("layerfs: %(levelname)s %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("layerfs[%(process)d]: %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        opts, warnings = parse_options(split_options(args.options))
    except OptionError as exc:
        print(f"layerfs: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    for w in warnings:
        print(f"layerfs: warning: {w}", file=sys.stderr)
    foreground = args.foreground or args.debug
    _setup_logging(foreground, args.debug, args.log)
    if args.source and not any(o.startswith("fsname=") for o in split_options(args.options)):
        # The mount table shows what mount(8) was given as the source, as for any filesystem.
        opts = dataclasses.replace(opts, fsname=args.source)
    cfg = DaemonConfig(os.path.realpath(args.mountpoint), absolute(opts), foreground, args.debug)
    try:
        return run(cfg)
    except MountError as exc:
        print(f"layerfs: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        return ExitCode.FAILURE


if __name__ == "__main__":
    sys.exit(main())
