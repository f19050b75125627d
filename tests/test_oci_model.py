"""Pure-logic tests of the OCI model: digests, documents, media types, platforms, names."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from layerfs.oci import (
    Compression,
    DigestError,
    InvalidImageError,
    Platform,
    SourceError,
    Transport,
    UnsupportedImageError,
    chain_id,
    chain_ids,
    compute_digest,
    hasher_for,
    layer_compression,
    normalize_platform,
    parse_config,
    parse_descriptor,
    parse_digest,
    parse_index,
    parse_manifest,
    parse_platform,
    parse_source,
)
from layerfs.oci import mediatypes as mt
from layerfs.oci.jsondoc import MAX_DEPTH, MAX_DOCUMENT_SIZE, load_json
from layerfs.oci.platform import choose_platform
from layerfs.oci.reference import normalize_docker_name

Doc = dict[str, Any]

SHA_A = "sha256:" + hashlib.sha256(b"a").hexdigest()
SHA_B = "sha256:" + hashlib.sha256(b"b").hexdigest()


def _manifest() -> Doc:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": SHA_A, "size": 1},
        "layers": [
            {"mediaType": mt.OCI_LAYER_TAR_GZIP, "digest": SHA_A, "size": 10},
            {"mediaType": mt.OCI_LAYER_TAR, "digest": SHA_B, "size": 20},
            {"mediaType": mt.OCI_LAYER_TAR_ZSTD, "digest": SHA_B, "size": 30},
        ],
    }


def _index() -> Doc:
    return {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": SHA_A,
                "size": 7,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            }
        ],
    }


def _config() -> Doc:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "ExposedPorts": {"80/tcp": {}},
            "Env": ["PATH=/usr/bin", "EMPTY="],
            "Entrypoint": ["/bin/sh"],
            "Cmd": None,
            "Volumes": {"/data": {}},
            "WorkingDir": "/srv",
            "Labels": {"a": "b"},
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": [SHA_A, SHA_B]},
        "history": [{"created_by": "x"}, {"empty_layer": True, "comment": None}],
    }


def _dumps(doc: Doc) -> bytes:
    return json.dumps(doc).encode()


# --- digests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        SHA_A,
        "sha512:" + hashlib.sha512(b"x").hexdigest(),
        "blake3:" + "ab" * 32,
        "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
        "a.b_c-d+e:X=",
    ],
)
def test_parse_digest_accepts_grammar(text: str) -> None:
    assert parse_digest(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + "a" * 64,
        "sha256:" + "A" * 64,  # registered algorithms want lowercase hex
        "sha256:" + "a" * 63,
        "sha512:" + "a" * 64,
        "SHA256:" + "a" * 64,
        "sha256+:abc",
        "a..b:abc",
        "-a:abc",
        "foo:ab/c",
        "foo:ab.c",
        "sha256:" + "g" * 64,
    ],
)
def test_parse_digest_rejects(text: str) -> None:
    with pytest.raises(DigestError, match="invalid digest"):
        parse_digest(text)


def test_unknown_algorithm_parses_but_cannot_be_verified() -> None:
    digest = parse_digest("foo+bar:abc")
    with pytest.raises(UnsupportedImageError, match=r"foo\+bar.*not supported"):
        hasher_for(digest)
    with pytest.raises(UnsupportedImageError, match="blake3"):
        hasher_for(parse_digest("blake3:" + "0" * 64))


def test_compute_digest_algorithms() -> None:
    assert compute_digest(b"a") == SHA_A
    assert compute_digest(b"x", "sha512") == "sha512:" + hashlib.sha512(b"x").hexdigest()


def test_chain_id_by_hand() -> None:
    d0, d1, d2 = parse_digest(SHA_A), parse_digest(SHA_B), compute_digest(b"c")
    c1 = "sha256:" + hashlib.sha256(f"{d0} {d1}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {d2}".encode()).hexdigest()
    assert chain_id([d0]) == d0
    assert chain_id([d0, d1]) == c1
    assert chain_ids([d0, d1, d2]) == (d0, c1, c2)
    with pytest.raises(ValueError):
        chain_id([])


# --- manifests ---------------------------------------------------------------


def test_parse_manifest_valid() -> None:
    doc = _manifest()
    doc["annotations"] = {"k": "v"}
    doc["futureField"] = {"anything": [1, 2]}
    doc["layers"].append(
        {"mediaType": "application/vnd.example.unknown", "digest": "foo:bar", "size": 0}
    )
    m = parse_manifest(_dumps(doc))
    assert m.media_type == mt.OCI_MANIFEST
    assert m.config.digest == SHA_A
    assert [layer.size for layer in m.layers] == [10, 20, 30, 0]
    assert m.annotations == {"k": "v"}
    assert parse_manifest(json.dumps(doc)) == m  # str in, same result


def test_parse_manifest_nulls_and_docker() -> None:
    doc = _manifest()
    doc.update(mediaType=mt.DOCKER_MANIFEST, annotations=None, subject=None, artifactType=None)
    doc["layers"][0].update(urls=None, annotations=None, platform=None, data=None)
    m = parse_manifest(_dumps(doc))
    assert m.media_type == mt.DOCKER_MANIFEST
    assert m.layers[0].urls == () and m.annotations == {}
    del doc["mediaType"]
    assert parse_manifest(_dumps(doc)).media_type is None


def _set(path: str, value: object) -> Callable[[Doc], None]:
    """A mutation setting ``path`` (``/``-separated, digits index lists) to ``value``."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return mutate


