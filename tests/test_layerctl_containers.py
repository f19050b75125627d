"""layerctl create/ps/mount/umount/rm/mount-image end to end, with runc running the bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from layerfs.cli.launch import command
from tests.images import WHITEOUT, Dir, File, ImageConfigSpec, build_image
from tests.layerctl import layerctl, remove_all_containers, runc_run
from tests.mounts import mounted, wait_for

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:1001:app\n"
SCRIPT = "id -u; id -g; id -G; pwd; echo $GREETING $HOME; touch /srv/app/written && echo wrote"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("img")
    layout = build_image(
        work,
        [
            {
                "etc": Dir(),
                "etc/passwd": PASSWD,
                "etc/group": GROUP,
                "srv": Dir(),
                "srv/app": Dir(uid=1000, gid=1000),
                "srv/app/old": "old\n",
                "home": Dir(),
                "home/app": Dir(uid=1000, gid=1000),
            },
            {
                "srv": Dir(),
                "srv/app": Dir(uid=1000, gid=1000),
                "srv/app/old": WHITEOUT,
                "srv/app/data": File("data\n", uid=1000, gid=1000),
            },
        ],
        tag="v1",
        config=ImageConfigSpec(
            entrypoint=["/bin/sh", "-c"],
            cmd=[SCRIPT],
            env=["GREETING=hello"],
            user="app",
            workdir="/srv/app",
        ),
    )
    return f"oci:{layout}:v1"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    store = tmp_path / "store"
    yield store
    # Whatever a failing test left: unmount and remove through layerctl itself.
    remove_all_containers(store)


@pytest.mark.runc
def test_create_and_runc_run(image: str, root: Path) -> None:
    start = time.monotonic()
    r = layerctl(root, "create", image, "c1")
    assert r.code == 0, r.err
    bundle = r.out.strip()
    assert bundle == str(root / "containers" / "c1")
    rootfs = Path(bundle) / "rootfs"
    assert mounted(rootfs, "fuse.layerfs")
    assert sorted(os.listdir(rootfs / "srv/app")) == ["data"]
    first = time.monotonic() - start

    config = json.loads((Path(bundle) / "config.json").read_text())
    assert config["process"]["user"]["uid"] == 1000
    assert config["process"]["terminal"] is False

    out = runc_run(bundle, f"lfs-c1-{os.getpid()}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:6] == ["1000", "1000", "1000 1001", "/srv/app", "hello /home/app", "wrote"]
    upper = root / "containers/c1/upper"
    assert (upper / "srv/app/written").exists(), "the write must land in the upper"
    for layer in (root / "layers").iterdir():
        assert not (layer / "diff/srv/app/written").exists(), "a layer was written to"

    # From the cache: no unpacking, only a mount and a config.
    start = time.monotonic()
    r = layerctl(root, "create", "layout:v1", "c2")
    cached = time.monotonic() - start
    assert r.code == 0, r.err
    print(f"create: first (with pull) {first:.2f}s, from cache {cached:.3f}s")
    assert layerctl(root, "rm", "--force", "c2").code == 0


@pytest.mark.runc
def test_lifecycle(image: str, root: Path) -> None:
    assert layerctl(root, "create", image, "life").code == 0
    rootfs = root / "containers/life/rootfs"
    (rootfs / "note").write_text("kept\n")
    ps = layerctl(root, "ps")
    assert "life" in ps.out and "mounted" in ps.out

    r = layerctl(root, "rmi", "layout:v1")
    assert r.code != 0 and "life" in r.err, "an image in use must not be removed"
    assert layerctl(root, "gc").code == 0
    assert sorted(os.listdir(rootfs / "srv/app")) == ["data"]

    assert layerctl(root, "umount", "life").code == 0
    assert not mounted(rootfs)
    assert "unmounted" in layerctl(root, "ps").out
    assert layerctl(root, "mount", "life").code == 0
    assert (rootfs / "note").read_text() == "kept\n"

    # A dead daemon leaves a stale mount (ENOTCONN): mount cleans it and mounts again.
    pid = int((root / "containers/life/daemon.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _state(pid) in ("Z", "gone"), what="daemon death")
    with pytest.raises(OSError):
        os.listdir(rootfs)
    assert "stale" in layerctl(root, "ps").out
    r = layerctl(root, "mount", "--all")
    assert r.code == 0 and "remounted" in r.out
    assert (rootfs / "note").read_text() == "kept\n"

    r = layerctl(root, "rm", "life")
    assert r.code != 0 and len(r.err_lines) == 1 and "mounted" in r.err
    assert layerctl(root, "rm", "--force", "life").code == 0
    assert not mounted(rootfs)
    assert os.listdir(root / "containers") == []
    assert layerctl(root, "rmi", "layout:v1").code == 0
    assert layerctl(root, "gc").code == 0
    assert os.listdir(root / "layers") == []


def test_mount_image(image: str, root: Path, tmp_path: Path) -> None:
    target = tmp_path / "view"
    target.mkdir()
    r = layerctl(root, "mount-image", image, str(target))
    assert r.code == 0, r.err
    assert mounted(target, "fuse.layerfs")
    assert (target / "srv/app/data").read_text() == "data\n"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(target), str(copy)], check=True)
    assert (copy / "etc/passwd").read_text() == PASSWD
    with pytest.raises(OSError):
        (target / "new").write_text("x")  # read-only
    r = layerctl(root, "rmi", "layout:v1")
    assert r.code != 0, "an image mounted with mount-image must not be removed"
    assert layerctl(root, "umount", str(target)).code == 0
    assert not mounted(target)
    assert layerctl(root, "rmi", "layout:v1").code == 0


def test_create_errors_leave_nothing(image: str, root: Path, tmp_path: Path) -> None:
    assert layerctl(root, "pull", "-q", image).code == 0
    for args, needle in [
        (("create", "nope:latest", "x"), "nope"),
        (("create", "layout:v1", "bad/name"), "bad/name"),
        (("create", "layout:v1", "q", "--upper-quota", "1G"), "zfs"),
    ]:
        r = layerctl(root, *args)
        assert r.code != 0 and len(r.err_lines) == 1 and needle in r.err, r.err
    assert layerctl(root, "create", "layout:v1", "dup").code == 0
    r = layerctl(root, "create", "layout:v1", "dup")
    assert r.code != 0 and "exists" in r.err
    assert layerctl(root, "rm", "--force", "dup").code == 0
    assert os.listdir(root / "containers") == []


# Runs launch.layerctl() as the installed script does, noting whether the daemon that
# mounts was forked ahead (prefork) or afresh.
SPY = """
import sys
from layerfs.fs import daemon
spawn = daemon.spawn
def spy(cfg):
    print("standby" if daemon._standby is not None else "fresh", file=sys.stderr)
    return spawn(cfg)
