"""The exceptions of activeindex: one base class, one subclass per kind of failure."""
from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "ActiveIndexError",
    "InvalidInputError",
    "ImageDecodeError",
    "UnknownNameError",
    "CodecMismatchError",
    "ModelMismatchError",
    "CorruptCollectionError",
    "CollectionLockedError",
    "StorageFullError",
    "storage_errors",
]


class ActiveIndexError(Exception):
    """Base class: every error the library raises on purpose. Its message is one line."""


class InvalidInputError(ActiveIndexError, ValueError):
    """An argument or file the caller gave cannot be used as it is."""


class ImageDecodeError(InvalidInputError):
    """A file is not a decodable image, or one the library refuses (too small, too large)."""


class UnknownNameError(InvalidInputError, KeyError):
    """A name (model, edit, preset) that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CodecMismatchError(ActiveIndexError):
    """An index whose trained codec is not the one the collection was built with."""


class ModelMismatchError(ActiveIndexError):
    """A descriptor model other than the one the collection was built with."""


class CorruptCollectionError(ActiveIndexError):
    """A collection folder whose files are missing or unreadable."""


class CollectionLockedError(ActiveIndexError):
    """Another process is writing to the same collection."""


class StorageFullError(ActiveIndexError):
    """The disk (or quota) is full: nothing committed is lost; free space and run again."""


_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def storage_errors(path: object) -> Iterator[None]:
    """Turn "no space left on device" while writing ``path`` into a one-line `StorageFullError` naming it."""
    try:
        yield
    except OSError as e:
        if e.errno in _FULL:
            raise StorageFullError(f"{e.filename or path}: no space left on the device; free some space and run "
                                   "again (nothing registered is lost)") from e
        raise
    except RuntimeError as e:  # faiss reports its own write errors as RuntimeError, with the C library's text
        if "No space left" in str(e) or "Disk quota" in str(e):
            raise StorageFullError(f"{path}: no space left on the device; free some space and run again "
                                   "(nothing registered is lost)") from e
        raise
