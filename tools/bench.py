"""Side-by-side benchmark of native dir, kernel overlayfs, fuse-overlayfs and layerfs.

Builds its layers once (a 20,000-file tree in 200 dirs, a 512 MiB file, a 1,000-file dir to
delete, a top layer overriding 2,000 files), then runs every workload on a fresh mount per
contender, ``--runs`` rounds with the contenders interleaved, and prints medians, the ratios
layerfs/fuse-overlayfs and layerfs/kernel, and JSON. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

CONTENDERS = ("native", "kernel", "fuse-overlayfs", "layerfs")
BIG = 512 << 20


@dataclass(frozen=True)
class Layers:
    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def top(self) -> Path:
        return self.root / "top"

    @property
    def merged_copy(self) -> Path:
        # The "native" contender reads a plain directory holding the merged result.
        return self.root / "native"

    @property
    def tarball(self) -> Path:
        return self.root / "extract.tar"


def build_layers(root: Path) -> Layers:
    layers = Layers(root)
    stamp = root / ".built-v1"
    if stamp.exists():
        return layers
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"bench: building layers in {root}", file=sys.stderr)
    for d in range(200):
        sub = layers.base / "tree" / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(100):
            (sub / f"f{f:03d}").write_bytes(os.urandom(64 + (f * 37) % 2000))
    del_dir = layers.base / "del"
    del_dir.mkdir()
    for f in range(1000):
        (del_dir / f"x{f:04d}").write_bytes(b"x" * 100)
    with open(layers.base / "big", "wb") as fh:
        chunk = os.urandom(1 << 20)
        for _ in range(BIG >> 20):
            fh.write(chunk)
    for i in range(2000):
        p = layers.top / "tree" / f"d{i % 200:03d}" / f"f{i // 200:03d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"top layer " + str(i).encode())
    subprocess.run(["cp", "-a", f"{layers.base}/.", str(layers.merged_copy)], check=True)
    subprocess.run(["cp", "-a", f"{layers.top}/.", str(layers.merged_copy)], check=True)
    src = root / "tarsrc"
    for i in range(10000):
        p = src / f"t{i // 100:03d}" / f"s{i % 100:03d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"y" * (i % 700))
    with tarfile.open(layers.tarball, "w") as tar:
        tar.add(src, arcname=".")
    shutil.rmtree(src)
    stamp.touch()
    return layers


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@contextlib.contextmanager
def mounted(kind: str, layers: Layers, run: Path) -> Iterator[Path]:
    """A fresh mount (or directory) of ``kind`` over the bench layers, in ``run``.

    ``run`` is left in place: deleting thousands of files makes the creates of whatever
    runs next several times slower on this ext4 (journal and discard), so the caller
    removes all runs at the end.
    """
    upper, work, mnt = run / "upper", run / "work", run / "mnt"
    for p in (upper, work, mnt):
        p.mkdir(parents=True)
    lower = f"{layers.top}:{layers.base}"
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    try:
        if kind == "native":
            subprocess.run(
                ["cp", "-a", "--reflink=auto", f"{layers.merged_copy}/.", str(mnt)], check=True
            )
        elif kind == "kernel":
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
        elif kind == "fuse-overlayfs":
            subprocess.run(["fuse-overlayfs", "-o", opts, str(mnt)], check=True)
        else:
            subprocess.run(
                [sys.executable, "-m", "layerfs.cli.layerfs", "-o", opts, str(mnt)], check=True
            )
        yield mnt
    finally:
        if kind == "kernel":
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        elif kind != "native":
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
            _kill_daemons(mnt)


def _kill_daemons(mnt: Path) -> None:
    needle = os.fsencode(mnt)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        os.kill(int(pid), 9)
            except OSError:
                pass


def sh(cmd: str, cwd: Path | None = None) -> None:
    subprocess.run(["sh", "-c", cmd], check=True, cwd=cwd, stdout=subprocess.DEVNULL)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _files(mnt: Path, n: int) -> list[str]:
    return [str(mnt / "tree" / f"d{i % 200:03d}" / f"f{(i // 200) % 100:03d}") for i in range(n)]


def workloads(layers: Layers) -> dict[str, Callable[[Path], float]]:
    def read_cold(m: Path) -> float:
        drop_caches()
        return timed(lambda: sh(f"cat {m}/big > /dev/null"))

    def read_warm(m: Path) -> float:
        # Steady state: over FUSE the first re-read of freshly filled pages still costs
        # ~0.07 s instead of ~0.04 s (fuse-overlayfs and layerfs alike; not native), so the
        # file is read twice before the timed read.
        sh(f"cat {m}/big > /dev/null; cat {m}/big > /dev/null")
        return timed(lambda: sh(f"cat {m}/big > /dev/null"))

    def find_cold(m: Path) -> float:
        drop_caches()
        return timed(lambda: sh(f"find {m}/tree -printf '%s %m %u\\n' > /dev/null"))

    def find_warm(m: Path) -> float:
        sh(f"find {m}/tree -printf '%s %m %u\\n' > /dev/null")
        return timed(lambda: sh(f"find {m}/tree -printf '%s %m %u\\n' > /dev/null"))

    def cat_small(m: Path) -> float:
        lst = m.parent / "list"
        lst.write_text("\n".join(_files(m, 5000)) + "\n")
        drop_caches()
        return timed(lambda: sh(f"xargs cat < {lst} > /dev/null"))

    def untar(m: Path) -> float:
        (m / "x").mkdir()
        return timed(lambda: sh(f"tar -xf {layers.tarball} -C {m}/x && sync -f {m}/x"))

    def chmod_copyup(m: Path) -> float:
        lst = m.parent / "list"
        lst.write_text("\n".join(_files(m, 2000)) + "\n")
        return timed(lambda: sh(f"xargs chmod 600 < {lst}"))

    def rm_tree(m: Path) -> float:
        return timed(lambda: sh(f"rm -rf {m}/del"))

    def dd_fsync(m: Path) -> float:
        return timed(
            lambda: sh(f"dd if=/dev/zero of={m}/dd bs=1M count=512 conv=fsync status=none")
        )

    return {
        "read 512M cold": read_cold,
        "read 512M warm": read_warm,
        "find 20k cold": find_cold,
        "find 20k warm": find_warm,
        "cat 5k small": cat_small,
        "untar 10k files": untar,
        "chmod 2k copy-up": chmod_copyup,
        "rm -rf 1k lower": rm_tree,
        "dd 512M fsync": dd_fsync,
    }


def build_image(root: Path) -> str:
    """A three-layer image of about 260 MB built with umoci from /usr content; its name."""
    layout = root / "image"
    if (root / ".image-v2").exists():
        return f"{layout}:big"
    shutil.rmtree(layout, ignore_errors=True)
    print(f"bench: building image in {layout}", file=sys.stderr)
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:big"], check=True)
    bundle = root / "image-bundle"
    for src in ("/usr/share/doc", "/usr/share/man", "/usr/lib/python3"):
        shutil.rmtree(bundle, ignore_errors=True)
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:big", str(bundle)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        dest = bundle / "rootfs" / src.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", src, str(dest)], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(
            ["umoci", "repack", "--image", f"{layout}:big", str(bundle)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    shutil.rmtree(bundle, ignore_errors=True)
    subprocess.run(
        ["umoci", "config", "--image", f"{layout}:big", "--config.cmd", "/bin/sh"], check=True
    )
    (root / ".image-v2").touch()
    return f"{layout}:big"


def image_side(root: Path, runs: int) -> dict[str, dict[str, float]]:
    """layerctl pull vs umoci unpack of the same image; layerctl create from the cache."""
    image = build_image(root)
    scratch = Path(tempfile.mkdtemp(prefix="bench-img-", dir=root))
    ctl = [sys.executable, "-m", "layerfs.cli.launch"]  # as the installed layerctl runs
    pull, umoci, create = [], [], []
    try:
        for i in range(runs):
            store, bundle = scratch / f"store{i}", scratch / f"bundle{i}"
            pull_cmd = [*ctl, "--root", str(store), "pull", "-q", f"oci:{image}"]
            umoci_cmd = ["umoci", "unpack", "--image", image, str(bundle)]
            create_cmd = [*ctl, "--root", str(store), "create", _name(image), f"c{i}"]
            quiet = {"check": True, "stdout": subprocess.DEVNULL}
            os.sync()
            drop_caches()
            pull.append(timed(partial(subprocess.run, pull_cmd, **quiet)))
            # create right after the pull, as a user would run it: its image in the store,
            # nothing else of this round's I/O pending.
            os.sync()
            create.append(timed(partial(subprocess.run, create_cmd, **quiet)))
            os.sync()
            drop_caches()
            umoci.append(timed(partial(subprocess.run, umoci_cmd, **quiet)))
            subprocess.run(
                [*ctl, "--root", str(store), "rm", "--force", f"c{i}"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    size = sum(f.stat().st_size for f in Path(image.rsplit(":", 1)[0]).rglob("*") if f.is_file())
    mb = size / 1e6
    return {
        "pull (s)": {"layerctl": statistics.median(pull), "umoci unpack": statistics.median(umoci)},
        "pull (MB/s, compressed)": {
            "layerctl": mb / statistics.median(pull),
            "umoci unpack": mb / statistics.median(umoci),
        },
        "create from cache (s)": {"layerctl": statistics.median(create)},
    }


def _name(image: str) -> str:
    # layerctl's default name for oci:DIR:REF is <basename of DIR>:REF.
    layout, ref = image.rsplit(":", 1)
    return f"{Path(layout).name}:{ref}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/bench", description=__doc__)
    p.add_argument("--dir", default="/var/tmp/layerfs-bench", help="where layers are built")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", action="append", help="run only workloads containing this text")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--no-image", action="store_true", help="skip layerctl pull/create")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (mounts, drop_caches)", file=sys.stderr)
        return 1
    if shutil.which("fuse-overlayfs") is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "fuse-overlayfs"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    layers = build_layers(Path(args.dir))
    contenders = args.contenders.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=args.dir))
    results: dict[str, dict[str, float]] = {}
    try:
        for name, fn in workloads(layers).items():
            if args.only and not any(o in name for o in args.only):
                continue
            times: dict[str, list[float]] = {kind: [] for kind in contenders}
            # Runs interleave the contenders, each round starting with the next one, and
            # each run starts after a sync: no contender pays for another's writeback.
            for rnd in range(args.runs):
                for kind in (
                    contenders[rnd % len(contenders) :] + contenders[: rnd % len(contenders)]
                ):
                    run = scratch / name.replace(" ", "_") / f"{kind}-{rnd}"
                    with mounted(kind, layers, run) as m:
                        os.sync()
                        times[kind].append(fn(m))
            results[name] = {kind: statistics.median(t) for kind, t in times.items()}
            print(_row(name, results[name]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(_table(results))
    if not args.no_image:
        img = image_side(Path(args.dir), args.runs)
        for name, r in img.items():
            cells = "  ".join(f"{k} {v:.3f}" for k, v in r.items())
            ratio = (
                f"  layerctl/umoci {r['layerctl'] / r['umoci unpack']:.2f}"
                if "umoci unpack" in r and "(s)" in name
                else ""
            )
            print(f"{name:<26} {cells}{ratio}")
        results.update(img)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _ratio(r: dict[str, float], a: str, b: str) -> str:
    if a in r and b in r and r[b] > 0:
        return f"{r[a] / r[b]:.2f}"
    return "-"


def _row(name: str, r: dict[str, float]) -> str:
    cols = " ".join(f"{r.get(k, float('nan')):>14.3f}" for k in CONTENDERS)
    return (
        f"{name:<18} {cols} {_ratio(r, 'layerfs', 'fuse-overlayfs'):>9} "
        f"{_ratio(r, 'layerfs', 'kernel'):>9}"
    )


def _table(results: dict[str, dict[str, float]]) -> str:
    head = f"{'workload (s)':<18} " + " ".join(f"{k:>14}" for k in CONTENDERS)
    head += f" {'lfs/fuse':>9} {'lfs/kern':>9}"
    return "\n".join([head, *(_row(n, r) for n, r in results.items())])


if __name__ == "__main__":
    sys.exit(main())
