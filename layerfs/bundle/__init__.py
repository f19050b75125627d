"""Image config → OCI runtime bundle ``config.json`` (the image-spec's conversion rules).

This package turns an :class:`~layerfs.oci.ImageConfig` into the runtime-spec
1.x configuration runc, crun and LXC run. It may import ``layerfs.oci`` only —
never ``layerfs.fs``, ``layerfs.store`` or ``layerfs.cli`` — and it mounts
nothing; the caller provides the rootfs. Three steps, each usable alone::

    user = resolve_user(image.config.user, bundle / "rootfs")   # reads passwd/group safely
    config = runtime_config(image, user=user, tty=False, hostname=name)  # pure, no I/O
    write_bundle_config(bundle, config)                          # atomic config.json, 0644

- :func:`resolve_user` (:mod:`.user`) resolves ``User`` in every form against
  the image's ``/etc/passwd`` and ``/etc/group``, read through
  :func:`read_rootfs_file` (:mod:`.rootfs`), which resolves symlinks inside the
  untrusted rootfs and never opens anything outside it.
- :func:`runtime_config` (:mod:`.runtime`) is the conversion; defaults that no
  image carries come from :mod:`.defaults` (runc's), annotations from
  :mod:`.annotations`.
- :func:`write_bundle_config` (:mod:`.write`) writes the result.

Every deliberate failure is a :class:`BundleError` (a ``ValueError``) whose
message names the field, user, group or file at fault.
"""

from __future__ import annotations

from layerfs.bundle.annotations import implicit_annotations, runtime_annotations
from layerfs.bundle.defaults import DEFAULT_PATH, OCI_VERSION
from layerfs.bundle.errors import BundleError
from layerfs.bundle.rootfs import ImageFileReader, read_rootfs_file, rootfs_reader
from layerfs.bundle.runtime import runtime_config
from layerfs.bundle.user import ROOT, ResolvedUser, resolve_user
from layerfs.bundle.write import CONFIG_NAME, write_bundle_config

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_PATH",
    "OCI_VERSION",
    "ROOT",
    "BundleError",
    "ImageFileReader",
    "ResolvedUser",
    "implicit_annotations",
    "read_rootfs_file",
    "resolve_user",
    "rootfs_reader",
    "runtime_annotations",
    "runtime_config",
    "write_bundle_config",
]
