"""``layerctl commit`` and ``layerctl push``: container changes as new images; images written out.

The main scenario is what users do: an image built with umoci (busybox and two more layers) is
pulled, mounted with layerfs over a container upper, changed through the mount (files added,
changed, deleted; a lower directory deleted, one replaced by an opaque one, one renamed; hard
links, a symlink, chmod/chown, an xattr, a fifo), unmounted, committed and pushed: ``umoci
unpack`` of the pushed image must give exactly the tree the mount showed, ``skopeo`` must read
it, and the archives must pull back into a fresh store as the same layers.

Containers are made by hand here (``containers/<name>/container.json`` + ``upper/`` +
``work/``), as ``layerctl create`` lays them out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerfs.cli import layerctl as cli
from layerfs.cli.layerctl_publish import add_commands
from layerfs.fs.meta import MetaStore
from layerfs.oci import Digest, chain_ids, parse_config, parse_manifest
from layerfs.store.commit import commit_container
from layerfs.store.push import push_image
from layerfs.store.records import ImageRecord
from layerfs.store.store import Store
from tests.images import (
    WHITEOUT,
    Dir,
    File,
    Hardlink,
    LayerSpec,
    Symlink,
    build_image,
    have_tools,
    run,
    umoci_unpack,
)
from tests.layerctl import Run, layerctl
from tests.mounts import Item, diff_snapshots, layerfs, snapshot

LAYERS: list[LayerSpec] = [
    {
        "etc/hello": "hello\n",
        "etc/motd": "first\n",
        "etc/keep": "keep\n",
        "var/lib/old/a": "a",
        "var/lib/old/b/c": "c",
        "opt/app/x": "x",
        "opt/app/sub/y": "y",
        "data/f1": "linked\n",
        "data/f2": Hardlink("data/f1"),
        "srv/mv/z": "z",
        "srv/mv/deep/q": "q",
        "bin/tool": File(b"#!/bin/sh\n", mode=0o755),
        "home/u": Dir(mode=0o700, uid=1000, gid=1000),
        "home/u/profile": File("export A=1\n", uid=1000, gid=1000),
    },
    {
        "etc/motd": "second\n",
        "var/lib/old/a2": "a2",
        "srv/mv/z2": "z2",
        "etc/hello.d": Dir(opaque=True),
        "etc/hello.d/conf": "conf",
        "lib64": Symlink("usr/lib"),
        "etc/gone-below": WHITEOUT,
    },
]
BASE = "base:v1"


# -- layerctl wiring -------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _publish_commands() -> Iterator[None]:
    """``layerctl`` with ``commit`` and ``push``, also before its parser adds them itself."""
    original = cli._parser
    if "commit" in _subcommands(original()).choices:
        yield
        return

    def parser() -> argparse.ArgumentParser:
        p = original()
        common = cli._Parser(add_help=False)
        common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS)
        add_commands(_subcommands(p), common)
        return p

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_parser", parser)
        yield


def _subcommands(p: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise AssertionError("layerctl has no subcommands")


# -- helpers ---------------------------------------------------------------------------------------


def ok(result: Run) -> Run:
    assert (result.code, result.err) == (0, ""), result.err
    return result


def fails(result: Run, *words: str) -> None:
    """A failure: exit 1, one line on stderr naming ``words``, nothing on stdout."""
    assert (result.code, result.out) == (1, ""), result
    assert len(result.err_lines) == 1, result.err
    for word in words:
        assert word in result.err, result.err


def make_container(root: Path, name: str, image: str, *, paths: bool = True) -> Path:
    """``containers/<name>/`` with an empty upper and work dir and its record; the dir.

    With ``paths`` the record names them (as ``layerctl create`` writes it), else a reader
    must know where they are by default.
    """
    store = Store.open(str(root))
    record = store.find_image(image)
    directory = root / "containers" / name
    for sub in ("upper", "work", "rootfs"):
        (directory / sub).mkdir(parents=True)
    doc: dict[str, object] = {
        "name": name,
        "image": image,
        "image_id": record.id,
        "layers": list(record.layers),
        "blobs": list(record.blobs),
        "created": "2024-01-01T00:00:00Z",
        "kind": "container",
    }
    if paths:
        doc |= {k: str(directory / k) for k in ("upper", "work", "rootfs")}
    (directory / "container.json").write_text(json.dumps(doc))
    return directory


def lowers(root: Path, image: str) -> list[Path]:
    store = Store.open(str(root))
    return [Path(p) for p in store.lower_dirs(store.find_image(image))]


def record(root: Path, image: str) -> ImageRecord:
    return Store.open(str(root)).find_image(image)


def members(root: Path, digest: Digest) -> list[tarfile.TarInfo]:
    """The members of a stored layer blob, in order."""
    with tarfile.open(Store.open(str(root)).blobs.path(digest), mode="r:gz") as tar:
        return list(tar.getmembers())


def xattrs(path: Path) -> dict[str, bytes]:
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in os.listxattr(path, follow_symlinks=False)
    }


def change_through_mount(mnt: Path) -> None:
    """What a user does in a container (each line a different kind of change)."""
    (mnt / "new" / "dir").mkdir(parents=True)
    (mnt / "new" / "dir" / "file").write_text("new file\n")
    (mnt / "etc" / "new").write_text("added\n")
    os.setxattr(mnt / "etc" / "new", "user.note", b"\x00\xffbinary")
    with open(mnt / "etc" / "motd", "a") as f:
        f.write("third\n")
    os.unlink(mnt / "etc" / "hello")
    shutil.rmtree(mnt / "var" / "lib" / "old")
    shutil.rmtree(mnt / "opt" / "app")
    (mnt / "opt" / "app").mkdir()
    (mnt / "opt" / "app" / "fresh").write_text("fresh\n")
    os.link(mnt / "new" / "dir" / "file", mnt / "new" / "file-link")
    os.link(mnt / "data" / "f1", mnt / "data" / "f3")  # a third name for a lower group
    with open(mnt / "data" / "f2", "a") as f:
        f.write("changed through f2\n")
    os.symlink("motd", mnt / "etc" / "motd-link")
    os.chmod(mnt / "bin" / "tool", 0o700)
    os.chown(mnt / "home" / "u" / "profile", 2000, 2000)
    os.rename(mnt / "srv" / "mv", mnt / "srv" / "moved")  # a redirect in the work dir
    (mnt / "srv" / "moved" / "added").write_text("added after the rename\n")
    os.unlink(mnt / "srv" / "moved" / "z")
    os.mkfifo(mnt / "new" / "fifo", 0o640)
    (mnt / "etc" / "hello.d" / "conf").write_text("conf 2\n")


@dataclass(frozen=True)
class World:
    """An image, a store holding it, a changed container and what its mount showed."""

    work: Path
    layout: Path
    root: Path
    expected: dict[str, Item]
    expected_xattrs: dict[str, bytes]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    missing = have_tools()
    if missing:
        pytest.skip(f"{missing} is not installed")
    work = tmp_path_factory.mktemp("commit")
    layout = build_image(work / "img", LAYERS, tag="v1")
    root = work / "store"
    ok(layerctl(root, "pull", "-q", f"oci:{layout}:v1", "--name", BASE))
    container = make_container(root, "c1", BASE)
    mnt = container / "rootfs"
    with layerfs(mnt, lowers(root, BASE), container / "upper", container / "work"):
        change_through_mount(mnt)
        expected = snapshot(mnt)
        expected_xattrs = xattrs(mnt / "etc" / "new")
    return World(work, layout, root, expected, expected_xattrs)


@pytest.fixture(scope="module")
def committed(world: World) -> ImageRecord:
    run_ = ok(layerctl(world.root, "commit", "c1", "new:1"))
    assert run_.out.startswith("committed c1 as new:1 sha256:")
    return record(world.root, "new:1")


# -- commit ----------------------------------------------------------------------------------------


def test_commit_then_push_then_umoci_unpack_gives_the_mounted_tree(
    world: World, committed: ImageRecord, tmp_path: Path
) -> None:
    base = record(world.root, BASE)
    assert committed.layers[:-1] == base.layers and len(committed.layers) == len(base.layers) + 1
    assert committed.source == "container:c1"
    out = tmp_path / "layout"
    assert ok(layerctl(world.root, "push", "new:1", f"oci:{out}:committed")).out.startswith(
        "pushed new:1 sha256:"
    )
    rootfs = umoci_unpack(out, "committed", tmp_path / "bundle")
    got = snapshot(rootfs)
    assert diff_snapshots(world.expected, got) == []
    # The changes are all there (a sample, on top of the full comparison).
    assert "etc/hello" not in got and "var/lib/old" not in got
    assert set(k for k in got if k.startswith("opt/app")) == {"opt/app", "opt/app/fresh"}
    assert {"srv/moved/deep/q", "srv/moved/z2", "srv/moved/added"} <= set(got)
    assert "srv/mv" not in got and "srv/moved/z" not in got
    assert got["data/f1"].group == got["data/f2"].group == got["data/f3"].group != -1
    assert got["new/file-link"].group == got["new/dir/file"].group != -1
    assert got["bin/tool"].mode == 0o700 and got["home/u/profile"].uid == 2000
    assert got["new/fifo"].kind == "p" and got["etc/motd-link"].content == "motd"
    assert (
        xattrs(rootfs / "etc" / "new") == world.expected_xattrs == {"user.note": b"\x00\xffbinary"}
    )


def test_skopeo_reads_the_pushed_layout(
    world: World, committed: ImageRecord, tmp_path: Path
) -> None:
    out = tmp_path / "missing" / "parents" / "layout"  # made, as skopeo makes them
    ok(layerctl(world.root, "push", "new:1", f"oci:{out}:v2"))
    doc = json.loads(run("skopeo", "inspect", f"oci:{out}:v2"))
    assert doc["Digest"] == committed.manifest_digest
    assert doc["Layers"] == list(committed.layer_digests)
    raw = json.loads(run("skopeo", "inspect", "--config", f"oci:{out}:v2"))
    assert raw["rootfs"]["diff_ids"] == list(committed.diff_ids)


def test_new_config_and_manifest(world: World, committed: ImageRecord) -> None:
    store = Store.open(str(world.root))
    base = store.find_image(BASE)
    config = parse_config(store.blobs.read(committed.config_digest))
    base_config = parse_config(store.blobs.read(base.config_digest))
    assert config.rootfs.diff_ids == (*base_config.rootfs.diff_ids, committed.diff_ids[-1])
    assert chain_ids(config.rootfs.diff_ids) == committed.layers
    assert config.history[:-1] == base_config.history
    last = config.history[-1]
    assert last.created_by == "layerctl commit" and last.created == config.created
    assert config.config == base_config.config and config.architecture == base_config.architecture
    manifest = parse_manifest(store.blobs.read(committed.manifest_digest))
    assert manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert [d.digest for d in manifest.layers] == list(committed.layer_digests)
    assert manifest.layers[-1].media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert manifest.annotations["org.opencontainers.image.base.digest"] == base.manifest_digest


def test_layer_holds_oci_whiteouts_in_a_stable_order(world: World, committed: ImageRecord) -> None:
    tar = members(world.root, committed.layer_digests[-1])
    names = [m.name for m in tar]
    assert names == sorted(names, key=_tar_order)
    by_name = {m.name: m for m in tar}
    # Whiteouts and opaque markers in OCI form only: no devices, no overlay xattrs.
    assert {"etc/.wh.hello", "var/lib/.wh.old", "srv/.wh.mv"} <= set(by_name)
    assert {"opt/app/.wh..wh..opq", "srv/moved/.wh..wh..opq"} <= set(by_name)
    assert not any(m.ischr() or m.isblk() for m in tar)
    assert not any(
        k.startswith(("SCHILY.xattr.trusted.overlay", "SCHILY.xattr.user.layerfs"))
        for m in tar
        for k in m.pax_headers
    )
    # The renamed directory is written whole; the unchanged lower tree is not.
    assert {"srv/moved/deep/q", "srv/moved/z2", "srv/moved/added"} <= set(by_name)
    assert "srv/moved/z" not in by_name and "etc/keep" not in by_name
    links = {m.name: m.linkname for m in tar if m.islnk()}
    assert links["new/file-link"] == "new/dir/file"
    assert sorted([links.get("data/f1"), links.get("data/f2"), links.get("data/f3")], key=str) == [
        None,
        "data/f1",
        "data/f1",
    ]
    assert (
        by_name["etc/new"].pax_headers["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape")
        == b"\x00\xffbinary"
    )


def _tar_order(name: str) -> tuple[tuple[int, bytes], ...]:
    """Depth first; in each directory markers and whiteouts first, then entries by name."""
    return tuple((0 if p.startswith(".wh.") else 1, p.encode()) for p in name.split("/"))


def test_commit_again_is_deterministic_and_takes_new_changes(
    world: World, committed: ImageRecord, tmp_path: Path
) -> None:
    again = commit_container(Store.open(str(world.root)), "c1", "new:2")
    assert again.layers == committed.layers  # same upper, same layer
    assert again.layer_digests == committed.layer_digests
    assert again.id != committed.id  # a new config: its history has a new time
    container = make_container(world.root, "c2", "new:1")  # a container of the committed image
    mnt = container / "rootfs"
    with layerfs(mnt, lowers(world.root, "new:1"), container / "upper", container / "work"):
        (mnt / "etc" / "motd").write_text("fourth\n")
        os.unlink(mnt / "opt" / "app" / "fresh")
        expected = snapshot(mnt)
    ok(layerctl(world.root, "commit", "c2", "new:3"))
    third = record(world.root, "new:3")
    assert third.layers[:-1] == committed.layers and len(third.layers) == len(committed.layers) + 1
    out = tmp_path / "layout"
    push_image(Store.open(str(world.root)), "new:3", f"oci:{out}:v3")
    assert diff_snapshots(expected, snapshot(umoci_unpack(out, "v3", tmp_path / "b"))) == []


def test_empty_upper_makes_an_empty_layer(world: World, tmp_path: Path) -> None:
    make_container(world.root, "empty", BASE, paths=False)
    ok(layerctl(world.root, "commit", "empty", "empty:1"))
    rec = record(world.root, "empty:1")
    assert len(rec.layers) == len(record(world.root, BASE).layers) + 1
    assert members(world.root, rec.layer_digests[-1]) == []
    out = tmp_path / "layout"
    ok(layerctl(world.root, "push", "empty:1", f"oci:{out}:e"))
    ok(layerctl(world.root, "push", BASE, f"oci:{out}:base"))
    a = snapshot(umoci_unpack(out, "e", tmp_path / "a"))
    assert diff_snapshots(a, snapshot(umoci_unpack(out, "base", tmp_path / "b"))) == []


def test_hand_made_upper_in_every_overlay_form(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    container = make_container(world.root, "forms", BASE)
    upper = container / "upper"
    (upper / "etc").mkdir()
    os.mknod(upper / "etc" / "hello", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # overlay whiteout
    (upper / "etc" / ".wh.motd").touch()  # OCI-form whiteout
    (upper / "etc" / ".wh.keep").touch()  # a whiteout beside a real file: the file wins
    (upper / "etc" / "keep").write_text("kept\n")
    (upper / "etc" / ".wh..wh.plnk").mkdir()  # another union's bookkeeping: ignored
    (upper / "var").mkdir()
    for name in ("marker", "trusted", "user"):
        (upper / "var" / name).mkdir()
        (upper / "var" / name / "f").write_text(name)
    (upper / "var" / "marker" / ".wh..wh..opq").touch()
    os.setxattr(upper / "var" / "trusted", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "var" / "user", "user.overlay.opaque", b"y")
    (upper / "f").write_text("x")
    (upper / os.fsdecode(b"caf\xe9")).write_text("a name that is not UTF-8")
    os.setxattr(upper / "f", "trusted.overlay.origin", b"\x00")
    os.setxattr(upper / "f", "user.layerfs.ino", b"1")
    os.setxattr(upper / "f", "user.kept", b"yes")
    os.link(upper / "f", upper / "g")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(upper / "sock"))
    # An xattr the union filesystem kept in its database (an upper without xattr support).
    meta = MetaStore(str(container / "work"))
    meta.set_xattr(os.lstat(upper / "g").st_ino, "user.from-db", b"\x01\x02")
    meta.close()
    with caplog.at_level(logging.WARNING, logger="layerfs"):
        rec = commit_container(Store.open(str(world.root)), "forms", "forms:1")
    assert [r.getMessage() for r in caplog.records] == [
        "commit: skipping the socket /sock (a tar cannot hold sockets)"
    ]
    tar = members(world.root, rec.layer_digests[-1])
    assert [m.name for m in tar] == [
        os.fsdecode(b"caf\xe9"),
        "etc",
        "etc/.wh.hello",
        "etc/.wh.motd",
        "etc/keep",
        "f",
        "g",
        "var",
        "var/marker",
        "var/marker/.wh..wh..opq",
        "var/marker/f",
        "var/trusted",
        "var/trusted/.wh..wh..opq",
        "var/trusted/f",
        "var/user",
        "var/user/.wh..wh..opq",
        "var/user/f",
    ]
    by_name = {m.name: m for m in tar}
    assert by_name["etc/.wh.hello"].isreg() and by_name["etc/.wh.hello"].size == 0
    assert by_name["g"].islnk() and by_name["g"].linkname == "f"
    assert {k: v for k, v in by_name["f"].pax_headers.items() if k.startswith("SCHILY")} == {
        "SCHILY.xattr.user.from-db": "\x01\x02",
        "SCHILY.xattr.user.kept": "yes",
    }
    assert not any("overlay" in k for m in tar for k in m.pax_headers)


def test_commit_of_a_mounted_container_sees_what_the_mount_caches(world: World) -> None:
    container = make_container(world.root, "live", BASE)
    mnt = container / "rootfs"
    with (
        layerfs(mnt, lowers(world.root, BASE), container / "upper", container / "work"),
        open(mnt / "etc" / "motd", "r+b") as f,  # not closed before the commit
    ):
        f.write(b"LIVE")
        f.flush()
        rec = commit_container(Store.open(str(world.root)), "live", "live:1")
    layer = Store.open(str(world.root)).blobs.path(rec.layer_digests[-1])
    with tarfile.open(layer, mode="r:gz") as tar:
        data = tar.extractfile("etc/motd")
        assert data is not None and data.read() == b"LIVEnd\n"  # over "second\n"


# -- push ------------------------------------------------------------------------------------------


def test_archives_pull_back_as_the_same_layers(
    world: World, committed: ImageRecord, tmp_path: Path
) -> None:
    oci_archive = tmp_path / "img.oci.tar"
    docker_archive = tmp_path / "img.docker.tar"
    ok(layerctl(world.root, "push", "new:1", f"oci-archive:{oci_archive}:v1"))
    ok(layerctl(world.root, "push", "new:1", f"docker-archive:{docker_archive}:example/new:v1"))
    with tarfile.open(docker_archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["example/new:v1"]
    assert manifest[0]["Config"] == committed.id.split(":")[1] + ".json"
    for source in (f"oci-archive:{oci_archive}:v1", f"docker-archive:{docker_archive}"):
        doc = json.loads(run("skopeo", "inspect", "--config", source))
        assert doc["rootfs"]["diff_ids"] == list(committed.diff_ids)
    # A third party reads the docker-archive's layers (gzip'd, as stored) as the same tree.
    copied = tmp_path / "copied"
    run("skopeo", "copy", "--quiet", f"docker-archive:{docker_archive}", f"oci:{copied}:c")
    rootfs = umoci_unpack(copied, "c", tmp_path / "bundle")
    assert diff_snapshots(world.expected, snapshot(rootfs)) == []
    fresh = tmp_path / "fresh"
    ok(layerctl(fresh, "pull", "-q", f"oci-archive:{oci_archive}:v1", "--name", "a"))
    ok(layerctl(fresh, "pull", "-q", f"docker-archive:{docker_archive}", "--name", "b"))
    a, b = record(fresh, "a"), record(fresh, "b")
    assert a.layers == b.layers == committed.layers
    assert a.id == b.id == committed.id
    assert a.manifest_digest == committed.manifest_digest  # the very same blobs
    assert a.layer_digests == b.layer_digests == committed.layer_digests
    assert ok(layerctl(fresh, "fsck")).out.endswith("no problems\n")


def test_push_adds_to_a_layout_and_defaults_to_the_image_name(
    world: World, committed: ImageRecord, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(world.layout, layout)
    ok(layerctl(world.root, "push", "new:1", f"oci:{layout}"))  # REF: the image's name
    ok(layerctl(world.root, "push", BASE, f"oci:{layout}:new:1"))  # replaces that entry
    ok(layerctl(world.root, "push", "new:1", f"oci:{layout}"))  # and back
    index = json.loads((layout / "index.json").read_text())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == ["v1", "new:1"]
    assert index["manifests"][1]["digest"] == committed.manifest_digest
    run("umoci", "stat", "--image", f"{layout}:v1")  # umoci still reads the layout
    fresh = tmp_path / "fresh"
    ok(layerctl(fresh, "pull", "-q", f"oci:{layout}:new:1"))
    assert record(fresh, "new:1").id == committed.id  # the same name back
    assert not [p for p in layout.rglob(".*.tmp")]


def test_push_is_atomic_when_a_blob_is_damaged(world: World, tmp_path: Path) -> None:
    root = tmp_path / "store"
    ok(layerctl(root, "pull", "-q", f"oci:{world.layout}:v1", "--name", BASE))
    store = Store.open(str(root))
    blob = Path(store.blobs.path(store.find_image(BASE).layer_digests[-1]))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    layout = tmp_path / "layout"  # an existing layout, without the image's blobs
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:empty")
    before = sorted(str(p) for p in layout.rglob("*")), (layout / "index.json").read_bytes()
    for dest in (
        f"oci:{tmp_path / 'new-layout'}:x",
        f"oci-archive:{tmp_path / 'x.tar'}",
        f"docker-archive:{tmp_path / 'y.tar'}",
        f"oci:{layout}:x",
    ):
        fails(layerctl(root, "push", BASE, dest), "digest mismatch", BASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout", "store"]
    assert (
        sorted(str(p) for p in layout.rglob("*")),
        (layout / "index.json").read_bytes(),
    ) == before


# -- errors ----------------------------------------------------------------------------------------


def test_commit_errors(world: World) -> None:
    fails(layerctl(world.root, "commit", "nope", "x:1"), "no container named 'nope'")
    fails(layerctl(world.root, "commit", "../c1", "x:1"), "container name '../c1'")
    fails(layerctl(world.root, "commit", "c1", "bad name"), "image name 'bad name'")
    fails(layerctl(world.root, "commit", "c1", ""), "image name is empty")
    broken = world.root / "containers" / "broken"
    broken.mkdir()
    (broken / "container.json").write_text('{"name": "broken", "image": "x"}')
    fails(layerctl(world.root, "commit", "broken", "x:1"), "container.json", "image_id")
    shutil.rmtree(broken)  # gc and fsck would rightly refuse a store holding it
    orphan = make_container(world.root, "orphan", BASE)
    doc = json.loads((orphan / "container.json").read_text())
    doc["image_id"] = "sha256:" + "0" * 64
    doc["blobs"] = []
    (orphan / "container.json").write_text(json.dumps(doc))
    fails(layerctl(world.root, "commit", "orphan", "x:1"), "'orphan'", "no longer in the store")
    shutil.rmtree(orphan)
    mounted_image = make_container(world.root, "ro-image", BASE)
    doc = json.loads((mounted_image / "container.json").read_text())
    (mounted_image / "container.json").write_text(json.dumps(doc | {"kind": "image-mount"}))
    fails(layerctl(world.root, "commit", "ro-image", "x:1"), "'ro-image'", "not a container")
    shutil.rmtree(mounted_image)
    assert record(world.root, BASE)  # nothing else changed
    names = [line.split()[0] for line in ok(layerctl(world.root, "images")).out.splitlines()]
    assert "x:1" not in names


def test_push_errors(world: World, tmp_path: Path) -> None:
    fails(layerctl(world.root, "push", BASE, "docker://example.com/A"), "invalid repository name")
    fails(layerctl(world.root, "push", BASE, "ftp:/x"), "unknown transport 'ftp'")
    fails(layerctl(world.root, "push", BASE, "oci:"), "missing path")
    fails(layerctl(world.root, "push", BASE, f"oci:{tmp_path}:@1"), "@N")
    fails(layerctl(world.root, "push", "nope:1", f"oci:{tmp_path / 'x'}"), "no image 'nope:1'")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("mine")
    fails(layerctl(world.root, "push", BASE, f"oci:{busy}"), "not an OCI image layout")
    fails(layerctl(world.root, "push", BASE, f"oci-archive:{busy}"), "is a directory")
    missing = tmp_path / "no" / "such" / "dir.tar"
    fails(layerctl(world.root, "push", BASE, f"docker-archive:{missing}"), "not a directory")
    fails(layerctl(world.root, "push", BASE, f"oci:{busy / 'file' / 'x'}"), "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert [p.name for p in busy.iterdir()] == ["file"]


def test_no_leftovers_in_the_store(world: World, committed: ImageRecord) -> None:
    assert os.listdir(world.root / "tmp") == []
    assert ok(layerctl(world.root, "fsck")).out.endswith("no problems\n")
    out = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True)
    assert str(world.work) not in out.stdout