MANIFEST_CASES: list[tuple[Callable[[Doc], None], str]] = [
    (_set("schemaVersion", 1), r"manifest: schemaVersion: expected 2"),
    (_set("schemaVersion", "2"), r"manifest: schemaVersion: expected an integer"),
    (_set("schemaVersion", True), r"manifest: schemaVersion: expected an integer"),
    (_delete("schemaVersion"), r"manifest: schemaVersion: required"),
    (_set("mediaType", mt.OCI_INDEX), r"manifest: mediaType: .*not a manifest media type"),
    (_set("mediaType", mt.DOCKER_MANIFEST_LIST), r"manifest: mediaType: "),
    (_set("mediaType", "text/plain"), r"manifest: mediaType: "),
    (_set("mediaType", "nonsense"), r"manifest: mediaType: invalid media type"),
    (_set("manifests", []), r"manifest: manifests: not allowed in a manifest"),
    (_delete("config"), r"manifest: config: required"),
    (_set("config", []), r"manifest: config: expected an object"),
    (_delete("layers"), r"manifest: layers: required"),
    (_set("layers", {}), r"manifest: layers: expected an array"),
    (_set("layers/2", "x"), r"manifest: layers\[2\]: expected an object"),
    (_set("layers/2/digest", "sha256:abc"), r"manifest: layers\[2\]\.digest: invalid digest"),
    (_set("layers/2/digest", 5), r"manifest: layers\[2\]\.digest: expected a string"),
    (_delete("layers/1/digest"), r"manifest: layers\[1\]\.digest: required"),
    (_delete("layers/1/mediaType"), r"manifest: layers\[1\]\.mediaType: required"),
    (_set("layers/0/mediaType", 3), r"manifest: layers\[0\]\.mediaType: expected a string"),
    (_set("layers/0/size", -1), r"manifest: layers\[0\]\.size: expected an integer >= 0"),
    (_set("layers/0/size", 1.5), r"manifest: layers\[0\]\.size: expected an integer >= 0"),
    (_set("layers/0/size", 10.0), r"manifest: layers\[0\]\.size: expected an integer >= 0"),
    (_set("layers/0/size", True), r"manifest: layers\[0\]\.size: .*boolean"),
    (_set("layers/0/size", "10"), r"manifest: layers\[0\]\.size: "),
    (_set("layers/0/size", 2**63), r"manifest: layers\[0\]\.size: "),
    (_delete("layers/0/size"), r"manifest: layers\[0\]\.size: required"),
    (_set("layers/0/urls", "http://x"), r"manifest: layers\[0\]\.urls: expected an array"),
    (_set("layers/0/urls", ["http://x", 1]), r"manifest: layers\[0\]\.urls\[1\]: expected a str"),
    (_set("layers/0/annotations", {"a": 1}), r"manifest: layers\[0\]\.annotations\.a: expected a"),
    (_set("layers/0/annotations", []), r"manifest: layers\[0\]\.annotations: expected an obj"),
    (_set("annotations", {"k": None}), r"manifest: annotations\.k: expected a string"),
    (_set("config/digest", "sha256:" + "A" * 64), r"manifest: config\.digest: .*lowercase"),
    (_set("config/platform", {"os": "linux"}), r"manifest: config\.platform\.architecture: req"),
    (_set("artifactType", "bad"), r"manifest: artifactType: invalid media type"),
    (_set("subject", {"mediaType": mt.OCI_MANIFEST}), r"manifest: subject\.digest: required"),
]


