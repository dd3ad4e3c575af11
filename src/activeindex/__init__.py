"""activeindex: image copy detection with active indexing (Fernandez et al., ICLR 2023)."""
from __future__ import annotations

from ._version import __version__
from .activation import ActivatedImage, ActivationConfig, Activator, get_preset
from .codec import Codec
from .collection import Collection, Match
from .errors import (
                     ActiveIndexError,
                     CodecMismatchError,
                     CollectionLockedError,
                     CorruptCollectionError,
                     ImageDecodeError,
                     InvalidInputError,
                     ModelMismatchError,
                     UnknownNameError,
)
from .extractor import Extractor, PreprocessConfig, list_models
from .ingest import BatchReport

__all__ = ["__version__", "Collection", "Match", "BatchReport", "Extractor", "PreprocessConfig", "list_models",
           "Codec", "Activator", "ActivationConfig", "ActivatedImage", "get_preset", "ActiveIndexError",
           "InvalidInputError", "ImageDecodeError", "UnknownNameError", "CodecMismatchError",
           "ModelMismatchError", "CorruptCollectionError", "CollectionLockedError"]
