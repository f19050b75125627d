"""Faults, hostile input and concurrent load on the layer store (issue 8, image/store side).

- Import faults: ``layerctl pull`` killed with SIGKILL at random points (at random times, and
  right after a layer starts unpacking), at least 20 times: after each kill ``fsck`` is clean and
  a retry succeeds; ``gc`` then leaves exactly the layers and blobs of the stored images and an
  empty ``tmp/``. A store on a full tmpfs: ENOSPC is one clear line and the store is as before,
  for a tmpfs too small by far and for every size in 4 KiB steps up to big enough.
- Hostile input beyond the corpus of `tests.test_layerctl_hostile`: JSON documents too large or
  nested 10,000 deep, decompression bombs (in a layer and as a compressed oci-archive), tar
  headers claiming giant sizes (in a layer and in the archive holding the image), a sparse file
  of 1 PiB, names at the PATH_MAX and NAME_MAX limits, ``/etc`` replaced by a symlink to ``/``,
  image users that do not exist or whose passwd file points outside the image, and a non-root
  store: no device nodes, no set-id files, and modes its owner cannot bypass.
- Concurrent ``layerctl create`` on one store: 20 distinct names of a stored image, 5 racing for
  one name, ``rm --force`` of all of them at once; 10 creates importing one source at once.

Each command that might hang or crash runs as a child process under a deadline. Set
``LAYERFS_STRESS_SEED`` to replay the random choices of a failed run (the seed is in every
failure message); the figures (kills, phases, times) are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import pytest

from layerfs.store.store import Store
from tests.images import (
    LAYER_TYPES,
    Device,
    Dir,
    File,
    blob_path,
    hand_image,
    layer_tar,
)
from tests.layerctl import LAYERCTL, Run, fingerprint, layerctl, spawn
from tests.mounts import mounted, wait_for
from tests.test_layerctl_hostile import member, replace_blob_json, tar_of

SEED = int(os.environ.get("LAYERFS_STRESS_SEED", str(time.time_ns() % 1_000_000_007)))
REPO = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NOBODY_ID = 65534
MAX_DOCUMENT = 4 * 1024 * 1024  # layerfs.oci.jsondoc.MAX_DOCUMENT_SIZE, as a user would read it

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, setpriv)")


# -- helpers --------------------------------------------------------------------------------------


def run_cli(root: Path, *args: str, timeout: float = 60.0, prefix: Sequence[str] = ()) -> Run:
    """``layerctl --root ROOT ARGS...`` as a child process, SIGKILLed after ``timeout``."""
    proc = subprocess.Popen(
        [*prefix, *LAYERCTL, "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGTERM would wait for the layer threads to notice
        out, err = proc.communicate()
        pytest.fail(
            f"layerctl {' '.join(args)} still running after {timeout:.0f}s (killed); "
            f"stderr: {err.strip()!r}"
        )
    return Run(proc.returncode, out, err)


def one_clear_line(run: Run, command: str, *expect: str) -> None:
    """A failure reported as the contract says: one line, no traceback, naming the fault."""
    assert run.code == 1, f"exit {run.code}: {run.err}"
    assert len(run.err_lines) == 1, run.err
    assert run.err.startswith(f"layerctl {command}: "), run.err
    assert "Traceback" not in run.err and "RecursionError" not in run.err, run.err
    for text in expect:
        assert text in run.err, run.err


def tmp_entries(root: Path) -> list[str]:
    return sorted(os.listdir(root / "tmp"))


def stored_layers(root: Path) -> set[str]:
    return set(os.listdir(root / "layers"))


def stored_blobs(root: Path) -> set[str]:
    return {f"sha256:{n}" for n in os.listdir(root / "blobs" / "sha256")}


def referenced(root: Path) -> tuple[set[str], set[str]]:
    """The layer directory names and blob digests the store's image records name."""
    layers: set[str] = set()
    blobs: set[str] = set()
    for record in Store.open(str(root)).images():
        layers |= {c.partition(":")[2] for c in record.layers}
        blobs |= set(record.blobs)
    return layers, blobs


def assert_exactly_referenced(root: Path) -> None:
    """After gc: the layers and blobs of the stored images, nothing else; ``tmp/`` empty."""
    layers, blobs = referenced(root)
    assert stored_layers(root) == layers
    assert stored_blobs(root) == blobs
    assert tmp_entries(root) == []


def fsck_clean(root: Path) -> None:
    r = layerctl(root, "fsck")
    assert r.code == 0, f"fsck: {r.out} {r.err}"


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block; always unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def oci(layout: Path, tag: str = "latest") -> str:
    return f"oci:{layout}:{tag}"


