"""The runtime config's ``annotations``, per the image-spec's conversion rules.

Precedence, lowest first:

1. implicit annotations derived from the image config — ``os``,
   ``architecture``, ``variant``, ``os.version``, ``os.features`` (comma
   separated, as umoci writes them), ``author``, ``created``, ``StopSignal``
   and ``ExposedPorts`` (the port keys, comma separated, in document order),
   each under ``org.opencontainers.image.*``, and only when the image has a
   value;
2. ``Config.Labels``, copied unmodified — a label wins over an implicit
   annotation with the same key, as the spec requires;
3. annotations the caller provides: the spec counts these as modifications
   of the image config, so they win over both.

Annotations from the manifest or index are not consulted (the spec says a
converter SHOULD NOT). Nothing from the image is dropped: runc, crun and LXC
act on no ``org.opencontainers.image.*`` key or label.
"""

from __future__ import annotations

from collections.abc import Mapping

from layerfs.oci import ImageConfig

PREFIX = "org.opencontainers.image."

OS = PREFIX + "os"
ARCHITECTURE = PREFIX + "architecture"
VARIANT = PREFIX + "variant"
OS_VERSION = PREFIX + "os.version"
OS_FEATURES = PREFIX + "os.features"
AUTHOR = PREFIX + "author"
CREATED = PREFIX + "created"
STOP_SIGNAL = PREFIX + "stopSignal"
EXPOSED_PORTS = PREFIX + "exposedPorts"


def implicit_annotations(image: ImageConfig) -> dict[str, str]:
    """The annotations the conversion derives from ``image``'s own fields."""
    config = image.config
    derived: dict[str, str | None] = {
        OS: image.os,
        ARCHITECTURE: image.architecture,
        VARIANT: image.variant,
        OS_VERSION: image.os_version,
        OS_FEATURES: ",".join(image.os_features) or None,
        AUTHOR: image.author,
        CREATED: image.created,
        STOP_SIGNAL: config.stop_signal,
        EXPOSED_PORTS: ",".join(config.exposed_ports) or None,
    }
    # An empty string is a value for Labels, but for these fields it means "unset".
    return {key: value for key, value in derived.items() if value}


def runtime_annotations(
    image: ImageConfig, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """All annotations for the runtime config: implicit < Labels < ``extra``."""
    out = implicit_annotations(image)
    out.update(image.config.labels)
    if extra:
        out.update(extra)
    return dict(sorted(out.items()))
