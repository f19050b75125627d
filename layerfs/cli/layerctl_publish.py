"""``layerctl commit`` and ``layerctl push``: new images out of containers, images out of the store.

::

    layerctl [--root DIR] commit NAME NEWIMAGE     # container NAME's changes -> image NEWIMAGE
    layerctl [--root DIR] push IMAGE DEST          # DEST: oci:DIR[:REF], oci-archive:FILE[:REF],
             [--creds USER:PASS] [--tls-verify=false] [--cert-dir DIR]
                                                   #       docker-archive:FILE[:NAME:TAG],
                                                   #       docker://HOST[:PORT]/REPO[:TAG]

Thin wiring, like `layerfs.cli.layerctl` (which calls `add_commands` while it builds its parser
and dispatches on ``args.func``): the work is `layerfs.store.commit.commit_container` and
`layerfs.store.push.push_image`. Their failures are `StoreError`/`OCIError`, which ``layerctl``
prints as one line.

`add_registry_flags` and `registry_options` are shared with ``layerctl pull``: ``--creds``,
``--tls-verify`` and ``--cert-dir`` as skopeo spells them.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

from layerfs.cli.exitcodes import ExitCode
from layerfs.oci import parse_source
from layerfs.oci.registry import RegistryOptions, parse_credentials
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
        help="oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG] or "
        "docker://HOST[:PORT]/REPO[:TAG]",
    )
    add_registry_flags(s)
    s.set_defaults(func=run_push)


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    """``--creds``, ``--tls-verify`` and ``--cert-dir``, for ``docker://`` images."""
    parser.add_argument(
        "--creds",
        metavar="USER:PASS",
        type=_credentials,
        help="registry credentials (default: from auth.json, else anonymous)",
    )
    parser.add_argument(
        "--tls-verify",
        metavar="BOOL",
        type=_bool,
        default=None,
        help="verify the registry's TLS certificate (default: true); false also allows HTTP",
    )
    parser.add_argument(
        "--cert-dir", metavar="DIR", help="CA certificates (*.crt) and client keys for TLS"
    )


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    """The `RegistryOptions` the flags of `add_registry_flags` give."""
    return RegistryOptions(
        credentials=args.creds, tls_verify=args.tls_verify, cert_dir=args.cert_dir
    )


def _credentials(text: str) -> object:
    try:
        return parse_credentials(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--creds: ")) from None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def run_commit(args: argparse.Namespace) -> int:
    """``layerctl commit NAME NEWIMAGE``."""
    # Loaded here, as in run_push: every other command starts without them.
    from layerfs.store.commit import commit_container

    record = commit_container(Store.open(args.root), args.name, args.new_image)
    print(f"committed {args.name} as {record.name} {record.id} ({len(record.layers)} layers)")
    return ExitCode.OK


def run_push(args: argparse.Namespace) -> int:
    """``layerctl push IMAGE DEST``."""
    from layerfs.oci.registry.upload import UploadAction
    from layerfs.oci.writer import parse_destination
    from layerfs.store.push import push_image

    # A bad DEST is the error to report, even without a store.
    if args.dest.startswith("docker://"):
        parse_source(args.dest)
    else:
        parse_destination(args.dest)
    result = push_image(Store.open(args.root), args.image, args.dest, registry_options(args))
    if result.registry is not None:
        r = result.registry
        print(
            f"pushed {result.record.name} {result.record.id} to docker://{r.ref} ({r.digest}): "
            f"{r.count(UploadAction.UPLOADED)} blobs uploaded, "
            f"{r.count(UploadAction.MOUNTED)} mounted, {r.count(UploadAction.EXISTS)} already there"
        )
        return ExitCode.OK
    print(f"pushed {result.record.name} {result.record.id} to {args.dest}")
    return ExitCode.OK
