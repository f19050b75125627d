"""The hostile corpus: every bad image, tar or argument fails cleanly and changes nothing.

Each case makes an image (hand-written blob by blob, see `tests.images.hand_image`) and pulls it
into one store that already holds an image sharing its bottom layer. Each must exit 1 with exactly
one line on stderr naming the fault, leave the store byte-for-byte as it was (contents, modes,
owners of every file) and leave ``tmp/`` empty. Most images put a good, new layer below the bad
one: it is unpacked (maybe published) and must be rolled back.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.images import blob_path, hand_image, manifest_of
from tests.layerctl import fingerprint, layerctl

MTIME = 1_600_000_000


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> bytes:
    """One tar member (header and data), to be joined by `tar_of`."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.mtime = kind, MTIME
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in kw.items():
        setattr(ti, key, value)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if kind == tarfile.REGTYPE:
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        else:
            tf.addfile(ti)
    return _strip(buf.getvalue())


def _strip(raw: bytes) -> bytes:
    """A one-member tar without its end-of-archive blocks and record padding."""
    end = len(raw)
    while end >= 512 and raw[end - 512 : end] == bytes(512):
        end -= 512
    return raw[:end]


def tar_of(*members: bytes) -> bytes:
    data = b"".join(members)
    return data + bytes(1024)


BASE = tar_of(member("bin", tarfile.DIRTYPE), member("bin/tool", data=b"base tool\n"))
GOOD = tar_of(member("etc", tarfile.DIRTYPE), member("etc/good", data=b"a new good layer\n"))


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Sequence[str]]  # writes the image; the pull's arguments
    expect: str  # in the one stderr line
    code: int = 1


def tar_case(*members: bytes, expect: str) -> Case:
    def make(work: Path) -> list[str]:
        layout = hand_image(work / "img", [BASE, GOOD, tar_of(*members)])
        return [f"oci:{layout}:latest"]

    return Case(make, expect)


def image_case(expect: str, **kw: object) -> Case:
    def make(work: Path) -> list[str]:
        layout = hand_image(work / "img", [BASE, GOOD], **kw)  # type: ignore[arg-type]
        return [f"oci:{layout}:latest"]

    return Case(make, expect)


def damaged_blob(damage: Callable[[Path], object], expect: str, index: int = 1) -> Case:
    def make(work: Path) -> list[str]:
        layout = hand_image(work / "img", [BASE, GOOD, tar_of(member("x", data=b"x" * 5000))])
        layers = manifest_of(layout, "latest")["layers"]
        assert isinstance(layers, list)
        damage(blob_path(layout, layers[index]["digest"]))
        return [f"oci:{layout}:latest"]

    return Case(make, expect)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def set_layer(field: str, value: object, index: int = 1) -> Callable[[dict[str, object]], None]:
    def edit(manifest: dict[str, object]) -> None:
        layers = manifest["layers"]
        assert isinstance(layers, list)
        layers[index][field] = value(layers[index][field]) if callable(value) else value

    return edit


def set_config_field(path: Sequence[str], value: object) -> Callable[[dict[str, object]], None]:
    def edit(doc: dict[str, object]) -> None:
        target: dict[str, object] = doc
        for key in path[:-1]:
            target = target[key]  # type: ignore[assignment]
        target[path[-1]] = value

    return edit


def replace_blob_json(kind: str, text: bytes) -> Case:
    """Make the manifest ("manifest") or config ("config") blob garbage with a matching digest."""

    def make(work: Path) -> list[str]:
        import hashlib

        layout = hand_image(work / "img", [BASE, GOOD])
        bad = blob_path(layout, "sha256:" + hashlib.sha256(text).hexdigest())
        bad.write_bytes(text)
        digest = "sha256:" + hashlib.sha256(text).hexdigest()
        index = json.loads((layout / "index.json").read_text())
        if kind == "manifest":
            index["manifests"][0].update(digest=digest, size=len(text))
        else:
            manifest = manifest_of(layout, "latest")
            manifest["config"] = {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(text),
            }
            raw = json.dumps(manifest).encode()
            mdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
            blob_path(layout, mdigest).write_bytes(raw)
            index["manifests"][0].update(digest=mdigest, size=len(raw))
        (layout / "index.json").write_text(json.dumps(index))
        return [f"oci:{layout}:latest"]

    return Case(make, f"{kind}")


