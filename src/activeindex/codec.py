"""The frozen faiss codec: train once from a factory string, then targets, cells, codes and search.

A `Codec` holds the TRAINED, EMPTY index (centroids, codebooks, rotations...). Activation only needs
that (targets are computed from the codec alone, so it parallelises); the searchable index holding the
collection's vectors is `Codec.empty_index()` plus `add`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from .config import TARGET_KINDS
from .errors import CodecMismatchError, CorruptCollectionError, InvalidInputError, storage_errors
from .faults import pause_point

__all__ = ["Codec", "set_nprobe", "search", "load_index", "save_index", "index_fingerprint", "index_ids",
           "TARGET_KINDS"]

logger = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39  # below this faiss warns that k-means is poorly trained


class Codec:
    """A trained faiss codec.

    Args:
        trained: a trained index with no vectors.

    Example:
        >>> codec = Codec.create("IVF64,PQ8x8", d=512)
        >>> codec.train(train_descriptors)
        >>> codec.targets(x).shape  # the index's own representation of each x
        (n, 512)
    """

    def __init__(self, trained: faiss.Index):
        self.trained = trained
        self._ivf = _find_ivf(trained)

    @classmethod
    def create(cls, factory: str, d: int) -> Codec:
        """An untrained codec from a faiss factory string (any string ``faiss.index_factory`` accepts)."""
        try:
            index = faiss.index_factory(d, factory)
        except RuntimeError as e:
            raise InvalidInputError(f"invalid faiss factory string {factory!r}: {_first_line(e)}") from e
        if isinstance(_without_id_map(index), faiss.IndexFlat):
            raise InvalidInputError(f"{factory!r} is an exact (Flat) index: it does not quantise, so there is "
                                    "nothing to activate; use a quantising index such as 'IVF1024,PQ8x8'")
        return cls(index)

    @property
    def d(self) -> int:
        return self.trained.d

    @property
    def is_trained(self) -> bool:
        return bool(self.trained.is_trained)

    @property
    def nlist(self) -> int:
        """Number of IVF cells (0 when the index has no IVF stage)."""
        return int(self._ivf.nlist) if self._ivf is not None else 0

    def train(self, x: np.ndarray) -> None:
        """Train on (n, d) float32 descriptors, disjoint from what will be indexed.

        Raises:
            InvalidInputError: fewer vectors than the codec's largest k-means (or than d for OPQ).
        """
        x = _as_matrix(x, self.d)
        needed = self.min_training_size()
        if len(x) < needed:
            raise InvalidInputError(f"{len(x)} training vectors are too few for this index: it needs at least "
                                    f"{needed} (more than {needed * MIN_POINTS_PER_CENTROID} trains it well)")
        if len(x) < needed * MIN_POINTS_PER_CENTROID:
            logger.warning("%d training vectors for a codec that needs %d (%d train it well): it will be coarse",
                           len(x), needed, needed * MIN_POINTS_PER_CENTROID)
        try:
            with _silenced_stderr():  # faiss prints one warning per k-means run (hundreds for OPQ)
                self.trained.train(x)
        except RuntimeError as e:
            raise InvalidInputError(f"training failed with {len(x)} vectors: {_first_line(e)}") from e
        self._check_quantises(x[:64])

    def min_training_size(self) -> int:
        """Fewest training vectors faiss accepts: the largest k-means, and d for OPQ (below, it corrupts memory)."""
        sizes = [self.nlist]
        for transform in _chain(self.trained):
            if isinstance(transform, faiss.OPQMatrix):
                sizes += [transform.d_in, 2 ** 8]
        pq = getattr(faiss.downcast_index(self._ivf or _inner(self.trained)), "pq", None)
        if pq is not None:
            sizes.append(pq.ksub)
        return max(sizes)

    def _check_quantises(self, x: np.ndarray) -> None:
        """Refuse a codec that reproduces descriptors exactly and has no cells: activation would be a no-op."""
        try:
            targets = self.targets(x)
        except RuntimeError as e:
            raise InvalidInputError(f"this index type has no standalone codec (sa_encode), so it cannot give "
                                    f"activation targets: {_first_line(e)}") from e
        if self._ivf is None and np.allclose(targets, x, atol=1e-6):
            raise InvalidInputError("this index stores descriptors exactly and has no IVF cells: "
                                    "there is nothing to activate")

    def targets(self, x: np.ndarray, kind: str = "index") -> np.ndarray:
        """Where activation moves each descriptor, in descriptor space (METHOD.md section 4).

        ``kind="index"``: the index's own representation of each descriptor.

        Quantised codes (PQ, IVF-PQ, OPQ, LSH, SQ...) give the decoded code mapped back through any
        pre-transform (what ``index.reconstruct(id)`` returns); IVF-Flat and IVF-SQ give the centroid of
        the assigned cell: their codes reproduce the descriptor (exactly, or to cosine > 0.999 for SQ8),
        so the decoded target would be a silent no-op.

        ``kind="ivf_cluster_half"`` (the authors' alternative for IVF-Flat): the midpoint of the descriptor
        and its cell's centroid, which keeps the image in its cell while moving it less far from the exact
        vector that IVF-Flat stores and ranks by.

        Args:
            x: (n, d) float32 descriptors.
            kind: one of `TARGET_KINDS`.

        Returns:
            (n, d) float32 targets (not normalised; the activation loss is a cosine).

        Raises:
            InvalidInputError: ``ivf_cluster_half`` on an index without IVF cells, or an unknown kind.
        """
        x = _as_matrix(x, self.d)
        if kind not in TARGET_KINDS:
            raise InvalidInputError(f"unknown target kind {kind!r}; choose one of {list(TARGET_KINDS)}")
        if kind == "ivf_cluster_half":
            if self._ivf is None:
                raise InvalidInputError("target ivf_cluster_half needs an IVF index (its cells' centroids)")
            return (x + self._centroids(x)) / 2
        if isinstance(faiss.downcast_index(self._ivf), (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer)):
            return self._centroids(x)
        return self.trained.sa_decode(self.trained.sa_encode(x))

    def _centroids(self, x: np.ndarray) -> np.ndarray:
        """The assigned IVF centroid of each x, mapped back to descriptor space."""
        centroids = self._ivf.quantizer.reconstruct_batch(self.cells(x))
        for transform in reversed(_chain(self.trained)):
            centroids = transform.reverse_transform(centroids)
        return centroids

    def cells(self, x: np.ndarray) -> np.ndarray:
        """(n,) int64 IVF cell of each descriptor; all -1 when the index has no IVF stage."""
        x = _as_matrix(x, self.d)
        if self._ivf is None:
            return np.full(len(x), -1, np.int64)
        _, cells = self._ivf.quantizer.search(self._apply_pretransform(x), 1)
        return cells[:, 0]

    def codes(self, x: np.ndarray) -> np.ndarray:
        """(n, code_size) uint8 standalone codes (for IVF indexes they include the cell number)."""
        return self.trained.sa_encode(_as_matrix(x, self.d))

    def _apply_pretransform(self, x: np.ndarray) -> np.ndarray:
        for transform in _chain(self.trained):
            x = transform.apply(x)
        return x

    def fingerprint(self) -> str:
        """sha256 of the serialised trained, empty index: identifies the codec an activation is tied to."""
        return index_fingerprint(self.trained)

    def empty_index(self) -> faiss.Index:
        """A searchable copy of the codec taking caller ids (wrapped in IndexIDMap2 where needed)."""
        index = faiss.clone_index(self.trained)
        return index if _takes_ids(index) else faiss.IndexIDMap2(index)

    @classmethod
    def from_index(cls, index: faiss.Index) -> Codec:
        """The codec of a searchable index (its trained part, emptied)."""
        return cls(_emptied(index))


def _inner(index: faiss.Index) -> faiss.Index:
    """The index behind a pre-transform chain."""
    return index.index if isinstance(index, faiss.IndexPreTransform) else index


@contextmanager
def _silenced_stderr() -> Iterator[None]:
    """Silence C-level writes to stderr (file descriptor 2) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _chain(index: faiss.Index) -> list[faiss.VectorTransform]:
    """The pre-transforms (OPQ, PCA, rotations...) applied before the index proper, in order."""
    if not isinstance(index, faiss.IndexPreTransform):
        return []
    return [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]


def _takes_ids(index: faiss.Index) -> bool:
    """Whether ``add_with_ids`` works natively: an IVF index, possibly behind pre-transforms."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def _find_ivf(index: faiss.Index):
    """The IVF stage of an index (through pre-transforms and id maps), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _without_id_map(index: faiss.Index) -> faiss.Index:
    """The index inside an IndexIDMap / IndexIDMap2 wrapper (downcast), or the index itself."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    return index


def _emptied(index: faiss.Index) -> faiss.Index:
    """A clone of an index's trained part with no vectors (id-map wrappers removed)."""
    empty = faiss.clone_index(_without_id_map(index))
    empty.reset()
    return empty


def index_fingerprint(index: faiss.Index) -> str:
    """sha256 of a trained, empty index's serialisation, at nprobe 1: nprobe is a search setting, not the codec
    (a collection made with ``nprobe=8`` saves its index with it)."""
    ivf = _find_ivf(index)
    if ivf is not None and ivf.nprobe != 1:
        index = faiss.clone_index(index)
        set_nprobe(index, 1)
    return hashlib.sha256(faiss.serialize_index(index).tobytes()).hexdigest()


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id stored in a searchable index (an IVF's inverted lists or an id map), (ntotal,) int64, unsorted."""
    typed = faiss.downcast_index(index)  # a second wrapper: `index` must stay referenced (it owns the C++ object)
    if isinstance(typed, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(typed.id_map).astype(np.int64)
    invlists = faiss.extract_index_ivf(typed).invlists
    lists = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(invlists.nlist) if invlists.list_size(i)]
    return np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set nprobe on the IVF stage of any index (through wrappers); a no-op without IVF."""
    ivf = _find_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


def search(index: faiss.Index, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-NN search: (D, I), each (n, k); I is -1 where fewer than k results exist."""
    return index.search(_as_matrix(x, index.d), min(k, max(1, index.ntotal)))


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write an index atomically (temp file + fsync + rename).

    Raises:
        StorageFullError: the disk is full (the previous file is untouched).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with storage_errors(path):
            faiss.write_index(index, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            pause_point("snapshot")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_index(path: str | os.PathLike, fingerprint: str | None = None) -> faiss.Index:
    """Read an index; with `fingerprint`, refuse one whose trained codec differs.

    Args:
        path: the index file.
        fingerprint: the expected ``index_fingerprint`` of its trained, empty codec; ``None`` skips the check.

    Returns:
        the index, with its vectors.

    Raises:
        CorruptCollectionError: the file is missing, unreadable, truncated or not a faiss index.
        CodecMismatchError: the index was trained with another codec than `fingerprint`'s.
    """
    path = Path(path)
    restore = ("restore it from a backup: it holds the trained codec, which cannot be rebuilt (re-training would "
               "orphan the activated images; without a backup, create a new collection)")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError as e:
        raise CorruptCollectionError(f"{path}: missing; {restore}") from e
    except OSError as e:
        raise CorruptCollectionError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as e:  # a corrupt size field can ask for more memory than exists
        raise CorruptCollectionError(f"{path}: truncated or corrupt faiss index ({size} bytes); "
                                     f"{restore}") from e
    if fingerprint is not None and index_fingerprint(_emptied(index)) != fingerprint:
        raise CodecMismatchError(f"{path}: index trained with another codec than the collection's manifest "
                                 f"(fingerprint {fingerprint[:12]}...); it cannot serve activated images")
    return index


def _as_matrix(x: np.ndarray, d: int) -> np.ndarray:
    """Check and convert to a C-contiguous (n, d) float32 matrix."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != d:
        raise InvalidInputError(f"expected descriptors of shape (n, {d}), got {x.shape}")
    return x


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return next((ln for ln in lines if "Error" in ln or "failed" in ln), lines[-1] if lines else type(e).__name__)
