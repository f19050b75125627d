"""Image sources built for real: umoci/skopeo images in all three transports, hand-made layouts.

One image (busybox-static plus a second layer with a whiteout) is built with
umoci and copied by skopeo to ``oci-archive`` and ``docker-archive``; all
three must resolve to the same diff_ids. Multi-platform indexes and odd
docker archives are written by hand.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from layerfs.oci import (
    BlobVerificationError,
    Compression,
    InvalidImageError,
    Platform,
    ResolvedImage,
    SourceError,
    UnsupportedImageError,
    compute_digest,
    host_platform,
    open_source,
    parse_platform,
)
from layerfs.oci import mediatypes as mt

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class BuiltImage:
    layout: Path  # oci layout with tags "base" and "v1"
    oci_archive: Path
    docker_archive: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = tmp_path_factory.mktemp("umoci")
    layout, bundle = root / "layout", root / "bundle"
    _run("umoci", "init", "--layout", str(layout))
    _run("umoci", "new", "--image", f"{layout}:base")
    _run("umoci", "unpack", "--image", f"{layout}:base", str(bundle))
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(exist_ok=True)
    (rootfs / "etc").mkdir(exist_ok=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "etc" / "hello").write_text("hello\n")
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:base", str(bundle))
    (rootfs / "etc" / "hello").unlink()
    (rootfs / "etc" / "second").write_text("2\n")
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:base", str(bundle))
    _run(
        "umoci", "config", "--image", f"{layout}:base", "--tag", "v1",
        "--config.cmd", "/bin/sh", "--config.env", "FOO=bar",
    )  # fmt: skip
    oci_archive, docker_archive = root / "image.oci.tar", root / "image.docker.tar"
    _run("skopeo", "copy", f"oci:{layout}:v1", f"oci-archive:{oci_archive}:v1")
    _run("skopeo", "copy", f"oci:{layout}:v1", f"docker-archive:{docker_archive}:example/bb:v1")
    return BuiltImage(layout, oci_archive, docker_archive)


def _tar_names(image: ResolvedImage, index: int) -> list[str]:
    with image.open_layer_tar(image.layers[index]) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            names = [m.name.lstrip("./") for m in tar]
        stream.verify()
        assert stream.verified
    return names


# --- the three transports of one image -------------------------------------------


def test_three_transports_agree(built: BuiltImage, tmp_path: Path) -> None:
    names = [
        f"oci:{built.layout}:v1",
        f"oci-archive:{built.oci_archive}",
        f"oci-archive:{built.oci_archive}:v1",
        f"docker-archive:{built.docker_archive}",
        f"docker-archive:{built.docker_archive}:example/bb:v1",
        f"docker-archive:{built.docker_archive}:docker.io/example/bb:v1",
        f"docker-archive:{built.docker_archive}:@0",
    ]
    seen = []
    for name in names:
        with open_source(name, scratch_dir=str(tmp_path)) as source:
            image = source.resolve()
            assert image.source == name
            assert len(image.layers) == 2
            assert image.config.config.cmd == ("/bin/sh",)
            assert "FOO=bar" in image.config.config.env
            assert compute_digest(image.config_bytes) == image.config_digest
            assert compute_digest(image.manifest_bytes) == image.manifest_digest
            assert "bin/busybox" in _tar_names(image, 0)
            assert {"etc/.wh.hello", "etc/second"} <= set(_tar_names(image, 1))
            seen.append(
                (
                    tuple(layer.diff_id for layer in image.layers),
                    tuple(layer.chain_id for layer in image.layers),
                    image.config_digest,
                )
            )
            compressions = {layer.compression for layer in image.layers}
            expected = Compression.NONE if name.startswith("docker") else Compression.GZIP
            assert compressions == {expected}
    assert len(set(seen)) == 1
    assert os.listdir(tmp_path) == []


def test_oci_layout_needs_ref_when_ambiguous(built: BuiltImage) -> None:
    with (
        open_source(f"oci:{built.layout}") as source,
        pytest.raises(SourceError, match=r"holds 2 images; name one .*available: base, v1, @0..@1"),
    ):
        source.resolve()
    with open_source(f"oci:{built.layout}:@0") as source:
        assert source.resolve().config.config.cmd is None  # "base" has no Cmd
    with (
        open_source(f"oci:{built.layout}:nope") as source,
        pytest.raises(SourceError, match=r"no image named 'nope'; available: base, v1"),
    ):
        source.resolve()


def test_compressed_oci_archive_uses_and_cleans_scratch(built: BuiltImage, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar.gz"
    archive.write_bytes(gzip.compress(built.oci_archive.read_bytes(), compresslevel=1))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with open_source(f"oci-archive:{archive}:v1", scratch_dir=str(scratch)) as source:
        assert os.listdir(scratch) == []  # the copy is unlinked once open
        image = source.resolve()
        assert "bin/busybox" in _tar_names(image, 0)
    assert os.listdir(scratch) == []


def test_docker_archive_wrong_tag_lists_available(built: BuiltImage) -> None:
    with (
        open_source(f"docker-archive:{built.docker_archive}:example/bb:v2") as source,
        pytest.raises(
            SourceError,
            match=r"no image tagged 'example/bb:v2'; available: docker.io/example/bb:v1, @0$",
        ),
    ):
        source.resolve()


def test_explicit_platform_checked_against_single_image(built: BuiltImage) -> None:
    other = "linux/s390x" if host_platform().architecture != "s390x" else "linux/amd64"
    with (
        open_source(f"oci:{built.layout}:v1") as source,
        pytest.raises(SourceError, match=f"image is for .*, not {other}"),
    ):
        source.resolve(parse_platform(other))


# --- corrupted layouts -------------------------------------------------------------


def _copy_layout(built: BuiltImage, tmp_path: Path) -> Path:
    dest = tmp_path / "layout"
    shutil.copytree(built.layout, dest)
    return dest


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, encoded = digest.split(":")
    return layout / "blobs" / algorithm / encoded


def test_corrupt_layer_blob_fails_naming_digest(built: BuiltImage, tmp_path: Path) -> None:
    layout = _copy_layout(built, tmp_path)
    with open_source(f"oci:{layout}:v1") as source:
        image = source.resolve()
        layer = image.layers[0]
        path = _blob_path(layout, layer.descriptor.digest)
        data = bytearray(path.read_bytes())
        # NUL padding after a gzip member is legal gzip: only the size check catches it.
        path.write_bytes(bytes(data) + b"\0" * 16)
        with (
            pytest.raises(BlobVerificationError, match=r"size mismatch: .* got more"),
            image.open_layer_tar(layer) as stream,
        ):
            stream.verify()
        path.write_bytes(bytes(data[:-1]))
        with (
            pytest.raises(BlobVerificationError, match=f"blob {layer.descriptor.digest}: size"),
            image.open_layer(layer) as blob,
        ):
            blob.read()
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with (
            pytest.raises(InvalidImageError, match=f"{layer.descriptor.digest}"),
            image.open_layer_tar(layer) as stream,
        ):
            stream.verify()
        path.unlink()
        with pytest.raises(SourceError, match=f"blob {layer.descriptor.digest} is missing"):
            image.open_layer(layer)


def test_corrupt_manifest_and_layout_files(built: BuiltImage, tmp_path: Path) -> None:
    layout = _copy_layout(built, tmp_path)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][1]["digest"]
    path = _blob_path(layout, manifest_digest)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":3'))
    with (
        open_source(f"oci:{layout}:v1") as source,
        pytest.raises(BlobVerificationError, match=f"manifest: blob {manifest_digest}: digest"),
    ):
        source.resolve()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with (
        open_source(f"oci:{layout}:v1") as source,
        pytest.raises(SourceError, match=r"unsupported imageLayoutVersion '2\.0\.0'"),
    ):
        source.resolve()
    (layout / "oci-layout").unlink()
    with (
        open_source(f"oci:{layout}:v1") as source,
        pytest.raises(
            SourceError, match=f"oci:{layout}:v1: not an OCI image layout: no oci-layout"
        ),
    ):
        source.resolve()


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such directory"):
        open_source(f"oci:{tmp_path}/none")
    with pytest.raises(SourceError, match="no such archive file"):
        open_source(f"oci-archive:{tmp_path}/none.tar")
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(SourceError, match="not a readable tar archive"):
        open_source(f"docker-archive:{tmp_path}/junk.tar")


# --- hand-built multi-platform layouts ----------------------------------------------


class Layout:
    """Writes an OCI layout blob by blob."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = compute_digest(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def doc(self, doc: dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        return self.blob(json.dumps(doc).encode(), media_type, **extra)

    def image(self, arch: str, variant: str | None = None) -> dict[str, Any]:
        """A one-layer image for ``arch``; returns its manifest descriptor."""
        tar_bytes = io.BytesIO()
        with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
            info = tarfile.TarInfo("arch")
            payload = arch.encode()
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        raw = tar_bytes.getvalue()
        layer = self.blob(gzip.compress(raw), mt.OCI_LAYER_TAR_GZIP)
        config: dict[str, Any] = {
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [compute_digest(raw)]},
        }
        if variant:
            config["variant"] = variant
        config_desc = self.doc(config, mt.OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": config_desc,
            "layers": [layer],
        }
        platform = {
            "os": "linux",
            "architecture": arch,
            **({"variant": variant} if variant else {}),
        }
        return self.doc(manifest, mt.OCI_MANIFEST, platform=platform)

    def index(self, manifests: list[dict[str, Any]]) -> None:
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
        (self.root / "index.json").write_text(json.dumps(doc))