def with_layout(edit: Callable[[Path], object], expect: str, *extra: str) -> Case:
    def make(work: Path) -> list[str]:
        layout = hand_image(work / "img", [BASE, GOOD])
        edit(layout)
        return [f"oci:{layout}:latest", *extra]

    return Case(make, expect)


def args_case(expect: str, *args: str) -> Case:
    def make(work: Path) -> list[str]:
        layout = hand_image(work / "img", [BASE, GOOD])
        return [a.replace("LAYOUT", str(layout)) for a in args]

    return Case(make, expect)


def docker_archive_case(expect: str, edit: Callable[[dict[str, object]], None]) -> Case:
    def make(work: Path) -> list[str]:
        archive = work / "d.tar"
        with tarfile.open(archive, "w") as tf:
            entries = {"layer.tar": BASE, "config.json": b"", "manifest.json": b""}
            config = {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [_sha(BASE)]},
            }
            entries["config.json"] = json.dumps(config).encode()
            manifest: dict[str, object] = {
                "Config": "config.json",
                "RepoTags": ["x:1"],
                "Layers": ["layer.tar"],
            }
            edit(manifest)
            entries["manifest.json"] = json.dumps([manifest]).encode()
            for name, data in entries.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        return [f"docker-archive:{archive}"]

    return Case(make, expect)


