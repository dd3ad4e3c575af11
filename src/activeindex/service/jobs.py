"""Activation jobs, run exactly once: ONE runner process per collection, whichever servers share it.

Every server starts a runner process (`ActivationWorker.start`). A runner first takes the collection's
runner lock (``COLLECTION/.jobs.lock``, held for its lifetime and released by the kernel when it dies, even
by SIGKILL); until then it waits, loading nothing, as a stand-in for the runner that holds it. Holding the
lock, it queues again the jobs a dead runner left ``running`` (no living process works on them), then
claims queued jobs, whichever server queued them, one at a time: so every job runs in one process at a
time, and a job whose runner died is resumed, never run twice at once. A job runs with the settings of the
server that queued it (`JobSettings`: signing material, memory budget, Ray address), not with those of the
server whose runner holds the lock.

A resumed job MERGES what its earlier runs committed: the images registered from its own inputs since it
was submitted are its records, not "already registered". The runner dies with the server that started it
(``PR_SET_PDEATHSIG``), so a restarted server never overlaps a lingering runner; the server stops it on
shutdown, and a job in progress is resumed by the next runner. When the runner dies during a job (killed,
out of memory), its server marks that job failed (`WorkerFailed`: a retry would die the same way) and
starts a new runner.

A server waits for a job by reading its state from the queue, so a synchronous activation is answered
whichever runner did the work. The runner works at a lower CPU priority than the server's searches
(`WORKER_NICENESS`), with a share large enough that a small job finishes while searches go on
(benchmarks/service_load.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..activation import ActivationConfig
from ..collection import Collection
from ..credentials import SigningMaterial
from ..errors import ActiveIndexError, CollectionLockedError, CorruptCollectionError, StorageFullError
from ..imageio import sha256_file
from ..ingest import BatchReport
from ..locking import LifetimeLock
from .queue import Job, JobQueue, JobSettings, WorkerFailed, job_error

__all__ = ["ActivationWorker", "run_jobs", "discard_unregistered", "RUNNER_LOCK", "WORKER_NICENESS"]

logger = logging.getLogger(__name__)

RUNNER_LOCK = ".jobs.lock"
# at 19 a small job took 12 min under 4 searching clients; at 10, 77-104 s; at 5, 35-37 s (service_load.py)
WORKER_NICENESS = 5
WORKER_DIED = "the activation worker stopped unexpectedly (out of memory?); retry"
INTERNAL_ERROR = "internal error in the activation worker; see the server log"
DAMAGED = "the collection is damaged on the server; see the server log"
IDLE_POLL = 0.5  # seconds between looks at the queue when it is empty
STOP_GRACE = 5.0  # seconds a stopping runner gets before it is killed
PROGRESS_STEPS = 4  # a job is activated in at least this many batches (its size allowing), so `done` moves


class ActivationWorker:
    """A server's handle on the collection's jobs: submit and wait here; a runner process runs them.

    Used from an asyncio event loop (the service): `start` once the loop runs, then `submit` and `wait`.

    Args:
        root: the collection folder.
        model: the descriptor model name or file, as `Collection.open` takes it.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (auto).
        max_pending: jobs queued or running; more are refused with `WorkerBusy`.
        ray: where the jobs queued here activate: None in the runner process, else a Ray address
            (``"local"``, ``"auto"``, ``"ray://host:10001"``).
        uploads: a folder whose files are the jobs' inputs: those a job did not register are deleted after it.
        signing: sign the released files of the jobs queued here (C2PA Content Credentials).
        memory: bytes an activation batch of the jobs queued here may use (`activation.activation_memory`).

    ``ray``, ``signing`` and ``memory`` are stored with each job this server queues (`JobSettings`), so they
    hold whichever server's runner executes it.

    Example:
        >>> worker = ActivationWorker(collection.root, "sscd", "cpu")
        >>> worker.start()
        >>> job = await worker.submit([Path("upload.png")], Path("activated"))
        >>> (await worker.wait(job.id)).result["records"][0]["psnr"]
        43.2
    """

    def __init__(self, root: str | os.PathLike, model: str, device: str | None, max_pending: int = 4,
                 ray: str | None = None, uploads: Path | None = None, signing: SigningMaterial | None = None,
                 memory: float | None = None):
        self.root, self.model, self.device = str(root), model, device
        self.max_pending, self.uploads = max_pending, uploads
        self.settings = JobSettings(signing, memory, ray)
        self.queue = JobQueue(root)
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.Process | None = None
        self._runner_id = ""  # the runner process's name in the queue's ``runner`` column
        # the job the runner is working on (0: none); lock-free: a runner killed while holding a lock would
        # block the watcher's read, on the event loop, forever (an aligned 8-byte word is written whole)
        self._current = self._context.Value("q", 0, lock=False)
        self._monitor: asyncio.Task | None = None

    def start(self) -> None:
        """Start the runner process, and watch it (needs a running loop)."""
        self._spawn()
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    def _spawn(self) -> None:
        self._runner_id = uuid.uuid4().hex
        self._current.value = 0
        self._process = self._context.Process(
            target=run_jobs, name="activeindex-jobs", daemon=True,
            args=(self.root, self.model, self.device, self._runner_id, self._current, os.getpid(),
                  str(self.uploads) if self.uploads else None, self.settings))
        self._process.start()

    async def _watch(self) -> None:
        """A runner that died during a job fails that job (unless another runner took it over); a new one starts."""
        while True:
            await asyncio.sleep(IDLE_POLL)
            if self._process.is_alive():
                continue
            job_id, runner = self._current.value, self._runner_id
            logger.error("the activation worker stopped unexpectedly (exit code %s)", self._process.exitcode)
            if job_id:
                await asyncio.to_thread(self.queue.finish, job_id, None, WorkerFailed(WORKER_DIED), runner)
            self._spawn()

    async def submit(self, inputs: Sequence[Path], out_dir: Path, config: ActivationConfig = ActivationConfig(),
                     refused: Sequence[dict] = ()) -> Job:
        """Queue a job with this server's `JobSettings`; the collection's runner (this server's, or another's)
        will run it. ``refused``: ``{"filename", "error"}`` of the files sent with it that were not queued.

        Raises:
            WorkerBusy: ``max_pending`` jobs are already queued or running.
        """
        return await asyncio.to_thread(self.queue.submit, inputs, out_dir, config, self.max_pending,
                                       self.settings, refused)

    async def wait(self, job_id: int, poll: float = 0.2) -> Job:
        """The job once it is done, whoever ran it; raises the error it failed with, if it did.

        Raises:
            WorkerFailed: the runner died during this job.
            ActiveIndexError: the error the job failed with (`StorageFullError`, `InvalidInputError`...).
        """
        while not (job := await asyncio.to_thread(self.queue.get, job_id)).finished:
            await asyncio.sleep(poll)
        if job.state == "failed":
            raise job_error(job)
        return job

    def close(self) -> None:
        """Stop the runner: a job in progress stays ``running``, and the next runner resumes it."""
        if self._monitor is not None:
            self._monitor.cancel()
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(STOP_GRACE)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self.queue.close()


# ---------------------------------------------------------------- the runner process

def run_jobs(root: str, model: str, device: str | None, runner_id: str, current, parent: int,
             uploads: str | None, settings: JobSettings = JobSettings()) -> None:
    """(The runner process.) Wait for the runner lock, then run queued jobs until the server stops it, each
    with its own `JobSettings` (``settings``: for the jobs queued without any, by an earlier version)."""
    _die_with(parent)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # a job cut short here is resumed by the next runner
    os.nice(WORKER_NICENESS)
    lock = LifetimeLock(Path(root) / RUNNER_LOCK)
    while not lock.acquire():  # another server's runner works: stand by (it may die)
        time.sleep(IDLE_POLL)
    collection = Collection.open(root, model=model, device=device)
    queue = JobQueue(root)
    queue.requeue_running(lock)
    while True:
        job = _retrying(lambda: queue.claim_next(runner_id))
        if job is None:
            time.sleep(IDLE_POLL)
            continue
        current.value = job.id
        _run_job(collection, queue, job, job.settings or settings, runner_id, Path(uploads) if uploads else None)
        current.value = 0


def _run_job(collection: Collection, queue: JobQueue, job: Job, settings: JobSettings, runner_id: str,
             uploads: Path | None) -> None:
    """Activate a claimed job's files, recording progress after each batch, then its outcome."""
    start = time.monotonic()
    try:
        report = collection.activate(job.inputs, job.out_dir, config=_in_steps(job), progress=False,
                                     ray=settings.ray, signing=settings.signing, memory=settings.memory,
                                     on_batch=lambda done, total: _retrying(
                                         lambda: queue.progress(job.id, done, total)))
        outcome = {"result": _merged(collection, job, report).to_dict(), "seconds": time.monotonic() - start,
                   "activated": len(report.records)}
    except ActiveIndexError as e:
        outcome = {"error": _public_error(e, job, collection)}
    except Exception:
        logger.exception("activation job %d failed", job.id)
        outcome = {"error": WorkerFailed(INTERNAL_ERROR)}
    _retrying(lambda: queue.finish(job.id, runner=runner_id, **outcome))
    if uploads is not None:
        discard_unregistered(collection, queue, uploads, [Path(p) for p in job.inputs])


