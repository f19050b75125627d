"""The zfs backend on a real pool (zfs-fuse): layers as sealed datasets, container uppers as
datasets with quota and snapshots, crash leftovers, and the same merged view as the dir backend.

Without a pool: dataset-name and size checks, the ``zfs`` command missing, the libzfs_core
adapter (against a stand-in module: pyzfs does not load on zfs-fuse), and the dir backend's
refusals.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerfs.store import zfs as zfsmod
from layerfs.store.zfs import Zfs, ZfsError, ZfsExistsError, check_dataset_name
from layerfs.store.zfscontainers import UpperError, parse_size
from tests.images import (
    WHITEOUT,
    Dir,
    File,
    ImageConfigSpec,
    LayerSpec,
    build_image,
    hand_image,
    have_tools,
)
from tests.layerctl import LAYERCTL, layerctl, runc_run, spawn
from tests.mounts import diff_snapshots, mounted, snapshot, wait_for
from tests.test_layerctl_containers import GROUP, PASSWD
from tests.test_layerctl_hostile import member, tar_of
from tests.test_layerctl_pull import CONFIG as FEATURE_CONFIG
from tests.test_layerctl_pull import LAYERS as FEATURE_LAYERS
from tests.test_layerctl_pull import XATTR_FILES, xattrs

CAPABILITY = b"\x01\x00\x00\x02" + bytes(16)  # v2 file capability, none set: any bytes do
SCRIPT = "id -u; touch /srv/app/written && echo wrote"
SHARED: LayerSpec = {
    "etc": Dir(),
    "etc/passwd": PASSWD,
    "etc/group": GROUP,
    "srv/app": Dir(uid=1000, gid=1000),
    "srv/app/old": "old\n",
    "usr/bin/ping": File(b"ping", mode=0o4755, xattrs={"security.capability": CAPABILITY}),
    "var/cache/a": "a",
    "var/cache/sub/b": "b",
    "home/app": Dir(uid=1000, gid=1000),
}
OWN: LayerSpec = {
    "srv/app": Dir(uid=1000, gid=1000),
    "srv/app/old": WHITEOUT,
    "srv/app/data": File("data\n", uid=1000, gid=1000),
    "var/cache": Dir(opaque=True),
    "var/cache/new": "n",
}
CONFIG = ImageConfigSpec(entrypoint=["/bin/sh", "-c"], cmd=[SCRIPT], user="app")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tags ``v1`` (busybox, SHARED, OWN) and ``v2`` (busybox, SHARED, one file)."""
    missing = have_tools()
    if missing:
        pytest.skip(f"{missing} is not installed")
    work = tmp_path_factory.mktemp("zimg")
    out = build_image(work, [SHARED, OWN], tag="v1", config=CONFIG)
    build_image(work, [SHARED, {"v2": "two\n"}], tag="v2", config=CONFIG, layout=out)
    # test_layerctl_pull's feature image: hard links, devices, a fifo, setuid, xattrs, whiteouts.
    build_image(work, FEATURE_LAYERS, tag="feature", config=FEATURE_CONFIG, layout=out)
    return out


@dataclass(frozen=True)
class ZStore:
    root: Path
    dataset: str


@pytest.fixture
def zstore(zpool: str, tmp_path: Path) -> Iterator[ZStore]:
    """A zfs-backed store on the test's pool; its mounts cleaned up whatever the test did."""
    store = ZStore(tmp_path / "zstore", f"{zpool}/lfs")
    r = layerctl(store.root, "init", "--backend", "zfs", "--zfs-dataset", store.dataset)
    assert r.code == 0 and r.out == f"store at {store.root} (zfs backend)\n", r.err
    yield store
    if (store.root / "containers").exists():
        layerctl(store.root, "umount", "--all")
        for c in os.listdir(store.root / "containers"):
            layerctl(store.root, "rm", "--force", c)


