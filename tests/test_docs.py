"""Man pages: groff finds nothing to warn about, and every flag the parsers define is documented."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from layerfs.cli.layerctl import _parser as layerctl_parser
from layerfs.cli.layerfs import _parser as layerfs_parser

MAN = Path(__file__).resolve().parent.parent / "man"
PAGES = ["layerfs.1", "layerctl.1", "mount.layerfs.8", "layerfs-store.5"]


@pytest.mark.parametrize("page", PAGES)
def test_groff_has_no_warnings(page: str) -> None:
    r = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(MAN / page)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr


def _flags(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Every option string, by the (sub)command that defines it."""
    out: dict[str, set[str]] = {"": set()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = {o for a in sub._actions for o in a.option_strings}
        else:
            out[""].update(action.option_strings)
    return out


def _text(page: str) -> str:
    # roff escapes a minus as \- : undo it to search for flags as users type them.
    return (MAN / page).read_text().replace("\\-", "-")


def test_every_layerctl_flag_and_command_documented() -> None:
    text = _text("layerctl.1")
    for command, flags in _flags(layerctl_parser()).items():
        if command:
            assert re.search(
                rf"\\fB{re.escape(command)}\\fR|^\.B {re.escape(command)}$", text, re.M
            ), f"command {command} not in layerctl.1"
        for flag in flags:
            assert flag in text, f"layerctl {command} {flag} not in layerctl.1"


def test_every_layerfs_flag_and_option_documented() -> None:
    text = _text("layerfs.1")
    for flag in _flags(layerfs_parser())[""]:
        assert flag in text, f"layerfs {flag} not in layerfs.1"
    for opt in (
        "lowerdir",
        "upperdir",
        "workdir",
        "ro",
        "volatile",
        "fsync",
        "timeout",
        "noxattrs",
        "uidmapping",
        "gidmapping",
        "squash_to_root",
        "squash_to_uid",
        "squash_to_gid",
        "allow_other",
        "allow_root",
        "default_permissions",
        "nosuid",
        "nodev",
        "noexec",
        "noatime",
        "fsname",
        "whiteout",
    ):
        assert opt in text, f"mount option {opt} not in layerfs.1"
