"""Opening an image source by name: the table from transport to reader."""

from __future__ import annotations

from layerfs.oci.docker_archive import open_docker_archive
from layerfs.oci.oci_archive import open_oci_archive
from layerfs.oci.oci_layout import open_oci_layout
from layerfs.oci.reference import SourceRef, Transport, parse_source
from layerfs.oci.registry.options import RegistryOptions, current_registry_options
from layerfs.oci.source import ImageSource


def open_source(
    name: str | SourceRef,
    *,
    scratch_dir: str | None = None,
    registry: RegistryOptions | None = None,
) -> ImageSource:
    """Open the image source ``name`` (``oci:DIR[:REF]`` and friends).

    The result is a context manager; close it when done. ``scratch_dir`` is
    where an archive that must be decompressed gets its temporary copy (the
    system temporary directory if None); the copy is gone when the source is
    closed, or when the process dies. ``registry`` says how to reach a
    ``docker://`` source (default: the current ``using_registry_options``).
    """
    ref = parse_source(name) if isinstance(name, str) else name
    if ref.transport is Transport.DOCKER:
        # The HTTP client, TLS and auth load only for registry sources.
        from layerfs.oci.registry_source import open_registry_source

        return open_registry_source(ref, registry or current_registry_options())
    if ref.transport is Transport.OCI:
        return open_oci_layout(ref)
    if ref.transport is Transport.OCI_ARCHIVE:
        return open_oci_archive(ref, scratch_dir)
    return open_docker_archive(ref, scratch_dir)
