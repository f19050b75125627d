"""The ``dir`` backend: every layer a plain directory on the store's own filesystem.

Staging is ``tmp/<session>/layer-<hex>/``; publishing is one ``rename(2)`` into ``layers/``
(same filesystem, so atomic), followed by an fsync of ``layers/``. Removing renames the layer
into the caller's session directory, which is deleted once the store lock is released.

Durability: the store calls ``syncfs`` on the staged tree before publishing it, so a crash never
leaves a published layer whose files were not yet written out.
"""

from __future__ import annotations

import os

from layerfs.oci import Digest
from layerfs.store.backend import LayerBackend, StagedLayer
from layerfs.store.durable import fsync_dir, remove_tree
from layerfs.store.layout import layer_dirname


class DirBackend(LayerBackend):
    """Layers as directories below ``layers/``."""

    name = "dir"

    def stage(self, session_dir: str, chain_id: Digest) -> StagedLayer:
        path = os.path.join(session_dir, f"layer-{layer_dirname(chain_id)}")
        staged = StagedLayer(chain_id, path)
        os.mkdir(staged.path, 0o700)
        os.mkdir(staged.diff)
        os.chmod(staged.diff, 0o755)  # whatever the umask; a tar's root entry may change it
        return staged

    def publish(self, staged: StagedLayer) -> bool:
        target = self.layer_dir(staged.chain_id)
        if os.path.lexists(target):
            self.discard(staged)
            return False
        os.rename(staged.path, target)
        fsync_dir(self.paths.layers)
        return True

    def discard(self, staged: StagedLayer) -> None:
        remove_tree(staged.path)

    def remove_layer(self, chain_id: Digest, session_dir: str) -> None:
        source = self.layer_dir(chain_id)
        if not os.path.lexists(source):
            return
        os.rename(source, os.path.join(session_dir, f"removed-{layer_dirname(chain_id)}"))
        fsync_dir(self.paths.layers)

    def purge_session(self, session_dir: str) -> None:
        remove_tree(session_dir)