def raw_layer_image(layout: Path, blob: bytes, diff_id: str, media_type: str) -> Path:
    """A one-layer image whose layer is ``blob`` as given (already compressed)."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()

    def config(doc: dict[str, object]) -> None:
        doc["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}

    def manifest(doc: dict[str, object]) -> None:
        doc["layers"] = [{"mediaType": media_type, "digest": digest, "size": len(blob)}]

    hand_image(layout, [b""], edit_config=config, edit_manifest=manifest)
    blob_path(layout, digest).write_bytes(blob)
    return layout


# -- 1. kill -9 of layerctl pull ------------------------------------------------------------------

KILL_IMAGES = 3
KILL_LAYERS = 3
KILLS_WANTED = 20
KILL_MAX_TRIES = 45


def kill_layer(rnd: random.Random, image: int, layer: int) -> bytes:
    """A few MB in many small files (so most of the time goes to unpacking) and one big one."""
    words = [rnd.randbytes(8).hex() for _ in range(512)]
    spec: dict[str, File | Dir | str | bytes | None] = {}
    for j in range(700):
        text = " ".join(rnd.choice(words) for _ in range(220))
        spec[f"i{image}/l{layer}/d{j % 16}/f{j}"] = File(text, mode=rnd.choice((0o644, 0o600)))
    spec[f"i{image}/l{layer}/big"] = File(rnd.randbytes(1 << 20))
    return layer_tar(spec)


@pytest.fixture(scope="module")
def kill_images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """KILL_IMAGES images in one layout: a shared base layer, then KILL_LAYERS of their own."""
    rnd = random.Random(SEED)
    layout = tmp_path_factory.mktemp("kill") / "layout"
    base = layer_tar({"bin/tool": File(b"base tool\n", mode=0o755), "etc/base": "base\n"})
    for i in range(KILL_IMAGES):
        tars = [base, *(kill_layer(rnd, i, n) for n in range(KILL_LAYERS))]
        hand_image(layout, tars, tag=f"k{i}")
    return [oci(layout, f"k{i}") for i in range(KILL_IMAGES)]


def _staged_layers(root: Path) -> list[Path]:
    return [p for s in (root / "tmp").glob("s-*") for p in s.glob("layer-*")]


def _unpacking(root: Path) -> bool:
    """Whether a staged layer has files in it already."""
    for staged in _staged_layers(root):
        with contextlib.suppress(OSError):
            if os.listdir(staged / "diff"):
                return True
    return False


def _unpack_or_exit(root: Path, proc: subprocess.Popen[str]) -> bool:
    return _unpacking(root) or proc.poll() is not None


def _phase(root: Path, name: str, layers: set[str]) -> str:
    """Where a pull killed just now was, judged from what it left."""
    staged = _staged_layers(root)
    if any((s / "layer.json").exists() for s in staged):
        return "unpacked, not yet published"
    if staged:
        return "mid-unpack"
    if (root / "images" / f"{name}.json").exists():
        return "after the image record"
    if layers & stored_layers(root):
        return "published, before the image record"
    if list((root / "tmp").glob("s-*")):
        return "resolving (before any layer)"
    return "starting (no session yet)"


@needs_root
@pytest.mark.stress
@pytest.mark.timeout(170)
def test_kill_pull_at_random_points(kill_images: list[str], tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    root = tmp_path / "store"
    layerctl(root, "init")
    chains: dict[int, set[str]] = {}
    phases: Counter[str] = Counter()
    kills = tries = 0
    pull_times: list[float] = []  # of the pulls that finished before their kill
    start = time.monotonic()
    while kills < KILLS_WANTED and tries < KILL_MAX_TRIES:
        n = tries % KILL_IMAGES
        tries += 1
        name = f"k{n}"
        where = f"try {tries}, image {name} (LAYERFS_STRESS_SEED={SEED})"
        if (root / "images" / f"{name}.json").exists():
            # Make the next pull unpack again: the image and its own layers go.
            assert layerctl(root, "rmi", name).code == 0
            gc = layerctl(root, "gc")
            assert gc.code == 0, gc.err
            assert_exactly_referenced(root)
        proc = spawn(root, "pull", kill_images[n], "--name", name, "-q")
        t0 = time.monotonic()
        if tries % 2:
            # Half the kills at a random time of the pull's life...
            time.sleep(rnd.uniform(0.05, 1.2))
        else:
            # ...half once a layer is being unpacked, a little later.
            with contextlib.suppress(TimeoutError):
                wait_for(functools.partial(_unpack_or_exit, root, proc), 30, "an unpack")
            time.sleep(rnd.uniform(0, 0.25))
        proc.kill()
        _, err = proc.communicate(timeout=30)
        if proc.returncode == 0:
            pull_times.append(time.monotonic() - t0)
        else:
            assert proc.returncode == -9, f"{where}: pull failed by itself: {err}"
            kills += 1
            phases[_phase(root, name, chains.get(n, set()))] += 1
        fsck = layerctl(root, "fsck")
        assert fsck.code == 0, f"{where}: fsck after the kill: {fsck.out} {fsck.err}"
        retry = layerctl(root, "pull", kill_images[n], "--name", name, "-q")
        assert retry.code == 0, f"{where}: retry: {retry.err}"
        assert retry.err == "", f"{where}: {retry.err}"
        record = Store.open(str(root)).find_image(name)
        chains[n] = {c.partition(":")[2] for c in record.layers}
    loop = time.monotonic() - start
    assert kills >= KILLS_WANTED, f"only {kills} kills landed in {tries} tries (seed {SEED})"

    gc = layerctl(root, "gc")
    assert gc.code == 0, gc.err
    assert_exactly_referenced(root)
    assert stored_layers(root) == set().union(*chains.values())
    fsck_clean(root)
    mid_unpack = phases["mid-unpack"] + phases["unpacked, not yet published"]
    print(
        f"\nkill -9 of pull: {kills} kills survived in {tries} tries, {mid_unpack} mid-unpack; "
        f"phases {dict(phases)}; {len(pull_times)} pulls finished first (longest "
        f"{max(pull_times, default=0):.2f}s); loop {loop:.1f}s (seed {SEED})"
    )
    assert mid_unpack >= KILLS_WANTED // 4, f"too few kills landed mid-unpack: {dict(phases)}"


# -- 2. full disk ---------------------------------------------------------------------------------


@needs_root
@pytest.mark.timeout(90)
def test_full_disk_is_one_clear_error_and_nothing_half_made(tmp_path: Path) -> None:
    rnd = random.Random(SEED)
    # Incompressible: 4 layers of 5 MiB, each kept as a blob and unpacked (40 MiB > 20 MiB).
    big = hand_image(
        tmp_path / "big",
        [
            layer_tar({f"big{i}/f{j}": File(rnd.randbytes(1 << 20)) for j in range(5)})
            for i in range(4)
        ],
    )
    small1 = hand_image(tmp_path / "small1", [layer_tar({"etc/one": "one\n"})])
    small2 = hand_image(tmp_path / "small2", [layer_tar({"etc/two": "two\n", "bin/x": "x\n"})])
    with tmpfs(tmp_path / "disk", "20m") as disk:
        root = disk / "store"
        assert layerctl(root, "pull", oci(small1), "--name", "small1").code == 0
        before = fingerprint(root)
        t0 = time.monotonic()
        r = run_cli(root, "pull", oci(big), "--name", "big")
        elapsed = time.monotonic() - t0
        one_clear_line(r, "pull", "No space left on device", str(big))
        fsck_clean(root)
        for layer in stored_layers(root):  # nothing half-made: every layer complete
            assert (root / "layers" / layer / "layer.json").exists(), layer
        assert fingerprint(root) == before, "a failed pull must leave the store as it was"
        assert tmp_entries(root) == []
        gc = layerctl(root, "gc")
        assert gc.code == 0, gc.err
        assert_exactly_referenced(root)
        r2 = run_cli(root, "pull", oci(small2), "--name", "small2")
        assert r2.code == 0, r2.err
        fsck_clean(root)
        assert {i.name for i in Store.open(str(root)).images()} == {"small1", "small2"}
        print(f"\nENOSPC: {r.err.strip()!r} after {elapsed:.2f}s")


def _used_kb(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize // 1024


@needs_root
@pytest.mark.stress
@pytest.mark.timeout(120)
def test_disk_full_at_every_point_of_a_pull(tmp_path: Path) -> None:
    """The same pull on tmpfs stores of every size, in 4 KiB steps, from too small for its
    first layer to big enough: it succeeds, or it fails with one line naming what it was doing
    and leaves the store as it was, whichever write hit the limit."""
    rnd = random.Random(SEED)
    image = hand_image(
        tmp_path / "img",
        [
            layer_tar({f"l{i}/f{j}": File(rnd.randbytes(20_000)) for j in range(5)})
            for i in range(3)
        ],
    )
    small = hand_image(tmp_path / "small", [layer_tar({"etc/one": "one\n"})])
    disk = tmp_path / "disk"
    with tmpfs(disk, "64m"):
        assert layerctl(disk / "store", "pull", oci(small), "--name", "small").code == 0
        small_kb = _used_kb(disk)
        assert layerctl(disk / "store", "pull", oci(image), "--name", "big").code == 0
        full_kb = _used_kb(disk)
    sizes = list(range(small_kb + 4, full_kb + 32, 4))
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    t0 = time.monotonic()
    for kb in sizes:
        with tmpfs(disk, f"{kb}k"):
            root = disk / "store"
            if layerctl(root, "pull", oci(small), "--name", "small").code != 0:
                outcomes["base image did not fit"] += 1
                continue
            before = fingerprint(root)
            r = layerctl(root, "pull", oci(image), "--name", "big")
            wrong = []
            if r.code == 0:
                outcomes["fit"] += 1
            else:
                outcomes[r.err.partition(" (while")[0].strip()] += 1
                if r.code != 1 or len(r.err_lines) != 1 or "No space left" not in r.err:
                    wrong.append(f"exit {r.code}: {r.err!r}")
                elif str(image) not in r.err and str(root) not in r.err:
                    wrong.append(f"the message names neither image nor store: {r.err!r}")
                changed = sorted(
                    k
                    for k in fingerprint(root).items() ^ before.items()
                    if not k[0].startswith("tmp/")
                )
                if changed:
                    wrong.append(f"store changed: {[k for k, _ in changed][:3]}...")
                if tmp_entries(root):
                    wrong.append(f"tmp/ holds {tmp_entries(root)}")
            fsck = layerctl(root, "fsck")
            if fsck.code != 0:
                wrong.append(f"fsck: {fsck.out}")
            problems += [f"{kb} KiB: {w}" for w in wrong]
    print(
        f"\nfull disk at {len(sizes)} sizes ({sizes[0]}..{sizes[-1]} KiB) in "
        f"{time.monotonic() - t0:.1f}s: {dict(outcomes)}"
    )
    assert outcomes["fit"] > 0 and len(outcomes) > 1, outcomes
    assert problems == [], "\n".join(problems)


# -- 3. hostile input -----------------------------------------------------------------------------

BASE = tar_of(member("bin", tarfile.DIRTYPE), member("bin/tool", data=b"base tool\n"))
DEEP = 10_000
DEEP_ARRAY = "[" * DEEP + "]" * DEEP
DEEP_OBJECT = '{"a":' * DEEP + "1" + "}" * DEEP
CONFIG_HEAD = '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},'


def _deep_config(nested: str) -> Callable[[Path], Sequence[str]]:
    return lambda work: replace_blob_json("config", f'{CONFIG_HEAD}"x":{nested}}}'.encode()).make(
        work
    )


def _deep_manifest(work: Path) -> Sequence[str]:
    text = '{"schemaVersion":2,"x":' + DEEP_ARRAY + "}"
    return replace_blob_json("manifest", text.encode()).make(work)


def _big_config(work: Path) -> Sequence[str]:
    pad = "x" * (5 * 1000 * 1000)
    return replace_blob_json("config", f'{CONFIG_HEAD}"x":"{pad}"}}'.encode()).make(work)


def _big_manifest(work: Path) -> Sequence[str]:
    pad = "x" * (5 * 1000 * 1000)
    return replace_blob_json("manifest", f'{{"schemaVersion":2,"x":"{pad}"}}'.encode()).make(work)


def _index_edit(text: Callable[[dict[str, object]], str]) -> Callable[[Path], Sequence[str]]:
    def make(work: Path) -> Sequence[str]:
        layout = hand_image(work / "img", [BASE])
        index = json.loads((layout / "index.json").read_text())
        (layout / "index.json").write_text(text(index))
        return [oci(layout)]

    return make


def _big_index(index: dict[str, object]) -> str:
    entries = index["manifests"]
    assert isinstance(entries, list)
    entries[0]["annotations"]["pad"] = "x" * (5 * 1000 * 1000)
    return json.dumps(index)


def _deep_index(index: dict[str, object]) -> str:
    return json.dumps(index)[:-1] + ',"x":' + DEEP_OBJECT + "}"


def _deep_layout_file(work: Path) -> Sequence[str]:
    layout = hand_image(work / "img", [BASE])
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0","x":' + DEEP_ARRAY + "}")
    return [oci(layout)]


def _docker_archive(manifest_json: bytes) -> Callable[[Path], Sequence[str]]:
    def make(work: Path) -> Sequence[str]:
        archive = work / "d.tar"
        with tarfile.open(archive, "w") as tf:
            for name, data in (("layer.tar", BASE), ("manifest.json", manifest_json)):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        return [f"docker-archive:{archive}"]

    return make


def _nested_indexes(work: Path) -> Sequence[str]:
    """A chain of 50 image indexes, each the only entry of the next."""
    layout = hand_image(work / "img", [BASE])
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    entry.pop("annotations")
    for _ in range(50):
        doc = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [entry],
            }
        ).encode()
        digest = "sha256:" + hashlib.sha256(doc).hexdigest()
        blob_path(layout, digest).write_bytes(doc)
        entry = {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": len(doc),
        }
    entry["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    index["manifests"] = [entry]
    (layout / "index.json").write_text(json.dumps(index))
    return [oci(layout)]


JSON_CASES: dict[str, tuple[Callable[[Path], Sequence[str]], str]] = {
    "config-5MB": (_big_config, f"exceeds the {MAX_DOCUMENT}-byte limit"),
    "manifest-5MB": (_big_manifest, f"exceeds the {MAX_DOCUMENT}-byte limit"),
    "index-5MB": (_index_edit(_big_index), f"index.json: larger than {MAX_DOCUMENT} bytes"),
    "docker-manifest-5MB": (
        _docker_archive(b'[{"x":"' + b"x" * (5 * 1000 * 1000) + b'"}]'),
        f"manifest.json: larger than {MAX_DOCUMENT} bytes",
    ),
    "config-deep-arrays": (_deep_config(DEEP_ARRAY), "nested deeper than 64 levels"),
    "config-deep-objects": (_deep_config(DEEP_OBJECT), "nested deeper than 64 levels"),
    "config-100k-deep": (
        _deep_config("[" * 100_000 + "]" * 100_000),
        "nested deeper than 64 levels",
    ),
    "manifest-deep": (_deep_manifest, "nested deeper than 64 levels"),
    "index-deep": (_index_edit(_deep_index), "nested deeper than 64 levels"),
    "oci-layout-deep": (_deep_layout_file, "nested deeper than 64 levels"),
    "docker-manifest-deep": (
        _docker_archive(DEEP_ARRAY.encode()),
        "nested deeper than 64 levels",
    ),
    "indexes-nested-50": (_nested_indexes, "indexes nested deeper than 8 levels"),
}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A store holding one small image; its fingerprint."""
    work = tmp_path_factory.mktemp("stress-store")
    layout = hand_image(work / "base", [BASE])
    root = work / "store"
    r = layerctl(root, "pull", oci(layout), "--name", "base")
    assert r.code == 0, r.err
    return root, fingerprint(root)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(JSON_CASES))
