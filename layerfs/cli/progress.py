"""The pull progress display: one line per layer, redrawn in place on a terminal.

Used only when stderr is a terminal (and not ``-q``); elsewhere a pull prints no progress at
all. Worker threads report; a lock serializes drawing, and redraws are throttled to ten a second.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

from layerfs.oci import Layer, ResolvedImage, split_digest
from layerfs.store.ingest import LayerAction

_INTERVAL = 0.1
_STATE_WORDS = {
    LayerAction.PRESENT: "already present",
    LayerAction.BLOB: "blob fetched",
    LayerAction.UNPACK: "unpacked",
}
_RUNNING_WORDS = {LayerAction.BLOB: "fetching blob", LayerAction.UNPACK: "unpacking"}


def human_size(n: float) -> str:
    """``n`` bytes in decimal units, as docker and skopeo show sizes."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class TerminalProgress:
    """Implements `layerfs.store.pull.PullProgress` on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._layers: list[Layer] = []
        self._done: list[int] = []
        self._state: list[str] = []
        self._drawn = 0
        self._last = 0.0

    def begin(self, image: ResolvedImage) -> None:
        with self._lock:
            self._layers = list(image.layers)
            self._done = [0] * len(self._layers)
            self._state = ["waiting"] * len(self._layers)
            self._draw()

    def layer_started(self, layer: Layer, action: LayerAction) -> None:
        with self._lock:
            self._state[layer.index] = _RUNNING_WORDS.get(action, action.value)
            self._draw()

    def layer_bytes(self, layer: Layer, nbytes: int) -> None:
        with self._lock:
            self._done[layer.index] += nbytes
            now = time.monotonic()
            if now - self._last >= _INTERVAL:
                self._draw()

    def layer_done(self, layer: Layer, action: LayerAction) -> None:
        with self._lock:
            self._state[layer.index] = _STATE_WORDS[action]

    def end(self) -> None:
        with self._lock:
            self._draw()

    def _draw(self) -> None:
        self._last = time.monotonic()
        lines = []
        total = len(self._layers)
        for i, layer in enumerate(self._layers):
            hexdigest = split_digest(layer.descriptor.digest)[1][:12]
            size = layer.descriptor.size
            amount = f"{human_size(self._done[i])} / {human_size(size)}"
            lines.append(f"layer {i + 1}/{total} {hexdigest}  {self._state[i]:<15} {amount}")
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)