@pytest.fixture
def multi(tmp_path: Path) -> Path:
    """``:multi`` is a nested index of amd64, arm64/v8 and an unknown/unknown entry."""
    layout = Layout(tmp_path / "multi")
    amd64, arm64 = layout.image("amd64"), layout.image("arm64", "v8")
    attestation = dict(amd64, platform={"os": "unknown", "architecture": "unknown"})
    nested = layout.doc(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [attestation, amd64, arm64]},
        mt.OCI_INDEX,
        annotations={mt.ANNOTATION_REF_NAME: "multi"},
    )
    layout.index([nested])
    return layout.root


def _arch_of(image: ResolvedImage) -> str:
    with (
        image.open_layer_tar(image.layers[0]) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        member = tar.next()
        assert member is not None
        f = tar.extractfile(member)
        assert f is not None
        return f.read().decode()


@pytest.mark.parametrize(
    ("platform", "arch"),
    [("linux/arm64", "arm64"), ("linux/aarch64/v8", "arm64"), ("linux/amd64", "amd64")],
)
def test_platform_selection(multi: Path, platform: str, arch: str) -> None:
    with open_source(f"oci:{multi}:multi") as source:
        image = source.resolve(parse_platform(platform))
        assert image.config.architecture == arch
        assert _arch_of(image) == arch
        assert image.platform is not None and image.platform.architecture == arch


def test_platform_default_is_host(multi: Path) -> None:
    host = host_platform()
    with open_source(f"oci:{multi}") as source:
        if host.architecture in ("amd64", "arm64"):
            assert source.resolve().config.architecture == host.architecture
        else:
            with pytest.raises(SourceError, match="no image for platform"):
                source.resolve()


def test_platform_no_match_lists_available(multi: Path) -> None:
    with (
        open_source(f"oci:{multi}:multi") as source,
        pytest.raises(
            SourceError,
            match=r"no image for platform linux/s390x; "
            r"available: unknown/unknown, linux/amd64, linux/arm64/v8",
        ),
    ):
        source.resolve(Platform("linux", "s390x"))


def test_top_level_platform_entries_without_ref(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "flat")
    layout.index([layout.image("arm", "v6"), layout.image("arm", "v7"), layout.image("amd64")])
    with open_source(f"oci:{layout.root}") as source:
        assert source.resolve(parse_platform("linux/arm/v7")).config.variant == "v7"
        assert source.resolve(parse_platform("linux/arm/v6")).config.variant == "v6"
        assert source.resolve(parse_platform("linux/arm/v8")).config.variant == "v7"
        assert source.resolve(Platform("linux", "amd64")).config.architecture == "amd64"


def test_media_type_mismatch_and_unsupported(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "odd")
    manifest = layout.image("amd64")
    as_index = dict(manifest, mediaType=mt.OCI_INDEX)
    layout.index([as_index])
    with (
        open_source(f"oci:{layout.root}") as source,
        pytest.raises(InvalidImageError, match="index"),
    ):
        source.resolve()
    layout.index([dict(manifest, mediaType="application/vnd.example.thing")])
    with (
        open_source(f"oci:{layout.root}") as source,
        pytest.raises(UnsupportedImageError, match="not an image manifest or index"),
    ):
        source.resolve()


def test_unsupported_layer_type_fails_only_when_unpacked(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "sq")
    config = layout.doc(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [compute_digest(b"x")]},
        },
        mt.OCI_CONFIG,
    )
    layer = layout.blob(b"x", "application/vnd.example.squashfs")
    layout.index(
        [layout.doc({"schemaVersion": 2, "config": config, "layers": [layer]}, mt.OCI_MANIFEST)]
    )
    with open_source(f"oci:{layout.root}") as source:
        image = source.resolve()
        with pytest.raises(UnsupportedImageError, match="squashfs"):
            image.open_layer_tar(image.layers[0])
        with image.open_layer(image.layers[0]) as blob:
            assert blob.read() == b"x"


