"""docker:// pulls and pushes against a real registry (Debian's docker-registry) on 127.0.0.1.

Images are built with umoci and put into the registry with skopeo; layerctl pulls them, runs
one with runc, commits and pushes back, and skopeo reads what it pushed. A proxy in the middle
corrupts or cuts blob downloads; variants of the registry want htpasswd basic auth, bearer
tokens from a token service, or TLS with a self-signed certificate. The last test measures a
pull against ``skopeo copy`` + ``umoci unpack`` of the same image (run with ``-s`` to see it).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerfs.oci import SourceError, parse_source
from layerfs.oci.mediatypes import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST
from layerfs.oci.registry import (
    Credentials,
    RegistryOptions,
    parse_registry_ref,
    using_registry_options,
)
from layerfs.oci.registry.authfile import find_credentials
from layerfs.oci.registry.challenge import parse_challenges
from layerfs.oci.registry.mirrors import endpoints, load_registries
from layerfs.store.pull import LayerImportError, pull_image
from layerfs.store.push import push_image
from layerfs.store.store import Store
from tests.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Dir,
    File,
    ImageConfigSpec,
    LayerSpec,
    build_image,
    have_tools,
    make_index,
    manifest_of,
    run,
)
from tests.layerctl import Run, fingerprint, layerctl, remove_all_containers, runc_run
from tests.mounts import mounted
from tests.registry import (
    REGISTRY,
    Htpasswd,
    Registry,
    TokenService,
    free_port,
    make_cert,
    run_proxy,
    run_registry,
    run_token_service,
)

pytestmark = pytest.mark.skipif(
    REGISTRY is None or have_tools() is not None,
    reason="needs docker-registry, umoci and skopeo",
)

INSECURE = "--tls-verify=false"
USER, PASSWORD = "alice", "s3cret:with:colons"
SCRIPT = "cat /etc/hello; echo made-in-container > /data/made"


@dataclass(frozen=True)
class World:
    """The plain registry: ``test/app:v1``, ``test/app:v2`` (v1 plus a layer), and an amd64 +
    arm64 image as ``multi/oci`` (OCI index) and ``multi/docker`` (Docker manifest list)."""

    registry: Registry
    layout: Path

    def ref(self, tag: str = "v1", repo: str = "test/app") -> str:
        return self.registry.ref(f"{repo}:{tag}")


def skopeo_copy(src: str, dest: str, *flags: str) -> None:
    run("skopeo", "copy", "--quiet", *flags, src, dest)


def layer_digests(layout: Path, tag: str) -> list[str]:
    layers = manifest_of(layout, tag)["layers"]
    assert isinstance(layers, list)
    return [str(layer["digest"]) for layer in layers]


def one_line_failure(r: Run, *needles: str) -> str:
    assert r.code == 1, (r.out, r.err)
    assert len(r.err_lines) == 1, r.err
    for needle in needles:
        assert needle in r.err, r.err
    return r.err


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("registry-img")
    layers: list[LayerSpec] = [
        {"etc": Dir(), "etc/hello": "hello from the registry\n", "data": Dir(mode=0o777)}
    ]
    config = ImageConfigSpec(cmd=["/bin/sh", "-c", SCRIPT])
    layout = build_image(work, layers, tag="v1", config=config)
    extra: LayerSpec = {"opt": Dir(), "opt/extra": File(os.urandom(50_000))}
    build_image(work, [*layers, extra], tag="v2", config=config, layout=layout)
    arm = ImageConfigSpec(architecture="arm64")
    build_image(work, [{"etc/arch": "arm64\n"}], tag="arm", config=arm, layout=layout)
    make_index(layout, ["v1", "arm"], "multi")
    return layout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, image: Path) -> Iterator[World]:
    with run_registry(tmp_path_factory.mktemp("registry")) as registry:
        for tag in ("v1", "v2"):
            skopeo_copy(
                f"oci:{image}:{tag}", registry.ref(f"test/app:{tag}"), "--dest-tls-verify=false"
            )
        # One multi-platform image as an OCI index, and as a Docker manifest list of schema 2
        # manifests.
        for repo, form in (("multi/oci", "oci"), ("multi/docker", "v2s2")):
            skopeo_copy(
                f"oci:{image}:multi",
                registry.ref(f"{repo}:latest"),
                "--dest-tls-verify=false",
                "--all",
                f"--format={form}",
            )
        yield World(registry, image)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    store = tmp_path / "store"
    assert layerctl(store, "init").code == 0
    yield store
    remove_all_containers(store)


# -- pull, run, commit, push ----------------------------------------------------------------------


@pytest.mark.runc
def test_pull_create_run_commit_push(world: World, root: Path, tmp_path: Path) -> None:
    r = layerctl(root, "pull", world.ref(), INSECURE)
    assert r.code == 0, r.err
    name = f"{world.registry.host}/test/app:v1"
    assert f"pulled {name} " in r.out and "2 unpacked" in r.out

    r = layerctl(root, "create", name, "c1")
    assert r.code == 0, r.err
    bundle = r.out.strip()
    assert mounted(Path(bundle) / "rootfs", "fuse.layerfs")
    out = runc_run(bundle, f"lfs-reg-{os.getpid()}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from the registry\n"

    # The container's change, committed and pushed: the base layers are mounted from the
    # repository they came from, the new layer and config uploaded.
    assert layerctl(root, "commit", "c1", "app:committed").code == 0
    dest = world.ref("v1", "committed/app")
    r = layerctl(root, "push", "app:committed", dest, INSECURE)
    assert r.code == 0, r.err
    assert "2 blobs uploaded, 2 mounted, 0 already there" in r.out, r.out

    # skopeo reads it back, and umoci finds the file the container wrote.
    info = json.loads(run("skopeo", "inspect", INSECURE, dest))
    record = json.loads(layerctl(root, "inspect", "app:committed", "--json").out)
    assert info["Digest"] == record["manifest_digest"]
    assert len(info["Layers"]) == 3
    skopeo_copy(dest, f"oci:{tmp_path / 'back'}:v1", "--src-tls-verify=false")
    run(
        "umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'back'}:v1", tmp_path / "unpacked"
    )
    assert (tmp_path / "unpacked/rootfs/data/made").read_text() == "made-in-container\n"
    assert layerctl(root, "rm", "--force", "c1").code == 0


@pytest.mark.parametrize(
    ("repo", "index_type", "manifest_type"),
    [
        ("multi/oci", OCI_INDEX, OCI_MANIFEST),
        ("multi/docker", DOCKER_MANIFEST_LIST, DOCKER_MANIFEST),
    ],
)
def test_manifest_negotiation_and_platforms(
    world: World, root: Path, repo: str, index_type: str, manifest_type: str
) -> None:
    raw = json.loads(run("skopeo", "inspect", "--raw", INSECURE, world.ref("latest", repo)))
    assert raw["mediaType"] == index_type
    for platform, arch in ((None, "amd64"), ("linux/arm64", "arm64")):
        name = f"{repo}-{arch}"
        flags = ["--platform", platform] if platform else []
        r = layerctl(root, "pull", world.registry.ref(repo), INSECURE, "--name", name, *flags)
        assert r.code == 0, r.err
        record = json.loads(layerctl(root, "inspect", name, "--json").out)
        assert record["platform"] == f"linux/{arch}"
        assert record["manifest_media_type"] == manifest_type
    one_line_failure(
        layerctl(root, "pull", world.registry.ref(repo), INSECURE, "--platform", "linux/s390x"),
        "no image for platform linux/s390x",
    )


def test_stored_layers_are_not_downloaded_again(world: World, root: Path) -> None:
    with run_proxy(world.registry.host) as proxy:
        v1 = f"docker://{proxy.host}/test/app:v1"
        assert layerctl(root, "pull", v1, INSECURE).code == 0
        proxy.log.clear()
        r = layerctl(root, "pull", f"docker://{proxy.host}/test/app:v2", INSECURE)
        assert r.code == 0, r.err
        assert "1 unpacked, 0 blob-only, 2 already present" in r.out
        downloaded = [
            p.rpartition("/")[2] for m, p, _ in proxy.log if "/blobs/" in p and m == "GET"
        ]
        v2 = layer_digests(world.layout, "v2")
        assert v2[-1] in downloaded
        assert not set(v2[:-1]) & set(downloaded), "a layer the store has was downloaded"

        # Pulling it again reads the manifest and config, nothing else.
        proxy.log.clear()
        assert "3 already present" in layerctl(root, "pull", v1.replace("v1", "v2"), INSECURE).out
        assert not set(v2) & {p.rpartition("/")[2] for _, p, _ in proxy.log}


def test_push_monolithic_chunked_and_existing(world: World, root: Path) -> None:
    # From an oci: layout, so nothing can be mounted: every blob is uploaded. Blobs over the
    # chunk size go up in PATCHes, the rest in one PUT.
    assert layerctl(root, "pull", f"oci:{world.layout}:v2").code == 0
    store = Store.open(str(root))
    chunk = 64 << 10
    with run_proxy(world.registry.host) as proxy:
        dest = f"docker://{proxy.host}/chunked/app:v2"
        result = push_image(
            store, "layout:v2", dest, RegistryOptions(tls_verify=False, chunk_size=chunk)
        )
        assert result.registry is not None
        assert [a.value for _, a in result.registry.actions] == ["uploaded"] * 4
        patches = [p for m, p, _ in proxy.log if m == "PATCH"]
        sizes = {
            str(x["digest"]): int(str(x["size"])) for x in _manifest_layers(world.layout, "v2")
        }
        big = sum(-(-s // chunk) for s in sizes.values() if s > chunk)
        assert len(patches) == big and big >= 2
        puts = [p for m, p, _ in proxy.log if m == "PUT" and "/blobs/uploads/" in p]
        assert len(puts) == 4

        again = push_image(store, "layout:v2", dest, RegistryOptions(tls_verify=False))
        assert again.registry is not None
        assert [a.value for _, a in again.registry.actions] == ["exists"] * 4
    info = json.loads(run("skopeo", "inspect", INSECURE, world.ref("v2", "chunked/app")))
    assert info["Digest"] == store.find_image("layout:v2").manifest_digest
    assert info["Layers"] == layer_digests(world.layout, "v2")


# -- errors: nothing half-stored ------------------------------------------------------------------


def test_missing_tag_and_repository(world: World, root: Path) -> None:
    before = fingerprint(root)
    err = one_line_failure(layerctl(root, "pull", world.ref("nope"), INSECURE), "no tag 'nope'")
    assert "tags: v1, v2" in err
    one_line_failure(
        layerctl(root, "pull", world.ref("v1", "no/such"), INSECURE), "no repository 'no/such'"
    )
    digest = "sha256:" + "0" * 64
    one_line_failure(
        layerctl(root, "pull", world.registry.ref(f"test/app@{digest}"), INSECURE),
        f"no manifest {digest}",
    )
    assert fingerprint(root) == before


def test_corrupted_blob_is_refused_and_nothing_stored(world: World, root: Path) -> None:
    top = layer_digests(world.layout, "v1")[-1]
    before = fingerprint(root)
    with run_proxy(world.registry.host) as proxy:
        proxy.corrupt.add(top)
        r = layerctl(root, "pull", f"docker://{proxy.host}/test/app:v1", INSECURE)
    one_line_failure(r, f"blob {top}: digest mismatch")
    assert fingerprint(root) == before


def test_dropped_connection_is_resumed(world: World, root: Path) -> None:
    base = layer_digests(world.layout, "v1")[0]  # busybox: big enough to be cut in the middle
    with run_proxy(world.registry.host) as proxy:
        proxy.drop_after[base] = [100_000]
        r = layerctl(root, "pull", f"docker://{proxy.host}/test/app:v1", INSECURE)
        assert r.code == 0, r.err
        assert proxy.blob_gets(base) == [None, "bytes=100000-"]
    assert "2 unpacked" in r.out
    assert layerctl(root, "fsck").code == 0


def test_download_that_keeps_breaking_gives_up(world: World, root: Path) -> None:
    base = layer_digests(world.layout, "v1")[0]
    store = Store.open(str(root))
    before = fingerprint(root)
    with run_proxy(world.registry.host) as proxy:
        proxy.drop_after[base] = [100_000, 0, 0]
        source = f"docker://{proxy.host}/test/app:v1"
        with (
            using_registry_options(RegistryOptions(tls_verify=False, retries=2)),
            pytest.raises(
                LayerImportError, match=r"stopped at byte 100000 of \d+ .*gave up after 2 retries"
            ),
        ):
            pull_image(store, source)
        assert proxy.blob_gets(base) == [None, "bytes=100000-", "bytes=100000-"]
    assert fingerprint(root) == before


def test_plain_http_needs_tls_verify_false(world: World, root: Path) -> None:
    one_line_failure(
        layerctl(root, "pull", world.ref()), "does not speak TLS", "--tls-verify=false"
    )


def test_unreachable_registry(root: Path) -> None:
    one_line_failure(
        layerctl(root, "pull", f"docker://127.0.0.1:{free_port()}/a/b:c", INSECURE),
        "connection refused",
    )


def test_mirror_from_registries_conf(
    world: World, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        '[[registry]]\nprefix = "mirrored.example/team"\nlocation = "127.0.0.1:1/team"\n'
        f'mirror = [{{ location = "{world.registry.host}/test", insecure = true }}]\n'
    )
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    r = layerctl(root, "pull", "docker://mirrored.example/team/app:v1")
    assert r.code == 0, r.err
    assert "pulled mirrored.example/team/app:v1 " in r.out


# -- authentication and TLS -----------------------------------------------------------------------


def test_basic_auth(
    image: Path, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    htpasswd = Htpasswd(USER, PASSWORD).write(tmp_path / "htpasswd")
    with run_registry(tmp_path / "reg", htpasswd=htpasswd) as registry:
        ref = registry.ref("private/app:v1")
        skopeo_copy(
            f"oci:{image}:v1", ref, "--dest-tls-verify=false", f"--dest-creds={USER}:{PASSWORD}"
        )
        before = fingerprint(root)
        one_line_failure(
            layerctl(root, "pull", ref, INSECURE), "authentication required", "--creds"
        )
        one_line_failure(
            layerctl(root, "pull", ref, INSECURE, "--creds", f"{USER}:wrong"),
            f"authentication failed for user '{USER}'",
        )
        assert fingerprint(root) == before
        r = layerctl(root, "pull", ref, INSECURE, "--creds", f"{USER}:{PASSWORD}")
        assert r.code == 0, r.err

        # The same credentials from auth.json, found through $REGISTRY_AUTH_FILE.
        auth = tmp_path / "auth.json"
        token = _b64(f"{USER}:{PASSWORD}")
        auth.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
        dest = registry.ref("private/copy:v1")
        r = layerctl(root, "push", f"{registry.host}/private/app:v1", dest, INSECURE)
        assert r.code == 0, r.err
        info = json.loads(run("skopeo", "inspect", INSECURE, f"--creds={USER}:{PASSWORD}", dest))
        assert info["Layers"] == layer_digests(image, "v1")


def test_bearer_token_auth(image: Path, root: Path, tmp_path: Path) -> None:
    service = TokenService(tmp_path / "token", USER, PASSWORD)
    with (
        run_token_service(service),
        run_registry(tmp_path / "reg", token=service) as registry,
    ):
        ref = registry.ref("tokens/app:v1")
        skopeo_copy(
            f"oci:{image}:v1", ref, "--dest-tls-verify=false", f"--dest-creds={USER}:{PASSWORD}"
        )
        one_line_failure(layerctl(root, "pull", ref, INSECURE), "authentication required")
        one_line_failure(
            layerctl(root, "pull", ref, INSECURE, "--creds", f"{USER}:bad"),
            "authentication failed",
        )
        service.issued.clear()
        r = layerctl(root, "pull", ref, INSECURE, "--creds", f"{USER}:{PASSWORD}")
        assert r.code == 0, r.err
        assert service.issued == ["repository:tokens/app:pull"], "one token, reused for every blob"

        service.issued.clear()
        dest = registry.ref("tokens/pushed:v1")
        r = layerctl(
            root,
            "push",
            f"{registry.host}/tokens/app:v1",
            dest,
            INSECURE,
            "--creds",
            f"{USER}:{PASSWORD}",
        )
        assert r.code == 0, r.err
        assert "3 mounted" in r.out
        assert "repository:tokens/pushed:pull,push repository:tokens/app:pull" in service.issued


def test_tls_with_self_signed_certificate(image: Path, root: Path, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path / "certs")
    with run_registry(tmp_path / "reg", tls=(cert, key)) as registry:
        ref = registry.ref("secure/app:v1")
        skopeo_copy(f"oci:{image}:v1", ref, f"--dest-cert-dir={cert.parent}")
        one_line_failure(
            layerctl(root, "pull", ref), "TLS certificate of", "not trusted", "--cert-dir"
        )
        r = layerctl(root, "pull", ref, "--cert-dir", str(cert.parent))
        assert r.code == 0, r.err
        r = layerctl(root, "pull", ref, INSECURE, "--name", "insecure")
        assert r.code == 0, r.err
        dest = registry.ref("secure/pushed:v1")
        r = layerctl(root, "push", "insecure", dest, "--cert-dir", str(cert.parent))
        assert r.code == 0, r.err
        run("skopeo", "inspect", f"--cert-dir={cert.parent}", dest)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- pure logic -----------------------------------------------------------------------------------


def test_reference_forms() -> None:
    r = parse_registry_ref("busybox")
    assert (r.domain, r.repository, r.tag, r.api_host) == (
        "docker.io",
        "library/busybox",
        None,
        "registry-1.docker.io",
    )
    assert str(r) == "docker.io/library/busybox:latest"
    r = parse_registry_ref("localhost:5000/a/b-c__d:v1.2")
    assert (r.domain, r.repository, r.reference) == ("localhost:5000", "a/b-c__d", "v1.2")
    digest = "sha256:" + "a" * 64
    r = parse_registry_ref(f"quay.io/x/y:t@{digest}")
    assert (r.tag, r.digest, r.reference) == ("t", digest, digest)
    assert str(parse_source(f"docker://quay.io/x/y@{digest}")) == f"docker://quay.io/x/y@{digest}"
    for bad, why in [
        ("", "missing image name"),
        ("h.io/x/", "invalid repository name"),
        ("h.io/UPPER", "invalid repository name"),
        ("h.io/x:bad tag", "invalid tag"),
        ("h.io/x@sha256:123", "invalid digest"),
    ]:
        with pytest.raises(SourceError, match=why):
            parse_source(f"docker://{bad}")
    with pytest.raises(SourceError, match="docker://HOST/REPO"):
        parse_source("docker:busybox")


def test_challenge_parsing() -> None:
    (c,) = parse_challenges(
        ['Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"']
    )
    assert c.scheme == "bearer"
    assert dict(c.params) == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull",
    }
    basic, bearer = parse_challenges(['Basic realm="a \\"quoted\\" realm", Bearer realm=x'])
    assert (basic.scheme, basic.params["realm"]) == ("basic", 'a "quoted" realm')
    assert (bearer.scheme, bearer.params["realm"]) == ("bearer", "x")


def test_auth_file_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    docker = tmp_path / ".docker/config.json"
    docker.parent.mkdir()
    docker.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": _b64("hub:1")},
                    "quay.io": {"auth": _b64("host:2")},
                    "quay.io/team": {"auth": _b64("team:3")},
                }
            }
        )
    )
    assert find_credentials(parse_registry_ref("busybox")) == _creds("hub", "1")
    assert find_credentials(parse_registry_ref("quay.io/other/x")) == _creds("host", "2")
    assert find_credentials(parse_registry_ref("quay.io/team/x")) == _creds("team", "3")
    assert find_credentials(parse_registry_ref("ghcr.io/x/y")) is None
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers/auth.json").write_text(
        json.dumps({"auths": {"quay.io": {"auth": _b64("podman:4")}}})
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert find_credentials(parse_registry_ref("quay.io/team/x")) == _creds("podman", "4")


def _creds(user: str, password: str) -> Credentials:
    return Credentials(user, password)


def test_registries_conf_endpoints(tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(
        '[[registry]]\nprefix = "example.com"\nlocation = "internal:5000"\ninsecure = true\n'
        'mirror = [{ location = "mirror.local/ex" }]\npull-from-mirror = "digest-only"\n'
        '[[registry]]\nprefix = "example.com/blocked"\nblocked = true\n'
    )
    entries = load_registries(str(conf))
    tagged = parse_registry_ref("example.com/a/b:1")
    assert [(str(e.ref), e.insecure) for e in endpoints(tagged, entries, pull=True)] == [
        ("internal:5000/a/b:1", True)
    ]
    pinned = tagged.with_reference(digest=parse_registry_ref(f"x/y@sha256:{'b' * 64}").digest)
    assert [e.ref.domain for e in endpoints(pinned, entries, pull=True)] == [
        "mirror.local",
        "internal:5000",
    ]
    assert [e.ref.domain for e in endpoints(pinned, entries, pull=False)] == ["internal:5000"]
    with pytest.raises(SourceError, match="blocked"):
        endpoints(parse_registry_ref("example.com/blocked/x"), entries, pull=True)


# -- speed ----------------------------------------------------------------------------------------


def test_pull_speed_against_skopeo_and_umoci(root: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    layers: list[LayerSpec] = [
        {f"data{i}/f{j}": File(rng.randbytes(16_000 + 1000 * j) if j % 2 else b"x" * 2_000 * j)
         for j in range(200)}
        for i in range(3)
    ]  # fmt: skip
    layout = build_image(tmp_path / "big", layers, tag="big")
    with run_registry(tmp_path / "reg") as registry:
        ref = registry.ref("bench/app:big")
        skopeo_copy(f"oci:{layout}:big", ref, "--dest-tls-verify=false")
        start = time.monotonic()
        r = layerctl(root, "pull", ref, INSECURE)
        ours = time.monotonic() - start
        assert r.code == 0, r.err
        start = time.monotonic()
        skopeo_copy(ref, f"oci:{tmp_path / 'copy'}:big", "--src-tls-verify=false")
        copied = time.monotonic() - start
        run("umoci", "unpack", "--image", f"{tmp_path / 'copy'}:big", tmp_path / "bundle")
        theirs = time.monotonic() - start
    size = sum(int(str(x["size"])) for x in _manifest_layers(layout, "big"))
    print(
        f"\npull of {size / 1e6:.1f} MB compressed ({len(layers) + 1} layers) from a local "
        f"registry: layerctl pull {ours:.2f}s; skopeo copy {copied:.2f}s + umoci unpack "
        f"{theirs - copied:.2f}s = {theirs:.2f}s (ratio {theirs / ours:.1f}x)"
    )
    shutil.rmtree(tmp_path / "bundle", ignore_errors=True)


def _manifest_layers(layout: Path, tag: str) -> list[dict[str, object]]:
    layers = manifest_of(layout, tag)["layers"]
    assert isinstance(layers, list)
    return layers
