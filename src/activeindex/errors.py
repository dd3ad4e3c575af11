"""The exceptions of activeindex: one base class, one subclass per kind of failure."""
from __future__ import annotations

__all__ = [
    "ActiveIndexError",
    "InvalidInputError",
    "ImageDecodeError",
    "UnknownNameError",
    "CodecMismatchError",
    "ModelMismatchError",
    "CorruptCollectionError",
    "CollectionLockedError",
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
