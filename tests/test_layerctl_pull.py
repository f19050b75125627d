"""``layerctl pull`` of real images built with umoci and skopeo.

One feature image (busybox, then layers with whiteouts, an opaque directory, hard links,
symlinks, setuid/setgid, owners, a device, a fifo and xattrs including ``security.capability``)
is pulled from all three transports, mounted with layerfs and compared with ``umoci unpack``.
Also: multi-platform indexes, the progress display, and concurrent pulls sharing layers.
"""

from __future__ import annotations

import json
import os
import pty
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerfs.store.dirs import DirBackend
from layerfs.store.pull import pull_image
from layerfs.store.store import Store
from layerfs.store.unpack import UnpackOptions
from tests.images import (
    WHITEOUT,
    Device,
    Dir,
    Fifo,
    File,
    Hardlink,
    ImageConfigSpec,
    LayerSpec,
    Symlink,
    build_image,
    hand_image,
    have_tools,
    layer_tar,
    make_index,
    to_docker_archive,
    to_oci_archive,
    umoci_unpack,
)
from tests.layerctl import LAYERCTL, layerctl, spawn
from tests.mounts import diff_snapshots, layerfs, snapshot

# A v2 file capability: cap_net_bind_service, permitted + effective.
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
XATTR_FILES = ("usr/bin/ping", "opt/tagged", "home/u/.profile")

LAYERS: list[LayerSpec] = [
    {
        "etc/hello": "hello\n",
        "etc/hl": Hardlink("etc/hello"),
        "etc/link": Symlink("hello"),
        "etc/motd": "first\n",
        "etc/gone": "bye\n",
        "bin/su": File(b"#!/bin/sh\n", mode=0o4755),
        "bin/sg": File(b"#!/bin/sh\n", mode=0o2755, gid=42),
        "usr/bin/ping": File(
            b"ping", mode=0o755, xattrs={"security.capability": CAPABILITY, "user.note": b"n"}
        ),
        "opt/tagged": Dir(mode=0o750, xattrs={"user.dir": b"\x00\xffbinary"}),
        "home/u": Dir(mode=0o700, uid=1000, gid=1000),
        "home/u/.profile": File("export A=1\n", uid=1000, gid=1000, xattrs={"user.x": b"1"}),
        "var/cache/a": "a",
        "var/cache/sub/b": "b",
        "dev/null": Device("c", 1, 3, mode=0o666),
        "run/fifo": Fifo(mode=0o600),
        "tmp": Dir(mode=0o1777),
    },
    {
        "etc/gone": WHITEOUT,
        "etc/motd": "second\n",
        "var/cache": Dir(opaque=True),
        "var/cache/new": "n",
        "usr/lib/data": "shared inode\n",
        "usr/lib/data2": Hardlink("usr/lib/data"),
        "lib64": Symlink("usr/lib"),
    },
    {
        "home/u": Dir(mode=0o700, uid=1000, gid=1000),  # or the parent added for the whiteout
        "home/u/.profile": WHITEOUT,
        "usr/share/empty": Dir(mode=0o555),
    },
]
CONFIG = ImageConfigSpec(cmd=["/bin/sh"], env=["FOO=bar"], user="1000", workdir="/home/u")


@dataclass(frozen=True)
class Built:
    layout: Path
    oci_archive: Path
    docker_archive: Path
    rootfs: Path  # umoci unpack of the image


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    missing = have_tools()
    if missing:
        pytest.skip(f"{missing} is not installed")
    work = tmp_path_factory.mktemp("feature")
    layout = build_image(work / "img", LAYERS, tag="v1", config=CONFIG)
    return Built(
        layout=layout,
        oci_archive=to_oci_archive(layout, "v1", work / "img.oci.tar"),
        docker_archive=to_docker_archive(layout, "v1", work / "img.docker.tar", "example/img:v1"),
        rootfs=umoci_unpack(layout, "v1", work / "bundle"),
    )


def inspect(root: Path, image: str) -> dict[str, object]:
    run = layerctl(root, "inspect", image, "--json")
    assert run.code == 0, run.err
    doc: dict[str, object] = json.loads(run.out)
    return doc


def layer_state(root: Path) -> dict[str, tuple[int, str]]:
    """Each layer's diff inode and unpack time: unchanged means not unpacked again."""
    out = {}
    for name in os.listdir(root / "layers"):
        record = json.loads((root / "layers" / name / "layer.json").read_text())
        out[name] = (os.stat(root / "layers" / name / "diff").st_ino, record["unpacked"])
    return out


def xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path)}


