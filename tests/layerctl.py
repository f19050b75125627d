"""Test helpers for layerctl: run it in-process or as a process, and fingerprint a store."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from layerfs.cli.layerctl import main

LAYERCTL = [sys.executable, "-m", "layerfs.cli.launch"]  # as the installed script runs


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def layerctl(root: Path, *args: str) -> Run:
    """``layerctl --root ROOT ARGS...`` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--root", str(root), *args])
    return Run(code, out.getvalue(), err.getvalue())


def spawn(root: Path, *args: str) -> subprocess.Popen[str]:
    """``layerctl --root ROOT ARGS...`` as a child process (stdout and stderr piped)."""
    return subprocess.Popen(
        [*LAYERCTL, "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fingerprint(root: Path) -> dict[str, str]:
    """Every path below ``root`` with its type, mode, owner and content (not times)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            desc = f"{stat.filemode(st.st_mode)} {st.st_uid}:{st.st_gid}"
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    desc += " " + hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                desc += " -> " + os.readlink(path)
            out[os.path.relpath(path, root)] = desc
    return out


def remove_all_containers(store: Path) -> None:
    """Whatever a test left in ``store``: unmount and remove it through layerctl itself."""
    if (store / "containers").exists():
        layerctl(store, "umount", "--all")
        for c in os.listdir(store / "containers"):
            layerctl(store, "rm", "--force", c)


def runc_run(bundle: str, cid: str) -> subprocess.CompletedProcess[str]:
    """``runc run`` of a bundle, always deleted afterwards."""
    try:
        return subprocess.run(
            ["runc", "run", "--bundle", bundle, cid],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True, check=False)
