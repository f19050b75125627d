"""The one exception ``layerfs.bundle`` raises on purpose.

A :class:`BundleError` is a user error — the image cannot be turned into a
runnable bundle as it stands (no command, a ``User`` the image does not know, a
hostile ``/etc/passwd``) — never a bug: the CLI prints its message as one line.
Messages name the image field or file at fault.
"""

from __future__ import annotations


class BundleError(ValueError):
    """An image config cannot be converted into a runtime bundle."""
