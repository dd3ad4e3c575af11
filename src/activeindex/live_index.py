"""The in-memory faiss index of a collection, kept equal to its catalog: the one place where the two meet.

The catalog is the source of truth. On open, `LiveIndex.sync` brings the index (loaded from the
``index.faiss`` snapshot) to the catalog's exact set of ids. Afterwards, `insert` writes a batch to the
catalog and adds it to the index under the index's write lock (so no search of this process sees one
without the other, and a catch-up cannot add the batch twice), and `refresh` adds what OTHER processes
have committed since the last look (``Catalog.data_version`` tells; ids only grow, so what is new is
everything above the largest id seen). Searches share the index; a change excludes them
(`locking.ReadWriteLock`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .catalog import Catalog, Record
from .codec import Codec, index_ids, save_index, search, set_nprobe
from .locking import ReadWriteLock

__all__ = ["LiveIndex"]

logger = logging.getLogger(__name__)


class LiveIndex:
    """A faiss index holding exactly the catalog's ids.

    Args:
        index: the index loaded from the snapshot (trained codec + registered descriptors).
        catalog: the collection's catalog.
        nprobe: cells visited per query (set again on a rebuilt index).
    """

    def __init__(self, index, catalog: Catalog, nprobe: int):
        self.index, self.catalog, self.nprobe = index, catalog, nprobe
        self.codec = Codec.from_index(index)
        self.lock = ReadWriteLock()  # searches run together; adding vectors excludes them
        self.unsnapshotted = 0  # images in memory but not in the snapshot file
        self._catalog_version: int | None = None  # catalog.data_version() when last synced
        self._last_id = 0  # the largest catalog id the index holds
        set_nprobe(self.index, nprobe)
        self.sync()

    def sync(self) -> None:
        """Make the index hold exactly the catalog's ids: add the missing ones from the stored descriptors.

        An index holding ids the catalog lacks, or an id twice (a file from another collection, or
        damaged), is rebuilt from the catalog; either way the result matches the catalog exactly.
        """
        with self.lock.writing():
            self._catalog_version = self.catalog.data_version()
            catalog_ids, indexed = self._catalog_ids(), np.sort(index_ids(self.index))
            unknown = np.count_nonzero(~_contains(catalog_ids, indexed))
            repeated = np.count_nonzero(indexed[1:] == indexed[:-1])
            if unknown or repeated:
                logger.warning("%s: the index holds %d ids the catalog lacks and %d repeated ids: rebuilding it "
                               "from the catalog", self.catalog.path.parent, unknown, repeated)
                self.index = self.codec.empty_index()
                set_nprobe(self.index, self.nprobe)
                indexed = np.zeros(0, np.int64)
            missing = catalog_ids[~_contains(indexed, catalog_ids)]
            if len(missing):
                logger.info("%s: adding %d catalog records the index lacked", self.catalog.path.parent, len(missing))
            for ids, vectors in self.catalog.iter_descriptors(missing):
                self.index.add_with_ids(vectors, ids)
            self.unsnapshotted = len(missing)
            self._last_id = int(catalog_ids[-1]) if len(catalog_ids) else 0

    def refresh(self) -> None:
        """Add the records other processes have committed since the last look (ids above the largest seen)."""
        if self.catalog.data_version() == self._catalog_version:
            return
        with self.lock.writing():
            self._catalog_version = self.catalog.data_version()  # read first: a commit after it is seen next time
            for ids, vectors in self.catalog.iter_descriptors_after(self._last_id):
                self.index.add_with_ids(vectors, ids)
                self._last_id = int(ids[-1])
                self.unsnapshotted += len(ids)

    def insert(self, records: list[Record], descriptors: np.ndarray) -> list[int]:
        """Register records in the catalog (one transaction) and add their descriptors to the index.

        Returns:
            the new ids, ascending.
        """
        stored = self.catalog.stored(descriptors)  # what another process will read back
        with self.lock.writing():
            self.refresh()  # ids above the largest seen are then exactly this batch's
            ids = self.catalog.insert(records, stored)
            self.index.add_with_ids(stored, np.array(ids, np.int64))
            self._last_id = max(self._last_id, ids[-1])
            self.unsnapshotted += len(ids)
        return ids

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (n, k), of the ``k`` nearest registered images; -1 ids pad short lists."""
        self.refresh()
        with self.lock.reading():
            return search(self.index, queries, k)

    def save(self, path: Path) -> None:
        """Write the index (caught up with the catalog) to ``path`` atomically; searches go on meanwhile."""
        self.refresh()
        with self.lock.reading():
            save_index(self.index, path)
        self.unsnapshotted = 0

    def _catalog_ids(self) -> np.ndarray:
        """Every catalog id, ascending. Ids are given out as 1, 2, 3... and rows are never deleted, so a catalog
        whose count equals its largest id holds exactly 1..n: no need to read a million rows on open."""
        count, largest = self.catalog.count(), self.catalog.max_id()
        return np.arange(1, count + 1, dtype=np.int64) if count == largest else self.catalog.ids()


def _contains(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Whether each element of ``x`` is in ``sorted_values``, by binary search (numpy's hash-based set
    operations took 3 s on a million ids)."""
    if not len(sorted_values):
        return np.zeros(len(x), bool)
    return sorted_values[np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)] == x
