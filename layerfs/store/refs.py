"""Reference counting by derivation: what keeps a layer or a blob alive.

There are no counters to drift. A layer or blob is in use when an image record, a container
record or a live session's pins names it; `collect_references` computes that set from the
records themselves, with the store lock held so that no record changes meanwhile. `gc` removes
what is not in it, and a failed pull rolls back only what is not in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from layerfs.oci import Digest
from layerfs.store.layout import StorePaths
from layerfs.store.records import (
    ContainerRef,
    ImageRecord,
    list_container_refs,
    list_image_records,
)
from layerfs.store.session import Pins


@dataclass(frozen=True)
class References:
    """Every layer (ChainID) and blob something in the store still needs."""

    layers: frozenset[Digest]
    blobs: frozenset[Digest]


def collect_references(paths: StorePaths, pins: Pins) -> References:
    """What images, containers and ``pins`` reference (store lock held).

    Raises `StoreDamagedError` when a record cannot be read: nothing may be removed then.
    """
    layers: set[Digest] = set(pins.layers)
    blobs: set[Digest] = set(pins.blobs)
    for image in list_image_records(paths):
        layers.update(image.layers)
        blobs.update(image.blobs)
    for container in list_container_refs(paths):
        layers.update(container.layers)
        blobs.update(container.blobs)
    return References(frozenset(layers), frozenset(blobs))


def image_users(
    image: ImageRecord, containers: Sequence[ContainerRef], images: Sequence[ImageRecord]
) -> list[str]:
    """The containers that use ``image``, among all ``images`` of the store.

    A container names its image by name, ID (config digest) or manifest digest; by digest it
    uses ``image`` only when no other name of the same image would remain.
    """
    others = [i for i in images if i.name != image.name and i.id == image.id]
    users = []
    for c in containers:
        by_digest = c.image in (image.id, image.manifest_digest) and not others
        if c.image == image.name or by_digest:
            users.append(c.name)
    return users