@pytest.mark.parametrize(("mutate", "message"), MANIFEST_CASES)
def test_parse_manifest_invalid(mutate: Callable[[Doc], None], message: str) -> None:
    doc = copy.deepcopy(_manifest())
    mutate(doc)
    with pytest.raises(InvalidImageError, match=message):
        parse_manifest(_dumps(doc))


def test_parse_manifest_not_an_object() -> None:
    with pytest.raises(InvalidImageError, match="manifest: expected an object, got an array"):
        parse_manifest(b"[]")


# --- indexes -----------------------------------------------------------------


def test_parse_index_valid() -> None:
    idx = parse_index(_dumps(_index()))
    (entry,) = idx.manifests
    assert entry.platform == Platform("linux", "arm64", "v8")
    doc = _index()
    doc["mediaType"] = mt.DOCKER_MANIFEST_LIST
    assert parse_index(_dumps(doc)).media_type == mt.DOCKER_MANIFEST_LIST


INDEX_CASES: list[tuple[Callable[[Doc], None], str]] = [
    (_set("mediaType", mt.OCI_MANIFEST), r"index: mediaType: .*not an index media type"),
    (_set("schemaVersion", 3), r"index: schemaVersion: expected 2"),
    (_set("layers", []), r"index: layers: not allowed in an index"),
    (_set("config", {}), r"index: config: not allowed"),
    (_delete("manifests"), r"index: manifests: required"),
    (_set("manifests/0/platform", "linux"), r"index: manifests\[0\]\.platform: expected an obj"),
    (_set("manifests/0/platform/os", None), r"index: manifests\[0\]\.platform\.os: required"),
    (
        _set("manifests/0/platform/os.features", [1]),
        r"index: manifests\[0\]\.platform\.os\.features\[0\]: expected a string",
    ),
]


@pytest.mark.parametrize(("mutate", "message"), INDEX_CASES)
def test_parse_index_invalid(mutate: Callable[[Doc], None], message: str) -> None:
    doc = copy.deepcopy(_index())
    mutate(doc)
    with pytest.raises(InvalidImageError, match=message):
        parse_index(_dumps(doc))


# --- configs -----------------------------------------------------------------


def test_parse_config_valid() -> None:
    c = parse_config(_dumps(_config()))
    assert (c.os, c.architecture) == ("linux", "amd64")
    assert c.config.env == ("PATH=/usr/bin", "EMPTY=")
    assert c.config.entrypoint == ("/bin/sh",)
    assert c.config.cmd is None
    assert c.config.exposed_ports == ("80/tcp",)
    assert c.config.volumes == ("/data",)
    assert c.config.labels == {"a": "b"}
    assert c.rootfs.diff_ids == (SHA_A, SHA_B)
    assert [h.empty_layer for h in c.history] == [False, True]


