"""``layerctl``: import images into the layer store and look after it.

::

    layerctl [--root DIR] init [--backend dir|zfs] [--zfs-dataset POOL/PATH]
    layerctl [--root DIR] pull SOURCE [--name NAME] [--platform OS/ARCH[/VARIANT]] [-q]
                               [--creds USER:PASS] [--tls-verify=false] [--cert-dir DIR]
    layerctl [--root DIR] images
    layerctl [--root DIR] inspect IMAGE [--json]
    layerctl [--root DIR] rmi IMAGE
    layerctl [--root DIR] gc
    layerctl [--root DIR] fsck

Thin wiring: every command calls `layerfs.store` and prints. Success exits 0. A failure prints
one line on stderr naming the input at fault and exits with `ExitCode.FAILURE` (`USAGE` for a
bad command line, `DAMAGED` when fsck finds problems, which it lists on stdout); the store is
then as it was. Errors that are bugs are tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn, TextIO

from layerfs import __version__
from layerfs.bundle import BundleError
from layerfs.cli import layerctl_containers, layerctl_publish
from layerfs.cli.exitcodes import ExitCode
from layerfs.cli.progress import TerminalProgress, human_size
from layerfs.oci import OCIError, Platform, parse_platform
from layerfs.oci.registry import using_registry_options
from layerfs.store.entries import EntriesError
from layerfs.store.errors import StoreError, StoreMissingError
from layerfs.store.fsck import check_store
from layerfs.store.gc import collect_garbage
from layerfs.store.ingest import LayerAction
from layerfs.store.layout import StoreConfig
from layerfs.store.pull import PullOptions, pull_image
from layerfs.store.records import ImageRecord
from layerfs.store.shield import interrupts_deferred
from layerfs.store.store import Store
from layerfs.store.unpack import UnpackError

_USER_ERRORS = (StoreError, OCIError, UnpackError, EntriesError, BundleError)


class _Failure(Exception):
    """A command failed in a way already worded for the user."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and `ExitCode.USAGE`."""

    def error(self, message: str) -> NoReturn:
        raise _Failure(f"{self.prog}: {message} (see '{self.prog} --help')", ExitCode.USAGE)


def _parser() -> argparse.ArgumentParser:
    # --root is accepted before and after the command; SUPPRESS keeps the later one from
    # resetting the earlier to its default.
    common = _Parser(add_help=False)
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help="store root")
    p = _Parser(
        prog="layerctl",
        description="Import OCI images into the layerfs layer store and manage it.",
        epilog="Sources: oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG], "
        "docker://HOST[:PORT]/REPO[:TAG|@DIGEST]. "
        "The store is --root, else $LAYERFS_ROOT, else /var/lib/layerfs (root) or "
        "$XDG_DATA_HOME/layerfs.",
    )
    p.add_argument("--root", metavar="DIR", help="store root directory")
    p.add_argument("--debug", action="store_true", help="log what happens to stderr")
    p.add_argument("-V", "--version", action="version", version=f"layerctl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    s = sub.add_parser("init", parents=[common], help="create the store")
    s.add_argument("--backend", choices=("dir", "zfs"), default="dir", help="layer backend")
    s.add_argument("--zfs-dataset", metavar="POOL/PATH", help="parent dataset (zfs backend)")
    s.set_defaults(func=_init)

    s = sub.add_parser("pull", parents=[common], help="import an image")
    s.add_argument("source", metavar="SOURCE", help="oci:DIR[:REF], oci-archive:..., ...")
    s.add_argument("--name", help="name to store it under (default: from SOURCE)")
    s.add_argument(
        "--platform", type=_platform, metavar="OS/ARCH[/VARIANT]", help="default: this machine's"
    )
    s.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    layerctl_publish.add_registry_flags(s)
    s.set_defaults(func=_pull)

    s = sub.add_parser("images", parents=[common], help="list stored images")
    s.set_defaults(func=_images)

    s = sub.add_parser("inspect", parents=[common], help="show a stored image")
    s.add_argument("image", metavar="IMAGE", help="name or ID")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_inspect)

    s = sub.add_parser("rmi", parents=[common], help="remove an image's record (gc frees space)")
    s.add_argument("image", metavar="IMAGE", help="name or ID")
    s.set_defaults(func=_rmi)

    s = sub.add_parser("gc", parents=[common], help="remove unused layers, blobs, leftovers")
    s.set_defaults(func=_gc)

    s = sub.add_parser("fsck", parents=[common], help="check every layer and blob")
    s.set_defaults(func=_fsck)
    layerctl_containers.add_commands(sub, common)
    layerctl_publish.add_commands(sub, common)
    return p


