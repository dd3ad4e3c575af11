"""The durable job queue: a ``jobs`` table in the collection's ``catalog.sqlite``, shared by processes.

Each job is a list of image files to activate into a folder, with its `ActivationConfig`, the settings of the
server that queued it (`JobSettings`: signing material, memory budget, Ray address), its state
(``queued`` -> ``running`` -> ``done`` or ``failed``), its progress (input files handled of ``total``) and,
once done, the `BatchReport`. A running job names the runner that claimed it, so a runner that died can be
told apart from one that lives (jobs.py). Jobs outlive the processes that submit and run them. Job ids are
drawn at random (53 bits), so nobody can list the jobs by counting; ``seq`` keeps their order.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..activation import ActivationConfig
from ..catalog import sqlite_errors
from ..collection import CATALOG
from ..credentials import SigningMaterial
from ..errors import (
    ActiveIndexError,
    CollectionLockedError,
    CorruptCollectionError,
    ImageDecodeError,
    InvalidInputError,
    StorageFullError,
    UnknownNameError,
)
from ..locking import LifetimeLock

__all__ = ["Job", "JobQueue", "JobSettings", "UnknownJobError", "WorkerBusy", "WorkerFailed", "JOB_STATES", "job_error"]

logger = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    total INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    inputs TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    result TEXT,
    error TEXT,
    error_kind TEXT,
    runner TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    seq INTEGER,
    seconds REAL,
    activated INTEGER,
    settings TEXT,
    refused TEXT
)
"""
# columns that queues made by earlier versions lack
_ADDED_COLUMNS = {"error_kind": "TEXT", "runner": "TEXT", "runs": "INTEGER NOT NULL DEFAULT 0", "seq": "INTEGER",
                  "seconds": "REAL", "activated": "INTEGER", "settings": "TEXT", "refused": "TEXT"}
MAX_JOB_ID = 2**53 - 1  # job ids are drawn at random below this (unguessable; exact as a JavaScript number)
_COLUMNS = ("id, state, created_at, updated_at, total, done, inputs, out_dir, config, result, error, error_kind, "
            "runs, settings, refused")


class UnknownJobError(UnknownNameError):
    """No job has this id."""


class WorkerBusy(ActiveIndexError):
    """Too many activation jobs are already queued or running."""


class WorkerFailed(ActiveIndexError):
    """The worker process died (killed, out of memory) during a job."""


# a failed job's error comes back as the kind of error it was (so the service answers 507, 503, 400...)
_ERROR_KINDS = {cls.__name__: cls for cls in (InvalidInputError, ImageDecodeError, StorageFullError,
                                               CollectionLockedError, CorruptCollectionError, WorkerFailed)}


@dataclass(frozen=True)
class JobSettings:
    """How the server that queued a job was started, stored with the job: whichever server's runner executes
    it, the job is signed, bounded and placed as its own server would have done."""

    signing: SigningMaterial | None = None  # sign the released files' Content Credentials (its files, by path)
    memory: float | None = None  # bytes an activation batch may use; None: the batch size alone decides
    ray: str | None = None  # a Ray address ("local", "auto", "ray://host:10001"); None: in the runner process

    def to_dict(self) -> dict:
        """JSON-ready, the signing files as absolute paths (a runner may have another working folder)."""
        signing = None if self.signing is None else {
            key: str(Path(value).resolve()) if isinstance(value, Path) else value
            for key, value in asdict(self.signing).items()}
        return {"signing": signing, "memory": self.memory, "ray": self.ray}

    @classmethod
    def from_dict(cls, data: dict) -> JobSettings:
        signing = data["signing"]
        if signing is not None:
            signing = SigningMaterial(**signing | {key: Path(signing[key]) for key in (
                "certificate_chain", "private_key", "trust_anchors") if signing[key] is not None})
        return cls(signing, data["memory"], data["ray"])


