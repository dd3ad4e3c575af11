"""The in-memory faiss index of a collection, kept equal to its catalog: the one place where the two meet.

The catalog is the source of truth. On open, `LiveIndex.sync` brings the index (loaded from the
``index.faiss`` snapshot) to the catalog's exact set of ids. Afterwards, `insert` writes a batch to the
catalog and adds it to the index under the index's write lock (so no search of this process sees one
without the other, and a catch-up cannot add the batch twice), and `refresh` adds what OTHER processes
have committed since the last look (``Catalog.data_version`` tells; ids only grow, so what is new is
everything above the largest id seen) and learns their removals. Searches share the index; a change
excludes them (`locking.ReadWriteLock`).

Removal never touches the index on the hot path (in-place removal from an IVF scans every list): a removed
id becomes a TOMBSTONE, still in the index but dropped from every result (searches ask for ``k`` plus the
number of tombstones, so ``k`` live results still come back), and `compact` takes the tombstones out in one
pass once they are more than `compact_at` of the index. A search also drops any id the catalog no longer
holds, so an image removed by another process is never returned, even before this one has caught up.

In a collection with views (views.py) an image is several vectors, faiss id ``image_id * slots + slot``; the
catalog, the tombstones and every result speak of images, and a search returns each image once, at its best
vector's rank.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .catalog import Catalog, Record
from .codec import Codec, index_ids, save_index, search, set_nprobe
from .errors import CorruptCollectionError
from .locking import ReadWriteLock, process_alive
from .views import faiss_ids, image_ids

__all__ = ["LiveIndex"]

logger = logging.getLogger(__name__)


class LiveIndex:
    """A faiss index holding exactly the catalog's ids.

    Args:
        index: the index loaded from the snapshot (trained codec + registered descriptors).
        catalog: the collection's catalog.
        nprobe: cells visited per query (set again on a rebuilt index).
        slots: faiss ids per image (1: one vector per image; views.py).
        vectors_per_image: the most vectors an image has (1 + its views).
    """

    def __init__(self, index, catalog: Catalog, nprobe: int, slots: int = 1, vectors_per_image: int = 1):
        self.index, self.catalog, self.nprobe = index, catalog, nprobe
        self.slots, self.vectors_per_image = slots, vectors_per_image
        self.codec = Codec.from_index(index)
        self.lock = ReadWriteLock()  # searches run together; adding vectors excludes them
        self.unsnapshotted = 0  # changes in memory that the snapshot file lacks
        self.tombstones: set[int] = set()  # removed ids still in the index
        self.compact_at = 0.05  # compact when tombstones are more than this share of the index (and >= 1,000)
        self.compact_min = 1000
        self._catalog_version: int | None = None  # catalog.data_version() when last synced
        self._last_id = 0  # the largest catalog id the index holds
        self._last_removal = 0  # the catalog's removal seq last seen
        set_nprobe(self.index, nprobe)
        self.sync()

    def sync(self) -> None:
        """Make the index hold exactly the catalog's ids: add the missing ones from the stored descriptors;
        removed ones it still holds become tombstones.

        An index holding ids the catalog never had, or an id twice (a file from another collection, or
        damaged), is rebuilt from the catalog; either way the result matches the catalog exactly.
        """
        with self.lock.writing():
            self._catalog_version = self.catalog.data_version()
            self._last_removal = self.catalog.last_removal()
            catalog_ids, vectors = self._catalog_ids(), np.sort(index_ids(self.index))
            indexed = np.unique(image_ids(vectors, self.slots))
            stale = indexed[~_contains(catalog_ids, indexed)]
            unknown = np.count_nonzero(~_contains(self.catalog.removed_ids(), stale))
            repeated = np.count_nonzero(vectors[1:] == vectors[:-1])
            if unknown or repeated:
                logger.warning("%s: the index holds %d ids the catalog lacks and %d repeated ids: rebuilding it "
                               "from the catalog", self.catalog.path.parent, unknown, repeated)
                self.index = self.codec.empty_index()
                set_nprobe(self.index, self.nprobe)
                indexed, stale = np.zeros(0, np.int64), np.zeros(0, np.int64)
            self.tombstones = {int(i) for i in stale}
            missing = catalog_ids[~_contains(indexed, catalog_ids)]
            if len(missing):
                logger.info("%s: adding %d catalog records the index lacked", self.catalog.path.parent, len(missing))
            for ids, slots, vectors in self.catalog.iter_descriptors(missing):
                self._add(ids, slots, vectors)
            self.unsnapshotted = len(missing)
            self._last_id = int(catalog_ids[-1]) if len(catalog_ids) else 0
            if self.compaction_due():
                self.compact()

    def refresh(self) -> None:
        """Catch up with what other processes committed since the last look: add the ids above the largest
        seen, and turn the ids they removed into tombstones."""
        if self.catalog.data_version() == self._catalog_version:
            return
        with self.lock.writing():
            self._catalog_version = self.catalog.data_version()  # read first: a commit after it is seen next time
            for ids, slots, vectors in self.catalog.iter_descriptors_after(self._last_id):
                self._add(ids, slots, vectors)
                self._last_id = int(ids[-1])
                self.unsnapshotted += len(np.unique(ids))
            removed, self._last_removal = self.catalog.removals_after(self._last_removal)
            self._bury(removed)
            if self.compaction_due():
                self.compact()

    def insert(self, records: list[Record], descriptors: np.ndarray, views: np.ndarray | None = None,
               released: list[np.ndarray | None] | None = None) -> list[int]:
        """Register records in the catalog (one transaction) and add their (n, d) descriptors, and their views'
        (n, V, d), to the index (the released files' descriptors go to the catalog only: `Catalog.insert`).

        Returns:
            the new ids, ascending.
        """
        stored = self.catalog.stored(descriptors)  # what another process will read back
        stored_views = None if views is None else self.catalog.stored(views)
        with self.lock.writing():
            self.refresh()  # ids above the largest seen are then exactly this batch's
            ids = self.catalog.insert(records, stored, stored_views, released)
            vectors = stored[:, None] if stored_views is None else np.concatenate([stored[:, None], stored_views], 1)
            count = vectors.shape[1]
            self._add(np.repeat(np.array(ids, np.int64), count), np.tile(np.arange(count), len(ids)),
                      vectors.reshape(-1, vectors.shape[-1]))
            self._last_id = max(self._last_id, ids[-1])
            self.unsnapshotted += len(ids)
        return ids

    def remove(self, ids: list[int]) -> list[Record]:
        """Remove registered images: their catalog rows (one transaction) and, as tombstones, from every
        result from now on. Call it under the folder lock.

        Returns:
            the removed records (ids that are not registered are ignored).
        """
        with self.lock.writing():
            self.refresh()
            records = self.catalog.remove(ids)
            removed, self._last_removal = self.catalog.removals_after(self._last_removal)
            self._bury(removed)
        return records

    def _add(self, ids: np.ndarray, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors of images (their ids, and each vector's slot: 0 the image, 1.. its views)."""
        if self.slots == 1 and np.any(slots):
            raise CorruptCollectionError(f"{self.catalog.path}: holds view descriptors, the manifest has no views")
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids * self.slots + slots)

    def _bury(self, removed: np.ndarray) -> None:
        """Tombstones for removed ids this index holds (under the write lock)."""
        held = [int(i) for i in removed if int(i) <= self._last_id]
        self.tombstones.update(held)
        self.unsnapshotted += len(held)

    def compaction_due(self) -> bool:
        """Whether the tombstones are more than `compact_at` of the index (and at least `compact_min`)."""
        return bool(self.tombstones) and len(self.tombstones) >= max(
            self.compact_min, self.compact_at * self.index.ntotal / self.vectors_per_image)

    def compact(self) -> int:
        """Take the tombstones out of the index (one pass over it); returns how many."""
        with self.lock.writing():
            count = len(self.tombstones)
            if count:
                self.index.remove_ids(faiss_ids(np.array(sorted(self.tombstones)), self.slots, self.slots))
                logger.info("%s: compacted the index: %d removed images taken out", self.catalog.path.parent, count)
                self.tombstones.clear()
                self.unsnapshotted += count
            return count

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """The ``k`` nearest registered images of each query: a list of (id, distance) per query, nearest first
        by the index's distance; removed images never appear."""
        self.refresh()
        with self.lock.reading():  # an image's views may all come before the next image: ask for all of them
            distances, ids = search(self.index, queries, (k + len(self.tombstones)) * self.vectors_per_image)
            tombstones = set(self.tombstones)
        return [_first_of_each([(int(i), float(d)) for i, d in zip(image_ids(row_i, self.slots), row_d)
                                if i >= 0 and int(i) not in tombstones], k)
                for row_i, row_d in zip(ids, distances)]

    def indexed_images(self) -> int:
        """Images the index holds vectors of (removed ones not yet compacted included)."""
        with self.lock.reading():
            ids = index_ids(self.index)
        return len(ids) if self.slots == 1 else len(np.unique(image_ids(ids, self.slots)))

    def save(self, path: Path) -> None:
        """Write the index (caught up with the catalog) to ``path`` atomically; searches go on meanwhile."""
        self.refresh()
        _remove_dead_snapshots(path)
        with self.lock.reading():
            save_index(self.index, path)
        self.unsnapshotted = 0

    def _catalog_ids(self) -> np.ndarray:
        """Every catalog id, ascending. Ids are given out as 1, 2, 3..., so a catalog whose count equals its
        largest id holds exactly 1..n: no need to read a million rows on open."""
        count, largest = self.catalog.count(), self.catalog.max_id()
        return np.arange(1, count + 1, dtype=np.int64) if count == largest else self.catalog.ids()


def _remove_dead_snapshots(path: Path) -> None:
    """Delete the temp files of snapshots whose writer was killed mid-write (`codec.save_index` names them
    ``.index.faiss.PID.THREAD.tmp``; a living process's are kept): each is as large as the index."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            logger.info("removed %s, left by a snapshot that was killed", tmp.name)


def _first_of_each(hits: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """The first ``k`` distinct images of a ranked list, each at its first (best) rank."""
    seen, out = set(), []
    for image_id, distance in hits:
        if image_id not in seen:
            seen.add(image_id)
            out.append((image_id, distance))
            if len(out) == k:
                break
    return out


def _contains(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Whether each element of ``x`` is in ``sorted_values``, by binary search (numpy's hash-based set
    operations took 3 s on a million ids)."""
    if not len(sorted_values):
        return np.zeros(len(x), bool)
    return sorted_values[np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)] == x