# --- hand-built docker archives ------------------------------------------------------


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _layer_tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, name, name.encode())
    return buf.getvalue()


def test_docker_archive_gzip_layers_and_many_images(tmp_path: Path) -> None:
    base, top = _layer_tar("base"), _layer_tar("top")
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [compute_digest(base), compute_digest(top)]},
        }
    ).encode()
    archive = tmp_path / "docker.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "cfg.json", config)
        _add(tar, "blobs/base.tar.gz", gzip.compress(base))
        _add(tar, "blobs/top.tar", top)
        link = tarfile.TarInfo("legacy/layer.tar")  # docker save's legacy layout
        link.type, link.linkname = tarfile.SYMTYPE, "../blobs/top.tar"
        tar.addfile(link)
        manifest = [
            {
                "Config": "cfg.json",
                "RepoTags": ["busybox:latest"],
                "Layers": ["blobs/base.tar.gz", "legacy/layer.tar"],
            },
            {
                "Config": "cfg.json",
                "RepoTags": None,
                "Layers": ["blobs/base.tar.gz", "blobs/top.tar"],
            },
        ]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    with open_source(f"docker-archive:{archive}:busybox") as source:
        image = source.resolve()
        assert [layer.compression for layer in image.layers] == [Compression.GZIP, Compression.NONE]
        assert image.layers[0].descriptor.digest == compute_digest(gzip.compress(base))
        assert image.manifest.media_type == mt.DOCKER_MANIFEST
        assert [_tar_names(image, i) for i in (0, 1)] == [["base"], ["top"]]
    with open_source(f"docker-archive:{archive}:@1") as source:
        assert _tar_names(source.resolve(), 1) == ["top"]
    with (
        open_source(f"docker-archive:{archive}") as source,
        pytest.raises(SourceError, match=r"holds 2 images; .*available: busybox:latest, @0..@1"),
    ):
        source.resolve()
    with (
        open_source(f"docker-archive:{archive}:@2") as source,
        pytest.raises(SourceError, match="no image @2; the archive holds 2"),
    ):
        source.resolve()


