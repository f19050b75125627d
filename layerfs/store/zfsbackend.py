"""The ``zfs`` backend: every layer a ZFS dataset, sealed read-only once published.

Datasets, below the store's dataset (``"zfs_dataset"`` in ``store.json``)::

    <dataset>                 layerfs:store=<root>, com.sun:auto-snapshot=false
      layers/                 mountpoint=none
        <chainid-hex>         mounted on ROOT/layers/<hex>/diff; readonly=on, @sealed,
                              layerfs:chain_id, layerfs:diff_id, com.sun:auto-snapshot=false
      containers/             mountpoint=none; container uppers (`layerfs.store.zfscontainers`)

The layer directory ``layers/<hex>/`` stays on the store's own filesystem and holds the files
the store may rewrite (``layer.json``, ``entries``, ``diff.xattrs``); only ``diff/`` is the
dataset. zfs-fuse has no xattrs, so layers are always unpacked with their xattrs in the sidecar.

Life of a layer:

1. `ZfsBackend.stage` makes ``tmp/<session>/layer-<hex>/`` with a marker naming the dataset
   (before the dataset exists), then creates the dataset mounted on its ``diff/``. It must be
   called with the layer's lock held (`layerfs.store.session.layer_lock`, as
   `layerfs.store.ingest` does): no other process makes the same layer meanwhile, so a dataset
   of that name that is not published is a dead process's, and is destroyed first.
2. `ZfsBackend.publish` (store lock held) seals it: ``readonly=on``, ``layerfs:diff_id``,
   snapshot ``@sealed`` (the snapshot also commits its data to disk); moves its mountpoint to
   ``layers/<hex>/diff`` and the metadata files beside it, ``layer.json`` last: the layer
   exists from that rename on (`LayerBackend.has_layer`), and only then does anything use it.
3. `ZfsBackend.remove_layer` (store lock held) deletes ``layer.json`` (the layer is gone), then
   destroys the dataset, retrying while it is busy, and removes the directory.
4. `ZfsBackend.purge_session` destroys the datasets still mounted in (or marked in) a session:
   a directory is never deleted through a mount.

What a crash leaves is unpublished, so nothing uses it, and `gc` destroys it: a staged dataset
mounted in its dead session (freed with the session), or a sealed one whose move was cut short
(`ZfsBackend.list_layers` lists the layer datasets as well as ``layers/``). `activate` mounts a
layer's dataset again when it is not (after a reboot) before a container mount uses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from layerfs.oci import Digest
from layerfs.store.backend import LayerBackend, StagedLayer
from layerfs.store.durable import fsync_dir, remove_tree
from layerfs.store.errors import StoreError
from layerfs.store.layout import StoreConfig, StorePaths, chain_id_of_dirname, layer_dirname
from layerfs.store.mountinfo import mounts_below, read_mounts
from layerfs.store.records import LAYER_RECORD, read_layer_record
from layerfs.store.unpack import UnpackOptions
from layerfs.store.zfs import (
    DatasetName,
    Zfs,
    ZfsError,
    ZfsExistsError,
    ZfsNotFoundError,
    check_dataset_name,
    pool_of,
)

DATASET_OPTION = "zfs_dataset"
SEALED = "sealed"
STORE_PROPERTY = "layerfs:store"
NO_AUTO_SNAPSHOT = {"com.sun:auto-snapshot": "false"}
# The store's dataset leaves room below it for layers/<128 hex>@sealed and containers/<name>@...
MAX_STORE_DATASET = 100
_MARKER = "zfs-dataset"  # in a staged layer's directory: the dataset made for it
_UNSET = "-"  # what `zfs get` says of a user property that is not set


def store_dataset(paths: StorePaths, config: StoreConfig) -> DatasetName:
    """The store's dataset from its ``store.json``, checked."""
    text = config.options.get(DATASET_OPTION)
    if not text:
        raise StoreError(f"{paths.config}: the zfs backend needs a {DATASET_OPTION!r} (POOL/PATH)")
    return check_dataset_name(text, limit=MAX_STORE_DATASET)


