"""Activation jobs: a durable queue in the collection's catalog file, run by one background worker PROCESS.

`JobQueue` keeps the jobs in a ``jobs`` table of ``COLLECTION/catalog.sqlite`` (its own connection, WAL
mode like the catalog): each job is a list of image files to activate into a folder, with its
`ActivationConfig`, its state (``queued`` -> ``running`` -> ``done`` or ``failed``), its progress (input
files handled of ``total``) and, once done, the `BatchReport`. Jobs outlive the process that submitted
them: a job left ``running`` by a process that died is queued again when the next one starts, and
running it again resumes it (`Collection.activate` skips the images already registered, by sha256).

`ActivationWorker` runs the queued jobs one at a time in ONE background process at the lowest CPU
priority, so the process that submits them (the service) keeps answering searches. The worker opens the
same collection folder and commits each batch under the folder lock like any other process
(collection.py); the service sees the new records on its next look at the catalog. At most
``max_pending`` jobs may be queued or running; beyond that `ActivationWorker.submit` refuses with
`WorkerBusy`.

Above ~400 lines: the queue's states and the worker that moves jobs through them change together (a
state the worker does not handle is a job that never ends), so they are read side by side.
"""
from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from ..activation import ActivationConfig
from ..catalog import sqlite_errors
from ..collection import CATALOG, Collection
from ..errors import (
    ActiveIndexError,
    CorruptCollectionError,
    InvalidInputError,
    UnknownNameError,
)

__all__ = ["Job", "JobQueue", "ActivationWorker", "UnknownJobError", "WorkerBusy", "WorkerFailed", "JOB_STATES"]

logger = logging.getLogger(__name__)

