"""The layer backend interface: where a layer's tree lives, and how it appears atomically.

A layer is the directory ``layers/<chainid-hex>/`` (`StorePaths.layer_dir`). The store owns the
metadata files in it (``layer.json``, ``entries``, ``diff.xattrs``) and may rewrite them; the
backend owns ``diff/``, the unpacked tree that becomes a lowerdir of the union filesystem and is
never changed once published. A layer exists when its ``layer.json`` does.

Life of a layer, driven by the store:

1. `LayerBackend.stage` makes a private, empty layer directory with an empty ``diff/`` inside the
   caller's session directory (``tmp/<session>/``), which only the caller uses.
2. The store unpacks into ``diff/`` and writes the metadata beside it.
3. `LayerBackend.publish` (store lock held) moves it to ``layers/<hex>`` in one atomic step; if
   the layer is already there (another process published it first) ours is discarded.
4. `LayerBackend.remove_layer` (store lock held) takes a layer out of ``layers/`` atomically,
   possibly by moving it into the caller's session directory;
   `LayerBackend.purge_session` then frees everything the backend put in a session directory
   (also what a dead process left behind, found by `gc`).

Backends: ``dir`` (`layerfs.store.dirs`, plain directories) is the default; ``zfs``
(`layerfs.store.zfsbackend`: a dataset per layer, mounted on ``diff/``, sealed read-only with a
snapshot at publish) keeps layer trees in ZFS.
The store records its backend in ``store.json`` when it is created; every command uses it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from layerfs.oci import Digest
from layerfs.store.layout import StoreConfig, StorePaths, chain_id_of_dirname
from layerfs.store.records import LAYER_RECORD
from layerfs.store.unpack import UnpackOptions

BACKEND_NAMES = ("dir", "zfs")


@dataclass(frozen=True)
class StagedLayer:
    """A layer being made: private to its session until published."""

    chain_id: Digest
    path: str  # the layer directory: metadata files go here

    @property
    def diff(self) -> str:
        """The tree to unpack into."""
        return os.path.join(self.path, "diff")


class LayerBackend(abc.ABC):
    """Where layer trees live; one instance per open store."""

    name: ClassVar[str]

    def __init__(self, paths: StorePaths, config: StoreConfig) -> None:
        self.paths = paths
        self.config = config

    def initialise(self) -> None:  # noqa: B027 - the dir backend needs nothing
        """Prepare what a new store needs outside its root (zfs: the datasets); by ``init``,
        before ``store.json`` is written. Must be idempotent."""

    def check(self) -> None:  # noqa: B027 - the dir backend needs nothing
        """Raise `StoreError` when the backend cannot work here (e.g. its dataset is gone)."""

    def activate(self, chain_ids: Sequence[Digest]) -> None:  # noqa: B027 - dirs always are
        """Make the published layers' trees reachable at `diff_dir` before a mount uses them
        (zfs: mount the datasets that are not, e.g. after a reboot)."""

    def unpack_options(self) -> UnpackOptions:
        """How layers are unpacked onto this backend (e.g. xattrs to the sidecar)."""
        return UnpackOptions()

    def layer_dir(self, chain_id: Digest) -> str:
        """``layers/<hex>``: the published layer's directory."""
        return self.paths.layer_dir(chain_id)

    def diff_dir(self, chain_id: Digest) -> str:
        """``layers/<hex>/diff``: the lowerdir for the union filesystem."""
        return os.path.join(self.layer_dir(chain_id), "diff")

    def has_layer(self, chain_id: Digest) -> bool:
        """Whether the layer is published."""
        return os.path.exists(os.path.join(self.layer_dir(chain_id), LAYER_RECORD))

    def list_layers(self) -> list[Digest]:
        """The ChainIDs of every entry of ``layers/`` (published or not: gc removes strays)."""
        try:
            names = os.listdir(self.paths.layers)
        except FileNotFoundError:
            return []
        found = (chain_id_of_dirname(n) for n in sorted(names))
        return [c for c in found if c is not None]

    @abc.abstractmethod
    def stage(self, session_dir: str, chain_id: Digest) -> StagedLayer:
        """A new, empty, private layer directory with an empty ``diff/``, in ``session_dir``."""

    @abc.abstractmethod
    def publish(self, staged: StagedLayer) -> bool:
        """Make ``staged`` the layer ``staged.chain_id`` atomically (store lock held).

        Returns False, having discarded ``staged``, when the layer was already there.
        """

    @abc.abstractmethod
    def discard(self, staged: StagedLayer) -> None:
        """Throw away an unpublished layer."""

    @abc.abstractmethod
    def remove_layer(self, chain_id: Digest, session_dir: str) -> None:
        """Take the layer out of the store atomically (store lock held).

        The backend may move it into ``session_dir`` and free it in `purge_session`, so that
        the lock is held only for a rename.
        """

    @abc.abstractmethod
    def purge_session(self, session_dir: str) -> None:
        """Free everything in ``session_dir``, including ``session_dir`` itself."""