daemon.spawn = spy
from layerfs.cli import launch
sys.argv = ["layerctl", *sys.argv[1:]]
sys.exit(launch.layerctl())
"""


def test_installed_layerctl_forks_its_daemon_first(image: str, root: Path) -> None:
    """The ``layerctl`` script (layerfs.cli.launch) forks the daemon of ``create`` and
    ``mount`` before it loads the rest; a create that fails leaves no process behind."""
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "layerctl"]
    assert script.value == "layerfs.cli.launch:layerctl"
    assert command(["--root", "r", "create", "i"]) == "create"
    assert command(["--debug", "--ro", "r", "mount", "c"]) == "mount"  # argparse's abbreviation
    assert command(["--root=r", "images"]) == "images"
    assert command(["--root", "create"]) is None
    assert layerctl(root, "pull", "-q", image).code == 0
    spy = [sys.executable, "-c", SPY, "--root", str(root)]
    before = _processes()
    r = subprocess.run([*spy, "create", "nope:latest", "x"], capture_output=True, text=True)
    assert r.returncode != 0 and "nope" in r.stderr
    assert not _processes() - before, "the unused daemon must be reaped with its caller"
    r = subprocess.run([*spy, "create", "layout:v1", "c1"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "standby\n", r.stderr
    rootfs = root / "containers/c1/rootfs"
    assert mounted(rootfs, "fuse.layerfs")
    assert (rootfs / "srv/app/data").read_text() == "data\n"
    assert layerctl(root, "umount", "c1").code == 0
    r = subprocess.run([*spy, "mount", "c1"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "standby\n", r.stderr
    assert (rootfs / "etc/passwd").read_text() == PASSWD
    assert layerctl(root, "rm", "--force", "c1").code == 0


def _processes() -> set[int]:
    """Processes named layerfs (daemons name themselves so at once), zombies included."""
    out = set()
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == "layerfs":
                    out.add(int(p))
        except (OSError, ValueError):
            pass
    return out


def test_create_unknown_user(tmp_path: Path, root: Path) -> None:
    layout = build_image(
        tmp_path / "ghost",
        [{"etc": Dir(), "etc/passwd": PASSWD}],
        tag="g",
        config=ImageConfigSpec(cmd=["/bin/true"], user="ghost"),
    )
    r = layerctl(root, "create", f"oci:{layout}:g", "gh")
    assert r.code != 0 and len(r.err_lines) == 1 and "ghost" in r.err, r.err
    assert os.listdir(root / "containers") == []
    assert not mounted(root / "containers/gh/rootfs")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