def test_parse_config_minimal_docker_style() -> None:
    doc = {
        "architecture": "arm64",
        "os": "linux",
        "config": None,
        "container_config": {"Hostname": "x"},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    c = parse_config(_dumps(doc))
    assert c.config.cmd is None and c.config.env == () and c.history == ()


CONFIG_CASES: list[tuple[Callable[[Doc], None], str]] = [
    (_delete("architecture"), r"config: architecture: required"),
    (_set("os", 1), r"config: os: expected a string"),
    (_delete("rootfs"), r"config: rootfs: required"),
    (_set("rootfs/type", "tarball"), r'config: rootfs\.type: expected "layers"'),
    (_delete("rootfs/diff_ids"), r"config: rootfs\.diff_ids: required"),
    (_set("rootfs/diff_ids/1", "sha256:zz"), r"config: rootfs\.diff_ids\[1\]: invalid digest"),
    (_set("config/Env/1", "NOEQUALS"), r"config: config\.Env\[1\]: expected NAME=value"),
    (_set("config/Env/0", "=value"), r"config: config\.Env\[0\]: expected NAME=value"),
    (_set("config/Env", "A=b"), r"config: config\.Env: expected an array"),
    (_set("config/Cmd", [1]), r"config: config\.Cmd\[0\]: expected a string"),
    (_set("config/Entrypoint", "sh"), r"config: config\.Entrypoint: expected an array"),
    (_set("config/ExposedPorts", {"80/tcp": 1}), r"config: config\.ExposedPorts\.80/tcp: "),
    (_set("config/Volumes", ["/data"]), r"config: config\.Volumes: expected an object"),
    (_set("config/Labels", {"a": 1}), r"config: config\.Labels\.a: expected a string"),
    (_set("config/User", 0), r"config: config\.User: expected a string"),
    (_set("history/1/empty_layer", "yes"), r"config: history\[1\]\.empty_layer: expected a bool"),
    (_set("history", {}), r"config: history: expected an array"),
]


@pytest.mark.parametrize(("mutate", "message"), CONFIG_CASES)
def test_parse_config_invalid(mutate: Callable[[Doc], None], message: str) -> None:
    doc = copy.deepcopy(_config())
    mutate(doc)
    with pytest.raises(InvalidImageError, match=message):
        parse_config(_dumps(doc))


# --- descriptors and embedded data ---------------------------------------------


def _data_descriptor(payload: bytes, **override: object) -> Doc:
    doc: Doc = {
        "mediaType": mt.OCI_CONFIG,
        "digest": compute_digest(payload),
        "size": len(payload),
        "data": base64.b64encode(payload).decode(),
    }
    doc.update(override)
    return doc


def test_descriptor_data_valid() -> None:
    d = parse_descriptor(_dumps(_data_descriptor(b"{}")))
    assert d.data == b"{}"
    assert parse_descriptor(_dumps(_data_descriptor(b""))).data == b""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"data": "e30"}, r"descriptor: data: invalid base64"),  # missing padding
        ({"data": "e3!="}, r"descriptor: data: invalid base64"),
        ({"data": "e 30="}, r"descriptor: data: invalid base64"),
        ({"data": "e31="}, r"descriptor: data: invalid base64: not in canonical form"),
        ({"data": 5}, r"descriptor: data: expected a string"),
        ({"size": 3}, r"descriptor: data: decodes to 2 bytes but size is 3"),
        ({"digest": SHA_A}, r"descriptor: data: .*digest mismatch"),
        ({"digest": "foo:bar"}, r"descriptor: data: .*not supported"),
    ],
)
def test_descriptor_data_invalid(override: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        parse_descriptor(_dumps(_data_descriptor(b"{}", **override)))


# --- JSON limits ---------------------------------------------------------------


def test_json_depth_limit() -> None:
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    load_json(ok, "doc")
    too_deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(InvalidImageError, match=f"doc: nested deeper than {MAX_DEPTH}"):
        load_json(too_deep, "doc")
    very_deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    with pytest.raises(InvalidImageError, match="manifest: nested deeper"):
        parse_manifest(very_deep)


def test_json_size_limit() -> None:
    doc = _manifest()
    doc["annotations"] = {"pad": "x" * MAX_DOCUMENT_SIZE}
    with pytest.raises(InvalidImageError, match="manifest: document too large"):
        parse_manifest(_dumps(doc))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (b"{", "invalid JSON"),
        (b"", "invalid JSON"),
    ],
)
def test_json_strictness(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=f"config: .*{message}"):
        parse_config(data)


