"""The SQLite catalog of a collection: one row per registered image, descriptor included.

The catalog is the source of truth: the faiss index holds exactly the catalog's ids and can always be
rebuilt from the stored descriptors. Several processes may share it (WAL mode); `data_version` tells a
process that another one has committed, so it can bring its in-memory index up to date.
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import CollectionLockedError, CorruptCollectionError

__all__ = ["Record", "Catalog", "MAX_ID"]

MAX_ID = 2**63 - 1  # SQLite's largest integer key
_CHUNK = 10_000  # rows per query when reading descriptors (bounded memory)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('passive', 'active')),
    original_path TEXT NOT NULL,
    original_sha256 TEXT NOT NULL UNIQUE,
    activated_path TEXT,
    activated_sha256 TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    psnr REAL, ssim REAL, linf INTEGER,
    cos_before REAL, cos_after REAL, same_cell INTEGER, same_code INTEGER,
    created_at TEXT NOT NULL,
    descriptor BLOB NOT NULL
)
"""


@dataclass
class Record:
    """One registered image (the descriptor is the ORIGINAL's, as indexed)."""

    id: int | None
    kind: str  # "passive" or "active"
    original_path: str
    original_sha256: str
    width: int
    height: int
    activated_path: str | None = None
    activated_sha256: str | None = None
    psnr: float | None = None
    ssim: float | None = None
    linf: int | None = None
    cos_before: float | None = None
    cos_after: float | None = None
    same_cell: bool | None = None
    same_code: bool | None = None
    created_at: str = ""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = [f.name for f in fields(Record)]


class Catalog:
    """The ``catalog.sqlite`` file (WAL mode; each batch is one transaction).

    One connection shared by the threads of a process, serialised by a lock. SQLite errors become
    one-line `CorruptCollectionError` (damaged file) or `CollectionLockedError` (busy for too long).

    Args:
        path: the file.
        create: create it when missing (a new collection); otherwise a missing file is an error.
    """

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise CorruptCollectionError(f"{self.path}: missing: the collection's records are gone; restore "
                                         "catalog.sqlite from a backup (a collection cannot work without it)")
        self._lock = threading.RLock()
        with self._errors():
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite's exceptions into the library's one-line errors."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise CollectionLockedError(f"{self.path}: busy ({e}); retry in a moment") from e
            raise CorruptCollectionError(f"{self.path}: unreadable catalog ({e})") from e
        except sqlite3.DatabaseError as e:
            raise CorruptCollectionError(f"{self.path}: corrupt catalog ({e}); restore it from a backup") from e

    def _query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        """All rows of one statement, under the connection's lock."""
        with self._lock, self._errors():
            return self._db.execute(sql, params).fetchall()

    def data_version(self) -> int:
        """A number that changes whenever ANOTHER connection (process) commits to the catalog."""
        return self._query("PRAGMA data_version")[0][0]

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM images")[0][0]

    def counts(self) -> dict[str, int]:
        """Number of records per kind."""
        return {"passive": 0, "active": 0} | dict(self._query("SELECT kind, COUNT(*) FROM images GROUP BY kind"))

    def ids(self) -> np.ndarray:
        """Every registered id, ascending, (n,) int64."""
        return np.array([r[0] for r in self._query("SELECT id FROM images ORDER BY id")], np.int64)

    def find_sha256(self, sha256: str) -> int | None:
        """The id of the image with this original sha256, if registered."""
        rows = self._query("SELECT id FROM images WHERE original_sha256 = ?", (sha256,))
        return rows[0][0] if rows else None

    def activated_path_taken(self, path: str) -> bool:
        return bool(self._query("SELECT 1 FROM images WHERE activated_path = ?", (path,)))

    def insert(self, records: list[Record], descriptors: np.ndarray) -> list[int]:
        """Insert records with their (n, d) descriptors in ONE transaction; returns the new ids, ascending."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        columns = [c for c in _COLUMNS if c != "id"] + ["descriptor"]
        sql = f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        ids = []
        with self._lock, self._errors(), self._transaction():
            for record, descriptor in zip(records, descriptors):
                record.created_at = now
                values = [getattr(record, c) for c in columns[:-1]]
                cursor = self._db.execute(sql, [*values, np.asarray(descriptor, np.float32).tobytes()])
                record.id = cursor.lastrowid
                ids.append(record.id)
        return ids

    @contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _rows(self, columns: list[str], ids: list[int]) -> list[tuple]:
        """Rows (id first, then ``columns``) of the given ids; missing or out-of-range ids are absent."""
        ids = [int(i) for i in ids if 0 < int(i) <= MAX_ID]
        rows = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows += self._query(f"SELECT id, {', '.join(columns)} FROM images WHERE id IN ({marks})", chunk)
        return rows

    def get(self, ids: list[int]) -> dict[int, Record]:
        """Records by id (missing ids are absent from the result)."""
        return {row[0]: _record(row[1:]) for row in self._rows(_COLUMNS, ids)}

    def descriptors_of(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The stored (d,) descriptor of each id (missing ids are absent)."""
        return {row[0]: np.frombuffer(row[1], np.float32) for row in self._rows(["descriptor"], ids)}

    def iter_descriptors(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, (n, d) descriptors) of the given ids, in chunks of at most 10,000 rows (bounded memory)."""
        for start in range(0, len(ids), _CHUNK):
            rows = self._rows(["descriptor"], ids[start:start + _CHUNK])
            if not rows:
                continue
            yield (np.array([r[0] for r in rows], np.int64),
                   np.stack([np.frombuffer(r[1], np.float32) for r in rows]))


def _record(row: tuple) -> Record:
    record = Record(*row)
    for flag in ("same_cell", "same_code"):
        value = getattr(record, flag)
        setattr(record, flag, None if value is None else bool(value))
    return record
