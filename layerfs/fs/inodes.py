"""The inode table: the nodes the kernel knows, with their lookup counts.

Contract:
- A node's number is its stable ``st_ino``: the encoded inode of the object's
  origin (the lower object it came from, or the upper object itself), so it is
  the same across remounts and copy-up, and unique although layers may be
  different filesystems (the layer index sits in the high bits).
- A node lives in the table while the kernel holds a lookup on it, a file
  handle is open on it, or another node in the table names it as parent.
  Only ``forget`` (and release/unlink of its last reference) frees it.
- ``parent``/``name`` is one current name of the node; hard-linked nodes have
  others, found again by the next lookup through them.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

ROOT_INO = 1
TAG_SHIFT = 48
MAX_REAL_INO = (1 << TAG_SHIFT) - 1
UPPER_TAG = 1
OVERFLOW_TAG = 0xFFFF

# (layer index, path inside that layer): where an object's lower part lives.
LowerRef = tuple[int, bytes]


def encode_ino(tag: int, real_ino: int) -> int | None:
    """The stable number for ``real_ino`` in the layer tagged ``tag``; None if it does not fit."""
    if real_ino > MAX_REAL_INO:
        return None
    return (tag << TAG_SHIFT) | real_ino


def lower_tag(index: int) -> int:
    return index + 2


class InodeTableError(RuntimeError):
    """A broken invariant of the inode table: a bug, never a user error."""


@dataclass(eq=False, slots=True)
class Node:
    ino: int
    parent: Node | None
    name: bytes
    kind: int  # S_IFMT bits
    upper: bool  # a real object exists in the upper layer
    lower: tuple[LowerRef, ...]  # dirs: the merged stack, top first; others: the source
    nlookup: int = 0
    opens: int = 0
    kids: int = 0
    # Lower stat of a lower-only object: lower layers never change.
    lower_stat: object | None = None
    nlink_cache: int | None = None
    # A metadata-only copy (see `metacopy`): where its data still lives.
    data: LowerRef | None = None
    handles: set[int] = field(default_factory=set)
    # Other names a hard-linked node is known by, besides parent/name.
    links: list[tuple[Node, bytes]] = field(default_factory=list)

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    def path(self) -> bytes:
        """Path of this node in the merged tree, relative to the root (``.`` for the root)."""
        parts: list[bytes] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return b"/".join(reversed(parts)) if parts else b"."

    def child_path(self, name: bytes) -> bytes:
        return name if self.parent is None else self.path() + b"/" + name


class InodeTable:
    """Nodes by number; see the module docstring for the lifetime rules."""

    def __init__(self, root: Node) -> None:
        if root.ino != ROOT_INO:
            raise InodeTableError("root must have inode 1")
        self.root = root
        root.nlookup = 1
        self._nodes: dict[int, Node] = {ROOT_INO: root}

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise InodeTableError(f"inode {ino} is not in the table") from None

    def find(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def add(self, node: Node) -> Node:
        if node.ino in self._nodes:
            raise InodeTableError(f"inode {node.ino} is already in the table")
        self._nodes[node.ino] = node
        if node.parent is not None:
            node.parent.kids += 1
        return node

    def move(self, node: Node, parent: Node, name: bytes) -> None:
        """Point ``node``'s name at ``parent``/``name``, keeping the kids counts right."""
        if node.parent is parent:
            node.name = name
            return
        if node.parent is not None and node.ino in self._nodes:
            node.parent.kids -= 1
            self._maybe_drop(node.parent)
        node.parent = parent
        node.name = name
        if node.ino in self._nodes:
            parent.kids += 1

    def add_name(self, node: Node, parent: Node, name: bytes) -> None:
        """Make ``parent/name`` the node's name, keeping its previous one as an alias."""
        if node.parent is parent and node.name == name:
            return
        if not node.is_dir and node.parent is not None:
            node.links.append((node.parent, node.name))
        node.links = [(p, n) for p, n in node.links if not (p.ino == parent.ino and n == name)]
        self._set_name(node, parent, name)

    def drop_name(self, node: Node, parent: Node, name: bytes) -> None:
        """``parent/name`` no longer leads to ``node``; fall back on another known name."""
        node.links = [(p, n) for p, n in node.links if not (p.ino == parent.ino and n == name)]
        primary = node.parent is not None and node.parent.ino == parent.ino and node.name == name
        if primary and node.links:
            p, n = node.links.pop()
            self._set_name(node, p, n)

    def _set_name(self, node: Node, parent: Node, name: bytes) -> None:
        if node.ino in self._nodes and self._nodes[node.ino] is node:
            self.move(node, parent, name)
        else:
            node.parent, node.name = parent, name

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None:
            raise InodeTableError(f"forget of unknown inode {ino}")
        if count > node.nlookup:
            raise InodeTableError(f"forget {count} > lookup count {node.nlookup} of inode {ino}")
        node.nlookup -= count
        self._maybe_drop(node)

    def release(self, node: Node) -> None:
        node.opens -= 1
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        while (
            node.ino != ROOT_INO
            and node.nlookup == 0
            and node.opens == 0
            and node.kids == 0
            and self._nodes.get(node.ino) is node
        ):
            del self._nodes[node.ino]
            parent = node.parent
            if parent is None:
                return
            parent.kids -= 1
            node = parent