def _sha(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _big_bad_digest(work: Path) -> list[str]:
    """A large top layer whose digest fails only at its very end: the good layer below is
    published by then, and must be rolled back."""
    big = tar_of(member("big", data=os.urandom(3 << 20)))
    layout = hand_image(work / "img", [BASE, GOOD, big], compression="none")
    layers = manifest_of(layout, "latest")["layers"]
    assert isinstance(layers, list)
    flip_last_byte(blob_path(layout, layers[2]["digest"]))
    return [f"oci:{layout}:latest"]


def _remove(name: str) -> Callable[[Path], object]:
    return lambda layout: (layout / name).unlink()


def _write(name: str, text: str) -> Callable[[Path], object]:
    return lambda layout: (layout / name).write_text(text)


def _remove_blob(which: str) -> Callable[[Path], None]:
    def edit(layout: Path) -> None:
        manifest = manifest_of(layout, "latest")
        if which == "config":
            digest = manifest["config"]["digest"]  # type: ignore[index]
        else:
            digest = manifest["layers"][1]["digest"]  # type: ignore[index]
        blob_path(layout, digest).unlink()

    return edit


CASES: dict[str, Case] = {
    # -- tar escapes and nonsense -------------------------------------------------------------
    "dotdot": tar_case(member("../evil", data=b"x"), expect="'../evil': '..' in the name"),
    "absolute-dotdot": tar_case(member("/../../etc/x", data=b"x"), expect="'..' in the name"),
    "symlinked-parent": tar_case(
        member("s", tarfile.SYMTYPE, linkname="/etc"),
        member("s/passwd", data=b"x"),
        expect="'s/passwd': parent /s is a symlink",
    ),
    "hardlink-outside": tar_case(
        member("h", tarfile.LNKTYPE, linkname="../../etc/passwd"),
        expect="'h': hard link target: '..' in the name",
    ),
    "hardlink-absolute": tar_case(
        member("h", tarfile.LNKTYPE, linkname="/etc/shadow"),
        expect="hard link target /etc/shadow does not exist in this layer",
    ),
    "hardlink-through-symlink": tar_case(
        member("s", tarfile.SYMTYPE, linkname="/"),
        member("h", tarfile.LNKTYPE, linkname="s/etc/passwd"),
        expect="hard link target /s/etc/passwd does not exist",
    ),
    "hardlink-to-dir": tar_case(
        member("d", tarfile.DIRTYPE),
        member("h", tarfile.LNKTYPE, linkname="d"),
        expect="hard link target /d is a directory",
    ),
    "whiteout-alone": tar_case(member("etc/.wh.", data=b""), expect="'.wh.' names nothing"),
    "whiteout-dir": tar_case(
        member(".wh.d", tarfile.DIRTYPE), expect="'.wh.d': whiteout is not a regular file"
    ),
    "whiteout-as-parent": tar_case(
        member(".wh.x/y", data=b""), expect="whiteout /.wh.x used as a directory"
    ),
    "non-dir-root": tar_case(member("./", data=b"x"), expect="the layer root is not a directory"),
    "dir-replaced-by-file": tar_case(
        member("d", tarfile.DIRTYPE),
        member("d", data=b"x"),
        expect="would replace directory /d by a non-directory",
    ),
    "hardlinked-file-replaced": tar_case(
        member("f", data=b"1"),
        member("g", tarfile.LNKTYPE, linkname="f"),
        member("f", data=b"2"),
        expect="would replace /f, which hard links point to",
    ),
    "empty-symlink": tar_case(
        member("l", tarfile.SYMTYPE, linkname=""), expect="invalid symlink target"
    ),
    "truncated-tar": Case(
        lambda work: [
            f"oci:{hand_image(work / 'img', [BASE, GOOD, member('f', data=b'y' * 4000)[:1500]])}"
            ":latest"
        ],
        "'f': unexpected end of data",
    ),
    "not-a-tar": Case(
        lambda work: [f"oci:{hand_image(work / 'img', [BASE, GOOD, b'%PDF-1.4' * 200])}:latest"],
        "tar",
    ),
    # -- blobs ----------------------------------------------------------------------------------
    "truncated-blob": damaged_blob(truncate, "size mismatch: expected"),
    "wrong-digest": damaged_blob(flip_last_byte, "digest mismatch"),
    "wrong-digest-late": Case(_big_bad_digest, "digest mismatch"),
    "missing-blob": with_layout(_remove_blob("layer"), "is missing"),
    "missing-config": with_layout(_remove_blob("config"), "is missing"),
    "size-too-big": image_case(
        "size mismatch: expected", edit_manifest=set_layer("size", lambda s: s + 10)
    ),
    "size-too-small": image_case("got more", edit_manifest=set_layer("size", lambda s: s - 10)),
    "negative-size": image_case("size", edit_manifest=set_layer("size", -1)),
    "wrong-diff-id": image_case(
        f"uncompressed layer (diff_id {_sha(b'other')}): digest mismatch",
        edit_config=set_config_field(("rootfs", "diff_ids"), [_sha(BASE), _sha(b"other")]),
    ),
    "diff-id-count": image_case(
        "has 2 layers but its config lists 1 diff_ids",
        edit_config=set_config_field(("rootfs", "diff_ids"), [_sha(BASE)]),
    ),
    "corrupt-gzip": image_case(  # a plain tar, with its right digest, declared gzip
        "corrupt gzip data",
        compression="none",
        edit_manifest=set_layer("mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ),
    "zstd-wrong-diff-id": image_case(
        "digest mismatch",
        compression="zstd",
        edit_config=set_config_field(("rootfs", "diff_ids"), [_sha(BASE), _sha(BASE)]),
    ),
    "unsupported-compression": image_case(
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        edit_manifest=set_layer("mediaType", "application/vnd.oci.image.layer.v1.tar+bzip2"),
    ),
    "encrypted-layer": image_case(
        "tar+gzip+encrypted",
        edit_manifest=set_layer(
            "mediaType", "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
        ),
    ),
    # -- documents ------------------------------------------------------------------------------
    "bad-json-manifest": replace_blob_json("manifest", b'{"schemaVersion": 2, "layers": ['),
    "bad-json-config": replace_blob_json("config", b'{"architecture": "amd64", "os": '),
    "bad-json-index": with_layout(_write("index.json", '{"manifests": [}'), "index: invalid JSON"),
    "wrong-config-media-type": image_case(
        "not a container image",
        edit_manifest=lambda m: m["config"].update(mediaType="application/vnd.acme+json"),
    ),
    "manifest-media-type-mismatch": image_case(
        "differs from its descriptor",
        edit_index_entry=set_config_field(
            ("mediaType",), "application/vnd.docker.distribution.manifest.v2+json"
        ),
    ),
    "schema-version": image_case(
        "schemaVersion", edit_manifest=set_config_field(("schemaVersion",), 1)
    ),
    "bad-rootfs-type": image_case(
        "rootfs", edit_config=set_config_field(("rootfs", "type"), "tarballs")
    ),
    "missing-oci-layout": with_layout(_remove("oci-layout"), "no oci-layout file"),
    "layout-version": with_layout(
        _write("oci-layout", '{"imageLayoutVersion": "2.0.0"}'), "imageLayoutVersion"
    ),
    "unknown-ref": args_case("no image named 'nope'; available: latest", "oci:LAYOUT:nope"),
    "platform-mismatch": args_case(
        "image is for linux/amd64, not linux/arm64",
        "oci:LAYOUT:latest",
        "--platform",
        "linux/arm64",
    ),
    "bad-platform": Case(
        args_case("", "oci:LAYOUT:latest", "--platform", "linux/").make,
        "argument --platform: invalid platform 'linux/': expected OS/ARCH[/VARIANT]",
        code=2,
    ),
    "no-such-dir": args_case("no such directory", "oci:LAYOUT/nothing:latest"),
    "unknown-transport": args_case("unknown transport 'ftp'", "ftp:LAYOUT"),
    "docker-bad-name": args_case("invalid repository name", "docker://Busybox"),
    "bad-name": args_case("image name 'a b'", "oci:LAYOUT:latest", "--name", "a b"),
    "docker-archive-missing-layer": docker_archive_case(
        "'missing.tar' is missing from the archive",
        lambda m: m.update(Layers=["missing.tar"]),
    ),
    "docker-archive-bad-manifest": docker_archive_case(
        "manifest.json", lambda m: m.update(Layers="layer.tar")
    ),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A store holding one image whose layer every hostile image shares; its fingerprint."""
    work = tmp_path_factory.mktemp("hostile-store")
    layout = hand_image(work / "base", [BASE])
    root = work / "store"
    run = layerctl(root, "pull", f"oci:{layout}:latest", "--name", "base")
    assert run.code == 0, run.err
    return root, fingerprint(root)


def test_corpus_is_big_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_fails_cleanly(
    name: str, store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, before = store
    case = CASES[name]
    args = case.make(tmp_path)
    run = layerctl(root, "pull", *args)
    assert run.code == case.code, run.err
    assert len(run.err_lines) == 1, run.err
    assert run.err.startswith("layerctl pull: ")
    assert case.expect in run.err, run.err
    assert fingerprint(root) == before
    assert os.listdir(root / "tmp") == []


def test_absolute_names_stay_inside_the_layer(tmp_path: Path) -> None:
    """Not hostile after all: a leading '/' is dropped (GNU tar, umoci), the file lands inside."""
    layout = hand_image(tmp_path / "img", [tar_of(member("/abs/file", data=b"in"))])
    root = tmp_path / "store"
    assert layerctl(root, "pull", f"oci:{layout}:latest").code == 0
    (layer,) = os.listdir(root / "layers")
    assert (root / "layers" / layer / "diff" / "abs" / "file").read_bytes() == b"in"
    assert not os.path.exists("/abs/file")
