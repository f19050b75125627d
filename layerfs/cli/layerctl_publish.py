"""``layerctl commit`` and ``layerctl push``: new images out of containers, images out of the store.

::

    layerctl [--root DIR] commit NAME NEWIMAGE     # container NAME's changes -> image NEWIMAGE
    layerctl [--root DIR] push IMAGE DEST          # DEST: oci:DIR[:REF], oci-archive:FILE[:REF],
                                                   #       docker-archive:FILE[:NAME:TAG]

Thin wiring, like `layerfs.cli.layerctl` (which calls `add_commands` while it builds its parser
and dispatches on ``args.func``): the work is `layerfs.store.commit.commit_container` and
`layerfs.store.push.push_image`. Their failures are `StoreError`/`OCIError`, which ``layerctl``
prints as one line.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

from layerfs.cli.exitcodes import ExitCode
from layerfs.oci.writer import parse_destination
from layerfs.store.commit import commit_container
from layerfs.store.push import push_image
from layerfs.store.store import Store

P = TypeVar("P", bound=argparse.ArgumentParser)


def add_commands(sub: argparse._SubParsersAction[P], common: P) -> None:
    """Add ``commit`` and ``push`` to ``layerctl``'s subcommands (``common``: shared options)."""
    s = sub.add_parser(
        "commit", parents=[common], help="store a container's changes as a new image"
    )
    s.add_argument("name", metavar="NAME", help="the container")
    s.add_argument("new_image", metavar="NEWIMAGE", help="the name of the new image")
    s.set_defaults(func=run_commit)

    s = sub.add_parser("push", parents=[common], help="write a stored image out")
    s.add_argument("image", metavar="IMAGE", help="name or ID")
    s.add_argument(
        "dest",
        metavar="DEST",
        help="oci:DIR[:REF], oci-archive:FILE[:REF] or docker-archive:FILE[:NAME:TAG]",
    )
    s.set_defaults(func=run_push)


def run_commit(args: argparse.Namespace) -> int:
    """``layerctl commit NAME NEWIMAGE``."""
    record = commit_container(Store.open(args.root), args.name, args.new_image)
    print(f"committed {args.name} as {record.name} {record.id} ({len(record.layers)} layers)")
    return ExitCode.OK


def run_push(args: argparse.Namespace) -> int:
    """``layerctl push IMAGE DEST``."""
    parse_destination(args.dest)  # a bad DEST is the error to report, even without a store
    result = push_image(Store.open(args.root), args.image, args.dest)
    print(f"pushed {result.record.name} {result.record.id} to {args.dest}")
    return ExitCode.OK
