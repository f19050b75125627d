"""Opening an image source by name: the table from transport to reader."""

from __future__ import annotations

from layerfs.oci.docker_archive import open_docker_archive
from layerfs.oci.oci_archive import open_oci_archive
from layerfs.oci.oci_layout import open_oci_layout
from layerfs.oci.reference import SourceRef, Transport, parse_source
from layerfs.oci.source import ImageSource


def open_source(name: str | SourceRef, *, scratch_dir: str | None = None) -> ImageSource:
    """Open the image source ``name`` (``oci:DIR[:REF]`` and friends).

    The result is a context manager; close it when done. ``scratch_dir`` is
    where an archive that must be decompressed gets its temporary copy (the
    system temporary directory if None); the copy is gone when the source is
    closed, or when the process dies.
    """
    ref = parse_source(name) if isinstance(name, str) else name
    if ref.transport is Transport.OCI:
        return open_oci_layout(ref)
    if ref.transport is Transport.OCI_ARCHIVE:
        return open_oci_archive(ref, scratch_dir)
    return open_docker_archive(ref, scratch_dir)