def test_hostile_json_is_one_clear_error(
    name: str, base_store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, before = base_store
    make, expect = JSON_CASES[name]
    args = make(tmp_path)
    t0 = time.monotonic()
    r = run_cli(root, "pull", *args, timeout=30)
    elapsed = time.monotonic() - t0
    one_clear_line(r, "pull", expect)
    assert elapsed < 15, f"{elapsed:.1f}s to refuse"
    assert fingerprint(root) == before
    assert tmp_entries(root) == []


# Decompression bombs: 2 GiB of zeros as one tar member, compressed to a few MB or less.

BOMB_SIZE = 2 << 30


def _bomb_tar_parts() -> tuple[bytes, bytes]:
    """The header of a tar holding one BOMB_SIZE file of zeros, and what follows its data."""
    ti = tarfile.TarInfo("zeros")
    ti.size, ti.mtime = BOMB_SIZE, 1_600_000_000
    return ti.tobuf(tarfile.PAX_FORMAT), bytes(1024)


def gzip_bomb() -> tuple[bytes, str]:
    """The gzip blob and its diff_id, built in a second or two.

    After a full flush deflate restarts from scratch, so every 1 MiB block of zeros compresses to
    the same bytes: the block is compressed once and repeated; CRC and digest are computed over
    the real stream.
    """
    header, tail = _bomb_tar_parts()
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.compress(tail) + c.flush(zlib.Z_FINISH)
    digest = hashlib.sha256(header)
    crc = zlib.crc32(header)
    for _ in range(BOMB_SIZE >> 20):
        digest.update(chunk)
        crc = zlib.crc32(chunk, crc)
    digest.update(tail)
    crc = zlib.crc32(tail, crc)
    size = len(header) + BOMB_SIZE + len(tail)
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    blob = gzip_header + head + block * (BOMB_SIZE >> 20) + end + trailer
    return blob, "sha256:" + digest.hexdigest()


def zstd_bomb() -> tuple[bytes, str]:
    import zstandard

    header, tail = _bomb_tar_parts()
    chunk = bytes(1 << 20)
    out = io.BytesIO()
    digest = hashlib.sha256(header)
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as w:
        w.write(header)
        for _ in range(BOMB_SIZE >> 20):
            w.write(chunk)
            digest.update(chunk)
        w.write(tail)
    digest.update(tail)
    return out.getvalue(), "sha256:" + digest.hexdigest()


@pytest.mark.stress
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["gzip-layer", "zstd-layer", "gzip-oci-archive"])
def test_decompression_bomb_is_refused_quickly(kind: str, tmp_path: Path) -> None:
    """2 GiB of zeros compressed to 2 MiB (gzip) or 64 KiB (zstd), as a layer and as a
    compressed oci-archive (which layerctl decompresses into the store's tmp/ first)."""
    compression, _, where = kind.partition("-")
    blob, diff_id = gzip_bomb() if compression == "gzip" else zstd_bomb()
    assert len(blob) < 4 << 20
    if where == "layer":
        source = oci(raw_layer_image(tmp_path / "bomb", blob, diff_id, LAYER_TYPES[compression]))
    else:
        (tmp_path / "bomb.tar.gz").write_bytes(blob)
        source = f"oci-archive:{tmp_path / 'bomb.tar.gz'}"
    root = tmp_path / "store"
    layerctl(root, "init")
    before = fingerprint(root)
    t0 = time.monotonic()
    r = run_cli(root, "pull", source, timeout=60)
    elapsed = time.monotonic() - t0
    print(f"\n{kind} bomb ({len(blob)} bytes -> 2 GiB): exit {r.code} in {elapsed:.1f}s: {r.err!r}")
    one_clear_line(r, "pull", "possible decompression bomb")
    assert elapsed < 20, f"{elapsed:.1f}s to refuse a bomb"
    assert fingerprint(root) == before, "nothing may be unpacked"
    assert tmp_entries(root) == []


