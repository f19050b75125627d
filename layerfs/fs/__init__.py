"""The union filesystem: read-only lower layers merged under a copy-on-write upper.

This package knows directories only. It must not import ``layerfs.oci`` or
``layerfs.store``: whatever a layer is, here it is a directory tree whose OCI
and overlay whiteouts are read natively.
"""