WORKER_NICENESS = 19  # the lowest priority: at 10, /healthz waited up to 138 ms when an activation started
JOB_STATES = ("queued", "running", "done", "failed")
WORKER_DIED = "the activation worker stopped unexpectedly (out of memory?); retry"
INTERNAL_ERROR = "internal error in the activation worker; see the server log"
DAMAGED = "the collection is damaged on the server; see the server log"

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
    error TEXT
)
"""
_COLUMNS = "id, state, created_at, updated_at, total, done, inputs, out_dir, config, result, error"


class UnknownJobError(UnknownNameError):
    """No job has this id."""


class WorkerBusy(ActiveIndexError):
    """Too many activation jobs are already queued or running."""


class WorkerFailed(ActiveIndexError):
    """The worker process died (killed, out of memory); the next job starts a new one."""


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
    out_dir: str  # where the activated PNGs go
    config: dict  # ActivationConfig.to_dict()
    result: dict | None = None  # BatchReport.to_dict() once done
    error: str | None = None  # one line, when the job as a whole failed

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _job(row: tuple) -> Job:
    id_, state, created, updated, total, done, inputs, out_dir, config, result, error = row
    return Job(id_, state, created, updated, total, done, json.loads(inputs), out_dir, json.loads(config),
               json.loads(result) if result else None, error)


class JobQueue:
    """The ``jobs`` table of a collection's ``catalog.sqlite`` (shared by processes; every change one transaction).

    SQLite errors become one-line `CorruptCollectionError` (damaged or missing file) or
    `CollectionLockedError` (busy for too long).

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
               config: ActivationConfig = ActivationConfig(), max_pending: int | None = None) -> Job:
        """Queue a job activating ``inputs`` (image files) into ``out_dir``.

        Args:
            inputs: image files (at least one).
            out_dir: the folder for the activated PNGs.
            config: activation settings, stored with the job.
            max_pending: refuse when this many jobs are already queued or running (None: no limit).

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
            cursor = db.execute("INSERT INTO jobs (state, created_at, updated_at, total, done, inputs, out_dir, "
                                "config) VALUES ('queued', ?, ?, ?, 0, ?, ?, ?)",
                                (now, now, len(inputs), paths, str(Path(out_dir).resolve()),
                                 json.dumps(config.to_dict())))
            job_id = cursor.lastrowid
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

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job ``running`` and return it; None when no job is queued."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', updated_at = ? WHERE id = ?", (_now(), row[0]))
        return self.get(row[0])

    def progress(self, job_id: int, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` input files are handled."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET done = ?, total = ?, updated_at = ? WHERE id = ?",
                       (done, total, _now(), job_id))

    def finish(self, job_id: int, result: dict | None = None, error: str | None = None) -> None:
        """Mark a job ``done`` with its `BatchReport` dict, or ``failed`` with a one-line ``error``."""
        with self._transaction() as db:
            if error is None:
                db.execute("UPDATE jobs SET state = 'done', done = total, result = ?, error = NULL, updated_at = ? "
                           "WHERE id = ?", (json.dumps(result), _now(), job_id))
            else:
                db.execute("UPDATE jobs SET state = 'failed', error = ?, updated_at = ? WHERE id = ?",
                           (error, _now(), job_id))

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock, self._errors():
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]

    def pending_inputs(self) -> set[str]:
        """The input files of the jobs queued or running."""
        with self._lock, self._errors():
            rows = self._db.execute("SELECT inputs FROM jobs WHERE state IN ('queued', 'running')").fetchall()
        return {path for (inputs,) in rows for path in json.loads(inputs)}

    def requeue_running(self) -> list[int]:
        """Put the jobs left ``running`` (by a process that died) back in the queue; returns their ids.

        Call it only when no other process runs this collection's jobs (the service does at start).
        """
        with self._transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'running' ORDER BY id")]
            db.execute("UPDATE jobs SET state = 'queued', updated_at = ? WHERE state = 'running'", (_now(),))
        if ids:
            logger.info("%s: %d interrupted activation jobs queued again: %s", self.path.parent, len(ids), ids)
        return ids


class ActivationWorker:
    """Runs a collection's queued jobs one at a time in one background process; at most ``max_pending`` admitted.

    Used from an asyncio event loop (the service): `start` once the loop runs, then `submit` and `wait`.

    Args:
        root: the collection folder.
        model: the descriptor model name or file, as `Collection.open` takes it.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (auto).
        max_pending: jobs queued or running; more are refused with `WorkerBusy`.
        ray: where `Collection.activate` runs: None in the worker process, else a Ray address
            (``"local"``, ``"auto"``, ``"ray://host:10001"``).
        on_finished: called (in a thread) with each job once it is done or failed, before `wait` returns it.

    Example:
        >>> worker = ActivationWorker(collection.root, "sscd", "cpu")
        >>> worker.start()
        >>> job = await worker.submit([Path("upload.png")], Path("activated"))
        >>> (await worker.wait(job.id)).result["records"][0]["psnr"]
        43.2
    """

    def __init__(self, root: str | os.PathLike, model: str, device: str | None, max_pending: int = 4,
                 ray: str | None = None, on_finished: Callable[[Job], None] | None = None):
        self.root, self.model, self.device, self.ray = str(root), model, device, ray
        self.max_pending, self.on_finished = max_pending, on_finished
        self.queue = JobQueue(root)
        self._pool: ProcessPoolExecutor | None = None
        self._runner: asyncio.Task | None = None
        self._outcomes: dict[int, asyncio.Future] = {}  # jobs submitted here -> their Job or exception

    def start(self) -> None:
        """Queue again the jobs a dead process left running, and run the queued jobs (needs a running loop)."""
        self.queue.requeue_running()
        self._run_queued()

    async def submit(self, inputs: Sequence[Path], out_dir: Path,
                     config: ActivationConfig = ActivationConfig()) -> Job:
        """Queue a job and make sure the worker runs it; returns the queued `Job`.

        Raises:
            WorkerBusy: ``max_pending`` jobs are already queued or running.
        """
        job = await asyncio.to_thread(self.queue.submit, inputs, out_dir, config, self.max_pending)
        self._outcomes[job.id] = asyncio.get_running_loop().create_future()
        self._run_queued()
        return job

    async def wait(self, job_id: int, poll: float = 0.5) -> Job:
        """The job once it is done; raises the error that made it fail, if it did.

        Raises:
            WorkerFailed: the worker process died during this job.
            ActiveIndexError: the error the job failed with (a job of another process: `WorkerFailed`).
        """
        outcome = self._outcomes.get(job_id)
        if outcome is not None:
            result = await asyncio.shield(outcome)
            if isinstance(result, BaseException):
                raise result
            return result
        while not (job := await asyncio.to_thread(self.queue.get, job_id)).finished:
            await asyncio.sleep(poll)
        if job.state == "failed":
            raise WorkerFailed(job.error)
        return job

    def _run_queued(self) -> None:
        """Start the task that runs queued jobs, unless it is running."""
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run_all())

    async def _run_all(self) -> None:
        """Claim and run queued jobs, one at a time, until none is left (or the queue cannot be read)."""
        try:
            while (job := await asyncio.to_thread(self.queue.claim_next)) is not None:
                outcome = await self._run_one(job)
                await self._report(job.id, outcome)
        except ActiveIndexError as e:  # the queue is busy or damaged: the next submit tries again
            logger.error("activation jobs stopped: %s", e)
            for future in self._outcomes.values():  # whoever waits gets the error (their jobs stay queued)
                if not future.done():
                    future.set_result(e)

    async def _report(self, job_id: int, outcome: Job | BaseException) -> None:
        """Hand a finished job to ``on_finished``, then to whoever waits for it."""
        if self.on_finished is not None:
            try:
                await asyncio.to_thread(self.on_finished, await asyncio.to_thread(self.queue.get, job_id))
            except Exception:
                logger.exception("after activation job %d", job_id)
        future = self._outcomes.pop(job_id, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    async def _run_one(self, job: Job) -> Job | BaseException:
        """Run one claimed job in the worker process; its final `Job`, or the exception it failed with."""
        try:
            await asyncio.wrap_future(self._submit(job.id))
        except BrokenProcessPool:
            self._pool = None  # a new worker starts with the next job
            await asyncio.to_thread(self.queue.finish, job.id, None, WORKER_DIED)
            return WorkerFailed(WORKER_DIED)
        except ActiveIndexError as e:  # the worker recorded it
            return e
        except Exception as e:  # the worker recorded it, unless it could not (the log shows its traceback)
            logger.exception("activation job %d failed", job.id)
            if not (await asyncio.to_thread(self.queue.get, job.id)).finished:
                await asyncio.to_thread(self.queue.finish, job.id, None, INTERNAL_ERROR)
            return e
        return await asyncio.to_thread(self.queue.get, job.id)

    def _submit(self, job_id: int) -> Future:
        """Hand a job to the worker process; a worker that died while idle is replaced first."""
        try:
            return self._executor().submit(_run_job, job_id, self.ray)
        except BrokenProcessPool:
            self._pool = None
            return self._executor().submit(_run_job, job_id, self.ray)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker,
                                             initargs=(self.root, self.model, self.device, os.getpid()))
        return self._pool

    def close(self) -> None:
        """Stop the worker: a job in progress stays ``running`` and is queued again by the next `start`."""
        if self._runner is not None:
            self._runner.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.queue.close()


# In the worker process: its collection and queue (a process-local global is how executor initialisers pass state).
_collection: Collection | None = None
_queue: JobQueue | None = None


def _start_worker(root: str, model: str, device: str | None, parent: int) -> None:
    """Open the collection at low priority, and exit when the service process is gone."""
    global _collection, _queue
    os.nice(WORKER_NICENESS)
    _collection = Collection.open(root, model=model, device=device)
    _queue = JobQueue(root)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _run_job(job_id: int, ray: str | None) -> None:
    """(In the worker.) Activate a claimed job's files, recording progress after each batch and the outcome."""
    job = _queue.get(job_id)
    try:
        report = _collection.activate(job.inputs, job.out_dir, config=ActivationConfig.from_dict(job.config),
                                      progress=False, ray=ray, on_batch=partial(_queue.progress, job_id))
    except ActiveIndexError as e:
        _queue.finish(job_id, error=_public_error(e, job))
        raise
    except Exception:
        logger.exception("activation job %d failed", job_id)
        _queue.finish(job_id, error=INTERNAL_ERROR)
        raise
    _queue.finish(job_id, result=report.to_dict())


def _public_error(error: ActiveIndexError, job: Job) -> str:
    """A job's error as clients may read it: no server paths (a damaged collection: see the log)."""
    if isinstance(error, CorruptCollectionError):
        logger.error("activation job %d: %s", job.id, error)
        return DAMAGED
    message = str(error)
    for path in [*job.inputs, job.out_dir]:
        message = message.replace(path, Path(path).name)
    for root in {str(_collection.root.resolve()), str(_collection.root)}:
        message = message.replace(root, "COLLECTION")
    return message