# Tar headers claiming giant sizes.


def giant_member(size: int, fmt: Literal[0, 1, 2], data: bytes = b"") -> bytes:
    """A regular member whose header claims ``size`` bytes, followed by ``data`` only."""
    ti = tarfile.TarInfo("giant")
    ti.size, ti.mtime, ti.mode = size, 1_600_000_000, 0o644
    return ti.tobuf(fmt) + data


def meta_member(kind: bytes, size: int) -> bytes:
    """A PAX or GNU long-name header claiming ``size`` bytes of header data."""
    ti = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "pax")
    ti.type, ti.size = kind, size
    return ti.tobuf(tarfile.GNU_FORMAT)  # base-256 size: ustar stops at 8 GiB


TB = 1 << 40
GIANT_CASES: dict[str, tuple[bytes, str]] = {
    "1TB-pax-short-stream": (
        giant_member(TB, tarfile.PAX_FORMAT, b"z" * 5000),
        "'giant': unexpected end of data",
    ),
    "1TB-gnu-base256-short-stream": (
        giant_member(TB, tarfile.GNU_FORMAT, b"z" * 5000) + bytes(1024),
        "'giant': unexpected end of data",
    ),
    "8EB-pax-then-end": (
        giant_member(2**63 - 1, tarfile.PAX_FORMAT) + bytes(1024),
        "'giant'",
    ),
    "pax-header-1TB": (
        meta_member(tarfile.XHDTYPE, TB) + b"x" * 4096,
        "extended header (limit",
    ),
    "gnu-longname-1TB": (
        meta_member(tarfile.GNUTYPE_LONGNAME, TB) + b"x" * 4096,
        "extended header (limit",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(GIANT_CASES))
def test_giant_tar_header_sizes(
    name: str, base_store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, before = base_store
    raw, expect = GIANT_CASES[name]
    layout = hand_image(tmp_path / "img", [BASE, raw])
    t0 = time.monotonic()
    r = run_cli(root, "pull", oci(layout), timeout=30)
    elapsed = time.monotonic() - t0
    one_clear_line(r, "pull", expect)
    assert elapsed < 15, f"{elapsed:.1f}s to refuse"
    assert fingerprint(root) == before
    assert tmp_entries(root) == []


ARCHIVE_HEADERS: dict[str, bytes] = {
    "pax-header-1TB": meta_member(tarfile.XHDTYPE, TB) + b"x" * 4096 + bytes(1024),
    "gnu-longname-1TB": meta_member(tarfile.GNUTYPE_LONGNAME, TB) + b"x" * 4096 + bytes(1024),
    "index.json-1TB": giant_member(TB, tarfile.GNU_FORMAT, b"{}") + bytes(1024),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
@pytest.mark.parametrize("name", sorted(ARCHIVE_HEADERS))
def test_giant_tar_header_sizes_in_image_archives(
    name: str, transport: str, base_store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """The same headers in the archive that holds the image (read in place, not streamed)."""
    root, before = base_store
    archive = tmp_path / "image.tar"
    archive.write_bytes(ARCHIVE_HEADERS[name])
    r = run_cli(root, "pull", f"{transport}:{archive}", timeout=30)
    one_clear_line(r, "pull", str(archive))
    assert "MemoryError" not in r.err
    assert fingerprint(root) == before
    assert tmp_entries(root) == []


def sparse_member(apparent: int) -> bytes:
    """A PAX 1.0 sparse member: ``apparent`` bytes long, all hole, one 512-byte map block."""
    data = b"1\n0\n0\n".ljust(512, b"\0")
    ti = tarfile.TarInfo("GNUSparseFile.0/hole")
    ti.size, ti.mtime = len(data), 1_600_000_000
    ti.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "hole",
        "GNU.sparse.realsize": str(apparent),
    }
    return tar_of(_one(ti, data))


def _one(ti: tarfile.TarInfo, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    end = len(raw)
    while end >= 512 and raw[end - 512 : end] == bytes(512):
        end -= 512
    return raw[:end]


@needs_root
@pytest.mark.timeout(90)
def test_sparse_member_with_giant_apparent_size(tmp_path: Path) -> None:
    """A 3 KB layer holding a sparse file of 1 PiB (all hole), on a store on tmpfs, which, like
    xfs and btrfs, takes files that big. The pull must refuse it or take it quickly, and a
    stored layer must then fsck in bounded time too."""
    layout = hand_image(tmp_path / "img", [sparse_member(1 << 50)])
    with tmpfs(tmp_path / "disk", "64m") as disk:
        root = disk / "store"
        layerctl(root, "init")
        t0 = time.monotonic()
        r = run_cli(root, "pull", oci(layout), timeout=15)
        elapsed = time.monotonic() - t0
        if r.code != 0:
            one_clear_line(r, "pull", "'GNUSparseFile.0/hole'")
            assert tmp_entries(root) == []
        else:
            t0 = time.monotonic()
            fsck = run_cli(root, "fsck", timeout=15)
            assert fsck.code == 0, fsck.out
            elapsed += time.monotonic() - t0
        print(f"\n1 PiB sparse member: exit {r.code} in {elapsed:.1f}s {r.err.strip()!r}")


# Names at the limits.

NAME_255 = "n" * 255
DEEP_DIRS = [f"d{i:02d}" + "x" * 252 for i in range(16)]  # 16 x 255 + 15 slashes = 4095
PATH_4095 = "/".join(DEEP_DIRS)
PATH_4096 = "/".join([*DEEP_DIRS[:15], "a" * 254, "b"])


def _dirs_to(path: str) -> list[bytes]:
    parts = path.split("/")
    return [member("/".join(parts[:i]), tarfile.DIRTYPE) for i in range(1, len(parts))]


def test_names_at_path_max_and_name_max(tmp_path: Path) -> None:
    assert (len(PATH_4095), len(PATH_4096), len(NAME_255)) == (4095, 4096, 255)
    layout = hand_image(
        tmp_path / "img",
        [
            tar_of(
                *_dirs_to(PATH_4095),
                member(PATH_4095, data=b"deep\n"),
                member(NAME_255, data=b"255\n"),
                member("l" * 255, tarfile.SYMTYPE, linkname="t" * 4095),
            )
        ],
    )
    root = tmp_path / "store"
    r = layerctl(root, "pull", oci(layout), "--name", "limits")
    assert r.code == 0, r.err
    fsck_clean(root)
    (layer,) = stored_layers(root)
    diff = root / "layers" / layer / "diff"
    assert (diff / NAME_255).read_bytes() == b"255\n"
    assert os.readlink(diff / ("l" * 255)) == "t" * 4095
    assert read_deep(diff, PATH_4095) == b"deep\n"
    # Through a mount (the absolute path is beyond PATH_MAX: walked with dir fds).
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    assert layerctl(root, "mount-image", "limits", str(mnt)).code == 0
    try:
        assert read_deep(mnt, PATH_4095) == b"deep\n"
        assert (mnt / NAME_255).read_bytes() == b"255\n"
    finally:
        assert layerctl(root, "umount", str(mnt)).code == 0
    assert layerctl(root, "rmi", "limits").code == 0
    assert layerctl(root, "gc").code == 0
    assert stored_layers(root) == set()
    assert tmp_entries(root) == []


def read_deep(top: Path, rel: str) -> bytes:
    """Read ``top/rel`` one component at a time (``rel`` may be longer than PATH_MAX allows)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        *dirs, name = rel.split("/")
        for d in dirs:
            nfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            return os.read(f, 100)
        finally:
            os.close(f)
    finally:
        os.close(fd)


NAME_CASES: dict[str, tuple[list[bytes], str]] = {
    "component-256": (
        [member("n" * 256, data=b"x")],
        "a name component is longer than 255 bytes",
    ),
    "path-4096": (
        [*_dirs_to(PATH_4096), member(PATH_4096, data=b"x")],
        "the name is 4096 bytes or longer",
    ),
    "symlink-target-4096": (
        [member("l", tarfile.SYMTYPE, linkname="t" * 4096)],
        "invalid symlink target",
    ),
    "hardlink-target-4096": (
        [member("h", tarfile.LNKTYPE, linkname=PATH_4096)],
        "the name is 4096 bytes or longer",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(NAME_CASES))
def test_names_over_the_limits_are_refused(
    name: str, base_store: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, before = base_store
    members, expect = NAME_CASES[name]
    layout = hand_image(tmp_path / "img", [BASE, tar_of(*members)])
    r = layerctl(root, "pull", oci(layout))
    one_clear_line(r, "pull", expect)
    assert fingerprint(root) == before
    assert tmp_entries(root) == []


# /etc replaced by a symlink to /, and image users.

IMAGE_PASSWD = b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:4242:4242:daemon:/srv:/bin/sh\n"
HOST_PASSWD = "/etc/passwd"


def user_image(layout: Path, tars: Sequence[bytes], user: str) -> Path:
    def config(doc: dict[str, object]) -> None:
        doc["config"] = {"Cmd": ["/bin/sh"], "User": user}

    return hand_image(layout, tars, edit_config=config)


@contextlib.contextmanager
def host_untouched() -> Iterator[None]:
    """Fail if the host's /etc/passwd changes or a /passwd appears."""
    digest, mtime = sha256_file(HOST_PASSWD), os.stat(HOST_PASSWD).st_mtime_ns
    had_root_passwd = os.path.lexists("/passwd")
    yield
    assert sha256_file(HOST_PASSWD) == digest, "the host's /etc/passwd changed"
    assert os.stat(HOST_PASSWD).st_mtime_ns == mtime, "the host's /etc/passwd was written"
    assert os.path.lexists("/passwd") == had_root_passwd, "a /passwd appeared on the host"


@contextlib.contextmanager
def cleanup_containers(root: Path) -> Iterator[None]:
    try:
        yield
    finally:
        if (root / "containers").exists():
            for name in os.listdir(root / "containers"):
                layerctl(root, "rm", "--force", name)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("explicit_dir", [True, False], ids=["etc-dir-entry", "implicit-etc"])
def test_etc_symlink_to_root_then_etc_passwd(explicit_dir: bool, tmp_path: Path) -> None:
    """Layer 1 replaces /etc by a symlink to /; layer 2 writes etc/passwd. OCI says layer 2's
    entries replace what is there, and kernel overlayfs agrees: the merged /etc is layer 2's
    directory holding only passwd; the symlink is never followed, on the host or in the image."""
    etc2 = [member("etc", tarfile.DIRTYPE, mode=0o751)] if explicit_dir else []
    tars = [
        tar_of(
            member("etc", tarfile.DIRTYPE),
            member("etc/group", data=b"root:x:0:\n"),
            member("etc/hostname", data=b"old\n"),
        ),
        tar_of(member("etc", tarfile.SYMTYPE, linkname="/")),
        tar_of(*etc2, member("etc/passwd", data=IMAGE_PASSWD)),
    ]
    layout = user_image(tmp_path / "img", tars, "daemon")
    root = tmp_path / "store"
    with host_untouched(), cleanup_containers(root):
        r = layerctl(root, "pull", oci(layout), "--name", "etc")
        assert r.code == 0, r.err
        fsck_clean(root)
        record = Store.open(str(root)).find_image("etc")
        diffs = [root / "layers" / c.partition(":")[2] / "diff" for c in record.layers]
        assert os.readlink(diffs[1] / "etc") == "/", "the symlink is kept as the layer has it"
        assert (diffs[2] / "etc" / "passwd").read_bytes() == IMAGE_PASSWD
        c = layerctl(root, "create", "etc", "c1")
        assert c.code == 0, c.err
        rootfs = root / "containers" / "c1" / "rootfs"
        assert mounted(rootfs, "fuse.layerfs")
        st = os.lstat(rootfs / "etc")
        assert stat.S_ISDIR(st.st_mode), "layer 2's directory replaces the symlink"
        if explicit_dir:
            assert stat.S_IMODE(st.st_mode) == 0o751
        assert sorted(os.listdir(rootfs / "etc")) == ["passwd"]
        assert (rootfs / "etc" / "passwd").read_bytes() == IMAGE_PASSWD
        assert not (rootfs / "passwd").exists()
        config = json.loads((root / "containers" / "c1" / "config.json").read_text())
        assert config["process"]["user"]["uid"] == 4242, "the image's daemon, not the host's"
        assert layerctl(root, "rm", "--force", "c1").code == 0


def _host_daemon_uid() -> int:
    with open(HOST_PASSWD) as f:
        for line in f:
            fields = line.split(":")
            if fields[0] == "daemon":
                return int(fields[2])
    pytest.skip("the host has no 'daemon' user")


ETC = member("etc", tarfile.DIRTYPE)
USER_CASES: dict[str, tuple[list[bytes], str, str | None]] = {
    # name: (layers, User, the one error line's text; None: create succeeds with uid 4242)
    "no-such-user": (
        [tar_of(ETC, member("etc/passwd", data=IMAGE_PASSWD))],
        "nosuchuser",
        "user 'nosuchuser' not found in /etc/passwd of the image",
    ),
    "no-such-group": (
        [tar_of(ETC, member("etc/passwd", data=IMAGE_PASSWD), member("etc/group", data=b""))],
        "daemon:nosuchgroup",
        "group 'nosuchgroup' not found in /etc/group of the image",
    ),
    "passwd-links-to-itself": (
        [tar_of(ETC, member("etc/passwd", tarfile.SYMTYPE, linkname="/etc/passwd"))],
        "daemon",
        "too many levels of symbolic links resolving /etc/passwd",
    ),
    "passwd-dotdot-to-host": (
        [tar_of(ETC, member("etc/passwd", tarfile.SYMTYPE, linkname="../../../../../etc/passwd"))],
        "daemon",
        "too many levels of symbolic links resolving /etc/passwd",
    ),
    "passwd-to-shadow": (
        [tar_of(ETC, member("etc/passwd", tarfile.SYMTYPE, linkname="/etc/shadow"))],
        "daemon",
        "user 'daemon' not found in /etc/passwd of the image (the image has no such file)",
    ),
    "etc-to-root-in-upper-layer": (
        [
            tar_of(ETC, member("etc/passwd", data=b"root:x:0:0::/:/bin/sh\n")),
            tar_of(member("etc", tarfile.SYMTYPE, linkname="/")),
        ],
        "daemon",
        "user 'daemon' not found in /etc/passwd of the image (the image has no such file)",
    ),
    "passwd-to-proc-self-root": (
        [tar_of(ETC, member("etc/passwd", tarfile.SYMTYPE, linkname="/proc/self/root/etc/passwd"))],
        "daemon",
        "user 'daemon' not found in /etc/passwd of the image (the image has no such file)",
    ),
    "passwd-inside-the-image": (
        [
            tar_of(
                ETC,
                member("etc/passwd", tarfile.SYMTYPE, linkname="../lib/passwd.real"),
                member("lib", tarfile.DIRTYPE),
                member("lib/passwd.real", data=IMAGE_PASSWD),
            )
        ],
        "daemon",
        None,
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(USER_CASES))
def test_create_resolves_users_inside_the_image_only(name: str, tmp_path: Path) -> None:
    host_uid = _host_daemon_uid()
    tars, user, expect = USER_CASES[name]
    layout = user_image(tmp_path / "img", tars, user)
    root = tmp_path / "store"
    assert layerctl(root, "pull", oci(layout), "--name", "u").code == 0
    before = fingerprint(root)
    with host_untouched(), cleanup_containers(root):
        r = layerctl(root, "create", "u", "c1")
        if expect is None:
            assert r.code == 0, r.err
            config = json.loads((root / "containers" / "c1" / "config.json").read_text())
            assert config["process"]["user"]["uid"] == 4242
            assert layerctl(root, "rm", "--force", "c1").code == 0
        else:
            one_clear_line(r, "create", expect)
            assert f"uid {host_uid}" not in r.err
        assert not mounted(root / "containers" / "c1" / "rootfs")
        assert fingerprint(root) == before, "a failed create must leave nothing"


# An unprivileged pull.


def _nobody_can_run_layerctl() -> str | None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "needs root and setpriv"
    probe = subprocess.run(
        [*NOBODY, *LAYERCTL, "--version"], capture_output=True, text=True, cwd=REPO, check=False
    )
    if probe.returncode != 0:
        return f"user 65534 cannot run layerctl here: {probe.stderr.strip()}"
    return None


@pytest.mark.timeout(60)
def test_unprivileged_pull_makes_no_devices_and_no_setuid_root_files() -> None:
    reason = _nobody_can_run_layerctl()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="layerfs-nobody-"))
    try:
        os.chmod(work, 0o755)
        layout = hand_image(
            work / "img",
            [
                layer_tar(
                    {
                        "dev/null": Device("c", 1, 3, mode=0o666),
                        "dev/sda": Device("b", 8, 0, mode=0o660),
                        "bin/su": File(b"#!/bin/sh\n", mode=0o4755),
                        "bin/wall": File(b"#!/bin/sh\n", mode=0o2755, gid=5),
                        "usr/bin/both": File(b"x", mode=0o6755, uid=0, gid=0),
                        "srv": Dir(mode=0o4755),
                    }
                ),
                layer_tar({"etc/plain": "plain\n", "dev/zero": Device("c", 1, 5)}),
            ],
        )
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        root = work / "store"
        root.mkdir(mode=0o755)
        os.chown(root, NOBODY_ID, NOBODY_ID)
        r = run_cli(root, "pull", oci(layout), "--name", "privileged", prefix=NOBODY)
        assert r.code == 0, r.err
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                path = os.path.join(dirpath, n)
                st = os.lstat(path)
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    found.append(f"device {path}")
                if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(st.st_mode):
                    found.append(f"set-id {stat.filemode(st.st_mode)} {st.st_uid} {path}")
                if st.st_uid != NOBODY_ID:
                    found.append(f"owned by {st.st_uid}: {path}")
        assert found == [], found
        layers = Store.open(str(root)).find_image("privileged").layers
        skipped = [
            json.loads((root / "layers" / c.partition(":")[2] / "layer.json").read_text()).get(
                "skipped_devices"
            )
            for c in layers
        ]
        assert skipped == [2, 1]
        fsck = run_cli(root, "fsck", prefix=NOBODY)
        assert fsck.code == 0, fsck.out + fsck.err
    finally:
        shutil.rmtree(work)


@pytest.mark.timeout(60)
def test_unprivileged_store_with_unreadable_modes() -> None:
    """Modes an image may well have (Fedora's /etc/shadow is 0000) in a store of a non-root user,
    who cannot bypass them: fsck must still check the layer, and gc remove it."""
    reason = _nobody_can_run_layerctl()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="layerfs-nobody-"))
    try:
        os.chmod(work, 0o755)
        layout = hand_image(
            work / "img",
            [
                layer_tar(
                    {
                        "etc/shadow": File(b"root:*:19000::::::\n", mode=0o000),
                        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
                        "root": Dir(mode=0o000),
                        "root/.profile": File(b"x", mode=0o600),
                        "srv": Dir(mode=0o311),
                        "srv/f": File(b"y", mode=0o200),
                    }
                )
            ],
        )
        subprocess.run(["chmod", "-R", "a+rX", str(work)], check=True)
        root = work / "store"
        root.mkdir(mode=0o755)
        os.chown(root, NOBODY_ID, NOBODY_ID)
        r = run_cli(root, "pull", oci(layout), "--name", "modes", prefix=NOBODY)
        assert r.code == 0, r.err
        fsck = run_cli(root, "fsck", prefix=NOBODY)
        assert fsck.code == 0, fsck.out + fsck.err
        assert run_cli(root, "rmi", "modes", prefix=NOBODY).code == 0
        gc = run_cli(root, "gc", prefix=NOBODY)
        assert gc.code == 0, gc.err
        assert stored_layers(root) == set()
        assert tmp_entries(root) == []
    finally:
        shutil.rmtree(work)


# -- 4. concurrent create -------------------------------------------------------------------------

CREATES = 20
SAME_NAME = 5


def _daemons_of(root: Path) -> list[int]:
    """The layerfs processes whose command line names ``root``."""
    pids = []
    needle = str(root).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline and b"layerfs" in cmdline:
            pids.append(int(pid))
    return pids


def _mounts_below(root: Path) -> list[str]:
    prefix = str(root) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def _reap(root: Path) -> None:
    """After a failure: unmount what is left below ``root``, kill its daemons."""
    for m in _mounts_below(root):
        subprocess.run(["fusermount3", "-u", "-z", m], check=False, capture_output=True)
    for pid in _daemons_of(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


@needs_root
@pytest.mark.stress
@pytest.mark.timeout(150)
def test_concurrent_create_of_one_image(tmp_path: Path) -> None:
    layout = hand_image(
        tmp_path / "img",
        [
            layer_tar({"etc/passwd": IMAGE_PASSWD, "etc/hostname": "img\n", "data/a": "a1\n"}),
            layer_tar({"data/a": "a2\n", "data/b": File(b"b" * 100_000)}),
        ],
    )
    root = tmp_path / "store"
    assert layerctl(root, "pull", oci(layout), "--name", "shared").code == 0
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        procs = [spawn(root, "create", "shared", f"c{i}") for i in range(CREATES)]
        results = [(p, *p.communicate(timeout=120)) for p in procs]
        timings["20 creates"] = time.monotonic() - t0
        for i, (p, out, err) in enumerate(results):
            assert p.returncode == 0, f"c{i}: {err}"
            assert out.strip() == str(root / "containers" / f"c{i}"), out
        for i in range(CREATES):
            rootfs = root / "containers" / f"c{i}" / "rootfs"
            assert mounted(rootfs, "fuse.layerfs"), f"c{i} not mounted"
            assert sorted(os.listdir(rootfs / "data")) == ["a", "b"]
            assert (rootfs / "data" / "a").read_text() == "a2\n"
            assert (rootfs / "data" / "b").read_bytes() == b"b" * 100_000
            (rootfs / "data" / "a").write_text(f"mine {i}\n")  # each upper is its own
        for i in range(CREATES):
            rootfs = root / "containers" / f"c{i}" / "rootfs"
            assert (rootfs / "data" / "a").read_text() == f"mine {i}\n"
            config = json.loads((root / "containers" / f"c{i}" / "config.json").read_text())
            assert config["hostname"] == f"c{i}"

        t0 = time.monotonic()
        procs = [spawn(root, "create", "shared", "same") for _ in range(SAME_NAME)]
        results = [(p, *p.communicate(timeout=60)) for p in procs]
        timings["5 creates of one name"] = time.monotonic() - t0
        won = [(p, out, err) for p, out, err in results if p.returncode == 0]
        lost = [(p, out, err) for p, out, err in results if p.returncode != 0]
        assert len(won) == 1, [err for _, _, err in results]
        for p, _, err in lost:
            one_clear_line(Run(p.returncode or 0, "", err), "create", "'same' exists already")
        assert mounted(root / "containers" / "same" / "rootfs", "fuse.layerfs")

        t0 = time.monotonic()
        names = [f"c{i}" for i in range(CREATES)] + ["same"]
        procs = [spawn(root, "rm", "--force", n) for n in names]
        results = [(p, *p.communicate(timeout=60)) for p in procs]
        timings["21 rm --force"] = time.monotonic() - t0
        for n, (p, _, err) in zip(names, results, strict=True):
            assert p.returncode == 0, f"rm {n}: {err}"
        wait_for(lambda: not _daemons_of(root), 15, "the layerfs daemons to exit")
        assert _mounts_below(root) == []
        assert os.listdir(root / "containers") == []
        fsck_clean(root)
        print(f"\nconcurrent create: {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}")
    finally:
        _reap(root)


@needs_root
@pytest.mark.stress
@pytest.mark.timeout(120)
def test_concurrent_create_from_a_source_on_an_empty_store(tmp_path: Path) -> None:
    """Ten creates naming the same oci: source at once: they race to import it (the store ends
    with one record and one copy of each layer), then each mounts its own container."""
    rnd = random.Random(SEED)
    layout = hand_image(
        tmp_path / "img",
        [
            layer_tar({f"l{i}/f{j}": File(rnd.randbytes(20_000)) for j in range(50)})
            for i in range(3)
        ],
    )
    root = tmp_path / "store"
    names = [f"p{i}" for i in range(10)]
    try:
        procs = [spawn(root, "create", oci(layout), n) for n in names]
        results = [(p, *p.communicate(timeout=90)) for p in procs]
        for n, (p, _, err) in zip(names, results, strict=True):
            assert p.returncode == 0, f"{n}: {err}"
        assert len(Store.open(str(root)).images()) == 1
        assert len(stored_layers(root)) == 3
        for n in names:
            rootfs = root / "containers" / n / "rootfs"
            assert mounted(rootfs, "fuse.layerfs")
            assert len(os.listdir(rootfs / "l2")) == 50
        fsck_clean(root)
        procs = [spawn(root, "rm", "--force", n) for n in names]
        for n, p in zip(names, procs, strict=True):
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, f"rm {n}: {err}"
        wait_for(lambda: not _daemons_of(root), 15, "the layerfs daemons to exit")
        assert _mounts_below(root) == []
        assert tmp_entries(root) == []
    finally:
        _reap(root)
