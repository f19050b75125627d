"""Real OCI images for tests, built with umoci (and converted with skopeo).

An image is busybox-static (a first layer made by ``umoci repack`` of a real tree: ``/bin/busybox``
and a ``/bin/sh`` symlink) plus layers the test describes, each a mapping from path to entry::

    layout = build_image(tmp_path, [
        {"etc/hello": "hi\\n", "bin/su": File(b"...", mode=0o4755), "etc/link": Symlink("hello")},
        {"etc/hello": WHITEOUT, "var/cache": Dir(opaque=True), "var/cache/new": "x"},
    ], tag="v1", config=ImageConfigSpec(cmd=["/bin/sh"]))

A value is a `File` (``str``/``bytes`` are shorthand for one), a `Dir` (``None`` for a plain one),
`Symlink`, `Hardlink` (to a path earlier in the same layer), `Fifo`, `Device`, or `WHITEOUT`
(removes the path from the layers below: an OCI ``.wh.`` file). ``Dir(opaque=True)`` hides what
the layers below hold in it (``.wh..wh..opq``). Each layer is written as a PAX tar (xattrs as
``SCHILY.xattr.*``; missing parent directories added first, mode 0755) and appended with
``umoci raw add-layer``, which compresses it and updates config and manifest, as a third-party
producer would.

Helpers: `layer_tar` (the tar a spec becomes), `to_oci_archive` / `to_docker_archive` (skopeo),
`umoci_unpack` (the reference tree), `make_index` (a multi-platform index of tags already built),
`have_tools` (skip tests where umoci/skopeo are missing).

Images no tool would write (the hostile corpus) come from `hand_image`, which writes a layout blob
by blob from raw layer tars and lets the test edit each JSON document before it is written;
`manifest_of` and `blob_path` find the blobs to damage afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
MTIME = 1_600_000_000
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
Doc = dict[str, object]
Edit = Callable[[Doc], None]


@dataclass(frozen=True)
class File:
    data: bytes | str = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    mtime: int = MTIME


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    opaque: bool = False
    mtime: int = MTIME


@dataclass(frozen=True)
class Symlink:
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Hardlink:
    target: str  # a path earlier in the same layer


@dataclass(frozen=True)
class Fifo:
    mode: int = 0o644


@dataclass(frozen=True)
class Device:
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o600


@dataclass(frozen=True)
class Whiteout:
    pass


WHITEOUT = Whiteout()

Entry = File | Dir | Symlink | Hardlink | Fifo | Device | Whiteout
LayerSpec = Mapping[str, Entry | str | bytes | None]


@dataclass(frozen=True)
class ImageConfigSpec:
    """What ``umoci config`` sets; None leaves umoci's default."""

    cmd: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None
    env: Sequence[str] = ()
    user: str | None = None
    workdir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    architecture: str | None = None
    os: str | None = None


def have_tools() -> str | None:
    """The first of umoci/skopeo that is missing (for ``pytest.skip``), else None."""
    for tool in ("umoci", "skopeo"):
        if shutil.which(tool) is None:
            return tool
    return None


def run(*argv: str | Path) -> str:
    """Run a tool; its stdout. A failure raises with the tool's stderr in the message."""
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# -- layer tars -----------------------------------------------------------------------------------


def _pax_xattrs(xattrs: Mapping[str, bytes]) -> dict[str, str]:
    return {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}


def _info(name: str, kind: bytes, mode: int, mtime: int = MTIME) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = kind, mode, mtime
    return ti


