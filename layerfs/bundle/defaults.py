"""The runtime settings no image carries: what ``runc spec`` (runc 1.1) generates.

These are the implementation-defined defaults of the conversion — the
environment every OCI runtime (runc, crun, LXC's OCI template) expects a
container to have: its own namespaces, ``/proc``, a small ``/dev`` tmpfs with
``devpts``, ``shm`` and ``mqueue``, a read-only ``/sys`` and cgroup view, a
minimal capability set, and the kernel interfaces a container must not
reach masked or made read-only. They mirror ``runc spec`` so that a bundle
behaves like one its users made by hand, with one addition: a ``cgroup``
namespace, so that ``/sys/fs/cgroup`` shows the container's own cgroup.

Every value is built fresh by a function: callers get JSON-ready lists and
dicts they may mutate without touching a shared default.
"""

from __future__ import annotations

from typing import Any

#: The runtime-spec version the generated configs declare.
OCI_VERSION = "1.0.2"

#: ``PATH`` for an image whose ``Env`` has none (the value Docker and runc use).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: ``TERM`` for a process given a terminal, unless the image sets one.
DEFAULT_TERM = "xterm"

# runc spec's set: enough to bind low ports and signal its own children. No
# inheritable set, on purpose (CVE-2022-29162): it would leak into execve'd
# programs that are not file-capability aware.
_CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")

_NAMESPACES = ("pid", "network", "ipc", "uts", "mount", "cgroup")

_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
)

_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

_NOFILE = 1024


def capabilities() -> dict[str, list[str]]:
    """``process.capabilities``: the same small set in every set that applies."""
    return {kind: list(_CAPABILITIES) for kind in ("bounding", "effective", "permitted", "ambient")}


def rlimits() -> list[dict[str, Any]]:
    """``process.rlimits``: open files capped at 1024, soft and hard."""
    return [{"type": "RLIMIT_NOFILE", "hard": _NOFILE, "soft": _NOFILE}]


def system_mounts() -> list[dict[str, Any]]:
    """``mounts``: the pseudo filesystems a Linux container needs, parents first."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]


def linux_section() -> dict[str, Any]:
    """``linux``: namespaces, a deny-all device cgroup, masked and read-only paths."""
    return {
        # runc creates the standard device nodes itself; deny everything else.
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": ns} for ns in _NAMESPACES],
        "maskedPaths": list(_MASKED_PATHS),
        "readonlyPaths": list(_READONLY_PATHS),
    }
