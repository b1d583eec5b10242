"""State of the emulator: JSON records by kind and id, byte blobs, and a deterministic id generator.

Records live in memory (insertion-ordered dicts, so lookups are O(1) and listing order is creation order).
With a database path every change is also written through to SQLite (stdlib ``sqlite3``, one JSON column
per record) and everything is loaded back on start: a restarted emulator keeps its files, uploads, jobs
and permissions, and since a job's progress is a function of time, running jobs go on. Blobs (file
contents, upload parts) are kept only in SQLite when there is a database, so they do not fill the memory.

The store is used from one thread at a time (the server's event loop); it does no locking of its own.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["Record", "Store", "token"]

#: A stored object: JSON-ready values only.
Record = dict[str, Any]

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def token(*parts: object, length: int = 24) -> str:
    """Return a deterministic base62 token of ``length`` characters derived from ``parts``.

    The same parts always give the same token; different parts practically never collide.
    """
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=32).digest()
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, 62)
        chars.append(_ALPHABET[index])
    return "".join(chars)


class Store:
    """Records by kind and id, blobs by key, and an id counter; optionally persisted to SQLite.

    :param path: the SQLite file; in memory only when ``None``.
    :param seed: seed of the id generator: the same seed and the same sequence of creations give the
        same ids.
    """

    def __init__(self, path: str | Path | None = None, *, seed: int = 0) -> None:
        self.path = str(path) if path is not None else None
        self._seed = seed
        self._kinds: dict[str, dict[str, Record]] = {}
        self._blobs: dict[str, bytes] = {}
        self._counter = 0
        self._seq = 0
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self._open(self.path)

    # -- persistence -------------------------------------------------------------------------------------

    def _open(self, path: str) -> None:
        Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        # The server's event loop runs in another thread than the one that made the store.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        for kind, record_id, seq, body in db.execute("SELECT kind, id, seq, body FROM records ORDER BY seq"):
            self._kinds.setdefault(kind, {})[record_id] = json.loads(body)
            self._seq = max(self._seq, seq)
        row = db.execute("SELECT value FROM meta WHERE key = 'counter'").fetchone()
        self._counter = int(row[0]) if row else 0
        row = db.execute("SELECT value FROM meta WHERE key = 'seed'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta (key, value) VALUES ('seed', ?)", (str(self._seed),))
        else:
            # Ids go on from the stored sequence, with the seed they started with.
            self._seed = int(row[0])
        self._db = db

    def close(self) -> None:
        """Close the database, if any; the store must not be used afterwards."""
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def persistent(self) -> bool:
        """Whether changes are written to SQLite."""
        return self.path is not None

    # -- records -----------------------------------------------------------------------------------------

    def records(self, kind: str) -> dict[str, Record]:
        """Return the records of a kind by id, in creation order (the live mapping: do not mutate it)."""
        return self._kinds.setdefault(kind, {})

    def get(self, kind: str, record_id: str) -> Record | None:
        """Return a record, or ``None``."""
        return self._kinds.get(kind, {}).get(record_id)

    def save(self, kind: str, record: Record) -> None:
        """Insert or replace a record (keyed by its ``id``); a replaced record keeps its position."""
        record_id = record["id"]
        records = self.records(kind)
        is_new = record_id not in records
        records[record_id] = record
        if self._db is None:
            return
        body = json.dumps(record, separators=(",", ":"))
        if is_new:
            self._seq += 1
        self._db.execute(
            "INSERT INTO records (kind, id, seq, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
            (kind, record_id, self._seq, body),
        )

    def delete(self, kind: str, record_id: str) -> bool:
        """Delete a record; return whether it existed."""
        existed = self._kinds.get(kind, {}).pop(record_id, None) is not None
        if existed and self._db is not None:
            self._db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id))
        return existed

    # -- blobs -------------------------------------------------------------------------------------------

    def put_blob(self, key: str, data: bytes) -> None:
        """Store bytes under a key."""
        if self._db is None:
            self._blobs[key] = bytes(data)
        else:
            self._db.execute(
                "INSERT INTO blobs (key, data) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET data = excluded.data",
                (key, sqlite3.Binary(data)),
            )

    def get_blob(self, key: str) -> bytes | None:
        """Return the bytes stored under a key, or ``None``."""
        if self._db is None:
            return self._blobs.get(key)
        row = self._db.execute("SELECT data FROM blobs WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def delete_blob(self, key: str) -> None:
        """Forget the bytes stored under a key (no error if there are none)."""
        if self._db is None:
            self._blobs.pop(key, None)
        else:
            self._db.execute("DELETE FROM blobs WHERE key = ?", (key,))

    # -- ids ---------------------------------------------------------------------------------------------

    def new_id(self, prefix: str, length: int = 24) -> str:
        """Return a fresh id such as ``ftjob-...``: deterministic for the seed and the creation order."""
        self._counter += 1
        if self._db is not None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('counter', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(self._counter),),
            )
        return prefix + token(self._seed, prefix, self._counter, length=length)

    def random_int(self, label: str, upper: int) -> int:
        """Return a deterministic integer in ``[0, upper)`` for a label (a job's seed, for instance)."""
        digest = hashlib.blake2b(f"{self._seed}\x1f{label}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % upper

    @property
    def seed(self) -> int:
        """The seed ids are derived from."""
        return self._seed
