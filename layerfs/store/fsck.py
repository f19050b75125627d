"""fsck: check every layer against the manifest made when it was unpacked, and every record.

`check_store` returns one line per problem, each naming what is wrong and where:

- every entry of every layer that changed (type, mode, owner, size, contents re-hashed with
  xxh3-128, symlink target, device, hard-link identity), vanished, or appeared
  (`layerfs.store.entries.verify_entries`); a ``layer.json``, ``entries`` or xattr sidecar that
  cannot be read;
- every blob whose content no longer hashes to its name;
- every image or container record that cannot be read, or names a layer or blob that is missing.

It takes no lock (layers never change once published); a layer that ``gc`` removes while it is
being checked is skipped. Owners and setuid bits are compared only where the unpack applied them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from layerfs.fs.sidecar import SidecarError, load_sidecar
from layerfs.oci import Digest
from layerfs.store.entries import EntriesError, read_entries, verify_entries
from layerfs.store.errors import StoreDamagedError
from layerfs.store.records import ENTRIES_FILE, list_container_refs, list_image_records
from layerfs.store.store import Store

Progress = Callable[[str], None]


def check_store(store: Store, *, progress: Progress | None = None) -> list[str]:
    """Every problem found in ``store``; an empty list when it is intact."""
    problems = _check_records(store)
    for chain_id in store.backend.list_layers():
        if progress is not None:
            progress(f"layer {chain_id}")
        problems += [f"layer {chain_id}: {p}" for p in _check_layer(store, chain_id)]
    for digest in store.blobs.list():
        if progress is not None:
            progress(f"blob {digest}")
        problem = store.blobs.check(digest)
        if problem is not None:
            problems.append(problem)
    return problems


def _check_records(store: Store) -> list[str]:
    problems = []
    try:
        images = list_image_records(store.paths)
    except StoreDamagedError as exc:
        return [str(exc)]
    for image in images:
        for chain_id in image.layers:
            if not store.backend.has_layer(chain_id):
                problems.append(f"image {image.name}: layer {chain_id} is missing")
        for digest in image.blobs:
            if not store.blobs.has(digest):
                problems.append(f"image {image.name}: blob {digest} is missing")
    try:
        containers = list_container_refs(store.paths)
    except StoreDamagedError as exc:
        return [*problems, str(exc)]
    for container in containers:
        for chain_id in container.layers:
            if not store.backend.has_layer(chain_id):
                problems.append(f"container {container.name}: layer {chain_id} is missing")
    return problems


def _check_layer(store: Store, chain_id: Digest) -> list[str]:
    layer_dir = store.backend.layer_dir(chain_id)
    diff = store.backend.diff_dir(chain_id)
    try:
        record = store.layer_record(chain_id)
        entries = read_entries(os.path.join(layer_dir, ENTRIES_FILE))
        load_sidecar(diff)
        if record.chain_id != chain_id:
            return [f"layer.json names another layer ({record.chain_id})"]
        return verify_entries(diff, entries, owners=record.owners_applied)
    except FileNotFoundError as exc:
        if not os.path.exists(layer_dir):
            return []  # removed by a gc meanwhile
        return [f"{os.path.relpath(exc.filename or layer_dir, layer_dir)}: missing"]
    except (StoreDamagedError, EntriesError, SidecarError) as exc:
        return [str(exc)]
    except OSError as exc:  # one layer that cannot be checked must not stop the check of the rest
        where = os.fsdecode(exc.filename) if exc.filename is not None else layer_dir
        return [f"{os.path.relpath(where, layer_dir)}: cannot be checked: {exc.strerror or exc}"]
