"""The store: one root directory, its backend, its records, and the lock that orders changes.

`Store.open` finds (or, with ``create``, makes) the store at a root; everything else goes through
the object. Reading needs no lock: records are replaced atomically and layers never change once
published. Changing records takes `Store.lock` for a short critical section; work that makes
temporary files runs in a `Store.session` (see `layerfs.store.session`).

Used by the commands: `layerfs.store.pull.pull_image` (import), `layerfs.store.gc.collect_garbage`
and `layerfs.store.fsck.check_store`; the container commands use `Store.find_image`,
`Store.lower_dirs` and `Store.image_config`, and write their records under `Store.lock`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from layerfs.oci import Digest, ImageConfig, parse_config, split_digest
from layerfs.store.backend import BACKEND_NAMES, LayerBackend
from layerfs.store.blobs import BlobStore
from layerfs.store.dirs import DirBackend
from layerfs.store.durable import fsync_dir
from layerfs.store.errors import (
    ImageNotFoundError,
    InUseError,
    StoreError,
    StoreMissingError,
)
from layerfs.store.layout import (
    DIRS,
    STORE_FILE,
    StoreConfig,
    StorePaths,
    default_root,
    make_dirs,
    read_store_config,
    write_store_config,
)
from layerfs.store.locks import FileLock
from layerfs.store.names import check_image_name
from layerfs.store.records import (
    ImageRecord,
    LayerRecord,
    image_record_path,
    list_container_refs,
    list_image_records,
    read_image_record,
    read_layer_record,
)
from layerfs.store.refs import image_users
from layerfs.store.session import Session, start_session
from layerfs.store.shield import shielded
from layerfs.store.zfsbackend import ZfsBackend

_ID_RE = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")
# What may already be in a root that a concurrent first use is initialising.
_SKELETON = frozenset({*DIRS, "lock", STORE_FILE})


def open_backend(paths: StorePaths, config: StoreConfig) -> LayerBackend:
    """The backend ``config`` names; `StoreError` for one this layerctl cannot use."""
    if config.backend == "dir":
        return DirBackend(paths, config)
    if config.backend == "zfs":
        return ZfsBackend(paths, config)
    raise StoreError(
        f"{paths.config}: unknown backend {config.backend!r} (known: {', '.join(BACKEND_NAMES)})"
    )


class Store:
    """An open layer store."""

    def __init__(self, paths: StorePaths, config: StoreConfig, backend: LayerBackend) -> None:
        self.paths = paths
        self.config = config
        self.backend = backend
        self.blobs = BlobStore(paths)

    @classmethod
    def open(
        cls, root: str | None = None, *, create: bool = False, config: StoreConfig | None = None
    ) -> Store:
        """The store at ``root`` (default: `default_root`).

        With ``create``, a missing store is made, with ``config`` (default: the dir backend);
        an existing one must then have the same backend. Without it, a missing store raises
        `StoreMissingError`.
        """
        paths = StorePaths(os.path.abspath(root or default_root()))
        found = read_store_config(paths)
        if found is None:
            if not create:
                raise StoreMissingError(
                    f"{paths.root}: no layerfs store here (create one with 'layerctl init')"
                )
            found = _initialise(paths, config or StoreConfig())
        elif config is not None and (config.backend, config.options) != (
            found.backend,
            dict(found.options),
        ):
            raise StoreError(
                f"{paths.root}: the store already uses the {found.backend} backend"
                f"{_describe_options(found)}; it cannot be changed to {config.backend}"
                f"{_describe_options(config)}"
            )
        backend = open_backend(paths, found)
        backend.check()
        return cls(paths, found, backend)

    @property
    def root(self) -> str:
        return self.paths.root

    # -- locking -------------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The store lock, for a short critical section that changes records (not re-entrant)."""
        with FileLock(self.paths.lock):
            yield

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A private workspace in ``tmp/``, freed on exit."""
        session = None
        try:
            with shielded(), self.lock():  # the interrupt comes once `session` is set
                session = start_session(self.paths, self.backend)
            yield session
        finally:
            if session is not None:
                session.close()

    # -- images --------------------------------------------------------------------------------

    def images(self) -> list[ImageRecord]:
        """Every image record, by name."""
        return list_image_records(self.paths)

    def find_images(self, ref: str) -> list[ImageRecord]:
        """The records ``ref`` names: a name, or an image ID (``sha256:`` optional, 4+ hex
        digits of its start). Several when one ID has several names."""
        try:
            record = read_image_record(self.paths, check_image_name(ref))
        except StoreError:
            record = None
        if record is not None:
            return [record]
        m = _ID_RE.fullmatch(ref)
        if m is None:
            return []
        found = [r for r in self.images() if split_digest(r.id)[1].startswith(m.group(1))]
        ids = sorted({r.id for r in found})
        if len(ids) > 1:
            raise ImageNotFoundError(
                f"image ID {ref!r} is ambiguous: it starts {', '.join(ids)}; give more digits"
            )
        return found

    def find_image(self, ref: str) -> ImageRecord:
        """The record ``ref`` names (the first by name, when one ID has several names)."""
        found = self.find_images(ref)
        if not found:
            raise ImageNotFoundError(f"no image {ref!r} in the store at {self.root}")
        return found[0]

    def remove_image(self, ref: str) -> ImageRecord:
        """Delete the record ``ref`` names; its layers and blobs stay until `gc`.

        Refused (`InUseError`) while a container uses the image, or when ``ref`` is an ID that
        several names share.
        """
        with self.lock():
            found = self.find_images(ref)
            if not found:
                raise ImageNotFoundError(f"no image {ref!r} in the store at {self.root}")
            if len(found) > 1:
                names = ", ".join(r.name for r in found)
                raise InUseError(
                    f"image {ref!r} has several names ({names}); remove them one by one by name"
                )
            record = found[0]
            users = image_users(record, list_container_refs(self.paths), self.images())
            if users:
                raise InUseError(
                    f"image {record.name!r} is used by container(s) {', '.join(users)}; "
                    "remove them first"
                )
            os.unlink(image_record_path(self.paths, record.name))
            fsync_dir(self.paths.images)
        return record

    def image_config(self, image: ImageRecord) -> ImageConfig:
        """The parsed image config (from its blob, verified)."""
        return parse_config(self.blobs.read(image.config_digest))

    # -- layers --------------------------------------------------------------------------------

    def layer_record(self, chain_id: Digest) -> LayerRecord:
        """``layer.json`` of a published layer."""
        return read_layer_record(self.backend.layer_dir(chain_id))

    def lower_dirs(self, image: ImageRecord) -> list[str]:
        """The image's layer trees, top first: the ``lowerdir=`` of a mount."""
        return [self.backend.diff_dir(c) for c in reversed(image.layers)]


