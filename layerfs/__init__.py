"""layerfs: mount OCI container images as directories.

Subpackages, imports pointing down only:

- ``fs``: the union filesystem; knows directories, nothing of images.
- ``oci``: the OCI image model and image sources.
- ``store``: the layer store (uses ``oci``).
- ``bundle``: image config to runtime ``config.json`` (uses ``oci``).
- ``cli``: command-line wiring for ``layerfs`` and ``layerctl``.
"""

__version__ = "0.1.0"
