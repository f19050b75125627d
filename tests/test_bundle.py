"""Image config -> runtime bundle: the conversion, user resolution, safe rootfs reads, runc.

Tiers: the pure conversion and passwd/group resolution over in-memory files;
resolution over real (and hostile) rootfs trees; ``config.json`` writing; and
end to end, the generated config run by a real runc on a busybox rootfs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from layerfs.bundle import (
    DEFAULT_PATH,
    ROOT,
    BundleError,
    ResolvedUser,
    read_rootfs_file,
    resolve_user,
    runtime_config,
    write_bundle_config,
)
from layerfs.bundle.passwd import parse_group, parse_passwd
from layerfs.bundle.rootfs import MAX_SYMLINKS
from layerfs.oci import ImageConfig, parse_config
from tests.conftest import make_tree

Doc = dict[str, Any]
DIFF_ID = "sha256:" + "a" * 64

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
# a comment, then NIS and malformed lines that must be skipped
+nis::::::
broken:x:notanumber:0::/broken:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App User:/home/app:/bin/sh
nohome:x:1001:1001::relative/home:/bin/sh
short:x:1002:1002
"""

GROUP = b"""root:x:0:
daemon:x:1:
app:x:1000:
nohome:x:1001:
wheel:x:10:root, app
audio:x:29:daemon,app
app2:x:1000:app
video:x:44:
staff:x:50:
"""


def _image(config: Doc | None = None, **top: Any) -> ImageConfig:
    doc: Doc = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]},
        "config": {"Cmd": ["/bin/sh"], **(config or {})},
    }
    doc.update(top)
    return parse_config(json.dumps(doc))


def _files(
    passwd: bytes | None = PASSWD, group: bytes | None = GROUP
) -> Callable[[str], bytes | None]:
    files = {"/etc/passwd": passwd, "/etc/group": group}
    return lambda path: files.get(path)


APP = ResolvedUser(uid=1000, gid=1000, additional_gids=(1000, 10, 29), home="/home/app")


# --- process.args ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "args"),
    [
        (None, ["/bin/sh", "-c", "true"], ["/bin/sh", "-c", "true"]),
        (["/entry", "-x"], None, ["/entry", "-x"]),
        (["/entry"], ["a", "b"], ["/entry", "a", "b"]),
        ([], ["cmd"], ["cmd"]),
        (["/entry"], [], ["/entry"]),
    ],
)
def test_args_are_entrypoint_then_cmd(
    entrypoint: list[str] | None, cmd: list[str] | None, args: list[str]
) -> None:
    image = _image({"Entrypoint": entrypoint, "Cmd": cmd})
    assert runtime_config(image, user=ROOT)["process"]["args"] == args


@pytest.mark.parametrize(("entrypoint", "cmd"), [(None, None), ([], []), (None, []), ([], None)])
def test_no_command_is_an_error(entrypoint: list[str] | None, cmd: list[str] | None) -> None:
    image = _image({"Entrypoint": entrypoint, "Cmd": cmd})
    with pytest.raises(BundleError, match="neither Entrypoint nor Cmd"):
        runtime_config(image, user=ROOT)


# --- process.env, cwd, terminal -------------------------------------------------------------


def test_env_gets_default_path_and_home() -> None:
    env = runtime_config(_image({"Env": ["FOO=bar"]}), user=APP)["process"]["env"]
    assert env == ["FOO=bar", f"PATH={DEFAULT_PATH}", "HOME=/home/app"]


def test_env_from_image_is_kept_verbatim_and_wins() -> None:
    image_env = ["PATH=/opt/bin", "HOME=/srv", "TERM=vt100", "EMPTY=", "A=b=c"]
    env = runtime_config(_image({"Env": image_env}), user=APP, tty=True)["process"]["env"]
    assert env == image_env


def test_home_defaults_to_slash_for_a_user_without_one() -> None:
    env = runtime_config(_image(), user=ResolvedUser(uid=5))["process"]["env"]
    assert "HOME=/" in env


def test_tty_sets_terminal_and_term() -> None:
    process = runtime_config(_image(), user=ROOT, tty=True)["process"]
    assert process["terminal"] is True
    assert "TERM=xterm" in process["env"]
    process = runtime_config(_image(), user=ROOT)["process"]
    assert process["terminal"] is False
    assert not any(e.startswith("TERM=") for e in process["env"])


