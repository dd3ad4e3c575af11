"""activeindex: image copy detection with active indexing (Fernandez et al., ICLR 2023).

The public names load on first use (PEP 562): ``import activeindex`` alone does not load torch or faiss, so
the command line checks its arguments at once. The package's rooms and the direction of imports between
them: docs/architecture.md.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__
from .config import ActivationConfig, get_preset
from .errors import (
    ActiveIndexError,
    CodecMismatchError,
    CollectionLockedError,
    CorruptCollectionError,
    ImageDecodeError,
    InvalidInputError,
    ModelMismatchError,
    StorageFullError,
    UnknownNameError,
)

if TYPE_CHECKING:
    from .activation import ActivatedImage, Activator
    from .codec import Codec
    from .collection import Collection, Match
    from .decision import Verdict
    from .extractor import Extractor, PreprocessConfig, list_models
    from .ingest import BatchReport
    from .removal import RemovalReport

_LAZY = {"Collection": "collection", "Match": "collection", "Verdict": "decision", "BatchReport": "ingest",
         "RemovalReport": "removal", "Extractor": "extractor", "PreprocessConfig": "extractor",
         "list_models": "extractor", "Codec": "codec", "Activator": "activation", "ActivatedImage": "activation"}

__all__ = ["__version__", "Collection", "Match", "Verdict", "BatchReport", "RemovalReport", "Extractor",
           "PreprocessConfig", "list_models", "Codec", "Activator", "ActivationConfig", "ActivatedImage", "get_preset",
           "ActiveIndexError", "InvalidInputError", "ImageDecodeError", "UnknownNameError", "CodecMismatchError",
           "ModelMismatchError", "CorruptCollectionError", "CollectionLockedError", "StorageFullError"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'activeindex' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value
