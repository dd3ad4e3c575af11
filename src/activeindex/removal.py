"""Takedown: which registered images a user means (ids, files, sha256s), and what removing them did.

Removal itself is `Collection.remove`: the catalog rows go in one transaction and the index drops the
ids from every result at once (live_index.py). The activated files are the publisher's released files:
they are deleted only when asked (``delete_files``); the originals are never touched.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import Catalog, Record
from .imageio import sha256_file

__all__ = ["RemovalReport", "resolve", "delete_activated_files"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class RemovalReport:
    """What a removal did."""

    removed: list[Record] = field(default_factory=list)  # the records as they were
    not_found: list[tuple[str, str]] = field(default_factory=list)  # (item, why it names no registered image)
    deleted_files: list[str] = field(default_factory=list)  # activated files deleted (``delete_files``)
    warnings: list[str] = field(default_factory=list)  # what did not happen, though the removal stands

    def to_dict(self) -> dict:
        return {"removed": [r.to_dict() for r in self.removed],
                "not_found": [{"item": i, "reason": r} for i, r in self.not_found],
                "deleted_files": self.deleted_files, "warnings": self.warnings}


def resolve(catalog: Catalog, items: Iterable[int | str | os.PathLike]) -> tuple[list[int], list[tuple[str, str]]]:
    """The registered ids that ``items`` name, ascending, and the items that name none (with why).

    An item is an image id (an int, or digits), a sha256 (64 hex digits) of an original or activated file,
    or a file: an existing file is matched by its content, a missing one by the path it was registered from
    or activated to.
    """
    ids, not_found = set(), []
    for item in items:
        text = str(item)
        path = Path(text)
        if isinstance(item, int) or (text.isdigit() and not path.is_file()):
            found = list(catalog.get([int(text)]))
        elif _SHA256.fullmatch(text.lower()) and not path.is_file():
            found = catalog.find_file(sha256=text.lower())
        elif path.is_file():
            found = catalog.find_file(sha256=sha256_file(path)) or catalog.find_file(path=str(path.resolve()))
        else:
            found = catalog.find_file(path=str(path.resolve()))
        if found:
            ids.update(found)
        else:
            not_found.append((text, "no registered image has this id, file or sha256"))
    return sorted(ids), not_found


def delete_activated_files(records: list[Record], report: RemovalReport) -> None:
    """Delete the removed records' activated files into ``report.deleted_files``; already missing ones are
    skipped, and a file whose bytes are no longer the released ones (replaced since) is kept, with a warning."""
    for record in records:
        path = record.activated_path
        if not path or not Path(path).is_file():
            continue
        if sha256_file(path) != record.activated_sha256:
            report.warnings.append(f"{path}: kept: it no longer holds the file released for image {record.id}")
            continue
        Path(path).unlink()
        report.deleted_files.append(path)
