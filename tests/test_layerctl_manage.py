"""images / inspect / rmi / gc / fsck / init, and what interrupted or failed pulls leave behind."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import layerfs.store.ingest
from layerfs.store.ingest import LayerOutcome
from layerfs.store.pull import LayerImportError, PullOptions, pull_image
from layerfs.store.store import Store
from tests.images import (
    Hardlink,
    LayerSpec,
    Symlink,
    blob_path,
    build_image,
    hand_image,
    have_tools,
)
from tests.layerctl import fingerprint, layerctl, spawn
from tests.test_layerctl_hostile import BASE, GOOD, member, tar_of


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tags ``a`` and ``b``: busybox + a shared layer + one layer of their own."""
    missing = have_tools()
    if missing:
        pytest.skip(f"{missing} is not installed")
    work = tmp_path_factory.mktemp("manage")
    shared: LayerSpec = {"usr/share/s": "shared\n", "usr/share/l": Symlink("s")}
    out = build_image(work, [shared, {"a": "a", "a2": Hardlink("a")}], tag="a")
    build_image(work, [shared, {"b": "b"}], tag="b", layout=out)
    return out


def layers_of(root: Path, image: str) -> list[str]:
    doc = json.loads(layerctl(root, "inspect", image, "--json").out)
    return [c.split(":")[1] for c in doc["layers"]]


def test_rmi_then_gc_leaves_no_unused_layer(layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "pull", f"oci:{layout}:a", "--name", "a").code == 0
    assert layerctl(root, "pull", f"oci:{layout}:b", "--name", "b").code == 0
    a, b = layers_of(root, "a"), layers_of(root, "b")
    assert a[:2] == b[:2] and a[2] != b[2]
    assert sorted(os.listdir(root / "layers")) == sorted({*a, *b})

    rmi = layerctl(root, "rmi", "a")
    assert rmi.code == 0 and rmi.out.startswith("removed a (")
    assert layerctl(root, "inspect", "a").code == 1
    gc = layerctl(root, "gc")
    assert gc.code == 0 and gc.out.startswith("removed 1 layers, 3 blobs, 0 leftovers")
    assert sorted(os.listdir(root / "layers")) == sorted(b)
    assert layerctl(root, "fsck").code == 0

    image_id = json.loads(layerctl(root, "inspect", "b", "--json").out)["id"]
    assert layerctl(root, "rmi", image_id[7:19]).code == 0  # by a prefix of its ID
    assert layerctl(root, "gc").out.startswith("removed 3 layers, 5 blobs")
    assert os.listdir(root / "layers") == [] and os.listdir(root / "images") == []
    assert os.listdir(root / "blobs" / "sha256") == [] and os.listdir(root / "tmp") == []
    assert layerctl(root, "images").out.startswith("NAME  IMAGE ID  PLATFORM  LAYERS  SIZE  PULLED")


def test_containers_keep_their_image_and_layers(layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "pull", f"oci:{layout}:a", "--name", "a").code == 0
    chain = json.loads(layerctl(root, "inspect", "a", "--json").out)["layers"]
    container = root / "containers" / "web"
    container.mkdir()
    (container / "container.json").write_text(json.dumps({"image": "a", "layers": chain}))
    before = fingerprint(root)
    rmi = layerctl(root, "rmi", "a")
    assert rmi.code == 1 and rmi.err_lines == [
        "layerctl rmi: image 'a' is used by container(s) web; remove them first"
    ]
    assert fingerprint(root) == before
    # A container that outlives its image's record still keeps the layers.
    (container / "container.json").write_text(json.dumps({"image": "gone", "layers": chain}))
    assert layerctl(root, "rmi", "a").code == 0
    assert layerctl(root, "gc").out.startswith("removed 0 layers, 5 blobs")
    assert len(os.listdir(root / "layers")) == 3
    (container / "container.json").write_text("{not json")
    gc = layerctl(root, "gc")
    assert gc.code == 1 and "container.json: not valid JSON" in gc.err
    assert len(os.listdir(root / "layers")) == 3  # nothing removed when a record is unreadable


