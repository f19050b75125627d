"""The layerfs command line: both forms, readiness, errors, signals, mount(8)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layerfs.fs.serving import READAHEAD_KB
from tests.conftest import make_tree
from tests.mounts import LAYERFS, bdi_readahead_kb, mounted, start_layerfs, wait_for


@pytest.fixture
def layers(tmp_path: Path) -> dict[str, Path]:
    make_tree(tmp_path / "l1", {"top": "t", "d/one": "1"})
    make_tree(tmp_path / "l2", {"bottom": "b", "d/two": "2"})
    for name in ("u", "w", "m"):
        (tmp_path / name).mkdir()
    return {n: tmp_path / n for n in ("l1", "l2", "u", "w", "m")}


def _opts(p: dict[str, Path]) -> str:
    return f"lowerdir={p['l1']}:{p['l2']},upperdir={p['u']},workdir={p['w']}"


def _daemon_pids(mountpoint: Path) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in cmd and any(b"layerfs" in c for c in cmd):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split()[2] == "Z":
                        continue  # a zombie: PID 1 here does not reap
            except OSError:
                continue
            pids.append(int(pid))
    return pids


@pytest.fixture
def cleanup(layers: dict[str, Path]) -> Iterator[None]:
    yield
    subprocess.run(
        ["fusermount3", "-u", "-z", str(layers["m"])], check=False, stderr=subprocess.DEVNULL
    )
    for pid in _daemon_pids(layers["m"]):
        os.kill(pid, signal.SIGKILL)


def run_layerfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAYERFS, *args], capture_output=True, text=True, timeout=30, env=env)


def test_background_mount_is_live_on_return(layers: dict[str, Path], cleanup: None) -> None:
    r = run_layerfs("-o", _opts(layers), str(layers["m"]))
    assert r.returncode == 0, r.stderr
    assert mounted(layers["m"], "fuse.layerfs"), "returned before the mount was live"
    assert sorted(os.listdir(layers["m"])) == ["bottom", "d", "top"]
    pids = _daemon_pids(layers["m"])
    assert len(pids) == 1
    subprocess.run(["fusermount3", "-u", str(layers["m"])], check=True)
    wait_for(lambda: not _daemon_pids(layers["m"]), what="daemon exit after unmount")


def test_source_form_and_mount_fuse3(layers: dict[str, Path], cleanup: None) -> None:
    # mount(8) runs helpers with a fixed PATH: tools/setup links layerfs into /usr/local/bin.
    assert shutil.which("layerfs", path="/usr/local/bin:/usr/bin:/bin"), "run tools/setup"
    r = subprocess.run(
        ["mount", "-t", "fuse.layerfs", "layerfs", str(layers["m"]), "-o", _opts(layers)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert mounted(layers["m"], "fuse.layerfs")
    assert (layers["m"] / "d/two").read_text() == "2"
    (layers["m"] / "new").write_text("n")
    subprocess.run(["umount", str(layers["m"])], check=True)
    assert not mounted(layers["m"])
    assert (layers["u"] / "new").read_text() == "n"


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("bad-value", 2, "timeout=abc"),
        ("no-lowerdir", 2, "lowerdir"),
        ("upper-without-work", 2, "workdir"),
        ("missing-dir", 1, "nonexistent"),
        ("mountpoint-in-layer", 1, "inside lowerdir"),
        ("readonly-upper", 1, "read-only"),
        ("work-inside-upper", 1, "must not nest"),
    ],
)
def test_errors_one_line_nothing_mounted(
    layers: dict[str, Path], tmp_path: Path, case: str, code: int, needle: str
) -> None:
    mnt = layers["m"]
    opts = _opts(layers)
    ro = tmp_path / "ro"
    if case == "bad-value":
        opts += ",timeout=abc"
    elif case == "no-lowerdir":
        opts = f"upperdir={layers['u']},workdir={layers['w']}"
    elif case == "upper-without-work":
        opts = f"lowerdir={layers['l1']},upperdir={layers['u']}"
    elif case == "missing-dir":
        opts = f"lowerdir={tmp_path}/nonexistent:{layers['l2']}"
    elif case == "mountpoint-in-layer":
        mnt = layers["l1"] / "d"
    elif case == "readonly-upper":
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ro)], check=True)
        (ro / "u").mkdir()
        (ro / "w").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        opts = f"lowerdir={layers['l1']},upperdir={ro}/u,workdir={ro}/w"
    elif case == "work-inside-upper":
        (layers["u"] / "w").mkdir()
        opts = f"lowerdir={layers['l1']},upperdir={layers['u']},workdir={layers['u']}/w"
    try:
        r = run_layerfs("-o", opts, str(mnt))
    finally:
        if case == "readonly-upper":
            subprocess.run(["umount", str(ro)], check=True)
    assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and lines[0].startswith("layerfs: ")
    assert not mounted(mnt)
    assert not _daemon_pids(mnt)


def test_unknown_option_warns_and_mounts(layers: dict[str, Path], cleanup: None) -> None:
    r = run_layerfs("-o", _opts(layers) + ",frobnicate=1", str(layers["m"]))
    assert r.returncode == 0
    assert "unknown option 'frobnicate=1'" in r.stderr
    assert mounted(layers["m"], "fuse.layerfs")


def test_readahead_is_one_mib(layers: dict[str, Path]) -> None:
    # The kernel's default is 128 KiB; the daemon raises it once INIT is answered.
    m = start_layerfs(layers["m"], _opts(layers))
    try:
        assert (layers["m"] / "top").read_text() == "t"
        wait_for(lambda: bdi_readahead_kb(layers["m"]) == READAHEAD_KB, 2.0, what="1 MiB readahead")
    finally:
        m.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(layers: dict[str, Path], sig: int) -> None:
    m = start_layerfs(layers["m"], _opts(layers))
    try:
        (layers["m"] / "x").write_text("x")
        m.proc.send_signal(sig)
        assert m.proc.wait(timeout=10) == 0
        assert not mounted(layers["m"])
    finally:
        m.stop()


def test_second_mount_on_same_workdir_refused(layers: dict[str, Path], tmp_path: Path) -> None:
    m = start_layerfs(layers["m"], _opts(layers))
    try:
        other = tmp_path / "m2"
        other.mkdir()
        r = run_layerfs("-o", _opts(layers), str(other))
        assert r.returncode == 1 and "in use" in r.stderr
        assert not mounted(other)
    finally:
        m.stop()


# Runs in a process of its own: prefork forks, which a test process must not do.
PREFORK = """
import os, sys
from layerfs.fs import daemon
from layerfs.fs.options import parse_options, split_options
daemon.prefork()
standby = daemon._standby.pid
print(standby, flush=True)
if sys.argv[1] == "mount":
    opts, _ = parse_options(split_options([sys.argv[2]]))
    try:
        pid = daemon.spawn(daemon.DaemonConfig(os.path.realpath(sys.argv[3]), opts))
    except daemon.MountError as exc:
        print("error", exc)
    else:
        print("served by", "standby" if pid == standby else "another", pid)
