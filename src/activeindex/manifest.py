"""A collection's ``manifest.json``: what the collection was built with, checked on every open."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from ._version import __version__
from .errors import CorruptCollectionError
from .imageio import write_atomically

__all__ = ["FORMAT_VERSION", "MANIFEST", "new_manifest", "read_manifest", "write_manifest"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def new_manifest(model: dict, dim: int, preprocessing: dict, factory: str, nprobe: int, views: dict) -> dict:
    """The manifest of a new, untrained collection (descriptors stored as float16; ``views``: its
    `views.ViewSet`'s ``to_dict``)."""
    return {"format_version": FORMAT_VERSION, "activeindex_version": __version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "model": model, "dim": dim,
            "preprocessing": preprocessing, "factory": factory, "nprobe": nprobe, "codec_fingerprint": None,
            "train_size": 0, "descriptor_dtype": "float16", "views": views}


def read_manifest(root: Path) -> dict:
    """The manifest of the collection folder ``root``.

    Raises:
        CorruptCollectionError: not a collection, an unreadable file, or a format this version cannot read.
    """
    path = root / MANIFEST
    if not path.is_file():
        raise CorruptCollectionError(f"{root}: not a collection (no {MANIFEST}); create one with activeindex init")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptCollectionError(f"{path}: unreadable manifest ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptCollectionError(f"{path}: format version {manifest.get('format_version')} is not "
                                     f"supported by this activeindex (expects {FORMAT_VERSION})")
    return manifest


def write_manifest(root: Path, manifest: dict) -> None:
    """Write the manifest atomically (a full disk is a `StorageFullError` naming the file)."""
    write_atomically(root / MANIFEST, lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
