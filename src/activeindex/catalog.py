"""The SQLite catalog of a collection: one row per registered image, descriptor included.

The catalog is the source of truth: the faiss index holds exactly the catalog's ids and can always be
rebuilt from the stored descriptors. Several processes may share it (WAL mode); `data_version` tells a
process that another one has committed, so it can bring its in-memory index up to date. Ids only grow and
are never given out twice, so "what is new" is everything above the largest id a process has seen. A
removal deletes the row and notes the id in the ``removed`` table in the same transaction; its ``seq``
only grows, so "what was removed since" is every removal above the last ``seq`` a process has seen.

Paths inside the collection's folder (the service's uploads and activated files) are stored relative to it,
so a copied or moved collection finds its own files and never touches the folder it was copied from; other
paths are stored absolute. Catalogs written before keep their absolute paths and read as they did.

A released file is moved to its final name under a note in ``pending_files`` (`note_pending`): a commit killed
between that move and its catalog transaction leaves a file that the next commit deletes (`pending`), so the
published folder never keeps a file that nothing registers.

Descriptors are stored as float16 (1 KB per image; a similarity moves by at most 5e-5, benchmarks/scale.py)
or, in collections made before that, float32: ``descriptor_dtype`` says which (the manifest records it). The
``views`` column holds the descriptors of the image's indexed views (views.py), (V, d) in the same dtype, or
NULL in a collection without views.
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

from .errors import CollectionLockedError, CorruptCollectionError, StorageFullError
from .faults import pause_point

__all__ = ["Record", "Catalog", "MAX_ID", "sqlite_errors"]

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
    descriptor BLOB NOT NULL,
    scaling REAL,
    format TEXT,
    lost_in_encoding INTEGER,
    manifest_id TEXT,
    views BLOB,
    released BLOB
)
"""
_PENDING_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_files (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL
)
"""
_REMOVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS removed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id INTEGER NOT NULL,
    original_sha256 TEXT NOT NULL,
    removed_at TEXT NOT NULL
)
"""
# columns that catalogs made by earlier versions lack
_ADDED_COLUMNS = {"scaling": "REAL", "format": "TEXT", "lost_in_encoding": "INTEGER", "manifest_id": "TEXT",
                  "views": "BLOB", "released": "BLOB"}


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
    scaling: float | None = None  # the activation budget's scaling (set per image by a PSNR floor)
    format: str | None = None  # the released file's format ("png", "jpeg", "webp")
    lost_in_encoding: bool | None = None  # a lossy release's encoding lost the cell the activation reached
    manifest_id: str | None = None  # the released file's C2PA manifest (signed Content Credentials)
    created_at: str = ""  # set by `Catalog.insert`: the last column

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_COLUMNS = [f.name for f in fields(Record)]