def _members(path: str, value: Entry | str | bytes | None) -> list[tuple[tarfile.TarInfo, bytes]]:
    if value is None:
        value = Dir()
    elif isinstance(value, str | bytes):
        value = File(value)
    parent, _, name = path.rpartition("/")
    if isinstance(value, File):
        data = value.data.encode() if isinstance(value.data, str) else value.data
        ti = _info(path, tarfile.REGTYPE, value.mode, value.mtime)
        ti.size, ti.uid, ti.gid = len(data), value.uid, value.gid
        ti.pax_headers = _pax_xattrs(value.xattrs)
        return [(ti, data)]
    if isinstance(value, Dir):
        ti = _info(path, tarfile.DIRTYPE, value.mode, value.mtime)
        ti.uid, ti.gid = value.uid, value.gid
        ti.pax_headers = _pax_xattrs(value.xattrs)
        out = [(ti, b"")]
        if value.opaque:
            out.append((_info(f"{path}/.wh..wh..opq", tarfile.REGTYPE, 0o644), b""))
        return out
    if isinstance(value, Symlink):
        ti = _info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname, ti.uid, ti.gid = value.target, value.uid, value.gid
        return [(ti, b"")]
    if isinstance(value, Hardlink):
        ti = _info(path, tarfile.LNKTYPE, 0o644)
        ti.linkname = value.target
        return [(ti, b"")]
    if isinstance(value, Fifo):
        return [(_info(path, tarfile.FIFOTYPE, value.mode), b"")]
    if isinstance(value, Device):
        kind = tarfile.CHRTYPE if value.kind == "c" else tarfile.BLKTYPE
        ti = _info(path, kind, value.mode)
        ti.devmajor, ti.devminor = value.major, value.minor
        return [(ti, b"")]
    whiteout = f"{parent}/.wh.{name}" if parent else f".wh.{name}"
    return [(_info(whiteout, tarfile.REGTYPE, 0o644), b"")]


def layer_tar(spec: LayerSpec) -> bytes:
    """The uncompressed PAX tar of one layer spec (parents first, in the spec's order)."""
    buf = io.BytesIO()
    written: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
        for path, value in spec.items():
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in written and parent not in spec:
                    tf.addfile(_info(parent, tarfile.DIRTYPE, 0o755))
                    written.add(parent)
            for ti, data in _members(path.strip("/"), value):
                tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
            written.add(path.strip("/"))
    return buf.getvalue()


# -- images ---------------------------------------------------------------------------------------


def _config_args(config: ImageConfigSpec) -> list[str]:
    args: list[str] = []
    if config.cmd is not None:
        args += [f"--config.cmd={c}" for c in config.cmd] or ["--clear=config.cmd"]
    if config.entrypoint is not None:
        args += [f"--config.entrypoint={e}" for e in config.entrypoint]
    args += [f"--config.env={e}" for e in config.env]
    args += [f"--config.label={k}={v}" for k, v in config.labels.items()]
    if config.user is not None:
        args.append(f"--config.user={config.user}")
    if config.workdir is not None:
        args.append(f"--config.workingdir={config.workdir}")
    if config.architecture is not None:
        args.append(f"--architecture={config.architecture}")
    if config.os is not None:
        args.append(f"--os={config.os}")
    return args