@dataclass(frozen=True)
class Job:
    """One activation job, as stored."""

    id: int
    state: str  # one of JOB_STATES
    created_at: str  # ISO 8601, UTC, seconds
    updated_at: str
    total: int  # input files
    done: int  # input files handled so far (activated, skipped or failed)
    inputs: list[str]  # the image files to activate
    out_dir: str  # where the released files go
    config: dict  # ActivationConfig.to_dict()
    result: dict | None = None  # BatchReport.to_dict() once done
    error: str | None = None  # one line, when the job as a whole failed
    error_kind: str | None = None  # the error's class name (`job_error` rebuilds it)
    runs: int = 0  # times a runner claimed it (more than 1: resumed after its runner died)
    settings: JobSettings | None = None  # its server's settings (None: queued by a version that kept none)
    refused: list[dict] = field(default_factory=list)  # {"filename", "error"}: files sent but never queued

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


def job_error(job: Job) -> ActiveIndexError:
    """The error a failed job ended with, as the exception it was (`WorkerFailed` when unknown)."""
    return _ERROR_KINDS.get(job.error_kind, WorkerFailed)(job.error)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _job(row: tuple) -> Job:
    *head, inputs, out_dir, config, result, error, kind, runs, settings, refused = row
    return Job(*head, json.loads(inputs), out_dir, json.loads(config), json.loads(result) if result else None, error,
               kind, runs, JobSettings.from_dict(json.loads(settings)) if settings else None,
               json.loads(refused) if refused else [])


