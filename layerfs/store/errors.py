"""Exceptions raised by the layer store on purpose.

All of them are user errors (a missing image, an image in use, a store that is not one), never
bugs: the CLI prints their message as one line. Messages name the input at fault.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class StoreMissingError(StoreError):
    """There is no store at the root asked for (and the command does not create one)."""


class ImageNotFoundError(StoreError):
    """No image record matches the name or ID given."""


class InUseError(StoreError):
    """An image cannot be removed: a container (or a mount) uses it."""


class StoreDamagedError(StoreError):
    """A record or metadata file in the store cannot be read; `layerctl fsck` says more."""
