"""The SQLite catalog of a collection: one row per registered image, descriptor included.

The catalog is the source of truth: the faiss index holds the first ``ntotal`` rows in id order and
can always be rebuilt from the stored descriptors.
"""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import CorruptCollectionError

__all__ = ["Record", "Catalog"]

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
    """The ``catalog.sqlite`` file (WAL mode; each batch is one transaction)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise CorruptCollectionError(f"{self.path}: not a readable catalog ({e})") from e

    def close(self) -> None:
        self._db.close()

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Number of records per kind."""
        rows = self._db.execute("SELECT kind, COUNT(*) FROM images GROUP BY kind").fetchall()
        return {"passive": 0, "active": 0} | dict(rows)

    def find_sha256(self, sha256: str) -> int | None:
        """The id of the image with this original sha256, if registered."""
        row = self._db.execute("SELECT id FROM images WHERE original_sha256 = ?", (sha256,)).fetchone()
        return row[0] if row else None

    def activated_path_taken(self, path: str) -> bool:
        return self._db.execute("SELECT 1 FROM images WHERE activated_path = ?", (path,)).fetchone() is not None

    def insert(self, records: list[Record], descriptors: np.ndarray) -> list[int]:
        """Insert records with their (n, d) descriptors in ONE transaction; returns the new ids, ascending."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        columns = [c for c in _COLUMNS if c != "id"] + ["descriptor"]
        sql = f"INSERT INTO images ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        ids = []
        with self._transaction():
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
        """Rows (id first, then ``columns``) of the given ids; missing ids are absent."""
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))
        return self._db.execute(f"SELECT id, {', '.join(columns)} FROM images WHERE id IN ({marks})",
                                [int(i) for i in ids]).fetchall()

    def get(self, ids: list[int]) -> dict[int, Record]:
        """Records by id (missing ids are absent from the result)."""
        return {row[0]: _record(row[1:]) for row in self._rows(_COLUMNS, ids)}

    def descriptors_of(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The stored (d,) descriptor of each id (missing ids are absent)."""
        return {row[0]: np.frombuffer(row[1], np.float32) for row in self._rows(["descriptor"], ids)}

    def descriptors(self, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(ids, (n, d) descriptors) of the rows after the first ``offset``, in id order."""
        rows = self._db.execute("SELECT id, descriptor FROM images ORDER BY id LIMIT -1 OFFSET ?",
                                (offset,)).fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        vectors = np.stack([np.frombuffer(r[1], np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)
        return ids, vectors


def _record(row: tuple) -> Record:
    record = Record(*row)
    for flag in ("same_cell", "same_code"):
        value = getattr(record, flag)
        setattr(record, flag, None if value is None else bool(value))
    return record
