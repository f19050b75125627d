"""What the filesystem remembers between mounts, kept in a database under ``workdir``.

Keyed by the upper filesystem's inode number, which survives renames inside
the upper:

- ``origin``: the stable ``st_ino`` a copied-up object keeps (its lower inode);
- ``redirect``: the lower path of a renamed directory whose lower contents
  still belong to it;
- ``xattr``: extended attributes of upper objects when the upper filesystem
  has no xattr support (zfs-fuse).

One SQLite file in WAL mode: every update is one transaction, so a crash
mid-update leaves the previous state, never a torn one. Chosen over
xattrs-on-the-upper so that one mechanism works on every upper filesystem;
origins and redirects are small and loaded whole at mount time.
"""

from __future__ import annotations

import os
import sqlite3

DB_NAME = "layerfs.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS origin (ino INTEGER PRIMARY KEY, origin INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS redirect (ino INTEGER PRIMARY KEY, path BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS xattr (ino INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
                                  PRIMARY KEY (ino, name));
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class MetaStore:
    """Origins, redirects and fallback xattrs of one upper directory."""

    def __init__(self, workdir: str, *, durable: bool = True) -> None:
        self._db = sqlite3.connect(os.path.join(workdir, DB_NAME), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'NORMAL' if durable else 'OFF'}")
        self._db.executescript(_SCHEMA)
        self.origins: dict[int, int] = dict(self._db.execute("SELECT ino, origin FROM origin"))
        self.claimed: set[int] = set(self.origins.values())
        self.redirects: dict[int, bytes] = {
            ino: bytes(p) for ino, p in self._db.execute("SELECT ino, path FROM redirect")
        }
        # The kernel asks for security.capability before every write: answer from memory
        # for the (usual) objects that have no fallback xattrs at all.
        self._xattr_inos: set[int] = {
            ino for (ino,) in self._db.execute("SELECT DISTINCT ino FROM xattr")
        }

    def close(self) -> None:
        self._db.close()

    def set_origin(self, ino: int, origin: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO origin VALUES (?, ?)", (ino, origin))
        self.origins[ino] = origin
        self.claimed.add(origin)

    def set_redirect(self, ino: int, path: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO redirect VALUES (?, ?)", (ino, path))
        self.redirects[ino] = path

    def replace(self, old: int, new: int, origin: int) -> None:
        """Upper object ``new`` replaces ``old``: it takes its xattrs and ``origin``."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM xattr WHERE ino = ?", (new,))
            self._db.execute("UPDATE xattr SET ino = ? WHERE ino = ?", (new, old))
            self._db.execute("DELETE FROM origin WHERE ino = ?", (old,))
            self._db.execute("INSERT OR REPLACE INTO origin VALUES (?, ?)", (new, origin))
        self.origins.pop(old, None)
        self.origins[new] = origin
        self.claimed.add(origin)
        if old in self._xattr_inos:
            self._xattr_inos.discard(old)
            self._xattr_inos.add(new)

    def forget_ino(self, ino: int) -> None:
        """The upper object ``ino`` is gone: drop everything recorded for it."""
        if ino in self.origins or ino in self.redirects or self._has_xattrs(ino):
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM origin WHERE ino = ?", (ino,))
                self._db.execute("DELETE FROM redirect WHERE ino = ?", (ino,))
                self._db.execute("DELETE FROM xattr WHERE ino = ?", (ino,))
            origin = self.origins.pop(ino, None)
            if origin is not None:
                self.claimed.discard(origin)
            self.redirects.pop(ino, None)
            self._xattr_inos.discard(ino)

    def _has_xattrs(self, ino: int) -> bool:
        return ino in self._xattr_inos

    def next_counter(self, name: str, start: int) -> int:
        """A persistent counter, for inode numbers too large to encode."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM counter WHERE name = ?", (name,)).fetchone()
            value = start if row is None else int(row[0]) + 1
            self._db.execute("INSERT OR REPLACE INTO counter VALUES (?, ?)", (name, value))
        return value

    # Fallback xattrs (upper without xattr support).
    def has_fallback_xattrs(self) -> bool:
        return bool(self._xattr_inos)

    def get_xattrs(self, ino: int) -> dict[str, bytes]:
        if ino not in self._xattr_inos:
            return {}
        rows = self._db.execute("SELECT name, value FROM xattr WHERE ino = ?", (ino,))
        return {name: bytes(value) for name, value in rows}

    def set_xattr(self, ino: int, name: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO xattr VALUES (?, ?, ?)", (ino, name, value))
        self._xattr_inos.add(ino)

    def set_xattrs(self, ino: int, values: dict[str, bytes]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM xattr WHERE ino = ?", (ino,))
            self._db.executemany(
                "INSERT INTO xattr VALUES (?, ?, ?)", [(ino, n, v) for n, v in values.items()]
            )
        if values:
            self._xattr_inos.add(ino)
        else:
            self._xattr_inos.discard(ino)

    def remove_xattr(self, ino: int, name: str) -> bool:
        cur = self._db.execute("DELETE FROM xattr WHERE ino = ? AND name = ?", (ino, name))
        return cur.rowcount > 0
