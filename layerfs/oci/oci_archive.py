"""The ``oci-archive:`` transport: a tar of an OCI image layout.

The archive is read in place, without extraction (see
:mod:`layerfs.oci.archive`); a compressed archive is first decompressed into
the caller's scratch directory. Everything else is the ``oci:`` reader.
"""

from __future__ import annotations

from layerfs.oci.archive import ArchiveTree
from layerfs.oci.errors import OCIError
from layerfs.oci.oci_layout import OCILayoutSource
from layerfs.oci.reference import SourceRef


class OCIArchiveSource(OCILayoutSource):
    """An OCI layout inside a tar archive."""

    def __init__(self, ref: SourceRef, archive: ArchiveTree) -> None:
        super().__init__(ref, archive)
        self.archive = archive

    def close(self) -> None:
        self.archive.close()


def open_oci_archive(ref: SourceRef, scratch_dir: str | None = None) -> OCIArchiveSource:
    """Open the ``oci-archive:`` source ``ref``; ``scratch_dir`` takes a decompressed copy."""
    try:
        return OCIArchiveSource(ref, ArchiveTree(ref.path, scratch_dir))
    except OCIError as exc:
        raise exc.with_context(str(ref)) from None
