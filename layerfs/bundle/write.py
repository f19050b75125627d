"""Writing a bundle's ``config.json``: atomically, durably, world-readable.

The file is written to a temporary name in the bundle directory, fsync'd,
renamed over ``config.json`` and the directory fsync'd: a runtime (or a crash)
sees the old file or the new one, never a torn one. Mode 0644, as ``runc
spec`` leaves it: the config holds no secrets and tools inspect it unprivileged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from layerfs.bundle.rootfs import StrPath

CONFIG_NAME = "config.json"


def write_bundle_config(bundle_dir: StrPath, config: Mapping[str, Any]) -> Path:
    """Write ``config`` as ``bundle_dir/config.json``; returns that path.

    ``bundle_dir`` must exist. Values must be JSON-serialisable (``TypeError``
    otherwise, before anything is written).
    """
    data = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    bundle = Path(bundle_dir)
    target = bundle / CONFIG_NAME
    fd, tmp_name = tempfile.mkstemp(dir=bundle, prefix=f".{CONFIG_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it 0600
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(bundle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target