class JobQueue:
    """The ``jobs`` table of a collection's ``catalog.sqlite`` (shared by processes; every change one transaction).

    SQLite errors become one-line `CorruptCollectionError` (damaged or missing file),
    `CollectionLockedError` (busy for too long) or `StorageFullError`.

    Args:
        root: the collection folder (its ``catalog.sqlite`` must exist).

    Example:
        >>> queue = JobQueue("photos.ai")
        >>> job = queue.submit(["cat.png", "dog.png"], "published/")
        >>> (job.state, job.done, job.total)
        ('queued', 0, 2)
    """

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / CATALOG
        if not self.path.is_file():
            raise CorruptCollectionError(f"{self.path}: missing: not a collection folder, or its records are gone")
        self._lock = threading.Lock()
        with self._errors():
            self._db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=rw", uri=True, timeout=30,
                                       check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    with _racing_alter():
                        self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _errors(self):
        return sqlite_errors(self.path, "job queue")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the connection's lock, rolled back on any error."""
        with self._lock, self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def submit(self, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
               config: ActivationConfig = ActivationConfig(), max_pending: int | None = None,
               settings: JobSettings = JobSettings(), refused: Sequence[dict] = ()) -> Job:
        """Queue a job activating ``inputs`` (image files) into ``out_dir``.

        Args:
            inputs: image files (at least one).
            out_dir: the folder for the released files.
            config: activation settings, stored with the job.
            max_pending: refuse when this many jobs are already queued or running (None: no limit).
            settings: the submitting server's signing, memory and Ray settings, stored with the job.
            refused: ``{"filename", "error"}`` of the files sent with the job that could not be queued.

        Returns:
            the queued `Job` (``done`` 0, ``total`` the number of inputs).

        Raises:
            InvalidInputError: no inputs.
            WorkerBusy: ``max_pending`` jobs are already queued or running.
        """
        if not inputs:
            raise InvalidInputError("a job needs at least one image file")
        paths = json.dumps([str(Path(p).resolve()) for p in inputs])
        now = _now()
        with self._transaction() as db:
            pending = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]
            if max_pending is not None and pending >= max_pending:
                raise WorkerBusy(f"{pending} activation jobs are already queued or running; retry later")
            job_id = _new_id(db)
            db.execute("INSERT INTO jobs (id, seq, state, created_at, updated_at, total, done, inputs, out_dir, "
                       "config, settings, refused) VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), "
                       "'queued', ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                       (job_id, now, now, len(inputs), paths, str(Path(out_dir).resolve()),
                        json.dumps(config.to_dict()), json.dumps(settings.to_dict()), json.dumps(list(refused))))
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        """The job with this id.

        Raises:
            UnknownJobError: no such job.
        """
        with self._lock, self._errors():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (int(job_id),)).fetchone()
        if row is None:
            raise UnknownJobError(f"no job with id {job_id}")
        return _job(row)

    def claim_next(self, runner: str) -> Job | None:
        """Mark the oldest queued job ``running`` by ``runner`` and return it; None when no job is queued."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq, id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', runner = ?, runs = runs + 1, updated_at = ? WHERE id = ?",
                       (runner, _now(), row[0]))
        return self.get(row[0])

    def progress(self, job_id: int, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` input files are handled."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET done = ?, total = ?, updated_at = ? WHERE id = ?",
                       (done, total, _now(), job_id))

    def finish(self, job_id: int, result: dict | None = None, error: ActiveIndexError | None = None,
               runner: str | None = None, seconds: float = 0.0, activated: int = 0) -> bool:
        """Mark a job ``done`` with its `BatchReport` dict, or ``failed`` with ``error`` (its one-line message
        and its kind). With ``runner``: only while that runner holds the job running. ``seconds`` and
        ``activated``: this run's wall-clock time and the images it activated (added to earlier runs').

        Returns:
            whether the job was marked.
        """
        only_if = " AND state = 'running' AND runner = ?" if runner is not None else ""
        with self._transaction() as db:
            if error is None:
                cursor = db.execute("UPDATE jobs SET state = 'done', done = total, result = ?, error = NULL, "
                                    "seconds = COALESCE(seconds, 0) + ?, activated = COALESCE(activated, 0) + ?, "
                                    f"updated_at = ? WHERE id = ?{only_if}",
                                    (json.dumps(result), seconds, activated, _now(), job_id,
                                     *([runner] if runner else [])))
            else:
                cursor = db.execute(f"UPDATE jobs SET state = 'failed', error = ?, error_kind = ?, updated_at = ? "
                                    f"WHERE id = ?{only_if}", (str(error), type(error).__name__, _now(), job_id,
                                                               *([runner] if runner else [])))
        return cursor.rowcount == 1

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock, self._errors():
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]

    def latest(self) -> Job | None:
        """The job submitted last, if any."""
        with self._lock, self._errors():
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs ORDER BY seq DESC, id DESC LIMIT 1").fetchone()
        return _job(row) if row else None

    def activation_time(self) -> tuple[float, int]:
        """(seconds, images) that the finished jobs spent and activated, all runs together."""
        with self._lock, self._errors():
            return tuple(self._db.execute("SELECT COALESCE(SUM(seconds), 0), COALESCE(SUM(activated), 0) "
                                          "FROM jobs").fetchone())

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, 0 when none)."""
        with self._lock, self._errors():
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return dict.fromkeys(JOB_STATES, 0) | dict(rows)

    def pending_inputs(self) -> set[str]:
        """The input files of the jobs queued or running."""
        with self._lock, self._errors():
            rows = self._db.execute("SELECT inputs FROM jobs WHERE state IN ('queued', 'running')").fetchall()
        return {path for (inputs,) in rows for path in json.loads(inputs)}

    def requeue_running(self, runner_lock: LifetimeLock) -> list[int]:
        """Put the jobs left ``running`` by a runner that died back in the queue; returns their ids.

        Only the holder of the collection's runner lock may: every other runner is then dead (the lock
        outlives its holder by nothing), so no job it requeues is still being worked on.
        """
        if not runner_lock.held:
            raise RuntimeError("requeue_running needs the runner lock: another runner may still work on them")
        with self._transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'running' ORDER BY seq, id")]
            db.execute("UPDATE jobs SET state = 'queued', runner = NULL, updated_at = ? WHERE state = 'running'",
                       (_now(),))
        if ids:
            logger.info("%s: %d interrupted activation jobs queued again: %s", self.path.parent, len(ids), ids)
        return ids


def _new_id(db: sqlite3.Connection) -> int:
    """A random job id not taken yet (in the submitting transaction)."""
    while db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id := secrets.randbelow(MAX_JOB_ID) + 1,)).fetchone():
        continue
    return job_id


@contextmanager
def _racing_alter() -> Iterator[None]:
    """An ALTER TABLE that another process may have made first."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if "duplicate column" not in str(e):
            raise