@pytest.mark.parametrize(
    ("workdir", "cwd"),
    [
        (None, "/"),
        ("", "/"),
        ("/app", "/app"),
        ("/app/", "/app"),
        ("app/x", "/app/x"),
        ("/a/../b", "/b"),
    ],
)
def test_cwd_from_working_dir(workdir: str | None, cwd: str) -> None:
    config = {} if workdir is None else {"WorkingDir": workdir}
    assert runtime_config(_image(config), user=ROOT)["process"]["cwd"] == cwd


def test_process_user() -> None:
    assert runtime_config(_image(), user=APP)["process"]["user"] == {
        "uid": 1000,
        "gid": 1000,
        "additionalGids": [1000, 10, 29],
    }
    assert runtime_config(_image(), user=ResolvedUser(7, 8))["process"]["user"] == {
        "uid": 7,
        "gid": 8,
    }


def test_resolved_user_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="uid"):
        ResolvedUser(uid=-1)
    with pytest.raises(ValueError, match="gid"):
        ResolvedUser(gid=2**32 - 1)
    with pytest.raises(ValueError, match="home"):
        ResolvedUser(home="relative")


# --- the rest of the config -----------------------------------------------------------------


def test_root_hostname_and_os() -> None:
    config = runtime_config(_image(), user=ROOT, rootfs="/abs/rootfs", readonly_rootfs=True)
    assert config["root"] == {"path": "/abs/rootfs", "readonly": True}
    assert "hostname" not in config
    assert runtime_config(_image(), user=ROOT)["root"] == {"path": "rootfs", "readonly": False}
    assert runtime_config(_image(), user=ROOT, hostname="web-1")["hostname"] == "web-1"
    for bad in ("", "a b", "x" * 65, "tab\t"):
        with pytest.raises(BundleError, match="hostname"):
            runtime_config(_image(), user=ROOT, hostname=bad)
    with pytest.raises(BundleError, match="'windows'"):
        runtime_config(_image(os="windows"), user=ROOT)