# --- media types ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        (mt.OCI_LAYER_TAR, Compression.NONE),
        (mt.OCI_LAYER_TAR_GZIP, Compression.GZIP),
        (mt.OCI_LAYER_TAR_ZSTD, Compression.ZSTD),
        (mt.DOCKER_LAYER_TAR_GZIP, Compression.GZIP),
        (mt.DOCKER_LAYER_FOREIGN_TAR_GZIP, Compression.GZIP),
        (mt.OCI_LAYER_NONDIST_TAR_ZSTD, Compression.ZSTD),
    ],
)
def test_layer_compression(media_type: str, compression: Compression) -> None:
    assert layer_compression(media_type) is compression


def test_layer_compression_unsupported() -> None:
    with pytest.raises(UnsupportedImageError, match="encrypted layers are not supported"):
        layer_compression(mt.OCI_LAYER_TAR_GZIP + "+encrypted")
    with pytest.raises(UnsupportedImageError, match="'application/x-squashfs'"):
        layer_compression("application/x-squashfs")


# --- platforms -----------------------------------------------------------------


def test_platform_parsing_and_normalization() -> None:
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("linux/aarch64") == Platform("linux", "arm64", "v8")
    assert parse_platform("linux/arm") == Platform("linux", "arm", "v7")
    assert normalize_platform(Platform("Linux", "x86_64")) == Platform("linux", "amd64")
    assert str(parse_platform("linux/arm/v6")) == "linux/arm/v6"
    for bad in ["linux", "linux/", "/amd64", "a/b/c/d"]:
        with pytest.raises(ValueError, match="OS/ARCH"):
            parse_platform(bad)


def test_choose_platform_prefers_exact_then_lower_arm_variants() -> None:
    cands: list[Platform | None] = [
        None,
        Platform("linux", "amd64"),
        Platform("linux", "arm", "v6"),
        Platform("linux", "arm", "v7"),
        Platform("linux", "arm64"),
    ]
    assert choose_platform(Platform("linux", "arm", "v7"), cands) == 3
    assert choose_platform(Platform("linux", "arm", "v8"), cands) == 3
    assert choose_platform(Platform("linux", "arm", "v6"), cands) == 2
    assert choose_platform(Platform("linux", "arm", "v5"), cands) is None
    assert choose_platform(Platform("linux", "arm64", "v8"), cands) == 4
    assert choose_platform(Platform("linux", "x86_64"), cands) == 1
    assert choose_platform(Platform("windows", "amd64"), cands) is None


# --- source names --------------------------------------------------------------


def test_parse_source_forms() -> None:
    r = parse_source("oci:/x/layout:v1.0")
    assert (r.transport, r.path, r.ref) == (Transport.OCI, "/x/layout", "v1.0")
    assert parse_source("oci:rel").ref is None
    assert parse_source("oci:rel:").ref is None
    assert parse_source("oci-archive:/a.tar:@2").source_index == 2
    d = parse_source("docker-archive:/a.tar:localhost:5000/foo/bar:tag")
    assert (d.path, d.ref) == ("/a.tar", "localhost:5000/foo/bar:tag")
    assert str(d) == "docker-archive:/a.tar:localhost:5000/foo/bar:tag"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("docker://Busybox", "invalid repository name"),
        ("dir:/x", r"unknown transport 'dir'"),
        ("/some/path", "missing transport"),
        ("oci:", "missing path"),
        ("oci:/x:bad ref", "invalid reference"),
        ("docker-archive:/a.tar:Foo:bar", "invalid reference"),
        ("docker-archive:/a.tar:foo@sha256:abc", "invalid reference|cannot hold a digest"),
    ],
)
def test_parse_source_errors(name: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_source(name)


def test_normalize_docker_name() -> None:
    assert normalize_docker_name("busybox") == "docker.io/library/busybox:latest"
    assert normalize_docker_name("foo/bar:v1") == "docker.io/foo/bar:v1"
    assert normalize_docker_name("docker.io/foo/bar:v1") == "docker.io/foo/bar:v1"
    assert normalize_docker_name("localhost:5000/x") == "localhost:5000/x:latest"
    assert normalize_docker_name("quay.io/a/b:c") == "quay.io/a/b:c"