def test_fsck_names_every_damaged_entry(layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "pull", f"oci:{layout}:a", "--name", "a").code == 0
    base, shared, top = layers_of(root, "a")
    diff = root / "layers"
    (diff / base / "diff" / "bin" / "busybox").write_bytes(b"not busybox")  # modified
    (diff / shared / "diff" / "usr" / "share" / "s").unlink()  # deleted
    (diff / shared / "diff" / "usr" / "share" / "l").unlink()
    os.symlink("elsewhere", diff / shared / "diff" / "usr" / "share" / "l")  # retargeted
    (diff / top / "diff" / "planted").write_text("x")  # extra
    os.chmod(diff / top / "diff" / "a", 0o600)  # mode (and a's hard link shares it)
    os.chown(diff / top / "diff" / "a", 7, 7)
    blob = next(p for p in (root / "blobs" / "sha256").iterdir() if p.stat().st_size < 2000)
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes() + b" ")
    run = layerctl(root, "fsck")
    assert run.code == 3
    assert run.err_lines == [f"layerctl fsck: 7 problem(s) in the store at {root}"]
    size = os.path.getsize("/bin/busybox")
    blob_lines = [line for line in run.out.splitlines() if line.startswith("blob ")]
    assert blob_lines == [
        f"blob sha256:{blob.name}: content changed (it hashes to "
        + blob_lines[0].split("it hashes to ")[1]
    ]
    assert sorted(set(run.out.splitlines()) - set(blob_lines)) == sorted(
        [
            f"layer sha256:{base}: /bin/busybox: size changed from {size} to 11",
            f"layer sha256:{shared}: /usr/share/s: missing",
            f"layer sha256:{shared}: /usr/share/l: symlink target changed from b's' to "
            "b'elsewhere'",
            f"layer sha256:{top}: /a: mode changed from 0644 to 0600",
            f"layer sha256:{top}: /a: owner changed from 0:0 to 7:7",
            f"layer sha256:{top}: /planted: not in the manifest",
        ]
    )


def test_fsck_same_size_content_change_and_missing_metadata(layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "pull", f"oci:{layout}:b", "--name", "b").code == 0
    _, _, top = layers_of(root, "b")
    (root / "layers" / top / "diff" / "b").write_text("c")  # same size, other content
    run = layerctl(root, "fsck")
    assert run.code == 3 and run.out.startswith(f"layer sha256:{top}: /b: content changed")
    (root / "layers" / top / "entries").unlink()
    assert layerctl(root, "fsck").out == f"layer sha256:{top}: entries: missing\n"
    (root / "images" / "b.json").unlink()
    assert layerctl(root, "gc").code == 0 and os.listdir(root / "layers") == []
    assert layerctl(root, "fsck").out == f"store at {root}: no problems\n"


def test_missing_store_init_and_usage(tmp_path: Path) -> None:
    root = tmp_path / "none"
    assert layerctl(root, "images").out.startswith("NAME")
    assert layerctl(root, "gc").out == "no store: nothing to remove\n"
    assert layerctl(root, "fsck").code == 0
    inspect = layerctl(root, "inspect", "x")
    assert inspect.code == 1 and inspect.err_lines == [
        f"no image 'x': {root}: no layerfs store here (create one with 'layerctl init')"
    ]
    assert not root.exists()
    zfs = layerctl(root, "init", "--backend", "zfs", "--zfs-dataset", "tank/layerfs")
    assert zfs.code == 1 and len(zfs.err_lines) == 1 and "tank" in zfs.err  # no such pool
    assert not root.exists()
    assert layerctl(root, "init", "--backend", "zfs").code == 2
    init = layerctl(root, "init")
    assert init.code == 0 and init.out == f"store at {root} (dir backend)\n"
    assert layerctl(root, "init").code == 0
    usage = layerctl(root, "frobnicate")
    assert usage.code == 2 and len(usage.err_lines) == 1 and "invalid choice" in usage.err
    assert layerctl(root, "rmi").code == 2
    assert layerctl(root, "pull", "oci:x", "--root", str(tmp_path / "other")).code == 1
    assert layerctl(root, "--help").code == 0