"""


def _prefork(*args: str) -> list[str]:
    r = subprocess.run(
        [sys.executable, "-c", PREFORK, *args], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_prefork_daemon_takes_the_mount(layers: dict[str, Path], cleanup: None) -> None:
    standby, served = _prefork("mount", _opts(layers), str(layers["m"]))
    assert served == f"served by standby {standby}"
    assert mounted(layers["m"], "fuse.layerfs")
    assert sorted(os.listdir(layers["m"])) == ["bottom", "d", "top"]
    subprocess.run(["fusermount3", "-u", str(layers["m"])], check=True)
    wait_for(lambda: not _daemon_pids(layers["m"]), what="daemon exit after unmount")


def test_prefork_daemon_reports_why_it_cannot_mount(
    layers: dict[str, Path], tmp_path: Path
) -> None:
    m = start_layerfs(layers["m"], _opts(layers))
    try:
        other = tmp_path / "m2"
        other.mkdir()
        standby, error = _prefork("mount", _opts(layers), str(other))
        assert error.startswith("error ") and "in use" in error  # from the standby's pipe
        assert not mounted(other)
        wait_for(lambda: _gone(int(standby)), what="the standby to be reaped")
    finally:
        m.stop()


def test_unused_prefork_daemon_is_reaped() -> None:
    (standby,) = _prefork("none")
    assert _gone(int(standby)), "the caller exited; its standby daemon must be gone"


def test_mount_t_layerfs_and_fstab(layers: dict[str, Path], tmp_path: Path, cleanup: None) -> None:
    assert os.path.exists("/sbin/mount.layerfs"), "run tools/setup"
    r = subprocess.run(
        ["mount", "-t", "layerfs", "app", str(layers["m"]), "-o", _opts(layers)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert mounted(layers["m"], "fuse.layerfs")
    assert sorted(os.listdir(layers["m"])) == ["bottom", "d", "top"]
    subprocess.run(["umount", str(layers["m"])], check=True)
    assert not mounted(layers["m"])
    fstab = tmp_path / "fstab"
    fstab.write_text(f"app {layers['m']} layerfs {_opts(layers)},nofail 0 0\n")
    r = subprocess.run(
        ["mount", "-a", "-T", str(fstab)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert mounted(layers["m"], "fuse.layerfs")
    with open("/proc/self/mountinfo") as f:
        assert any(f" {layers['m']} " in line and " app " in line for line in f)
    subprocess.run(["umount", str(layers["m"])], check=True)
    assert not mounted(layers["m"])
