"""The layer store: verified, safe, shared unpacking of OCI layers; image records; gc and fsck.

It may use ``layerfs.oci`` (to read images) and, from ``layerfs.fs``, the on-disk formats of
the union (the xattr sidecar, whiteouts, the metadata database, read by `commit`) and its
daemon (`containers` mounts rootfs with it); it must not import ``layerfs.cli`` or
``layerfs.bundle``, and it prints nothing: the
CLI words and shows what it returns or raises (`errors.StoreError` and ``layerfs.oci``'s
`OCIError` are user errors, anything else is a bug).

The API, by module:

- `store.Store` — ``Store.open(root, create=False, config=None)``; ``find_image(ref)``,
  ``images()``, ``remove_image(ref)``, ``image_config(record)``, ``lower_dirs(record)`` (the
  ``lowerdir=`` list, top first), ``layer_record(chain_id)``; ``lock()`` (short critical
  sections that change records) and ``session()`` (a private workspace in ``tmp/``).
- `pull.pull_image(store, source, PullOptions(name, platform), progress)` -> `pull.PullResult`.
- `gc.collect_garbage(store)` -> `gc.GCResult`; `fsck.check_store(store)` -> problem lines.
- `backend.LayerBackend` — what a backend implements (`dirs.DirBackend` is the default,
  `zfsbackend.ZfsBackend` a dataset per layer); `store.open_backend` chooses one from
  ``store.json``. `zfs.Zfs` runs ZFS commands by dataset name; `zfscontainers` keeps
  container uppers in datasets (quota, snapshot, rollback).
- `records` — the JSON records (`records.ImageRecord`, `records.LayerRecord`, container refs);
  `refs.collect_references` derives what is in use; `layout.StorePaths` names every path.
- `unpack.unpack_layer` and `entries` — extraction of one layer tar and its entry manifest.
- `containers` — containers and image mounts (records, rootfs mounts, lifecycle);
  `commit.commit_container` and `push.push_image` — a container's upper as a new image, and
  images written out to layouts, archives and registries.

The on-disk layout is described in `layout`; locking and crash safety in `session` and `locks`.
"""