def test_failed_pull_rolls_back_the_layers_it_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tar_of(member("big", data=os.urandom(2 << 20)))
    layout = hand_image(tmp_path / "img", [BASE, GOOD, big], compression="none")
    manifest = json.loads(blob_path(layout, _manifest_digest(layout)).read_bytes())
    top = blob_path(layout, manifest["layers"][2]["digest"])
    data = bytearray(top.read_bytes())
    data[-1] ^= 1
    top.write_bytes(bytes(data))
    outcomes: list[LayerOutcome] = []
    real = layerfs.store.ingest.import_layer

    def recording(ctx: layerfs.store.ingest.ImportContext, layer: object) -> LayerOutcome:
        outcome = real(ctx, layer)  # type: ignore[arg-type]
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr("layerfs.store.pull.import_layer", recording)
    store = Store.open(str(tmp_path / "store"), create=True)
    before = fingerprint(tmp_path / "store")
    # One worker: layers 1 and 2 are surely published before layer 3 fails.
    with pytest.raises(LayerImportError, match="layer 3/3"):
        pull_image(store, f"oci:{layout}:latest", PullOptions(workers=1))
    assert {o.layer.index for o in outcomes if o.published_layer} == {0, 1}
    assert fingerprint(tmp_path / "store") == before


def _manifest_digest(layout: Path) -> str:
    digest: str = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return digest


def _wait_for_session(root: Path) -> None:
    deadline = time.monotonic() + 20
    while not any(n.startswith("s-") for n in os.listdir(root / "tmp")):
        assert time.monotonic() < deadline, "the pull never started"
        time.sleep(0.002)


def _slow_image(tmp_path: Path) -> Path:
    tars = [tar_of(member(f"f{i}", data=os.urandom(4 << 20))) for i in range(4)]
    return hand_image(tmp_path / "slow", tars, compression="gzip")


def test_killed_pull_leaves_garbage_that_gc_removes(tmp_path: Path) -> None:
    layout = _slow_image(tmp_path)
    root = tmp_path / "store"
    assert layerctl(root, "init").code == 0
    proc = spawn(root, "pull", f"oci:{layout}:latest")
    _wait_for_session(root)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    assert os.listdir(root / "tmp") != []  # the dead pull's session
    gc = layerctl(root, "gc")
    assert gc.code == 0
    assert os.listdir(root / "tmp") == [] and os.listdir(root / "layers") == []
    assert os.listdir(root / "blobs" / "sha256") == [] and os.listdir(root / "images") == []
    assert layerctl(root, "pull", "-q", f"oci:{layout}:latest").code == 0


def test_sigterm_interrupts_a_pull_cleanly(tmp_path: Path) -> None:
    layout = _slow_image(tmp_path)
    root = tmp_path / "store"
    assert layerctl(root, "init").code == 0
    before = fingerprint(root)
    proc = spawn(root, "pull", f"oci:{layout}:latest")
    _wait_for_session(root)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    if proc.returncode == 0:
        pytest.skip("the pull finished before SIGTERM arrived")
    assert (proc.returncode, err) == (130, "layerctl pull: interrupted\n")
    assert fingerprint(root) == before


def test_a_live_pull_pins_what_it_found(layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "pull", f"oci:{layout}:a", "--name", "a").code == 0
    chain = json.loads(layerctl(root, "inspect", "a", "--json").out)["layers"]
    assert layerctl(root, "rmi", "a").code == 0
    store = Store.open(str(root))
    with store.session() as session:
        with store.lock():
            session.pin(chain, [])
        gc = spawn(root, "gc")
        assert gc.communicate(timeout=20)[0].startswith("removed 0 layers, 5 blobs")
    assert layerctl(root, "gc").out.startswith("removed 3 layers")


def test_gc_sweeps_temporary_files_of_interrupted_updates(layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "pull", "-q", f"oci:{layout}:a", "--name", "a").code == 0
    layer = root / "layers" / layers_of(root, "a")[0]
    (root / "images" / ".a.json.0123456789ab.tmp").write_text("{")
    (layer / ".layer.json.0123456789ab.tmp").write_text("{")
    assert layerctl(root, "images").out.count("\n") == 2  # the stray is not an image
    assert layerctl(root, "gc").out.startswith("removed 0 layers, 0 blobs, 2 leftovers")
    assert sorted(os.listdir(root / "images")) == ["a.json"]
    assert sorted(os.listdir(layer)) == ["diff", "entries", "layer.json"]
