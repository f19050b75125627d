"""Store pieces without images: names, locks, records, sessions, opening a store, finding images."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerfs.oci import Digest, parse_source
from layerfs.store.errors import (
    ImageNotFoundError,
    InUseError,
    StoreDamagedError,
    StoreError,
    StoreMissingError,
)
from layerfs.store.layout import StoreConfig, chain_id_of_dirname, default_root
from layerfs.store.locks import FileLock
from layerfs.store.names import (
    ImageName,
    check_image_name,
    default_name,
    escape_name,
    unescape_name,
)
from layerfs.store.readahead import ReadAhead
from layerfs.store.records import (
    ImageRecord,
    image_record_path,
    list_container_refs,
    list_image_records,
    write_image_record,
)
from layerfs.store.session import layer_lock, live_pins, sweep_tmp
from layerfs.store.store import Store

D1 = Digest("sha256:" + "1" * 64)
D2 = Digest("sha256:" + "2" * 64)
D3 = Digest("sha256:" + "3" * 64)


def record(name: str, config: Digest = D1, layers: tuple[Digest, ...] = (D2,)) -> ImageRecord:
    return ImageRecord(
        name=ImageName(name),
        manifest_digest=D3,
        manifest_media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=config,
        layers=layers,
        diff_ids=layers,
        layer_digests=layers,
        platform="linux/amd64",
        created=None,
        pulled="2024-01-01T00:00:00Z",
        source="oci:/x:y",
        size=1,
    )


# -- names -----------------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=60).filter(lambda s: s.isprintable() and s.strip() == s))
def test_name_escape_round_trips_and_is_a_safe_file_name(name: str) -> None:
    try:
        checked = check_image_name(name)
    except StoreError:
        return  # whitespace inside
    escaped = escape_name(checked)
    assert "/" not in escaped and "\0" not in escaped
    assert not escaped.startswith(".")
    assert unescape_name(escaped) == name


@pytest.mark.parametrize("bad", ["", "a b", "x\ny", "tab\there", "a" * 201])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(StoreError, match="image name"):
        check_image_name(bad)


def test_strays_in_images_are_not_names() -> None:
    assert unescape_name(".busybox.json.1234.tmp") is None
    assert unescape_name("a%2fb") is None  # lowercase escape: not what escape_name writes
    assert unescape_name("a%2Fb") == "a/b"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("oci:/images/busybox:1.36", "busybox:1.36"),
        ("oci:/images/busybox", "busybox:latest"),
        ("oci-archive:/images/busybox.tar:1.36", "busybox:1.36"),
        ("oci-archive:/x/app.oci.tar.gz:v2", "app.oci:v2"),
        ("docker-archive:/x/save.tar:example/bb:v1", "example/bb:v1"),
        ("docker-archive:/x/save.tar:busybox", "busybox:latest"),
        ("oci:/images/multi:@1", "multi@1"),
        ("oci:/images/multi:team/app", "team/app"),
    ],
)
def test_default_names(source: str, name: str) -> None:
    assert default_name(parse_source(source)) == name


def test_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_root({"LAYERFS_ROOT": "/srv/l"}) == "/srv/l"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_root({"XDG_DATA_HOME": "/home/u/.data"}) == "/home/u/.data/layerfs"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_root({}) == "/var/lib/layerfs"


def test_layer_dir_names() -> None:
    assert chain_id_of_dirname("a" * 64) == "sha256:" + "a" * 64
    assert chain_id_of_dirname("a" * 128) == "sha512:" + "a" * 128
    assert chain_id_of_dirname("A" * 64) is None
    assert chain_id_of_dirname(".tmp") is None


# -- locks -----------------------------------------------------------------------------------


def test_file_lock_excludes_threads_and_survives_unlink(tmp_path: Path) -> None:
    path = str(tmp_path / "l.lock")
    first = FileLock(path)
    assert first.acquire()
    second = FileLock(path)
    assert not second.acquire(blocking=False)
    got = threading.Event()

    def waiter() -> None:
        third = FileLock(path)
        third.acquire()  # blocks until `first` goes, then must lock the *new* file
        assert os.path.exists(path)
        got.set()
        third.release(unlink=True)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    assert not got.is_set()
    first.release(unlink=True)  # the waiter holds the unlinked inode: it must start over
    t.join(5)
    assert got.is_set()
    assert not os.path.exists(path)


def test_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = str(tmp_path / "l.lock")
    code = f"from layerfs.store.locks import FileLock; FileLock({path!r}).acquire(); print('x')"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    lock = FileLock(path)
    assert lock.acquire(blocking=False)
    lock.release()


# -- opening a store -------------------------------------------------------------------------


def test_open_missing_and_create(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with pytest.raises(StoreMissingError, match="no layerfs store"):
        Store.open(str(root))
    store = Store.open(str(root), create=True)
    assert json.loads((root / "store.json").read_text()) == {"version": 1, "backend": "dir"}
    assert sorted(os.listdir(root)) == sorted(
        ["store.json", "lock", "blobs", "layers", "images", "containers", "tmp"]
    )
    assert (root.stat().st_mode & 0o777) == 0o700
    assert Store.open(str(root)).config == store.config


def test_open_refuses_foreign_dirs_and_other_backends(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a layerfs store"):
        Store.open(str(tmp_path / "home"), create=True)
    assert os.listdir(tmp_path / "home") == ["notes.txt"]
    Store.open(str(tmp_path / "s"), create=True)
    with pytest.raises(StoreError, match="already uses the dir backend"):
        Store.open(
            str(tmp_path / "s"), create=True, config=StoreConfig("zfs", {"zfs_dataset": "p"})
        )
    with pytest.raises(StoreError, match=r"(?i)zfs"):  # no pool 'p' (or no ZFS at all)
        Store.open(
            str(tmp_path / "z"), create=True, config=StoreConfig("zfs", {"zfs_dataset": "p"})
        )
    assert not (tmp_path / "z").exists()


def test_open_refuses_unknown_versions(tmp_path: Path) -> None:
    Store.open(str(tmp_path), create=True)
    (tmp_path / "store.json").write_text('{"version": 2, "backend": "dir"}')
    with pytest.raises(StoreError, match="version 2 is not supported"):
        Store.open(str(tmp_path))
    (tmp_path / "store.json").write_text("{")
    with pytest.raises(StoreDamagedError, match=r"store\.json"):
        Store.open(str(tmp_path))


# -- records ---------------------------------------------------------------------------------


def test_image_records_round_trip_and_find_by_id(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), create=True)
    a, b = record("a/b:1"), record("c:2", config=D2)
    write_image_record(store.paths, a)
    write_image_record(store.paths, b)
    assert list_image_records(store.paths) == [a, b]
    assert os.path.basename(image_record_path(store.paths, a.name)) == "a%2Fb:1.json"
    assert store.find_image("a/b:1") == a
    assert store.find_image("2222") == b
    assert store.find_image("sha256:" + "1" * 64) == a
    with pytest.raises(ImageNotFoundError, match="no image 'nope'"):
        store.find_image("nope")
    write_image_record(store.paths, dataclasses.replace(a, name=ImageName("a2")))
    assert [r.name for r in store.find_images("1111")] == ["a/b:1", "a2"]
    with pytest.raises(InUseError, match="several names"):
        store.remove_image("1111")


def test_damaged_records_are_named(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), create=True)
    write_image_record(store.paths, record("x"))
    path = image_record_path(store.paths, ImageName("x"))
    doc = json.loads(Path(path).read_text())
    doc["layers"] = ["sha256:nothex"]
    Path(path).write_text(json.dumps(doc))
    with pytest.raises(StoreDamagedError, match=r"x\.json: 'layers' holds an invalid digest"):
        store.images()
    Path(path).write_text("[")
    with pytest.raises(StoreDamagedError, match="not valid JSON"):
        store.images()


def test_container_refs_keep_images(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), create=True)
    write_image_record(store.paths, record("img"))
    c = tmp_path / "containers" / "web"
    c.mkdir()
    (c / "container.json").write_text(json.dumps({"image": "img", "layers": [D2]}))
    (tmp_path / "containers" / "half-made").mkdir()  # no record yet: keeps nothing
    assert [r.name for r in list_container_refs(store.paths)] == ["web"]
    with pytest.raises(InUseError, match="used by container"):
        store.remove_image("img")
    (c / "container.json").write_text(json.dumps({"image": D1, "layers": [D2]}))
    with pytest.raises(InUseError, match="web"):
        store.remove_image("img")  # by ID: the last name of that image
    (c / "container.json").unlink()
    assert store.remove_image("img").name == "img"
    assert store.images() == []


# -- sessions --------------------------------------------------------------------------------


def test_sessions_pins_and_sweep(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path), create=True)
    dead = tmp_path / "tmp" / "s-1-dead"
    (dead / "layer-x" / "diff").mkdir(parents=True)
    (dead / "pins.json").write_text(json.dumps({"layers": [D1], "blobs": []}))
    (tmp_path / "tmp" / "layer-abc.lock").write_text("")
    (tmp_path / "tmp" / "stray").write_text("")
    held = layer_lock(store.paths, D3)
    held.acquire()
    with store.session() as mine, store.session() as other:
        with store.lock():
            other.pin([D2], [D3])
            assert live_pins(store.paths, exclude=mine).layers == {D2}
            assert sweep_tmp(store.paths, store.backend, keep=mine) == 3
        left = sorted(os.listdir(tmp_path / "tmp"))
        assert left == sorted(
            [os.path.basename(mine.path), os.path.basename(other.path), os.path.basename(held.path)]
        )
    held.release(unlink=True)
    assert os.listdir(tmp_path / "tmp") == []


# -- read-ahead ------------------------------------------------------------------------------


class _Source(io.RawIOBase):
    """``size`` bytes, then an error if ``fail`` is given."""

    def __init__(self, size: int, fail: Exception | None = None) -> None:
        super().__init__()
        self.left, self.fail, self.served = size, fail, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self.left and self.fail is not None:
            raise self.fail
        n = min(len(buffer), self.left, 1000)
        buffer[:n] = bytes([self.served % 251]) * n
        self.left -= n
        self.served += n
        return n


def test_read_ahead_passes_data_and_errors_through() -> None:
    expected = b"".join(bytes([i % 251]) * 1000 for i in range(0, 50_000, 1000))
    with ReadAhead(io.BufferedReader(_Source(50_000)), chunk=4096, depth=2) as ahead:
        assert ahead.read() == expected
    with ReadAhead(io.BufferedReader(_Source(3000, ValueError("bad blob"))), chunk=1000) as ahead:
        got = b"".join(ahead.read(1000) or b"" for _ in range(3))
        assert got == expected[:3000]
        with pytest.raises(ValueError, match="bad blob"):
            ahead.read(1)


def test_read_ahead_stops_when_closed_early() -> None:
    source = _Source(10_000_000)
    ahead = ReadAhead(io.BufferedReader(source), chunk=1000, depth=2)
    assert len(ahead.read(10)) == 10
    ahead.close()  # the reader is blocked on a full queue: it must notice and end
    assert source.served < 100_000