def _initialise(paths: StorePaths, config: StoreConfig) -> StoreConfig:
    """Make a new store at ``paths``; a root holding anything else is refused."""
    try:
        entries = set(os.listdir(paths.root))
    except FileNotFoundError:
        entries = set()
    except NotADirectoryError:
        raise StoreError(f"{paths.root}: not a directory") from None
    strays = {e for e in entries if e not in _SKELETON and not e.startswith(f".{STORE_FILE}.")}
    if strays:
        raise StoreError(
            f"{paths.root}: not a layerfs store (no {STORE_FILE}) and not empty; "
            "choose an empty or new directory"
        )
    if config.backend not in BACKEND_NAMES:
        raise StoreError(f"unknown backend {config.backend!r} (known: {', '.join(BACKEND_NAMES)})")
    # Refuse a backend that cannot work here before making anything; then prepare it (zfs:
    # the datasets), idempotently, as a concurrent first use may be doing the same.
    open_backend(paths, config).initialise()
    make_dirs(paths)
    with FileLock(paths.lock):  # two first uses at once: one writes, both read the same
        found = read_store_config(paths)
        if found is None:
            write_store_config(paths, config)
            found = config
    return found


def _describe_options(config: StoreConfig) -> str:
    if not config.options:
        return ""
    return " (" + ", ".join(f"{k}={v}" for k, v in sorted(config.options.items())) + ")"