def _platform(text: str) -> Platform:
    try:
        return parse_platform(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- commands -----------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    if args.backend == "zfs" and not args.zfs_dataset:
        raise _Failure("layerctl init: --backend zfs needs --zfs-dataset POOL/PATH", ExitCode.USAGE)
    if args.backend != "zfs" and args.zfs_dataset:
        raise _Failure("layerctl init: --zfs-dataset is for --backend zfs only", ExitCode.USAGE)
    options = {"zfs_dataset": args.zfs_dataset} if args.zfs_dataset else {}
    store = Store.open(args.root, create=True, config=StoreConfig(args.backend, options))
    print(f"store at {store.root} ({store.config.backend} backend)")
    return ExitCode.OK


def _pull(args: argparse.Namespace) -> int:
    store = Store.open(args.root, create=True)
    progress = None
    if not args.quiet and sys.stderr.isatty():
        progress = TerminalProgress(sys.stderr)
    with using_registry_options(layerctl_publish.registry_options(args)):
        result = pull_image(
            store, args.source, PullOptions(name=args.name, platform=args.platform), progress
        )
    if not args.quiet:
        r = result.record
        print(
            f"pulled {r.name} {r.id}: {len(r.layers)} layers, "
            f"{result.count(LayerAction.UNPACK)} unpacked, "
            f"{result.count(LayerAction.BLOB)} blob-only, "
            f"{result.count(LayerAction.PRESENT)} already present"
        )
    return ExitCode.OK


def _images(args: argparse.Namespace) -> int:
    try:
        records = Store.open(args.root).images()
    except StoreMissingError:
        records = []
    rows = [("NAME", "IMAGE ID", "PLATFORM", "LAYERS", "SIZE", "PULLED")]
    for r in records:
        rows.append(
            (
                r.name,
                _short(r.id),
                r.platform,
                str(len(r.layers)),
                human_size(r.size),
                r.pulled[:19].replace("T", " "),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return ExitCode.OK


def _inspect(args: argparse.Namespace) -> int:
    store = _open_existing(args.root, args.image)
    record = store.find_image(args.image)
    layers = []
    for chain_id, diff_id, digest in zip(
        record.layers, record.diff_ids, record.layer_digests, strict=True
    ):
        layer = store.layer_record(chain_id)
        path = store.backend.diff_dir(chain_id)
        layers.append(
            {
                "chain_id": chain_id,
                "diff_id": diff_id,
                "digest": digest,
                "path": path,
                "size": layer.size,
                "unpacked": layer.unpacked,
            }
        )
    if args.json:
        doc = record.to_json() | {
            "store": store.root,
            "layer_details": layers,
            "lowerdir": ":".join(store.lower_dirs(record)),
            "config": json.loads(store.blobs.read(record.config_digest)),
        }
        print(json.dumps(doc, indent=2))
        return ExitCode.OK
    _print_record(record, store, layers)
    return ExitCode.OK


def _print_record(record: ImageRecord, store: Store, layers: list[dict[str, object]]) -> None:
    config = store.image_config(record).config
    fields = [
        ("Name", record.name),
        ("ID", record.id),
        ("Manifest", f"{record.manifest_digest} ({record.manifest_media_type})"),
        ("Platform", record.platform),
        ("Created", record.created or "-"),
        ("Pulled", record.pulled),
        ("Source", record.source),
        ("Size", human_size(record.size)),
        ("Entrypoint", json.dumps(list(config.entrypoint)) if config.entrypoint else "-"),
        ("Cmd", json.dumps(list(config.cmd)) if config.cmd else "-"),
        ("User", config.user or "-"),
        ("WorkingDir", config.working_dir or "-"),
        ("Env", " ".join(config.env) or "-"),
    ]
    for key, value in fields:
        print(f"{key + ':':<12}{value}")
    print("Layers (bottom first):")
    for i, layer in enumerate(layers, start=1):
        size = human_size(int(str(layer["size"])))
        print(f"  {i:>2}  {layer['chain_id']}  {size:>9}  {layer['path']}")


def _rmi(args: argparse.Namespace) -> int:
    record = _open_existing(args.root, args.image).remove_image(args.image)
    print(f"removed {record.name} ({_short(record.id)}); 'layerctl gc' frees its layers")
    return ExitCode.OK


def _gc(args: argparse.Namespace) -> int:
    try:
        store = Store.open(args.root)
    except StoreMissingError:
        print("no store: nothing to remove")
        return ExitCode.OK
    result = collect_garbage(store)
    print(
        f"removed {len(result.layers)} layers, {len(result.blobs)} blobs, "
        f"{result.leftovers} leftovers; freed {human_size(result.bytes_freed)}"
    )
    return ExitCode.OK


def _fsck(args: argparse.Namespace) -> int:
    try:
        store = Store.open(args.root)
    except StoreMissingError:
        print("no store: nothing to check")
        return ExitCode.OK
    problems = check_store(store)
    for problem in problems:
        print(_one_line(problem))
    if problems:
        raise _Failure(
            f"layerctl fsck: {len(problems)} problem(s) in the store at {store.root}",
            ExitCode.DAMAGED,
        )
    print(f"store at {store.root}: no problems")
    return ExitCode.OK


# -- helpers ------------------------------------------------------------------------------------


def _open_existing(root: str | None, image: str) -> Store:
    try:
        return Store.open(root)
    except StoreMissingError as exc:
        raise _Failure(f"no image {image!r}: {exc}") from None


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Logs to whatever ``sys.stderr`` is at the time (tests swap it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


@contextmanager
def _logging(debug: bool) -> Iterator[None]:
    """Warnings (or, with ``--debug``, everything) of the layerfs package on stderr."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("layerctl: %(message)s"))
    logger = logging.getLogger("layerfs")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        notes = "".join(f" ({n})" for n in getattr(exc, "__notes__", ()))
        return f"{where}{exc.strerror or exc}{notes}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``layerctl`` with ``argv`` (default: the process's arguments); the exit code."""
    parser = _parser()
    command = "layerctl"
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version
            return int(exc.code or 0)
        command = f"layerctl {args.command}"
        func: Callable[[argparse.Namespace], int] = args.func
        with _logging(args.debug), interrupts_deferred():
            return func(args)
    except _Failure as exc:
        print(_one_line(str(exc)), file=sys.stderr)
        return exc.code
    except _USER_ERRORS as exc:
        print(f"{command}: {_one_line(_describe(exc))}", file=sys.stderr)
        return ExitCode.FAILURE
    except OSError as exc:
        print(f"{command}: {_one_line(_describe(exc))}", file=sys.stderr)
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