class ZfsBackend(LayerBackend):
    """Layers as datasets below ``<dataset>/layers``, mounted on ``layers/<hex>/diff``."""

    name = "zfs"

    def __init__(self, paths: StorePaths, config: StoreConfig, zfs: Zfs | None = None) -> None:
        super().__init__(paths, config)
        self.dataset = store_dataset(paths, config)
        self.zfs = zfs or Zfs()

    @property
    def layers_dataset(self) -> DatasetName:
        return DatasetName(f"{self.dataset}/layers")

    @property
    def containers_dataset(self) -> DatasetName:
        return DatasetName(f"{self.dataset}/containers")

    def layer_dataset(self, chain_id: Digest) -> DatasetName:
        """``<dataset>/layers/<chainid-hex>``."""
        return DatasetName(f"{self.layers_dataset}/{layer_dirname(chain_id)}")

    # -- the store's datasets ------------------------------------------------------------------

    def initialise(self) -> None:
        """Create the store's dataset (its parent must exist) and ``layers``/``containers``."""
        zfs, ds, root = self.zfs, self.dataset, self.paths.root
        pool = pool_of(ds)
        if not zfs.pool_exists(pool):
            raise ZfsNotFoundError(
                f"zfs dataset {ds}: there is no pool {pool!r} ('zpool list' shows the pools)"
            )
        try:
            owner = zfs.get(ds, STORE_PROPERTY)
        except ZfsNotFoundError:
            parent = ds.rpartition("/")[0]
            if parent and not zfs.exists(parent):
                raise ZfsNotFoundError(
                    f"zfs dataset {ds}: its parent {parent} does not exist "
                    f"(create it first: zfs create -p {parent})"
                ) from None
            self._create_quietly(ds, {"mountpoint": "none", **NO_AUTO_SNAPSHOT})
            owner = _UNSET
        if owner not in (_UNSET, root):
            raise ZfsError(
                f"zfs dataset {ds} holds the store at {owner} already; choose another dataset"
            )
        zfs.set(ds, STORE_PROPERTY, root)
        for sub in (self.layers_dataset, self.containers_dataset):
            self._create_quietly(sub, {"mountpoint": "none", **NO_AUTO_SNAPSHOT})

    def _create_quietly(self, name: DatasetName, props: dict[str, str]) -> None:
        try:
            self.zfs.create(name, props)
        except ZfsExistsError:
            pass  # made by a concurrent init, or by an earlier one

    def check(self) -> None:
        """The store's dataset is there and is this store's (one ``zfs get``)."""
        ds, root = self.dataset, self.paths.root
        try:
            owner = self.zfs.get(ds, STORE_PROPERTY)
        except ZfsNotFoundError:
            pool = pool_of(ds)
            if not self.zfs.pool_exists(pool):
                raise ZfsNotFoundError(
                    f"zfs pool {pool!r} of the store at {root} is not there "
                    f"(import it: zpool import {pool})"
                ) from None
            raise ZfsNotFoundError(
                f"zfs dataset {ds} of the store at {root} does not exist: it held the store's "
                "layers (restore it, or start a new store with 'layerctl init')"
            ) from None
        if owner != root:
            raise ZfsError(
                f"zfs dataset {ds} (named in {self.paths.config}) belongs to the store at "
                f"{owner}, not to {root}"
            )

    def unpack_options(self) -> UnpackOptions:
        return UnpackOptions(xattrs_to_sidecar=True)  # zfs-fuse has no xattrs

    # -- layers --------------------------------------------------------------------------------

    def stage(self, session_dir: str, chain_id: Digest) -> StagedLayer:
        staged = StagedLayer(
            chain_id, os.path.join(session_dir, f"layer-{layer_dirname(chain_id)}")
        )
        dataset = self.layer_dataset(chain_id)
        os.mkdir(staged.path, 0o700)
        with open(os.path.join(staged.path, _MARKER), "w", encoding="utf-8") as f:
            f.write(dataset)
        props = {"mountpoint": staged.diff, "layerfs:chain_id": chain_id, **NO_AUTO_SNAPSHOT}
        try:
            self.zfs.create(dataset, props)
        except ZfsExistsError:
            if self.has_layer(chain_id):
                raise StoreError(f"layer {chain_id} is in the store already") from None
            self.zfs.destroy(dataset, recursive=True, missing_ok=True)  # a dead process's
            self.zfs.create(dataset, props)
        os.chmod(staged.diff, 0o755)  # as the dir backend; a tar's root entry may change it
        return staged

    def publish(self, staged: StagedLayer) -> bool:
        chain_id = staged.chain_id
        if self.has_layer(chain_id):
            self.discard(staged)
            return False
        dataset = self.layer_dataset(chain_id)
        record = read_layer_record(staged.path)
        self.zfs.set(dataset, "readonly", "on")
        self.zfs.set(dataset, "layerfs:diff_id", record.diff_id)
        self.zfs.snapshot(dataset, SEALED)
        target = self.layer_dir(chain_id)
        _remove_dir(target)  # an unpublished leftover: its dataset was destroyed by `stage`
        os.mkdir(target, 0o700)
        self.zfs.set_mountpoint(dataset, os.path.join(target, "diff"))
        names = [n for n in os.listdir(staged.path) if n not in ("diff", _MARKER)]
        for name in sorted(names, key=lambda n: (n == LAYER_RECORD, n)):  # layer.json last
            os.rename(os.path.join(staged.path, name), os.path.join(target, name))
        fsync_dir(target)
        fsync_dir(self.paths.layers)
        _remove_dir(staged.path)
        return True

    def discard(self, staged: StagedLayer) -> None:
        if not self.has_layer(staged.chain_id):  # ours (see `stage`), wherever publish left it
            self.zfs.destroy(self.layer_dataset(staged.chain_id), recursive=True, missing_ok=True)
            _remove_dir(self.layer_dir(staged.chain_id))
        _remove_dir(staged.path)

    def remove_layer(self, chain_id: Digest, session_dir: str) -> None:
        target = self.layer_dir(chain_id)
        try:
            os.unlink(os.path.join(target, LAYER_RECORD))
            fsync_dir(target)
        except FileNotFoundError:
            pass
        self.zfs.destroy(self.layer_dataset(chain_id), recursive=True, missing_ok=True)
        if os.path.lexists(target):
            _remove_dir(target)
            fsync_dir(self.paths.layers)

    def purge_session(self, session_dir: str) -> None:
        done: set[str] = set()
        prefix = self.layers_dataset + "/"
        for mount in mounts_below(session_dir):
            if mount.source.startswith(prefix):
                self.zfs.destroy(DatasetName(mount.source), recursive=True, missing_ok=True)
                done.add(mount.source)
        for dataset in _markers(session_dir):
            if dataset in done or not dataset.startswith(prefix):
                continue
            try:
                mountpoint = self.zfs.get(dataset, "mountpoint")
            except ZfsNotFoundError:
                continue
            if _within(mountpoint, session_dir):  # else it was published, or is another's
                self.zfs.destroy(dataset, recursive=True, missing_ok=True)
        _remove_dir(session_dir)

    def list_layers(self) -> list[Digest]:
        """``layers/`` entries and layer datasets, but not those being staged in live sessions."""
        found = set(super().list_layers())
        rows = self.zfs.list_properties(self.layers_dataset, ("name", "mountpoint"))
        for name, mountpoint in (r[:2] for r in rows[1:] if len(r) >= 2):
            chain_id = chain_id_of_dirname(name.rpartition("/")[2])
            if chain_id is None:
                continue
            if _within(mountpoint, self.paths.tmp):
                session = mountpoint[len(self.paths.tmp) + 1 :].split("/", 1)[0]
                if os.path.isdir(os.path.join(self.paths.tmp, session)):
                    continue  # its session frees it
            found.add(chain_id)
        return sorted(found)

    def activate(self, chain_ids: Sequence[Digest]) -> None:
        mounted = {m.mountpoint for m in read_mounts()}
        for chain_id in chain_ids:
            if self.diff_dir(chain_id) in mounted:
                continue
            dataset = self.layer_dataset(chain_id)
            try:
                self.zfs.mount(dataset)
            except ZfsNotFoundError:
                raise ZfsNotFoundError(
                    f"layer {chain_id}: its dataset {dataset} is missing "
                    "('layerctl fsck' lists what else is)"
                ) from None


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _markers(session_dir: str) -> list[DatasetName]:
    out = []
    try:
        entries = sorted(os.listdir(session_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            with open(os.path.join(session_dir, entry, _MARKER), encoding="utf-8") as f:
                out.append(DatasetName(f.read().strip()))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out


def _remove_dir(path: str) -> None:
    """Remove ``path`` unless something is mounted in it: then a `ZfsError` says what."""
    mounts = mounts_below(path)
    if mounts:
        raise ZfsError(
            f"{mounts[0].mountpoint}: {mounts[0].source} is still mounted there; "
            "unmount it, then run 'layerctl gc'"
        )
    remove_tree(path)