@pytest.fixture(scope="module")
def runc_spec(tmp_path_factory: pytest.TempPathFactory) -> Doc:
    """What ``runc spec`` generates: the oracle for the defaults."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    d = tmp_path_factory.mktemp("runc-spec")
    subprocess.run(["runc", "spec"], cwd=d, check=True, timeout=10)
    spec: Doc = json.loads((d / "config.json").read_text())
    return spec


def test_defaults_match_runc_spec(runc_spec: Doc) -> None:
    config = runtime_config(_image(), user=ROOT)
    for key in ("capabilities", "rlimits", "noNewPrivileges"):
        assert config["process"][key] == runc_spec["process"][key], key
    assert config["mounts"] == runc_spec["mounts"]  # no volumes: exactly runc's mounts
    linux = config["linux"]
    for key in ("maskedPaths", "readonlyPaths", "resources"):
        assert linux[key] == runc_spec["linux"][key], key
    runc_ns = [ns["type"] for ns in runc_spec["linux"]["namespaces"]]
    assert [ns["type"] for ns in linux["namespaces"]] == [*runc_ns, "cgroup"]
    assert config["ociVersion"].startswith("1.")


def test_config_is_fresh_each_time() -> None:
    a = runtime_config(_image(), user=ROOT)
    a["mounts"].clear()
    a["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    b = runtime_config(_image(), user=ROOT)
    assert b["mounts"]
    assert "CAP_SYS_ADMIN" not in b["process"]["capabilities"]["bounding"]


# --- annotations ----------------------------------------------------------------------------

P = "org.opencontainers.image."


def test_annotations_from_image_fields() -> None:
    image = _image(
        {
            "StopSignal": "SIGQUIT",
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8080": {}},
            "Labels": {"com.example.team": "infra"},
        },
        variant="v2",
        author="Jane <jane@example.com>",
        created="2024-01-02T03:04:05Z",
        **{"os.version": "10.0.1", "os.features": ["a", "b"]},
    )
    assert runtime_config(image, user=ROOT)["annotations"] == {
        P + "os": "linux",
        P + "architecture": "amd64",
        P + "variant": "v2",
        P + "os.version": "10.0.1",
        P + "os.features": "a,b",
        P + "author": "Jane <jane@example.com>",
        P + "created": "2024-01-02T03:04:05Z",
        P + "stopSignal": "SIGQUIT",
        P + "exposedPorts": "80/tcp,53/udp,8080",
        "com.example.team": "infra",
    }


def test_absent_fields_make_no_annotation() -> None:
    annotations = runtime_config(_image(), user=ROOT)["annotations"]
    assert annotations == {P + "os": "linux", P + "architecture": "amd64"}


def test_labels_win_over_derived_and_extra_wins_over_labels() -> None:
    image = _image(
        {
            "StopSignal": "SIGTERM",
            "ExposedPorts": {"80/tcp": {}},
            "Labels": {P + "stopSignal": "SIGINT", P + "exposedPorts": "", P + "os": "custom"},
        }
    )
    annotations = runtime_config(image, user=ROOT, annotations={P + "os": "caller"})["annotations"]
    assert annotations[P + "stopSignal"] == "SIGINT"
    assert annotations[P + "exposedPorts"] == ""  # a label's empty value is still a value
    assert annotations[P + "os"] == "caller"
    assert annotations[P + "architecture"] == "amd64"


# --- volumes --------------------------------------------------------------------------------


def _volumes(config: Doc) -> list[Doc]:
    return [m for m in config["mounts"] if m["destination"] not in _SYSTEM_DESTS]


_SYSTEM_DESTS = {m["destination"] for m in runtime_config(_image(), user=ROOT)["mounts"]}


def test_volumes_become_tmpfs_owned_by_the_user_parents_first() -> None:
    image = _image({"Volumes": {"/data/sub": {}, "/var/lib/db/": {}, "/data": {}, "//data": {}}})
    mounts = _volumes(runtime_config(image, user=APP))
    assert [m["destination"] for m in mounts] == ["/data", "/data/sub", "/var/lib/db"]
    assert mounts[0] == {
        "destination": "/data",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=755", "uid=1000", "gid=1000"],
    }


def test_volume_sources_become_bind_mounts() -> None:
    image = _image({"Volumes": {"/data/": {}, "/cache": {}}})
    config = runtime_config(image, user=ROOT, volume_sources={"/data": "/srv/vol/data"})
    by_dest = {m["destination"]: m for m in _volumes(config)}
    assert by_dest["/data"]["type"] == "bind"
    assert by_dest["/data"]["source"] == "/srv/vol/data"
    assert "rbind" in by_dest["/data"]["options"]
    assert by_dest["/cache"]["type"] == "tmpfs"
    with pytest.raises(ValueError, match="/nope"):
        runtime_config(image, user=ROOT, volume_sources={"/nope": "/srv"})
    with pytest.raises(ValueError, match="absolute"):
        runtime_config(image, user=ROOT, volume_sources={"/data": "rel"})


@pytest.mark.parametrize(
    ("volume", "match"), [("data", "absolute"), ("/", "whole root"), ("/..", "whole")]
)
def test_bad_volumes_are_errors_naming_them(volume: str, match: str) -> None:
    with pytest.raises(BundleError, match=match) as info:
        runtime_config(_image({"Volumes": {volume: {}}}), user=ROOT)
    assert repr(volume) in str(info.value)


def test_volumes_over_runtime_mounts_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    image = _image({"Volumes": {"/sys/fs/cgroup": {}, "/proc/x": {}, "/dev/shm": {}, "/dev/x": {}}})
    with caplog.at_level(logging.WARNING, logger="layerfs.bundle"):
        mounts = _volumes(runtime_config(image, user=ROOT))
    assert [m["destination"] for m in mounts] == ["/dev/x"]
    assert len(caplog.records) == 3
    assert all("skipped" in r.getMessage() for r in caplog.records)


# --- user resolution (in-memory files) ------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ResolvedUser(0, 0, (), "/root")),
        ("", ResolvedUser(0, 0, (), "/root")),
        ("root", ResolvedUser(0, 0, (0, 10), "/root")),
        ("app", APP),
        ("1000", ResolvedUser(1000, 1000, (), "/home/app")),
        ("4242", ResolvedUser(4242, 0, (), "/")),
        ("app:staff", ResolvedUser(1000, 50, (), "/home/app")),
        ("app:77", ResolvedUser(1000, 77, (), "/home/app")),
        ("1000:staff", ResolvedUser(1000, 50, (), "/home/app")),
        ("4242:4343", ResolvedUser(4242, 4343, (), "/")),
        ("4242:video", ResolvedUser(4242, 44, (), "/")),
        (":staff", ResolvedUser(0, 50, (), "/root")),
        ("app:", APP),
        ("daemon", ResolvedUser(1, 1, (1, 29), "/usr/sbin")),
        ("nohome", ResolvedUser(1001, 1001, (1001,), "/")),
        ("short", ResolvedUser(1002, 1002, (1002,), "/")),
    ],
)
def test_user_forms(spec: str | None, expected: ResolvedUser) -> None:
    assert resolve_user(spec, _files()) == expected


def test_additional_gids_keep_primary_first_without_duplicates() -> None:
    # app's primary gid 1000 is also "app2", which lists app: listed once.
    assert resolve_user("app", _files()).additional_gids == (1000, 10, 29)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("app2", "user 'app2' not found in /etc/passwd of the image"),
        ("app:nogroup", "group 'nogroup' not found in /etc/group of the image"),
        ("0:nogroup", "group 'nogroup' not found in /etc/group"),
        ("broken", "user 'broken' not found"),  # its line is malformed
        ("-1", "user '-1' not found"),
        ("99999999999", "uid 99999999999 is out of range"),
        ("0:4294967295", "gid 4294967295 is out of range"),
    ],
)
def test_unknown_names_are_errors_naming_them(spec: str, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        resolve_user(spec, _files())


def test_missing_files_are_fine_for_numeric_forms_only() -> None:
    none = _files(passwd=None, group=None)
    assert resolve_user("123:456", none) == ResolvedUser(123, 456, (), "/")
    assert resolve_user("", none) == ResolvedUser(0, 0, (), "/")
    with pytest.raises(BundleError, match=r"user 'app' .* \(the image has no such file\)"):
        resolve_user("app", none)
    with pytest.raises(BundleError, match=r"group 'staff' .* \(the image has no such file\)"):
        resolve_user("app:staff", _files(group=None))
    assert resolve_user("app", _files(group=None)).additional_gids == (1000,)


def test_group_file_is_not_read_unless_needed() -> None:
    read: list[str] = []
    files = _files()

    def reader(path: str) -> bytes | None:
        read.append(path)
        return files(path)

    resolve_user("1000:2000", reader)
    assert read == ["/etc/passwd"]


def test_parsers_skip_what_they_cannot_read() -> None:
    assert [e.name for e in parse_passwd(PASSWD)] == ["root", "daemon", "app", "nohome", "short"]
    groups = {g.name: g for g in parse_group(GROUP + b"bad:x:\n:x:5:\nuni:x:\xc2\xb2:\n")}
    assert groups["wheel"].members == ("root", "app")
    assert "bad" not in groups and "uni" not in groups
    # Non-UTF-8 names survive and match only themselves.
    entries = parse_passwd(b"caf\xe9:x:5:5::/h:/bin/sh\r\n")
    assert entries[0].uid == 5 and entries[0].home == "/h"


# --- user resolution on a real rootfs, including hostile ones -------------------------------


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    make_tree(root, {"etc/passwd": PASSWD, "etc/group": GROUP})
    return root


def test_resolve_user_on_a_rootfs(rootfs: Path) -> None:
    assert resolve_user("app", rootfs) == APP
    assert resolve_user("app", str(rootfs)) == APP


def test_symlinks_inside_the_rootfs_are_followed_within_it(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    make_tree(
        root,
        {
            "private/etc/passwd": "link:->../../usr/share/base/passwd",
            "private/etc/group": "link:->/usr/share/base/group",
            "usr/share/base/passwd": PASSWD,
            "usr/share/base/group": GROUP,
            "etc": "link:->/private/./etc/",
        },
    )
    assert resolve_user("app", root) == APP


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A passwd file outside the rootfs that no resolution may read."""
    out = tmp_path / "outside"
    make_tree(out, {"passwd": "evil:x:666:666::/evil:/bin/sh\n", "group": "evil:x:666:evil\n"})
    return out