def test_mount_of_pulled_layers_equals_umoci_unpack(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "store"
    run = layerctl(root, "pull", f"oci:{built.layout}:v1", "--name", "feature")
    assert (run.code, run.err) == (0, "")
    assert "4 layers, 4 unpacked" in run.out
    lower = str(inspect(root, "feature")["lowerdir"]).split(":")
    assert len(lower) == 4 and all(p.startswith(str(root / "layers")) for p in lower)
    mnt = tmp_path / "mnt"
    with layerfs(mnt, [Path(p) for p in lower]):
        merged = snapshot(mnt)
        merged_xattrs = {f: xattrs(mnt / f) for f in XATTR_FILES if (mnt / f).exists()}
    reference = snapshot(built.rootfs)
    assert diff_snapshots(merged, reference) == []
    assert "etc/gone" not in merged and "var/cache/a" not in merged
    assert merged["bin/su"].mode == 0o4755 and merged["home/u"].uid == 1000
    assert merged["usr/lib/data"].group == merged["usr/lib/data2"].group != -1
    assert merged_xattrs == {f: xattrs(built.rootfs / f) for f in XATTR_FILES if f in merged}
    assert merged_xattrs["usr/bin/ping"]["security.capability"] == CAPABILITY


def test_three_transports_give_one_image_unpacked_once(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = layerctl(root, "pull", f"oci:{built.layout}:v1", "--name", "img:v1")
    assert first.code == 0 and "4 unpacked" in first.out
    state = layer_state(root)
    second = layerctl(root, "pull", f"oci-archive:{built.oci_archive}:v1", "--name", "img:v1")
    assert second.code == 0 and "0 unpacked, 0 blob-only, 4 already present" in second.out
    third = layerctl(root, "pull", f"docker-archive:{built.docker_archive}:example/img:v1")
    assert third.code == 0 and "0 unpacked, 4 blob-only, 0 already present" in third.out
    assert layer_state(root) == state
    images = layerctl(root, "images").out.splitlines()
    assert [line.split()[0] for line in images] == ["NAME", "example/img:v1", "img:v1"]
    a, b = inspect(root, "img:v1"), inspect(root, "example/img:v1")
    assert a["id"] == b["id"] and a["layers"] == b["layers"]
    assert a["manifest_digest"] != b["manifest_digest"]  # docker-archive's is synthesized
    assert b["source"] == f"docker-archive:{built.docker_archive}:example/img:v1"
    # Each layer now knows both blobs that decompress to it, and both are kept.
    assert isinstance(a["layers"], list)
    for chain_id in a["layers"]:
        record = json.loads((root / "layers" / chain_id[7:] / "layer.json").read_text())
        assert len(record["compressed"]) == 2
    assert layerctl(root, "fsck").code == 0


def test_layer_records(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "pull", "-q", f"oci:{built.layout}:v1").out == ""
    doc = inspect(root, "layout:v1")
    chain = doc["layers"]
    assert isinstance(chain, list)
    parents = []
    for i, chain_id in enumerate(chain):
        layer_dir = root / "layers" / chain_id.split(":")[1]
        record = json.loads((layer_dir / "layer.json").read_text())
        assert record["chain_id"] == chain_id
        assert record["diff_id"] == doc["diff_ids"][i]  # type: ignore[index]
        assert record["compressed"] == [doc["layer_digests"][i]]  # type: ignore[index]
        assert record["owners_applied"] is True and record["xattr_sidecar"] is False
        assert (layer_dir / "entries").read_text().startswith("layerfs-entries 1\n")
        assert (root / "blobs" / "sha256" / record["compressed"][0][7:]).is_file()
        parents.append(record["parent"])
    assert parents == [None, *chain[:-1]]
    # The whiteouts and the opaque marker are kept as files in their layers.
    top2 = root / "layers" / chain[2].split(":")[1] / "diff"
    assert (top2 / "etc" / ".wh.gone").is_file()
    assert (top2 / "var" / "cache" / ".wh..wh..opq").is_file()
    config = doc["config"]
    assert isinstance(config, dict) and config["config"]["User"] == "1000"
    human = layerctl(root, "inspect", "layout:v1").out
    assert 'Cmd:        ["/bin/sh"]' in human and "WorkingDir: /home/u" in human


def test_platform_index(tmp_path: Path) -> None:
    if have_tools():
        pytest.skip("umoci/skopeo missing")
    work = tmp_path / "build"
    layout = build_image(work, [{"arch": "amd64"}], tag="amd64")
    arm = ImageConfigSpec(architecture="arm64")
    build_image(work, [{"arch": "arm64"}], tag="arm64", config=arm, layout=layout)
    make_index(layout, ["amd64", "arm64"], "multi")
    root = tmp_path / "store"
    run = layerctl(root, "pull", f"oci:{layout}:multi", "--platform", "linux/arm64", "--name", "m")
    assert run.code == 0, run.err
    assert inspect(root, "m")["platform"] == "linux/arm64"
    arm_layers = inspect(root, "m")["layers"]
    assert layerctl(root, "pull", f"oci:{layout}:multi", "--platform", "linux/amd64").code == 0
    host = inspect(root, "layout:multi")
    assert host["platform"] == "linux/amd64" and host["layers"] != arm_layers
    assert isinstance(arm_layers, list)
    top = root / "layers" / arm_layers[-1].split(":")[1] / "diff" / "arch"
    assert top.read_text() == "arm64"
    bad = layerctl(root, "pull", f"oci:{layout}:multi", "--platform", "linux/s390x")
    assert bad.code == 1 and len(bad.err_lines) == 1
    assert "no image for platform linux/s390x; available: linux/amd64, linux/arm64" in bad.err


def test_progress_only_on_a_terminal(built: Built, tmp_path: Path) -> None:
    source = f"oci:{built.layout}:v1"
    primary, secondary = pty.openpty()
    proc = subprocess.run(
        [*LAYERCTL, "--root", str(tmp_path / "a"), "pull", source],
        stderr=secondary,
        stdout=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert proc.returncode == 0
    text = shown.decode()
    assert "layer 4/4" in text and "unpacked" in text and "\x1b[" in text
    piped = spawn(tmp_path / "b", "pull", source)
    out, err = piped.communicate(timeout=60)
    assert (piped.returncode, err) == (0, "")
    assert out.startswith("pulled layout:v1 sha256:")
    quiet = spawn(tmp_path / "c", "pull", "-q", source)
    assert quiet.communicate(timeout=60) == ("", "")


def test_concurrent_pulls_share_layers(tmp_path: Path) -> None:
    if have_tools():
        pytest.skip("umoci/skopeo missing")
    work = tmp_path / "build"
    big: LayerSpec = {f"shared/f{i}": os.urandom(40_000) for i in range(200)}  # slow enough to race
    layout = build_image(work, [big, {"a": "a"}], tag="a")
    build_image(work, [big, {"b": "b"}], tag="b", layout=layout)
    build_image(work, [big, {"c": "c"}, {"c2": "c"}], tag="c", layout=layout)
    root = tmp_path / "store"
    procs = [spawn(root, "pull", f"oci:{layout}:{t}") for t in ("a", "b", "c", "a", "b")]
    procs.append(spawn(root, "gc"))
    results = [(*p.communicate(timeout=60), p.returncode) for p in procs]
    assert [(code, err) for _, err, code in results] == [(0, "")] * len(procs)
    unpacked = sum(int(out.split(" unpacked")[0].rsplit(" ", 1)[1]) for out, _, _ in results[:5])
    layers = os.listdir(root / "layers")
    assert unpacked == len(layers) == 6  # busybox, shared, a, b, c, c2: each unpacked once
    assert os.listdir(root / "tmp") == []
    assert layerctl(root, "fsck").code == 0
    assert layerctl(root, "gc").out.startswith("removed 0 layers, 0 blobs")


class _SidecarBackend(DirBackend):
    """The dir backend on a filesystem without xattrs, as the zfs-fuse backend will be."""

    def unpack_options(self) -> UnpackOptions:
        return UnpackOptions(xattrs_to_sidecar=True)


def test_xattrs_in_the_sidecar_show_through_the_mount(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("layerfs.store.store.DirBackend", _SidecarBackend)
    store = Store.open(str(tmp_path / "store"), create=True)
    result = pull_image(store, f"oci:{built.layout}:v1")
    sidecars = [p for p in (tmp_path / "store" / "layers").glob("*/diff.xattrs")]
    assert len(sidecars) == 1
    layer_dir = sidecars[0].parent
    assert json.loads((layer_dir / "layer.json").read_text())["xattr_sidecar"] is True
    assert os.listxattr(layer_dir / "diff" / "usr" / "bin" / "ping") == []
    mnt = tmp_path / "mnt"
    with layerfs(mnt, [Path(p) for p in store.lower_dirs(result.record)]):
        merged_xattrs = {f: xattrs(mnt / f) for f in XATTR_FILES if (mnt / f).exists()}
    assert merged_xattrs == {f: xattrs(built.rootfs / f) for f in merged_xattrs}
    assert merged_xattrs["usr/bin/ping"]["security.capability"] == CAPABILITY
    assert layerctl(tmp_path / "store", "fsck").code == 0


def test_the_same_blob_twice_in_one_image(tmp_path: Path) -> None:
    """Identical layers at two positions (empty layers are common): one blob, two layers."""
    base = layer_tar({"bin/tool": "tool\n"})
    layout = hand_image(tmp_path / "img", [base, layer_tar({"etc/x": "x"}), base])
    root = tmp_path / "store"
    for _ in range(3):  # the race between the two workers is not certain to happen at once
        run = layerctl(root, "pull", f"oci:{layout}:latest", "--name", "twice")
        assert run.code == 0, run.err
        assert layerctl(root, "rmi", "twice").code == 0
        assert layerctl(root, "gc").code == 0
    run = layerctl(root, "pull", f"oci:{layout}:latest", "--name", "twice")
    assert "3 layers, 3 unpacked" in run.out
    assert len(os.listdir(root / "layers")) == 3
    assert len(os.listdir(root / "blobs" / "sha256")) == 4  # manifest, config, 2 layer blobs