@contextmanager
def sqlite_errors(path: Path, what: str) -> Iterator[None]:
    """Turn SQLite's exceptions into the library's one-line errors (``what``: "catalog", "job queue")."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if "full" in str(e):  # SQLITE_FULL: "database or disk is full"
            raise StorageFullError(f"{path}: no space left on the device; free some space and run again "
                                   "(nothing registered is lost)") from e
        if "locked" in str(e) or "busy" in str(e):
            raise CollectionLockedError(f"{path}: busy ({e}); retry in a moment") from e
        raise CorruptCollectionError(f"{path}: unreadable {what} ({e})") from e
    except sqlite3.DatabaseError as e:
        raise CorruptCollectionError(f"{path}: corrupt {what} ({e}); restore it from a backup") from e


class Catalog:
    """The ``catalog.sqlite`` file (WAL mode; each batch is one transaction).

    One connection shared by the threads of a process, serialised by a lock. SQLite errors become
    one-line `CorruptCollectionError` (damaged file) or `CollectionLockedError` (busy for too long).

    Args:
        path: the file.
        create: create it when missing (a new collection); otherwise a missing file is an error.
        descriptor_dtype: how descriptors are stored: ``"float16"`` or ``"float32"``.
    """

    def __init__(self, path: str | Path, create: bool = False, descriptor_dtype: str = "float16"):
        self.path = Path(path)
        self.root = self.path.parent.resolve()  # the collection's folder: paths inside it are stored relative
        self.descriptor_dtype = np.dtype(descriptor_dtype)
        if not create and not self.path.is_file():
            raise CorruptCollectionError(f"{self.path}: missing: the collection's records are gone; restore "
                                         "catalog.sqlite from a backup (a collection cannot work without it)")
        self._lock = threading.RLock()
        with self._errors():
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives any process crash (SIGKILL included) and the file is never
            # corrupted; only a power loss may roll back the commits since the last checkpoint (every ~4 MB of
            # log). FULL would fsync each batch: 4 ms, a third of registering 256 images at 1M (scale.py).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.execute(_REMOVED_SCHEMA)
            self._db.execute(_PENDING_SCHEMA)
            self._add_missing_columns()
            # records found by their released file's C2PA manifest (service/c2pa.py); built once on older catalogs
            self._db.execute("CREATE INDEX IF NOT EXISTS images_manifest_id ON images (manifest_id)")

    def _add_missing_columns(self) -> None:
        """Bring a catalog written by an earlier version up to the schema (another process may race us)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(images)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                try:
                    self._db.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):
                        raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _errors(self):
        return sqlite_errors(self.path, "catalog")

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

    def max_id(self) -> int:
        """The largest registered id, 0 when empty."""
        return self._query("SELECT COALESCE(MAX(id), 0) FROM images")[0][0]

    def removed_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM removed")[0][0]

    def removed_ids(self) -> np.ndarray:
        """Every id ever removed, ascending, (n,) int64."""
        return np.array([r[0] for r in self._query("SELECT id FROM removed ORDER BY id")], np.int64)

    def last_removal(self) -> int:
        """The ``seq`` of the latest removal, 0 when none."""
        return self._query("SELECT COALESCE(MAX(seq), 0) FROM removed")[0][0]

    def removals_after(self, seq: int) -> tuple[np.ndarray, int]:
        """(ids removed after removal ``seq``, the latest removal's seq)."""
        rows = self._query("SELECT seq, id FROM removed WHERE seq > ? ORDER BY seq", (seq,))
        return np.array([r[1] for r in rows], np.int64), (rows[-1][0] if rows else seq)

    def remove(self, ids: list[int]) -> list[Record]:
        """Delete the records of ``ids`` and note their removal, in ONE transaction; ids not registered are
        ignored. Their sha256s are free again: the same image may be registered anew, under a new id.

        Returns:
            the removed records, as they were.
        """
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock, self._errors(), self._transaction():
            records = self.get(ids)
            self._db.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in records])
            self._db.executemany("INSERT INTO removed (id, original_sha256, removed_at) VALUES (?, ?, ?)",
                                 [(i, r.original_sha256, now) for i, r in records.items()])
            pause_point("removal")
        return list(records.values())

    def ids(self) -> np.ndarray:
        """Every registered id, ascending, (n,) int64."""
        return np.array([r[0] for r in self._query("SELECT id FROM images ORDER BY id")], np.int64)

    def find_sha256(self, sha256: str) -> int | None:
        """The id of the image with this original sha256, if registered."""
        rows = self._query("SELECT id FROM images WHERE original_sha256 = ?", (sha256,))
        return rows[0][0] if rows else None

    def find_sha256s(self, sha256s: list[str]) -> dict[str, int]:
        """{sha256: id} of those registered among ``sha256s`` (one query per 10,000)."""
        found = {}
        for start in range(0, len(sha256s), _CHUNK):
            chunk = sha256s[start:start + _CHUNK]
            found |= dict(self._query(f"SELECT original_sha256, id FROM images WHERE original_sha256 IN "
                                      f"({', '.join('?' * len(chunk))})", chunk))
        return found

    def find_manifest(self, manifest_id: str) -> int | None:
        """The id of the image whose released file carries this C2PA manifest (``urn:c2pa:...``), if registered."""
        rows = self._query("SELECT id FROM images WHERE manifest_id = ?", (manifest_id,))
        return rows[0][0] if rows else None

    def activated_path_taken(self, path: str) -> bool:
        """Whether a registered image was released to this resolved ``path``."""
        forms = self._forms(path)
        return bool(self._query("SELECT 1 FROM images WHERE activated_path IN (?, ?)", forms))

    def find_file(self, path: str | None = None, sha256: str | None = None) -> list[int]:
        """Ids whose original or activated file has this resolved ``path`` or this ``sha256``."""
        if path is not None:
            forms = self._forms(path)
            sql = "SELECT id FROM images WHERE original_path IN (?, ?) OR activated_path IN (?, ?) ORDER BY id"
            return [r[0] for r in self._query(sql, (*forms, *forms))]
        sql = "SELECT id FROM images WHERE original_sha256 = ? OR activated_sha256 = ? ORDER BY id"
        return [r[0] for r in self._query(sql, (sha256, sha256))]

    def registered_from(self, paths: list[str], since: str) -> list[Record]:
        """Records made from these original files (resolved paths) at or after ``since`` (ISO 8601), by id."""
        forms = sorted({form for path in paths for form in self._forms(path)})
        rows = []
        for start in range(0, len(forms), _CHUNK):
            chunk = forms[start:start + _CHUNK]
            rows += self._query(f"SELECT {', '.join(_COLUMNS)} FROM images WHERE original_path IN "
                                f"({', '.join('?' * len(chunk))}) AND created_at >= ?", [*chunk, since])
        return sorted((self._record(row) for row in rows), key=lambda r: r.id)

    def note_pending(self, path: str, sha256: str) -> None:
        """Note that a released file with these bytes is being moved to ``path`` (resolved), before its row is
        committed; `pending` lists the notes of commits that never finished."""
        with self._lock, self._errors(), self._transaction():
            self._db.execute("INSERT OR REPLACE INTO pending_files (path, sha256) VALUES (?, ?)", (path, sha256))

    def drop_pending(self, paths: list[str]) -> None:
        """Forget the notes of these paths (their move failed, or their rows are committed)."""
        with self._lock, self._errors(), self._transaction():
            self._db.executemany("DELETE FROM pending_files WHERE path = ?", [(p,) for p in paths])

    def pending(self) -> list[tuple[str, str]]:
        """(path, sha256) of every noted move not dropped since (under the folder lock no other commit is in
        progress: each is a killed commit's, its row committed or not)."""
        return self._query("SELECT path, sha256 FROM pending_files")

    def _stored(self, path: str | None) -> str | None:
        """How a resolved path is stored: relative to the collection's folder when inside it, else as it is."""
        if path is None or not Path(path).is_relative_to(self.root):
            return path
        return Path(path).relative_to(self.root).as_posix()

    def _absolute(self, stored: str | None) -> str | None:
        """The resolved path of a stored one."""
        return stored if stored is None or Path(stored).is_absolute() else str(self.root / stored)

    def _forms(self, path: str) -> tuple[str, str]:
        """(stored form, absolute form) of a resolved path: catalogs from before relative paths hold the latter."""
        return self._stored(path), path

    def _record(self, row: tuple) -> Record:
        record = _record(row)
        record.original_path, record.activated_path = (self._absolute(record.original_path),
                                                       self._absolute(record.activated_path))
        return record

    def insert(self, records: list[Record], descriptors: np.ndarray, views: np.ndarray | None = None,
               released: list[np.ndarray | None] | None = None) -> list[int]:
        """Insert records with their (n, d) descriptors (and (n, V, d) view descriptors, and each activated
        image's released file's (d,) descriptor: never indexed, a candidate of the copy verdict's exact
        similarity) in ONE transaction; returns the new ids, ascending.

        Descriptors are stored as ``descriptor_dtype``: pass them already rounded (`Catalog.stored`) so that
        what a process indexes from memory equals what another one reads back."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        sql = (f"INSERT INTO images ({', '.join(_COLUMNS)}, descriptor, views, released) "
               f"VALUES ({', '.join('?' * (len(_COLUMNS) + 3))})")
        blobs = np.ascontiguousarray(descriptors, self.descriptor_dtype)
        view_blobs = [None] * len(records) if views is None else [
            np.ascontiguousarray(v, self.descriptor_dtype).tobytes() for v in views]
        released_blobs = [None if r is None else np.ascontiguousarray(r, self.descriptor_dtype).tobytes()
                          for r in (released or [None] * len(records))]
        with self._lock, self._errors(), self._transaction():  # never an id given out before, removed or not
            first = self._db.execute("SELECT MAX(COALESCE((SELECT MAX(id) FROM images), 0), "
                                     "COALESCE((SELECT MAX(id) FROM removed), 0)) + 1").fetchone()[0]
            ids = list(range(first, first + len(records)))
            self._db.executemany(sql, [[image_id, *(self._column(r, c) for c in _COLUMNS[1:-1]), now, blob.tobytes(), v,
                                        out] for image_id, r, blob, v, out in zip(ids, records, blobs, view_blobs,
                                                                                 released_blobs)])
        for record, image_id in zip(records, ids):
            record.id, record.created_at = image_id, now
        return ids

    def _column(self, record: Record, column: str):
        """A record's value as stored in ``column`` (paths: `_stored`)."""
        value = getattr(record, column)
        return self._stored(value) if column in ("original_path", "activated_path") else value

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
        return {row[0]: self._record(row[1:]) for row in self._rows(_COLUMNS, ids)}

    def stored(self, descriptors: np.ndarray) -> np.ndarray:
        """Descriptors as the catalog will give them back: rounded to ``descriptor_dtype``, as float32."""
        return np.asarray(descriptors).astype(self.descriptor_dtype).astype(np.float32)

    def paths_and_descriptors(self, ids: list[int]) -> dict[int, tuple[str, str | None, np.ndarray, np.ndarray | None]]:
        """(original path, activated path, (1 + V, d) descriptors: the image's, then its views', and the released
        file's (d,) descriptor or None) by id, in one query: what a search result needs."""
        return {row[0]: (self._absolute(row[1]), self._absolute(row[2]), self._vectors(row[3], row[4]),
                         None if row[5] is None else self._vector(row[5]))
                for row in self._rows(["original_path", "activated_path", "descriptor", "views", "released"], ids)}

    def set_views(self, views: dict[int, np.ndarray | None]) -> None:
        """Replace the stored view descriptors ((V, d) or None) of the given ids, in one transaction."""
        with self._lock, self._errors(), self._transaction():
            self._db.executemany("UPDATE images SET views = ? WHERE id = ?", [
                (None if v is None else np.ascontiguousarray(v, self.descriptor_dtype).tobytes(), int(i))
                for i, v in views.items()])

    def descriptors_of(self, ids: list[int]) -> dict[int, np.ndarray]:
        """The stored (d,) descriptor of each id, as float32 (missing ids are absent)."""
        return {row[0]: self._vector(row[1]) for row in self._rows(["descriptor"], ids)}

    def iter_descriptors(self, ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, slots, (m, d) descriptors) of the given ids' vectors, the image's (slot 0) then its views' (slots
        1..V), in chunks of at most 10,000 rows (bounded memory)."""
        for start in range(0, len(ids), _CHUNK):
            rows = self._rows(["descriptor", "views"], ids[start:start + _CHUNK])
            if rows:
                yield self._stack(rows)

    def iter_descriptors_after(self, last_id: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`iter_descriptors` of every id above ``last_id``, ascending."""
        while rows := self._query("SELECT id, descriptor, views FROM images WHERE id > ? ORDER BY id LIMIT ?",
                                  (last_id, _CHUNK)):
            yield self._stack(rows)
            last_id = rows[-1][0]

    def _vector(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(blob, self.descriptor_dtype).astype(np.float32)

    def _vectors(self, descriptor: bytes, views: bytes | None) -> np.ndarray:
        """(1 + V, d): the image's descriptor, then its views'."""
        return np.frombuffer(descriptor + (views or b""), self.descriptor_dtype).reshape(
            -1, len(descriptor) // self.descriptor_dtype.itemsize).astype(np.float32)

    def _stack(self, rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, slots, (m, d) float32 descriptors) of (id, descriptor blob, views blob) rows."""
        per_row = [self._vectors(r[1], r[2]) for r in rows]
        ids = np.concatenate([np.full(len(v), r[0], np.int64) for r, v in zip(rows, per_row)])
        slots = np.concatenate([np.arange(len(v), dtype=np.int64) for v in per_row])
        return ids, slots, np.concatenate(per_row)


def _record(row: tuple) -> Record:
    record = Record(*row)
    for flag in ("same_cell", "same_code", "lost_in_encoding"):
        value = getattr(record, flag)
        setattr(record, flag, None if value is None else bool(value))
    return record