def _in_steps(job: Job) -> ActivationConfig:
    """The job's settings, its batches cut so that it takes `PROGRESS_STEPS` commits where it has the images:
    progress is recorded per commit, and one batch of the whole job would leap from 0 to all."""
    config = ActivationConfig.from_dict(job.config)
    return replace(config, batch_size=min(config.batch_size, math.ceil(job.total / PROGRESS_STEPS)))


def _merged(collection: Collection, job: Job, report: BatchReport) -> BatchReport:
    """This run's report plus what earlier runs of the same job registered (a resumed job): the records made
    from its own inputs since it was submitted are its records, not "already registered". A file the job
    holds twice keeps its skip on the second (the first one lists the record)."""
    earlier = {r.original_path: r for r in collection.catalog.registered_from(job.inputs, job.created_at)}
    listed = {r.original_path for r in report.records}  # inputs the job's result already lists a record of
    merged, skipped = [], []
    for path, reason in report.skipped:
        key = str(Path(path).resolve())
        if key in earlier and key not in listed:
            merged.append(earlier[key])
            listed.add(key)
        else:
            skipped.append((path, reason))
    return replace(report, records=sorted(report.records + merged, key=lambda r: r.id), skipped=skipped)


def _retrying(write, pause: float = 2.0):
    """A queue write that must happen (or the job would read ``running`` forever): retried while the disk is
    full or the catalog busy, until it goes through."""
    while True:
        try:
            return write()
        except (StorageFullError, CollectionLockedError) as e:
            logger.error("activation jobs: %s; retrying in %.0f s", e, pause)
            time.sleep(pause)


