"""The locks of a collection: one writer across processes (the folder lock), many searches or one change of
the in-memory index within a process (the readers-writer lock), and one job runner per collection (a lock
held for a process's lifetime)."""
from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CollectionLockedError

__all__ = ["FolderLock", "ReadWriteLock", "LifetimeLock", "process_alive"]


def process_alive(pid: int) -> bool:
    """Whether a process of this host has this pid (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """Exclusive write access to a collection folder, across the threads of this process (a lock) and across
    processes (flock on ``COLLECTION/.lock``, released by the kernel when a holder dies, even by SIGKILL).

    Args:
        path: the lock file (created when missing).
    """

    def __init__(self, path: Path):
        self.path = path
        self._threads = threading.Lock()

    @contextmanager
    def held(self, timeout: float) -> Iterator[None]:
        """Hold the lock for the ``with`` block, after waiting up to ``timeout`` seconds for another writer.

        Raises:
            CollectionLockedError: another writer held it for ``timeout`` seconds.
        """
        with self._threads, open(self.path, "a") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError as e:
                    if time.monotonic() > deadline:
                        raise CollectionLockedError(
                            f"{self.path.parent}: another process is writing to this collection (waited "
                            f"{timeout:.0f} s); retry when it has finished") from e
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class ReadWriteLock:
    """Many readers at once, or one writer (faiss indexes may be searched concurrently, but not while vectors
    are added). A waiting writer holds back new readers, so a stream of searches cannot starve a commit. The
    writer may re-enter (a refresh that syncs) and may read what it is writing."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None  # thread id of the writer
        self._depth = 0  # the writer's re-entries
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            own = self._writer == threading.get_ident()  # the writer reads what it writes
            while not own and (self._writer is not None or self._writers_waiting):
                self._condition.wait()
            self._readers += not own
        try:
            yield
        finally:
            with self._condition:
                self._readers -= not own
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            if self._writer != me:
                self._writers_waiting += 1
                while self._writer is not None or self._readers:
                    self._condition.wait()
                self._writers_waiting -= 1
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._condition:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._condition.notify_all()


class LifetimeLock:
    """An exclusive flock held for as long as its holder lives (the kernel releases it when the process dies,
    even by SIGKILL): "one job runner per collection".

    Args:
        path: the lock file (created when missing).
    """

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; whether this process holds it now."""
        if self._handle is None:
            handle = open(self.path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None