def test_docker_archive_bad_manifest(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "manifest.json", json.dumps([{"Config": "c.json", "Layers": [1]}]).encode())
    with (
        open_source(f"docker-archive:{archive}") as source,
        pytest.raises(
            InvalidImageError, match=r"manifest\.json: \[0\]\.Layers\[0\]: expected a string"
        ),
    ):
        source.resolve()


# --- limits, embedded data, concurrency -----------------------------------------------


def test_index_nesting_limit(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "deep")
    desc = layout.image("amd64")
    for _ in range(10):
        nested = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [desc]}
        desc = layout.doc(nested, mt.OCI_INDEX, platform={"os": "linux", "architecture": "amd64"})
    layout.index([desc])
    with (
        open_source(f"oci:{layout.root}") as source,
        pytest.raises(InvalidImageError, match="indexes nested deeper than 8 levels"),
    ):
        source.resolve(Platform("linux", "amd64"))


def test_oversized_document_refused_before_reading(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "big")
    desc = dict(layout.image("amd64"), size=5 << 20)
    layout.index([desc])
    with (
        open_source(f"oci:{layout.root}") as source,
        pytest.raises(InvalidImageError, match=r"manifest sha256:\w+: size 5242880 exceeds"),
    ):
        source.resolve()


def test_embedded_config_needs_no_blob(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "embedded")
    raw = _layer_tar("f")
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [compute_digest(raw)]},
        }
    ).encode()
    config_desc = {
        "mediaType": mt.OCI_CONFIG,
        "digest": compute_digest(config),
        "size": len(config),
        "data": base64.b64encode(config).decode(),
    }
    layer = layout.blob(raw, mt.OCI_LAYER_TAR)
    layout.index(
        [
            layout.doc(
                {"schemaVersion": 2, "config": config_desc, "layers": [layer]}, mt.OCI_MANIFEST
            )
        ]
    )
    with open_source(f"oci:{layout.root}") as source:
        image = source.resolve()
        assert image.config_bytes == config
        with image.open_blob(image.manifest.config) as blob:
            assert blob.read() == config
        assert _tar_names(image, 0) == ["f"]


def test_layers_read_in_parallel_threads(built: BuiltImage) -> None:
    with open_source(f"oci-archive:{built.oci_archive}") as source:
        image = source.resolve()

        def digest_of(index: int) -> str:
            with image.open_layer_tar(image.layers[index]) as stream:
                stream.verify()
                return stream.digest

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(digest_of, [0, 1, 0, 1, 0, 1]))
    assert results == [image.layers[i % 2].diff_id for i in range(6)]