def build_image(
    workdir: Path,
    layers: Sequence[LayerSpec] = (),
    *,
    tag: str = "latest",
    config: ImageConfigSpec | None = None,
    busybox: bool = True,
    layout: Path | None = None,
) -> Path:
    """Build ``layout:tag`` (busybox base, then ``layers``) with umoci; the layout's path.

    ``layout`` defaults to ``workdir/layout``; several tags can share one layout.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    layout = layout or workdir / "layout"
    if not (layout / "index.json").exists():
        run("umoci", "init", "--layout", layout)
    image = f"{layout}:{tag}"
    run("umoci", "new", "--image", image)
    if busybox:
        bundle = workdir / f"bundle-{tag}"
        run("umoci", "unpack", "--image", image, bundle)
        rootfs = bundle / "rootfs"
        (rootfs / "bin").mkdir(exist_ok=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        (rootfs / "bin" / "sh").symlink_to("busybox")
        # Fixed times: the same base layer (and ChainID) for every image, whenever it is built.
        for path in (rootfs / "bin" / "sh", rootfs / "bin" / "busybox", rootfs / "bin", rootfs):
            os.utime(path, (MTIME, MTIME), follow_symlinks=False)
        run("umoci", "repack", "--image", image, bundle)
        shutil.rmtree(bundle)
    for i, spec in enumerate(layers):
        tar = workdir / f"{tag}-layer{i}.tar"
        tar.write_bytes(layer_tar(spec))
        run(
            "umoci",
            "raw",
            "add-layer",
            "--history.created_by",
            f"test layer {i}",
            "--image",
            image,
            tar,
        )
        tar.unlink()
    if config is not None:
        run("umoci", "config", "--image", image, *_config_args(config))
    return layout


def to_oci_archive(layout: Path, tag: str, dest: Path) -> Path:
    """``skopeo copy oci:LAYOUT:TAG oci-archive:DEST:TAG``; ``dest``."""
    run("skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"oci-archive:{dest}:{tag}")
    return dest


def to_docker_archive(layout: Path, tag: str, dest: Path, name: str) -> Path:
    """``skopeo copy oci:LAYOUT:TAG docker-archive:DEST:NAME`` (NAME as ``repo:tag``); ``dest``."""
    run("skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{dest}:{name}")
    return dest


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    """``umoci unpack`` of ``layout:tag`` into ``bundle``; the root filesystem's path."""
    run("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
    return bundle / "rootfs"


def blob_path(layout: Path, digest: str) -> Path:
    """Where ``digest`` lives in an OCI layout."""
    algorithm, _, encoded = digest.partition(":")
    return layout / "blobs" / algorithm / encoded


def _blob(layout: Path, digest: str) -> bytes:
    return blob_path(layout, digest).read_bytes()


def manifest_of(layout: Path, tag: str) -> dict[str, object]:
    """The manifest of ``tag`` (an image, not an index) as a dict."""
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get(ANNOTATION_REF_NAME) == tag:
            doc: dict[str, object] = json.loads(_blob(layout, m["digest"]))
            return doc
    raise KeyError(tag)


def _put(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    return data


def hand_image(
    layout: Path,
    tars: Sequence[bytes],
    *,
    tag: str = "latest",
    compression: str = "gzip",
    architecture: str = "amd64",
    edit_config: Edit | None = None,
    edit_manifest: Edit | None = None,
    edit_index_entry: Edit | None = None,
) -> Path:
    """Write an image of the layer ``tars`` (bottom first) into the OCI layout ``layout``.

    Each ``edit_*`` may change its document before it is serialized and hashed: the image is
    then consistent except for what the edit broke. Returns ``layout``.
    """
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    if not (layout / "oci-layout").exists():
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index_path = layout / "index.json"
    index: dict[str, list[Doc]] = {"manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    layers = []
    for tar in tars:
        blob = _compress(tar, compression)
        layers.append(
            {"mediaType": LAYER_TYPES[compression], "digest": _put(layout, blob), "size": len(blob)}
        )
    config: Doc = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars],
        },
    }
    if edit_config:
        edit_config(config)
    config_bytes = json.dumps(config).encode()
    manifest: Doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": _put(layout, config_bytes),
            "size": len(config_bytes),
        },
        "layers": layers,
    }
    if edit_manifest:
        edit_manifest(manifest)
    manifest_bytes = json.dumps(manifest).encode()
    entry: Doc = {
        "mediaType": OCI_MANIFEST,
        "digest": _put(layout, manifest_bytes),
        "size": len(manifest_bytes),
        "annotations": {ANNOTATION_REF_NAME: tag},
    }
    if edit_index_entry:
        edit_index_entry(entry)
    index["manifests"].append(entry)
    index_path.write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, **index}))
    return layout


def make_index(layout: Path, tags: Sequence[str], tag: str) -> None:
    """Add ``tag``: an image index of the images ``tags`` with their platforms."""
    index = json.loads((layout / "index.json").read_text())
    by_name = {m.get("annotations", {}).get(ANNOTATION_REF_NAME): m for m in index["manifests"]}
    entries = []
    for t in tags:
        desc = dict(by_name[t])
        desc.pop("annotations", None)
        manifest = json.loads(_blob(layout, desc["digest"]))
        config = json.loads(_blob(layout, manifest["config"]["digest"]))
        desc["platform"] = {"os": config["os"], "architecture": config["architecture"]}
        entries.append(desc)
    doc = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    digest = "sha256:" + hashlib.sha256(doc).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(doc)
    index["manifests"].append(
        {
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": len(doc),
            "annotations": {ANNOTATION_REF_NAME: tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
