"""Background activation: one worker PROCESS that activates files into a collection.

The service hands activations to it so that its own process keeps answering searches: the worker
runs at a lower CPU priority, opens the same collection folder and commits under the folder lock
like any other process (collection.py); the service sees the new records on its next look at the
catalog. A bounded number of activations may wait; beyond that `activate` refuses with `WorkerBusy`.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .activation import ActivationConfig
from .collection import Collection
from .errors import ActiveIndexError

__all__ = ["ActivationWorker", "WorkerBusy", "WorkerFailed"]

WORKER_NICENESS = 19  # the lowest priority: at 10, /healthz waited up to 138 ms when an activation started


class WorkerBusy(ActiveIndexError):
    """Too many activations are already waiting."""


class WorkerFailed(ActiveIndexError):
    """The worker process died (killed, out of memory); the next activation starts a new one."""


class ActivationWorker:
    """Activations in one background process, at most ``max_pending`` admitted at a time.

    Args:
        root: the collection folder.
        model: the descriptor model name or file, as `Collection.open` takes it.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (auto).
        config: activation settings.
        max_pending: activations running or waiting; more are refused with `WorkerBusy`.

    Example:
        >>> worker = ActivationWorker(collection.root, "sscd", "cpu")
        >>> report = await worker.activate(Path("upload.png"), Path("activated"))
    """

    def __init__(self, root: str | os.PathLike, model: str, device: str | None,
                 config: ActivationConfig = ActivationConfig(), max_pending: int = 4):
        self.root, self.model, self.device, self.config = str(root), model, device, config
        self.max_pending = max_pending
        self.pending = 0  # changed on the event loop only
        self._pool: ProcessPoolExecutor | None = None

    async def activate(self, path: Path, out_dir: Path) -> dict:
        """Activate one file; returns the `BatchReport` as a dict (``records``, ``skipped``, ``failed``).

        Raises:
            WorkerBusy: ``max_pending`` activations are already running or waiting.
            WorkerFailed: the worker process died during this activation.
        """
        if self.pending >= self.max_pending:
            raise WorkerBusy(f"{self.pending} activations are already queued; retry later")
        self.pending += 1
        try:
            future = self._executor().submit(_activate, str(path), str(out_dir), self.config.to_dict())
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as e:
            self._pool = None  # a new worker starts with the next activation
            raise WorkerFailed("the activation worker stopped unexpectedly (out of memory?); retry") from e
        finally:
            self.pending -= 1

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker,
                                             initargs=(self.root, self.model, self.device, os.getpid()))
        return self._pool

    def close(self) -> None:
        """Stop the worker (an activation in progress is abandoned; the collection stays consistent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# In the worker process: its one collection (a process-local global is how executor initialisers pass state).
_collection: Collection | None = None


def _start_worker(root: str, model: str, device: str | None, parent: int) -> None:
    """Open the collection at low priority, and exit when the service process is gone."""
    global _collection
    os.nice(WORKER_NICENESS)
    _collection = Collection.open(root, model=model, device=device)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _activate(path: str, out_dir: str, config: dict) -> dict:
    report = _collection.activate([path], out_dir, config=ActivationConfig.from_dict(config), progress=False)
    return report.to_dict()
