"""Garbage collection: remove layers and blobs nothing references, and what dead processes left.

With the store lock held, `collect_garbage` derives the references (`layerfs.store.refs`) from
image and container records and live sessions' pins; frees dead sessions and orphaned lock files
in ``tmp/`` and the temporary files of interrupted record updates; takes every unreferenced layer
out of ``layers/`` (a rename into its own session) and deletes unreferenced blobs. The removed
layers' trees are deleted after the lock is released, so concurrent pulls wait only for the
renames. A record that cannot be read stops gc before anything is removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from layerfs.oci import Digest
from layerfs.store.durable import is_temp_name
from layerfs.store.refs import collect_references
from layerfs.store.session import live_pins, sweep_tmp
from layerfs.store.store import Store


@dataclass(frozen=True)
class GCResult:
    """What one gc run removed."""

    layers: tuple[Digest, ...]
    blobs: tuple[Digest, ...]
    leftovers: int  # entries of tmp/ and temporary files left by processes that died
    bytes_freed: int  # blob bytes plus the recorded file data of the layers


def collect_garbage(store: Store) -> GCResult:
    """Remove everything in ``store`` that nothing uses."""
    layers: list[Digest] = []
    blobs: list[Digest] = []
    freed = 0
    with store.session() as session, store.lock():
        refs = collect_references(store.paths, live_pins(store.paths, exclude=session))
        leftovers = sweep_tmp(store.paths, store.backend, keep=session)
        leftovers += _sweep_temp_files(store)
        for chain_id in store.backend.list_layers():
            if chain_id in refs.layers:
                continue
            try:
                freed += store.layer_record(chain_id).size
            except (OSError, ValueError):
                pass  # a damaged layer goes all the same; its size is unknown
            store.backend.remove_layer(chain_id, session.path)
            layers.append(chain_id)
        for digest in store.blobs.list():
            if digest not in refs.blobs:
                freed += store.blobs.remove(digest)
                blobs.append(digest)
    return GCResult(tuple(layers), tuple(blobs), leftovers, freed)


def _sweep_temp_files(store: Store) -> int:
    """Remove what crashed atomic updates left: hidden ``.NAME.*.tmp`` files beside records.

    Records change only with the store lock held, which gc holds: none is being written now.
    """
    dirs = [store.paths.images, *(store.backend.layer_dir(c) for c in store.backend.list_layers())]
    removed = 0
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if is_temp_name(name):
                os.unlink(os.path.join(directory, name))
                removed += 1
    return removed