@pytest.mark.parametrize(
    "tree",
    [
        {"etc": "link:->/"},  # /etc/passwd becomes the rootfs's /passwd: absent
        {"etc": "link:->../../../../../../../.."},
        {"etc/passwd": "link:->../../../../../../../etc/shadow"},
        {"etc/passwd": "link:->/etc/shadow"},
        {"etc": "link:->OUTSIDE"},
        {"etc/passwd": "link:->OUTSIDE/passwd"},
        {"etc/passwd": "link:->../../outside/passwd"},
        {"etc": "link:->../outside"},
    ],
)
def test_hostile_symlinks_never_leave_the_rootfs(
    tmp_path: Path, outside: Path, tree: dict[str, str]
) -> None:
    root = tmp_path / "rootfs"
    make_tree(root, {k: v.replace("OUTSIDE", str(outside)) for k, v in tree.items()})
    # Names the host (root) and the outside file (evil) know, the rootfs does not.
    for name in ("root", "evil"):
        with pytest.raises(BundleError, match=f"user '{name}' not found"):
            resolve_user(name, root)
    assert read_rootfs_file(root, "/etc/passwd") is None
    assert resolve_user("0", root) == ResolvedUser(0, 0, (), "/")


def test_etc_symlink_to_root_reads_the_rootfs_own_file(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    make_tree(root, {"etc": "link:->/", "passwd": "inside:x:9:9::/in:/bin/sh\n"})
    assert resolve_user("inside", root) == ResolvedUser(9, 9, (9,), "/in")


def test_symlink_loops_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    make_tree(root, {"etc/passwd": "link:->/etc/loop", "etc/loop": "link:->passwd"})
    with pytest.raises(
        BundleError, match="too many levels of symbolic links resolving /etc/passwd"
    ):
        resolve_user("app", root)
    # /l0 takes one link more than the limit, /l1 exactly the limit.
    chain = {f"l{i}": f"link:->l{i + 1}" for i in range(MAX_SYMLINKS + 1)}
    make_tree(root, {**chain, f"l{MAX_SYMLINKS + 1}": "x"})
    assert read_rootfs_file(root, "/l1") == b"x"
    with pytest.raises(BundleError, match="too many levels"):
        read_rootfs_file(root, "/l0")


def test_special_files_are_refused_without_hanging(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mkfifo(root / "etc" / "passwd")
    with pytest.raises(BundleError, match="/etc/passwd of the image is not a regular file"):
        resolve_user("app", root)
    os.unlink(root / "etc" / "passwd")
    (root / "etc" / "passwd").mkdir()
    with pytest.raises(BundleError, match="not a regular file"):
        resolve_user("0", root)


def test_oversized_and_misplaced_files(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    make_tree(root, {"etc/passwd": b"x" * 101, "var": "a file, not a directory"})
    with pytest.raises(BundleError, match="larger than 100 bytes"):
        read_rootfs_file(root, "/etc/passwd", max_size=100)
    assert read_rootfs_file(root, "/etc/passwd", max_size=101) == b"x" * 101
    assert read_rootfs_file(root, "/var/passwd") is None
    assert read_rootfs_file(root, "/nonexistent/passwd") is None


def test_unreadable_rootfs_is_a_bundle_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"rootfs {tmp_path}/missing: No such file"):
        resolve_user("app", tmp_path / "missing")
    # A read failing like one on a dead mount: /proc/self/mem is a regular file
    # whose first page is never mapped, so read() gives EIO.
    with pytest.raises(BundleError, match="cannot read /mem of the image: Input/output error"):
        read_rootfs_file("/proc/self", "/mem")


def test_no_descriptor_leaks(rootfs: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        resolve_user("app", rootfs)
        read_rootfs_file(rootfs, "/nonexistent/x")
    assert len(os.listdir("/proc/self/fd")) == before


# --- config.json ----------------------------------------------------------------------------


def test_write_bundle_config(tmp_path: Path) -> None:
    config = runtime_config(_image({"Env": ["GREETING=h\u00e9llo"]}), user=APP)
    (tmp_path / "config.json").write_text("old")
    path = write_bundle_config(tmp_path, config)
    assert path == tmp_path / "config.json"
    assert json.loads(path.read_text(encoding="utf-8")) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_write_bundle_config_failure_leaves_old_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("old")
    with pytest.raises(TypeError):
        write_bundle_config(tmp_path, {"bad": object()})
    assert (tmp_path / "config.json").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


# --- end to end: runc runs the generated config ---------------------------------------------

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "id", "touch", "hostname", "cat")


def _runc_usable() -> str | None:
    if os.geteuid() != 0:
        return "runc run needs root"
    if shutil.which("runc") is None:
        return "runc is not installed"
    if not os.path.exists(BUSYBOX):
        return "busybox-static is not installed"
    return None


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    skip = _runc_usable()
    if skip:
        pytest.skip(skip)
    root = tmp_path / "bundle" / "rootfs"
    make_tree(root, {"etc/passwd": PASSWD, "etc/group": GROUP, "work": None, "bin": None})
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    return tmp_path / "bundle"


def _runc_run(bundle: Path) -> subprocess.CompletedProcess[str]:
    container = f"layerfs-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run(
            ["runc", "run", "--bundle", str(bundle), container],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    finally:
        subprocess.run(
            ["runc", "delete", "-f", container], capture_output=True, timeout=20, check=False
        )


@pytest.fixture
def no_stray_containers() -> Iterator[None]:
    yield
    listed = subprocess.run(["runc", "list", "-q"], capture_output=True, text=True, check=False)
    assert not [c for c in listed.stdout.split() if c.startswith(f"layerfs-test-{os.getpid()}-")]


SCRIPT = (
    "id -u; id -g; id -G; pwd; echo $FOO; echo $HOME; echo $PATH; "
    "touch /data/x && echo volume-writable; hostname; "
    "touch /rootfs-write 2>/dev/null && echo rootfs-writable || echo rootfs-readonly"
)


@pytest.mark.runc
@pytest.mark.usefixtures("no_stray_containers")
def test_runc_runs_the_image_as_its_named_user(bundle: Path) -> None:
    image = _image(
        {
            "User": "app",
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [SCRIPT],
            "Env": ["FOO=from the image"],
            "WorkingDir": "/work",
            "Volumes": {"/data": {}},
        }
    )
    user = resolve_user(image.config.user, bundle / "rootfs")
    write_bundle_config(bundle, runtime_config(image, user=user, hostname="box"))
    result = _runc_run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "1000",
        "1000",
        "1000 10 29",
        "/work",
        "from the image",
        "/home/app",
        DEFAULT_PATH,
        "volume-writable",
        "box",
        "rootfs-readonly",  # not readonly: app simply may not write to the root-owned /
    ]


@pytest.mark.runc
@pytest.mark.usefixtures("no_stray_containers")
def test_runc_runs_numeric_user_on_a_readonly_root(bundle: Path) -> None:
    image = _image(
        {
            "User": "4242:4343",
            "Cmd": ["/bin/sh", "-c", SCRIPT],
            "Env": ["PATH=/bin", "FOO=bar"],
            "Volumes": {"/data": {}},
        }
    )
    user = resolve_user(image.config.user, bundle / "rootfs")
    write_bundle_config(
        bundle, runtime_config(image, user=user, readonly_rootfs=True, hostname="h")
    )
    result = _runc_run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "4242",
        "4343",
        "4343",
        "/",
        "bar",
        "/",
        "/bin",
        "volume-writable",
        "h",
        "rootfs-readonly",
    ]


@pytest.mark.runc
@pytest.mark.usefixtures("no_stray_containers")
def test_runc_root_can_write_a_writable_root(bundle: Path) -> None:
    image = _image(
        {"Cmd": ["/bin/sh", "-c", "id -u; touch /made-here && echo written; echo $HOME"]}
    )
    user = resolve_user(image.config.user, bundle / "rootfs")
    write_bundle_config(bundle, runtime_config(image, user=user))
    result = _runc_run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0", "written", "/root"]
    assert (bundle / "rootfs" / "made-here").exists()