def _public_error(error: ActiveIndexError, job: Job, collection: Collection) -> ActiveIndexError:
    """A job's error as clients may read it, of the same kind: no server paths (a damaged collection: see the log)."""
    if isinstance(error, CorruptCollectionError):
        logger.error("activation job %d: %s", job.id, error)
        return CorruptCollectionError(DAMAGED)
    message = str(error)
    for path in [*job.inputs, job.out_dir]:
        message = message.replace(path, Path(path).name)
    for root in {str(collection.root.resolve()), str(collection.root)}:
        message = message.replace(root, "COLLECTION")
    return type(error)(message)


def discard_unregistered(collection: Collection, queue: JobQueue, uploads: Path, paths: list[Path]) -> None:
    """Remove uploads that are neither a registered original nor a pending job's input."""
    pending = queue.pending_inputs()
    for path in paths:
        path = path.resolve()
        if not path.is_relative_to(uploads.resolve()) or not path.is_file() or str(path) in pending:
            continue
        image_id = collection.catalog.find_sha256(sha256_file(path))
        record = collection.catalog.get([image_id]).get(image_id) if image_id is not None else None
        if record is not None and record.original_path == str(path):
            continue
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another upload of the same bytes may share the folder
            path.parent.rmdir()


def _die_with(parent: int) -> None:
    """End this process as soon as ``parent`` is gone: at once by the kernel's parent-death signal (Linux),
    else within a second by polling."""
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
