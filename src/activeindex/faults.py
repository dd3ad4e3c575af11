"""Fault points: named places where a crash test can stop a process exactly, instead of guessing with sleeps.

A test sets ``ACTIVEINDEX_PAUSE_AT=POINT:FOLDER`` in a process's environment. The first process that reaches
``POINT`` creates ``FOLDER/POINT`` (atomically: only one process ever pauses), writes its pid into it and
waits there until it is killed, or until the test creates ``FOLDER/POINT.go``. Unset (always, outside
tests), a point costs one environment lookup. Points: ``after_commit`` (a batch's images are committed, the
folder lock released), ``removal`` (inside the removal's catalog transaction), ``snapshot`` (index.faiss written to
its temp file, not yet renamed), ``prepare`` (a batch is about to be embedded or activated).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["pause_point", "ENVIRONMENT"]

ENVIRONMENT = "ACTIVEINDEX_PAUSE_AT"


def pause_point(name: str) -> None:
    """Pause here if a test asked for this point and no process has paused at it yet."""
    spec = os.environ.get(ENVIRONMENT)
    if not spec or spec.partition(":")[0] != name:
        return
    marker = Path(spec.partition(":")[2]) / name
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another process paused here already: this one carries on
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    while not marker.with_name(f"{name}.go").exists():
        time.sleep(0.05)