def zfs(*args: str) -> str:
    r = subprocess.run(["zfs", *args], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def datasets(name: str, kind: str = "filesystem") -> list[str]:
    return zfs("list", "-H", "-o", "name", "-t", kind, "-r", name).split()


def props(name: str, *keys: str) -> dict[str, str]:
    out = zfs("get", "-H", "-o", "property,value,source", ",".join(keys), name)
    return {p: f"{v} {s}" for p, v, s in (line.split("\t") for line in out.splitlines())}


def inspect(root: Path, image: str) -> dict[str, object]:
    r = layerctl(root, "inspect", image, "--json")
    assert r.code == 0, r.err
    doc: dict[str, object] = json.loads(r.out)
    return doc


def timed(root: Path, *args: str) -> float:
    start = time.monotonic()
    r = layerctl(root, *args)
    assert r.code == 0, r.err
    return time.monotonic() - start


# -- layers -----------------------------------------------------------------------------------


@pytest.mark.zfs
def test_pulled_layers_are_sealed_shared_datasets(
    layout: Path, zstore: ZStore, tmp_path: Path
) -> None:
    root, ds = zstore.root, zstore.dataset
    t_pull_zfs = timed(root, "pull", f"oci:{layout}:v1", "--name", "v1")
    v1 = inspect(root, "v1")
    chains = [str(c) for c in v1["layers"]]  # type: ignore[attr-defined]
    diff_ids = [str(d) for d in v1["diff_ids"]]  # type: ignore[attr-defined]
    assert datasets(f"{ds}/layers")[1:] == sorted(f"{ds}/layers/{c[7:]}" for c in chains)
    for chain, diff_id in zip(chains, diff_ids, strict=True):
        name = f"{ds}/layers/{chain[7:]}"
        diff = root / "layers" / chain[7:] / "diff"
        got = props(name, "readonly", "mountpoint", "layerfs:chain_id", "layerfs:diff_id")
        got |= props(name, "com.sun:auto-snapshot")
        # zfs-fuse shows readonly as "off temporary" while mounted; the write below is refused.
        assert got["readonly"] in ("on local", "off temporary")
        assert got["mountpoint"] == f"{diff} local"
        assert got["layerfs:chain_id"] == f"{chain} local"
        assert got["layerfs:diff_id"] == f"{diff_id} local"
        assert got["com.sun:auto-snapshot"] == "false local"
        assert datasets(name, "snapshot") == [f"{name}@sealed"]
        assert mounted(diff, "fuse.zfs") or mounted(diff, "zfs")
        with pytest.raises(OSError) as err:
            (diff / "new").write_text("x")
        assert err.value.errno == errno.EROFS
    assert (root / "layers" / chains[1][7:] / "diff.xattrs").exists()  # no xattrs on zfs-fuse

    r = layerctl(root, "pull", f"oci:{layout}:v2", "--name", "v2")
    assert r.code == 0 and "3 layers, 1 unpacked, 0 blob-only, 2 already present" in r.out
    v2 = [str(c) for c in inspect(root, "v2")["layers"]]  # type: ignore[attr-defined]
    assert v2[:2] == chains[:2]
    assert len(datasets(f"{ds}/layers")) == 1 + 4
    assert layerctl(root, "fsck").code == 0

    # The same images on the dir backend: the same merged views, xattrs included.
    droot = tmp_path / "dstore"
    t_pull_dir = timed(droot, "pull", f"oci:{layout}:v1", "--name", "v1")
    for image in ("feature", "v1"):
        views, attrs = {}, {}
        for label, store in (("zfs", root), ("dir", droot)):
            view = tmp_path / f"view-{image}-{label}"
            view.mkdir()
            r = layerctl(store, "mount-image", f"oci:{layout}:{image}", str(view))
            assert r.code == 0, r.err
            try:
                views[label] = snapshot(view)
                files = [*XATTR_FILES, "usr/bin/ping"]
                attrs[label] = {f: xattrs(view / f) for f in files if (view / f).exists()}
            finally:
                assert layerctl(store, "umount", str(view)).code == 0
        assert diff_snapshots(views["zfs"], views["dir"]) == [], image
        assert attrs["zfs"] == attrs["dir"] and attrs["zfs"]["usr/bin/ping"], image
    assert attrs["zfs"]["usr/bin/ping"]["security.capability"] == CAPABILITY
    assert "srv/app/old" not in views["zfs"] and "var/cache/a" not in views["zfs"]
    assert views["zfs"]["usr/bin/ping"].mode == 0o4755

    t_create_zfs = timed(root, "create", "v1", "tz")
    t_create_dir = timed(droot, "create", "v1", "td")
    assert layerctl(root, "rm", "--force", "tz").code == 0
    assert layerctl(droot, "rm", "--force", "td").code == 0
    print(
        f"\npull: zfs {t_pull_zfs:.2f}s, dir {t_pull_dir:.2f}s; "
        f"create: zfs {t_create_zfs:.2f}s, dir {t_create_dir:.2f}s"
    )


# -- containers -------------------------------------------------------------------------------


@pytest.mark.zfs
@pytest.mark.runc
def test_container_cycle_on_zfs(layout: Path, zstore: ZStore) -> None:
    root, ds = zstore.root, zstore.dataset
    r = layerctl(root, "create", f"oci:{layout}:v1", "c1", "--upper-quota", "10M")
    assert r.code == 0, r.err
    bundle = Path(r.out.strip())
    rootfs = bundle / "rootfs"
    record = json.loads((root / "containers/c1/container.json").read_text())
    upper = Path(record["upper"])
    assert record["dataset"] == f"{ds}/containers/c1"
    assert upper == root / "containers/c1/fs/upper"
    assert props(f"{ds}/containers/c1", "quota", "mountpoint") == {
        "quota": "10M local",
        "mountpoint": f"{upper.parent} local",
    }

    out = runc_run(str(bundle), f"lfs-z1-{os.getpid()}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["1000", "wrote"]
    assert (upper / "srv/app/written").exists(), "the write lands in the container's dataset"
    assert os.stat(upper).st_dev != os.stat(root / "containers/c1").st_dev
    (rootfs / "var/cache/new").unlink()  # a whiteout on an upper without xattrs
    assert os.stat(upper / "var/cache/new").st_rdev == 0
    assert sorted(os.listdir(rootfs / "var/cache")) == []

    # Quota: the write fails with EDQUOT (or ENOSPC); the mount goes on working.
    with pytest.raises(OSError) as err, open(rootfs / "big", "wb") as f:
        for _ in range(20):
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    assert err.value.errno in (errno.EDQUOT, errno.ENOSPC)
    (rootfs / "big").unlink()
    wait_for(lambda: _can_write(rootfs / "after-quota"), what="space after the delete")
    assert (rootfs / "srv/app/data").read_text() == "data\n"
    assert (rootfs / "after-quota").read_text() == "ok"

    # Snapshots and rollback.
    (rootfs / "note").write_text("first\n")
    snap = layerctl(root, "snapshot", "c1", "s1")
    assert snap.out == "c1@s1\n", snap.err
    (rootfs / "note").write_text("second\n")
    (rootfs / "etc/passwd").unlink()
    assert layerctl(root, "snapshot", "c1", "s2").code == 0
    assert layerctl(root, "snapshot", "--list", "c1").out == "s1\ns2\n"
    dup = layerctl(root, "snapshot", "c1", "s1")
    assert dup.code == 1 and len(dup.err_lines) == 1 and "exists" in dup.err
    r = layerctl(root, "rollback", "c1", "s1")
    assert r.code == 1 and len(r.err_lines) == 1 and "--destroy-newer" in r.err
    assert (rootfs / "note").read_text() == "second\n", "a refused rollback changes nothing"
    r = layerctl(root, "rollback", "c1", "nope")
    assert r.code == 1 and "no snapshot 'nope'" in r.err
    r = layerctl(root, "rollback", "c1", "s1", "--destroy-newer")
    assert r.code == 0 and "remounted" in r.out, r.err
    assert mounted(rootfs, "fuse.layerfs")
    assert (rootfs / "note").read_text() == "first\n"
    assert (rootfs / "etc/passwd").read_text() == PASSWD
    assert layerctl(root, "snapshot", "--list", "c1").out == "s1\n"

    # After a reboot (or a zfs-fuse restart) no dataset is mounted: mount brings them back.
    assert layerctl(root, "umount", "c1").code == 0
    for name in datasets(ds)[1:]:
        Zfs().unmount(zfsmod.DatasetName(name))
    base = root / "layers" / chains_of(root, "c1")[0] / "diff"
    assert not mounted(upper.parent) and not mounted(base) and not (base / "bin").exists()
    r = layerctl(root, "mount", "c1")
    assert r.out == f"c1: mounted at {rootfs}\n", r.err
    assert (rootfs / "note").read_text() == "first\n"
    assert (rootfs / "bin/busybox").exists()

    if layerctl(root, "commit", "--help").code == 0:  # added by another issue
        r = layerctl(root, "commit", "c1", "committed:v1")
        assert r.code == 0, r.err
        assert layerctl(root, "inspect", "committed:v1").code == 0
        assert layerctl(root, "rmi", "committed:v1").code == 0

    r = layerctl(root, "rm", "c1")
    assert r.code == 1 and "mounted" in r.err
    assert layerctl(root, "rm", "--force", "c1").code == 0
    assert not mounted(rootfs)
    assert layerctl(root, "rmi", "layout:v1").code == 0
    gc = layerctl(root, "gc")
    assert gc.code == 0, gc.err
    assert datasets(ds) == [ds, f"{ds}/containers", f"{ds}/layers"]
    assert datasets(ds, "snapshot") == []
    assert os.listdir(root / "layers") == [] and os.listdir(root / "containers") == []
    assert os.listdir(root / "tmp") == []


def chains_of(root: Path, container: str) -> list[str]:
    """The hex ChainIDs of a container's layers, bottom first."""
    doc = json.loads((root / "containers" / container / "container.json").read_text())
    return [c.split(":")[1] for c in doc["layers"]]


def _can_write(path: Path) -> bool:
    try:
        path.write_text("ok")
    except OSError as exc:
        if exc.errno in (errno.EDQUOT, errno.ENOSPC):
            return False
        raise
    return True


# -- crashes ----------------------------------------------------------------------------------

# Dies (like kill -9) right after a layer's dataset got its final mountpoint: sealed, in
# layers/, but layer.json not yet moved in: unpublished.
CRASH_AT_PUBLISH = """
import os, sys
from layerfs.store.zfs import Zfs
from layerfs.cli.layerctl import main
real = Zfs.set
def set_then_die(self, name, prop, value):
    real(self, name, prop, value)
    if prop == "mountpoint":
        os._exit(9)
Zfs.set = set_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.zfs
def test_interrupted_pulls_leave_nothing_used_and_gc_destroys_it(
    zstore: ZStore, tmp_path: Path
) -> None:
    root, ds = zstore.root, zstore.dataset
    big = tar_of(member("big", data=os.urandom(48 << 20)), member("small", data=b"s\n"))
    base = tar_of(member("base", data=b"b\n"))
    slow = hand_image(tmp_path / "slow", [base, big], compression="none")

    # 1. kill -9 in the middle of unpacking the big layer.
    proc = spawn(root, "pull", f"oci:{slow}:latest", "--name", "slow")
    staged = _wait_for_staged_file(root, ds, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    big_hex = staged.parent.name.removeprefix("layer-")
    assert layerctl(root, "images").out.count("\n") == 1
    assert not (root / "layers" / big_hex / "layer.json").exists()
    mountpoint = zfs("get", "-H", "-o", "value", "mountpoint", f"{ds}/layers/{big_hex}")
    assert mountpoint == f"{staged}\n", "the unsealed dataset stays in the dead pull's session"
    assert datasets(f"{ds}/layers/{big_hex}", "snapshot") == []

    # 2. A new pull of the same image works over the dead one's datasets, but dies after
    #    sealing a layer and moving it into layers/, before publishing it.
    crash = subprocess.run(
        [sys.executable, "-c", CRASH_AT_PUBLISH, "--root", str(root), "pull", f"oci:{slow}:latest"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crash.returncode == 9, crash.stderr
    sealed = [n.split("@")[0].rpartition("/")[2] for n in datasets(f"{ds}/layers", "snapshot")]
    unpublished = [h for h in sealed if not (root / "layers" / h / "layer.json").exists()]
    assert unpublished, "a sealed dataset is left in layers/, not published"
    assert mounted(root / "layers" / unpublished[0] / "diff")
    assert layerctl(root, "images").out.count("\n") == 1
    assert layerctl(root, "fsck").code in (0, 3)

    # 3. gc destroys every leftover: staged, sealed-but-unpublished, sessions.
    gc = layerctl(root, "gc")
    assert gc.code == 0, gc.err
    assert datasets(ds) == [ds, f"{ds}/containers", f"{ds}/layers"]
    assert os.listdir(root / "layers") == [] and os.listdir(root / "tmp") == []
    assert not [m for m in _mountpoints() if m.startswith(str(root))]

    # 4. And the image pulls cleanly afterwards.
    r = layerctl(root, "pull", f"oci:{slow}:latest", "--name", "slow")
    assert r.code == 0 and "2 layers, 2 unpacked" in r.out, r.err
    assert len(datasets(f"{ds}/layers", "snapshot")) == 2


def _wait_for_staged_file(root: Path, ds: str, proc: subprocess.Popen[str]) -> Path:
    """The staged diff of the big layer once its first file appears (mid-unpack)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for diff in (root / "tmp").glob("s-*/layer-*/diff"):
            try:
                if (diff / "big").exists() and os.path.ismount(diff):
                    return diff
            except OSError:
                pass
        time.sleep(0.005)
    raise AssertionError("the big layer was never being unpacked")


def _mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.zfs
def test_init_and_open_errors_name_the_dataset(zpool: str, tmp_path: Path) -> None:
    root = tmp_path / "s"
    for dataset, needle in [
        ("nosuchpool/lfs", "no pool 'nosuchpool'"),
        (f"{zpool}/missing/lfs", f"parent {zpool}/missing does not exist"),
        (f"{zpool}/bad name", "not a valid name"),
        (f"{zpool}//x", "empty component"),
        ("1pool/x", "must start with a letter"),
    ]:
        r = layerctl(root, "init", "--backend", "zfs", "--zfs-dataset", dataset)
        assert r.code == 1 and len(r.err_lines) == 1 and needle in r.err, (dataset, r.err)
        assert not root.exists()
    assert layerctl(root, "init", "--backend", "zfs", "--zfs-dataset", f"{zpool}/a").code == 0
    other = layerctl(tmp_path / "t", "init", "--backend", "zfs", "--zfs-dataset", f"{zpool}/a")
    assert other.code == 1 and f"holds the store at {root}" in other.err
    change = layerctl(root, "init")
    assert change.code == 1 and "zfs backend" in change.err
    zfs("destroy", "-r", f"{zpool}/a")
    gone = layerctl(root, "images")
    assert gone.code == 1 and len(gone.err_lines) == 1 and f"{zpool}/a" in gone.err, gone.err


def test_zfs_command_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    r = layerctl(tmp_path / "s", "init", "--backend", "zfs", "--zfs-dataset", "tank/lfs")
    assert r.code == 1 and r.err_lines == [
        "layerctl init: the zpool command is not installed: the zfs backend needs ZFS "
        "(zfsutils-linux, or zfs-fuse)"
    ]
    assert not (tmp_path / "s").exists()


def test_dataset_names_and_sizes() -> None:
    for good in ("tank", "tank/a", "t-1/a_b.c:d/e"):
        assert check_dataset_name(good) == good
    for bad in ("", "/tank", "tank/", "tank//a", "1tank", "mirror/x", "tank/a b", "tank/a@s"):
        with pytest.raises(ZfsError, match="not a valid name"):
            check_dataset_name(bad)
    with pytest.raises(ZfsError, match="longer than 10"):
        check_dataset_name("tank/abcdefgh", limit=10)
    assert parse_size("10M") == 10 << 20
    assert parse_size("1.5g") == 3 << 29
    assert parse_size("4096") == 4096
    assert parse_size("2GiB") == 2 << 30
    for bad in ("", "10Q", "-1M", "0", "M"):
        with pytest.raises(UpperError, match="upper-quota"):
            parse_size(bad)


def test_libzfs_core_is_used_where_it_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []
    commands: list[tuple[str, ...]] = []

    class Exists(Exception):
        errno = errno.EEXIST

    def lzc_exists(name: bytes) -> bool:
        calls.append(("exists", name))
        return name == b"tank/x"

    def lzc_create(name: bytes, ds_type: str, props: dict[bytes, bytes]) -> None:
        calls.append(("create", name, ds_type, props))
        if name == b"tank/dup":
            raise Exists("exists")

    def lzc_snapshot(snaps: list[bytes]) -> None:
        calls.append(("snapshot", *snaps))

    def run(self: Zfs, *args: str, command: str | None = None) -> str:
        commands.append(args)
        return ""

    fake = types.ModuleType("libzfs_core")
    for fn in (lzc_exists, lzc_create, lzc_snapshot):
        setattr(fake, fn.__name__, fn)
    monkeypatch.setitem(sys.modules, "libzfs_core", fake)
    monkeypatch.setattr(Zfs, "run", run)
    z = Zfs()
    assert z.exists("tank/x") and not z.exists("tank/y")
    z.create(zfsmod.DatasetName("tank/x"), {"mountpoint": "/m", "quota": "1024", "a:b": "c"})
    z.snapshot(zfsmod.DatasetName("tank/x"), "sealed")
    with pytest.raises(ZfsExistsError, match="tank/dup"):
        z.create(zfsmod.DatasetName("tank/dup"))
    assert calls[3] == ("create", b"tank/x", "zfs", {b"mountpoint": b"/m", b"a:b": b"c"})
    assert ("snapshot", b"tank/x@sealed") in calls
    assert commands == [("set", "quota=1024", "tank/x"), ("mount", "tank/x")]


def test_snapshots_need_the_zfs_backend(layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert layerctl(root, "create", f"oci:{layout}:v1", "d1").code == 0
    try:
        for args in (
            ("snapshot", "d1", "s"),
            ("snapshot", "--list", "d1"),
            ("rollback", "d1", "s"),
        ):
            r = layerctl(root, *args)
            assert r.code == 1 and len(r.err_lines) == 1 and "zfs backend" in r.err, r.err
        r = layerctl(root, "create", "v1", "d2", "--upper-quota", "1G")
        assert r.code == 1 and "zfs backend" in r.err
        r = layerctl(root, "snapshot", "nope", "s")
        assert r.code == 1 and "no container named 'nope'" in r.err
    finally:
        assert layerctl(root, "rm", "--force", "d1").code == 0


def test_layerctl_as_a_process_sees_the_commands() -> None:
    r = subprocess.run([*LAYERCTL, "rollback", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--destroy-newer" in r.stdout
