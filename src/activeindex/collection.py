"""A collection: one folder holding the manifest, the faiss index and the SQLite catalog.

    COLLECTION/
      manifest.json    format version, model id + weight hash, preprocessing, factory string, codec fingerprint
      index.faiss      a snapshot of the searchable index (the trained codec + registered descriptors)
      catalog.sqlite   one row per image: paths, sha256s, activation metrics, time, float16 descriptor

Several processes may share a collection (a server and CLI runs). The heavy work (decoding, embedding,
activating, writing PNGs under staging names) runs unlocked, in this process or on Ray workers
(pipeline.py); each batch is then COMMITTED under the folder lock (flock on ``.lock``): catch up with
the catalog, rename the staged PNGs, one catalog transaction, add to the in-memory index. A commit costs
O(batch): index.faiss is only a snapshot, rewritten when it is older than `snapshot_interval` seconds
and lacks images, and at the end of a run that leaves it lacking `snapshot_records` images (so a
server's trickle of single activations does not rewrite a large index each time). The catalog is the source of
truth: on open, the index is brought to the catalog's exact set of ids; afterwards a process notices
other processes' commits (`Catalog.data_version`) and adds the ids above the largest it has seen. A
process killed anywhere leaves a folder that opens consistently, and re-running its command skips what
was registered (by sha256) and resumes.
"""
from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import __version__
from .activation import ActivationConfig, Activator
from .catalog import Catalog, Record
from .codec import Codec, index_ids, load_index, save_index, search, set_nprobe
from .errors import (
    ActiveIndexError,
    CollectionLockedError,
    CorruptCollectionError,
    InvalidInputError,
    ModelMismatchError,
)
from .extractor import Extractor, ImageSource, PreprocessConfig
from .imageio import ImageLimits, decode_image, list_images, read_ahead, read_file, save_png, sha256_bytes, sha256_file
from .progress import progress_bar

BatchCallback = Callable[[int, int], None]  # (files handled, files in total)

__all__ = ["Collection", "Match", "BatchReport", "Prepared", "Preparer", "FORMAT_VERSION", "DEFAULT_THRESHOLD"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST, INDEX, CATALOG, LOCK = "manifest.json", "index.faiss", "catalog.sqlite", ".lock"
MAX_K = 1000  # results per query
DEFAULT_THRESHOLD = 0.4  # copy threshold until `activeindex calibrate` stores one (README, "Copy decision")


@dataclass
class Match:
    """One search result."""

    id: int
    original_path: str
    activated_path: str | None
    distance: float  # as the index reports it (squared L2 for most indexes, Hamming for LSH)
    similarity: float  # exact cosine between the query's descriptor and the registered image's (catalog)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BatchReport:
    """What a batch operation did: registered records, skipped duplicates, per-file failures."""

    records: list[Record] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line error)

    def to_dict(self) -> dict:
        return {"records": [r.to_dict() for r in self.records],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "failed": [{"path": p, "error": e} for p, e in self.failed]}


@dataclass
class Prepared:
    """One new file on its way into the collection: decoded, then embedded or activated, then committed."""

    path: str
    sha256: str
    image: np.ndarray | None = field(default=None, repr=False)  # decoded; dropped once prepared
    record: Record | None = None
    descriptor: np.ndarray | None = field(default=None, repr=False)  # the ORIGINAL's, as indexed
    staged: str | None = None  # the activated PNG under its staging name; the commit renames it
    error: str | None = None  # one line: why this file is not registered
    writing: Future | None = field(default=None, repr=False, compare=False)  # the staged PNG, being written

    def written(self) -> None:
        """Wait until the staged PNG is on disk (a write error is raised here, as if written in line)."""
        if self.writing is not None:
            self.writing.result()
            self.writing = None


def read_and_decode(path: str, sha256: str, data: bytes | None = None,
                    limits: ImageLimits = ImageLimits()) -> Prepared:
    """Decode one file (read it unless ``data`` is given); a bad file becomes ``Prepared.error``."""
    try:
        return Prepared(path, sha256, image=decode_image(read_file(path) if data is None else data, path, limits))
    except ActiveIndexError as e:
        return Prepared(path, sha256, error=str(e))


def _read_planned(file: tuple[str, str, bytes | None], limits: ImageLimits) -> Prepared:
    """`read_and_decode` of one planned (path, sha256, bytes) file."""
    return read_and_decode(*file, limits=limits)


class Preparer:
    """The heavy work on a batch of decoded files: embed them (``config=None``: passive references) or
    activate them and write each PNG under a staging name in ``out_dir``. Holds no collection, so Ray's
    actors hold one each (pipeline.py); a batch gives the same bytes wherever it runs.

    Args:
        extractor: the descriptor model.
        codec: the frozen codec (activation targets).
        config: activation settings, or ``None`` to register passive references.
        out_dir: where the staged PNGs go (activation only).
    """

    def __init__(self, extractor: Extractor, codec: Codec, config: ActivationConfig | None = None,
                 out_dir: str | os.PathLike | None = None, writer: Executor | None = None):
        self.extractor, self.config, self.writer = extractor, config, writer
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.activator = Activator(extractor, codec, config) if config is not None else None

    def __call__(self, batch: list[Prepared]) -> list[Prepared]:
        ready = [p for p in batch if p.error is None]
        if not ready:
            return batch
        images = [p.image for p in ready]
        if self.activator is None:
            descriptors, results = self.extractor.encode_arrays(images), [None] * len(ready)
        else:
            results = self.activator.activate(images, progress=False)
            descriptors = np.stack([r.descriptor for r in results])
        for item, descriptor, result in zip(ready, descriptors, results):
            item.record = Record(id=None, kind="passive" if result is None else "active",
                                 original_path=str(Path(item.path).resolve()), original_sha256=item.sha256,
                                 width=item.image.shape[1], height=item.image.shape[0],
                                 **(result.metrics() if result is not None else {}))
            item.descriptor, item.image = descriptor, None
            if result is not None:
                item.staged = str(self.out_dir / f".{item.sha256}.staged.png")
                if self.writer is None:
                    _write_staged(item, result.image)
                else:  # PNG encoding is CPU-heavy: done while the next batch is activated
                    item.writing = self.writer.submit(_write_staged, item, result.image)
        return batch


def _write_staged(item: Prepared, image: np.ndarray) -> None:
    save_png(item.staged, image)
    item.record.activated_sha256 = sha256_file(item.staged)


class Collection:
    """A collection folder. Use `Collection.create` or `Collection.open`.

    Example:
        >>> col = Collection.create("photos.ai", factory="IVF1024,PQ8x8")
        >>> col.train("distractors/")
        >>> col.activate(["to_publish/"], out_dir="published/")
        >>> col.search("suspect.jpg", k=5)[0][0].original_path
        'to_publish/cat.jpg'
    """

    lock_timeout: float = 120.0  # seconds a commit waits for another process's commit before giving up
    snapshot_interval: float = 300.0  # seconds: an older index.faiss lacking any image is rewritten
    snapshot_records: int = 10_000  # a run that leaves index.faiss lacking this many images rewrites it

    def __init__(self, root: Path, manifest: dict, extractor: Extractor, create: bool = False):
        self.root, self.manifest, self.extractor = root, manifest, extractor
        self.catalog = Catalog(root / CATALOG, create=create,
                               descriptor_dtype=manifest.get("descriptor_dtype", "float32"))
        self._write_lock = threading.Lock()  # serialises writers inside one process
        self._index_lock = ReadWriteLock()  # searches run together; adding vectors excludes them
        self._catalog_version: int | None = None  # catalog.data_version() when the index was last synced
        self._last_id = 0  # the largest catalog id the in-memory index holds
        self._unsnapshotted = 0  # images in the in-memory index but not in index.faiss
        self.index = None
        self.codec: Codec | None = None
        if manifest["codec_fingerprint"]:
            self.index = load_index(root / INDEX, manifest["codec_fingerprint"])
            self.codec = Codec.from_index(self.index)
            set_nprobe(self.index, manifest["nprobe"])
            self._sync_index()

    # ---------------------------------------------------------------- create / open

    @classmethod
    def create(cls, root: str | os.PathLike, factory: str, model: str | os.PathLike = "sscd",
               device: str | None = None, nprobe: int = 1,
               preprocessing: PreprocessConfig = PreprocessConfig()) -> Collection:
        """Create an empty, untrained collection folder (it must not exist or be empty).

        Raises:
            InvalidInputError: the folder is not empty, or the factory string is invalid or exact (Flat).
        """
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise InvalidInputError(f"{root}: already exists and is not empty; choose a new folder")
        extractor = Extractor(model, device=device, preprocessing=preprocessing)
        Codec.create(factory, extractor.dim)  # validates the factory string before anything is written
        root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION, "activeindex_version": __version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": extractor.model_id, "dim": extractor.dim, "preprocessing": preprocessing.to_dict(),
            "factory": factory, "nprobe": nprobe, "codec_fingerprint": None, "train_size": 0,
            "descriptor_dtype": "float16",
        }
        _write_json(root / MANIFEST, manifest)
        return cls(root, manifest, extractor, create=True)

    @classmethod
    def open(cls, root: str | os.PathLike, model: str | os.PathLike | None = None,
             device: str | None = None) -> Collection:
        """Open a collection, checking the model and the codec against its manifest.

        Args:
            root: the folder.
            model: the descriptor model to use; default: the manifest's (``"sscd"``); a TorchScript
                collection needs its file's path again.
            device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

        Raises:
            CorruptCollectionError: not a collection folder, or unreadable files.
            ModelMismatchError: the model differs from the one the collection was built with.
            CodecMismatchError: index.faiss holds another codec than the manifest's.
        """
        root = Path(root)
        manifest = _read_manifest(root)
        name = manifest["model"]["name"]
        if model is None and name.startswith("torchscript:"):
            raise ModelMismatchError(f"{root} was built with {name}; pass that file with --model PATH")
        extractor = Extractor(model or name, device=device,
                              preprocessing=PreprocessConfig.from_dict(manifest["preprocessing"]))
        if extractor.model_id != manifest["model"]:
            raise ModelMismatchError(
                f"{root} was built with model {name} (sha256 {manifest['model']['sha256'][:12]}...), not "
                f"{extractor.model_id['name']} (sha256 {extractor.model_id['sha256'][:12]}...)")
        return cls(root, manifest, extractor)

    # ---------------------------------------------------------------- writes

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Exclusive write access across threads (lock) and processes (flock on COLLECTION/.lock).

        Waits up to `lock_timeout` for another writer, then brings the index up to the catalog, so
        what is written next includes every other process's records.
        """
        with self._write_lock, open(self.root / LOCK, "a") as handle:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError as e:
                    if time.monotonic() > deadline:
                        raise CollectionLockedError(
                            f"{self.root}: another process is writing to this collection (waited "
                            f"{self.lock_timeout:.0f} s); retry when it has finished") from e
                    time.sleep(0.05)
            try:
                self.refresh()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def train(self, source: ImageSource | Iterable[ImageSource], progress: bool | None = None) -> int:
        """Train the codec, then freeze it.

        Args:
            source: an (n, d) float array or ``.npy`` file of descriptors, or images / folders of images,
                possibly a generator (disjoint from what will be indexed).
            progress: progress bar while embedding images.

        Returns:
            the number of training vectors.

        Raises:
            InvalidInputError: already trained with images registered, too few vectors, wrong shape.
        """
        with self._writing():
            if self.catalog.count():
                raise InvalidInputError(f"{self.root}: images are registered against the current codec; "
                                        "re-training would orphan their activations. Create a new collection")
            vectors = self._training_vectors(source, progress)
            codec = Codec.create(self.manifest["factory"], self.extractor.dim)
            codec.train(vectors)
            index = codec.empty_index()
            set_nprobe(index, self.manifest["nprobe"])
            save_index(index, self.root / INDEX)
            self.manifest |= {"codec_fingerprint": codec.fingerprint(), "train_size": len(vectors)}
            _write_json(self.root / MANIFEST, self.manifest)
            self.codec, self.index = codec, index
            logger.info("trained %s on %d vectors", self.manifest["factory"], len(vectors))
            return len(vectors)

    def _training_vectors(self, source, progress: bool | None) -> np.ndarray:
        """Descriptors from an array, a ``.npy`` file, or a stream of images / folders (bad ones skipped)."""
        if isinstance(source, np.ndarray) and source.ndim == 2:
            return source
        if isinstance(source, (str, os.PathLike)) and str(source).endswith(".npy"):
            try:
                return np.load(source)
            except (OSError, ValueError) as e:
                raise InvalidInputError(f"{source}: not a readable .npy file ({e})") from e
        items = [source] if isinstance(source, (str, os.PathLike, np.ndarray)) else source
        vectors, failed = self._embed_stream(items, progress)
        for _, error in failed:  # the error names the file
            logger.warning("skipped training image: %s", error)
        return vectors

    def _embed_stream(self, items: Iterable[ImageSource], progress: bool | None,
                      batch_size: int = 32) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """Descriptors of a stream of images and folders, batch by batch; (item, error) for unreadable ones."""
        vectors, failed, batch = [], [], []
        bar = progress_bar(None, "embed", progress)
        for item in _expand_folders(items):
            try:
                batch.append(self.extractor.load(item))
            except ActiveIndexError as e:
                failed.append((str(item), str(e)))
            if len(batch) == batch_size:
                vectors.append(self.extractor.encode_arrays(batch))
                bar.update(len(batch))
                batch = []
        if batch:
            vectors.append(self.extractor.encode_arrays(batch))
            bar.update(len(batch))
        bar.close()
        return np.concatenate(vectors) if vectors else np.zeros((0, self.extractor.dim), np.float32), failed

    def add(self, images: Sequence[str | os.PathLike], progress: bool | None = None, batch_size: int = 256,
            ray: str | None = None, workers: int | None = None, on_batch: BatchCallback | None = None) -> BatchReport:
        """Register images as passive references (indexed as they are, not activated).

        Args:
            images: files and/or folders.
            progress: progress bar.
            batch_size: images per catalog transaction.
            ray: ``None``: in this process; ``"local"``: a Ray started on this machine; an address
                (``"auto"``, ``"ray://host:10001"``): that Ray cluster (pipeline.py).
            workers: Ray actors (default: one per GPU, or one per 4 CPUs of the cluster).
            on_batch: called with (files handled, files in total) after each committed batch.

        Returns:
            a `BatchReport`; bad files are listed in ``failed``, duplicates in ``skipped``.
        """
        self._require_trained()
        return self._ingest(images, batch_size, None, None, progress, ray, workers, on_batch)

    def activate(self, images: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 config: ActivationConfig = ActivationConfig(), progress: bool | None = None,
                 ray: str | None = None, workers: int | None = None,
                 on_batch: BatchCallback | None = None) -> BatchReport:
        """Register and activate images, writing the activated PNGs to ``out_dir``.

        The ORIGINAL descriptor is indexed; the catalog records the sha256 of each written file.

        Args:
            images: files and/or folders.
            out_dir: where the activated PNGs go (``<stem>.png``); on a Ray cluster, a folder every
                node sees at the same path.
            config: activation settings.
            progress: progress bar.
            ray, workers, on_batch: as in `add`.

        Returns:
            a `BatchReport` whose records carry PSNR, SSIM, L-inf, cosines and cell / code agreement.
        """
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise InvalidInputError(f"{out_dir}: exists and is not a folder; choose a folder for the activated PNGs")
        self._require_trained()
        out_dir.mkdir(parents=True, exist_ok=True)
        return self._ingest(images, config.batch_size, config, out_dir, progress, ray, workers, on_batch)

    def _ingest(self, images, batch_size: int, config: ActivationConfig | None, out_dir: Path | None,
                progress: bool | None, ray: str | None, workers: int | None,
                on_batch: BatchCallback | None) -> BatchReport:
        """Plan batches of new files, prepare them here or on Ray, commit each, snapshot the index at the end."""
        report, paths = BatchReport(), list_images(list(images))
        bar = progress_bar(len(paths), "images", progress)
        batches = self._new_files(paths, batch_size, report, keep_bytes=ray is None)
        handled = 0

        def commit(prepared: list[Prepared]) -> None:
            nonlocal handled
            self.commit(prepared, out_dir, report)
            handled = len(report.records) + len(report.skipped) + len(report.failed)
            bar.update(handled - bar.n)
            if on_batch is not None:
                on_batch(handled, len(paths))

        # in-process, two threads decode the next batch and write this one's PNGs while the model runs
        with ThreadPoolExecutor(2) as pool:
            if ray is None:
                preparer = Preparer(self.extractor, self.codec, config, out_dir, writer=pool)
                done = map(preparer, read_ahead(batches, functools.partial(_read_planned, limits=self.extractor.limits),
                                                pool))
            else:
                from .pipeline import prepare_on_ray  # Ray is imported only when asked for
                done = prepare_on_ray(ray, self, list(batches), config, out_dir, workers)
            pending = None  # prepared, not committed yet
            try:
                for prepared in done:  # batch k is committed once k+1 is prepared: its PNGs were written meanwhile
                    if pending is not None:
                        batch, pending = pending, None  # a commit that fails is not tried again below
                        commit(batch)
                    pending = prepared
            finally:  # an error while preparing a later batch loses nothing prepared before it
                if pending is not None:
                    commit(pending)
        self._snapshot_if_due(end_of_run=True)
        order = {str(path): n for n, path in enumerate(paths)}  # unreadable files were reported when planned
        report.failed.sort(key=lambda failure: order[failure[0]])
        report.skipped.sort(key=lambda skip: order[skip[0]])
        bar.update(len(paths) - bar.n)
        bar.close()
        if on_batch is not None and handled < len(paths):
            on_batch(len(paths), len(paths))
        return report

    def _new_files(self, paths: list[Path], batch_size: int, report: BatchReport,
                   keep_bytes: bool) -> Iterator[list[tuple[str, str, bytes | None]]]:
        """Batches of (path, sha256, bytes or None) of the files not registered yet, in file order; unreadable
        files and duplicates go to the report. Batches are formed BEFORE decoding, so in-process and Ray runs
        activate the same images together (an image's result depends on its position in its batch)."""
        batch, seen = [], set()
        for path in paths:
            try:
                data = read_file(path)
            except ActiveIndexError as e:
                report.failed.append((str(path), str(e)))
                continue
            data_sha = sha256_bytes(data)
            known = self.catalog.find_sha256(data_sha)
            if known is not None or data_sha in seen:
                report.skipped.append((str(path), "duplicate of an earlier file in this run" if known is None
                                       else f"already registered (id {known})"))
                continue
            seen.add(data_sha)
            batch.append((str(path), data_sha, data if keep_bytes else None))
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _activated_path(self, out_dir: Path, source: Path, data_sha: str, activated_sha: str) -> Path:
        """``<stem>.png``, or ``<stem>-<sha8>.png`` when that name is taken (never overwrite another file; a
        file with the very same bytes, left by a run killed before its commit, is taken over)."""
        path = out_dir / f"{source.stem}.png"
        taken = self.catalog.activated_path_taken(str(path.resolve()))
        if taken or (path.exists() and sha256_file(path) != activated_sha):
            path = out_dir / f"{source.stem}-{data_sha[:8]}.png"
        return path

    def commit(self, prepared: list[Prepared], out_dir: str | os.PathLike | None = None,
               report: BatchReport | None = None) -> BatchReport:
        """Register one prepared batch under the folder lock: rename the staged PNGs into ``out_dir``, one
        catalog transaction, add to the in-memory index (index.faiss is written by `snapshot`).

        Files another process registered since they were planned are skipped. A crash after the renames
        leaves files that the next run takes over (`_activated_path`); before the catalog commits, nothing
        is registered. `add` and `activate` call this; call it yourself for descriptors made elsewhere
        (``Prepared`` with a record and a descriptor).

        Returns:
            ``report`` (a new one if not given) with this batch's records, skips and failures added.
        """
        report = report if report is not None else BatchReport()
        for item in prepared:
            item.written()
        with self._writing():
            known = self.catalog.find_sha256s([item.sha256 for item in prepared if item.error is None])
            keep = []
            for item in prepared:
                if item.error:
                    report.failed.append((item.path, item.error))
                elif item.sha256 in known:
                    report.skipped.append((item.path, f"already registered (id {known[item.sha256]})"))
                    if item.staged:
                        Path(item.staged).unlink(missing_ok=True)
                else:
                    if item.staged:
                        final = self._activated_path(Path(out_dir), Path(item.path), item.sha256,
                                                     item.record.activated_sha256)
                        os.replace(item.staged, final)
                        item.record.activated_path = str(final.resolve())
                    keep.append(item)
            if keep:
                descriptors = self.catalog.stored(np.stack([item.descriptor for item in keep]))
                ids = self.catalog.insert([item.record for item in keep], descriptors)
                with self._index_lock.writing():
                    self.index.add_with_ids(descriptors, np.array(ids, np.int64))
                    self._last_id = max(self._last_id, ids[-1])
                    self._unsnapshotted += len(ids)
                report.records += [item.record for item in keep]
        self._snapshot_if_due()
        return report

    def snapshot(self) -> None:
        """Write index.faiss (atomically) from the in-memory index brought up to the catalog. Searches go on
        meanwhile; commits made by other processes during the write are caught up on the next open."""
        if self.index is None:
            return
        self.refresh()
        with self._index_lock.reading():
            save_index(self.index, self.root / INDEX)
        self._unsnapshotted = 0

    def _snapshot_if_due(self, end_of_run: bool = False) -> None:
        """During a run: when index.faiss is older than `snapshot_interval` and lacks images. At its end, also
        when it lacks `snapshot_records` images (so many small runs do not pile up catch-up work on open)."""
        if not self._unsnapshotted:
            return
        old = time.time() - (self.root / INDEX).stat().st_mtime > self.snapshot_interval
        if old or (end_of_run and self._unsnapshotted >= self.snapshot_records):
            self.snapshot()

    def refresh(self) -> None:
        """Add the records other processes have committed since the last look (ids above the largest seen)."""
        if self.index is None or self.catalog.data_version() == self._catalog_version:
            return
        with self._index_lock.writing():
            self._catalog_version = self.catalog.data_version()  # read first: a commit after it is seen next time
            for ids, vectors in self.catalog.iter_descriptors_after(self._last_id):
                self.index.add_with_ids(vectors, ids)
                self._last_id = int(ids[-1])
                self._unsnapshotted += len(ids)

    def _sync_index(self) -> None:
        """Make the index hold exactly the catalog's ids (on open): add the missing ones from the stored
        descriptors.

        An index holding ids the catalog lacks, or an id twice (a file from another collection, or
        damaged), is rebuilt from the catalog; either way the result matches the catalog exactly.
        """
        with self._index_lock.writing():
            self._catalog_version = self.catalog.data_version()
            catalog_ids, indexed = self._catalog_ids(), np.sort(index_ids(self.index))
            unknown = np.count_nonzero(~_contains(catalog_ids, indexed))
            repeated = np.count_nonzero(indexed[1:] == indexed[:-1])
            if unknown or repeated:
                logger.warning("%s: index.faiss holds %d ids the catalog lacks and %d repeated ids: rebuilding it "
                               "from the catalog", self.root, unknown, repeated)
                self.index = self.codec.empty_index()
                set_nprobe(self.index, self.manifest["nprobe"])
                indexed = np.zeros(0, np.int64)
            missing = catalog_ids[~_contains(indexed, catalog_ids)]
            if len(missing):
                logger.info("%s: adding %d catalog records the index lacked", self.root, len(missing))
            for ids, vectors in self.catalog.iter_descriptors(missing):
                self.index.add_with_ids(vectors, ids)
            self._unsnapshotted = len(missing)
            self._last_id = int(catalog_ids[-1]) if len(catalog_ids) else 0

    def _catalog_ids(self) -> np.ndarray:
        """Every catalog id, ascending. Ids are given out as 1, 2, 3... and rows are never deleted, so a catalog
        whose count equals its largest id holds exactly 1..n: no need to read a million rows on open."""
        count, largest = self.catalog.count(), self.catalog.max_id()
        return np.arange(1, count + 1, dtype=np.int64) if count == largest else self.catalog.ids()

    def _require_trained(self) -> None:
        if self.codec is None:
            raise InvalidInputError(f"{self.root}: the index is not trained yet; train it first "
                                    "(activeindex init ... --train, or Collection.train)")

    # ---------------------------------------------------------------- reads

    def search(self, images: ImageSource | Sequence[ImageSource], k: int = 10) -> list[list[Match]]:
        """Find the registered images nearest to each query.

        Args:
            images: one query (path or (H, W, 3) uint8 array) or a sequence of them.
            k: results per query, 1 to 1000.

        Returns:
            one list of `Match` per query, in the index's order (nearest first by its distance); each
            carries the exact cosine similarity to the registered image's stored descriptor.
        """
        single = isinstance(images, (str, os.PathLike, np.ndarray))
        return self.search_descriptors(self.extractor.encode([images] if single else list(images), progress=False), k)

    def search_descriptors(self, queries: np.ndarray, k: int = 10) -> list[list[Match]]:
        """`search` for (n, d) query descriptors computed by this collection's extractor."""
        self._require_trained()
        if not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be between 1 and {MAX_K}, got {k}")
        self.refresh()
        with self._index_lock.reading():
            distances, ids = search(self.index, queries, k)
        rows = self.catalog.paths_and_descriptors(sorted({int(i) for i in ids.ravel() if i >= 0}))
        return [[Match(int(i), *rows[int(i)][:2], float(d), float(rows[int(i)][2] @ query))
                 for i, d in zip(row_i, row_d) if i >= 0]
                for query, row_i, row_d in zip(queries, ids, distances)]

    @property
    def threshold(self) -> float:
        """The copy threshold: the calibrated one (`activeindex calibrate`), else `DEFAULT_THRESHOLD`."""
        return self.manifest.get("calibration", {}).get("threshold", DEFAULT_THRESHOLD)

    def save_calibration(self, calibration: dict) -> None:
        """Store a calibration (calibrate.py) in the manifest."""
        with self._writing():
            self.manifest = _read_manifest(self.root) | {"calibration": calibration}
            _write_json(self.root / MANIFEST, self.manifest)

    def info(self) -> dict:
        """The manifest plus counts and index facts."""
        self.refresh()
        counts = self.catalog.counts()
        return {**self.manifest, "path": str(self.root), "images": sum(counts.values()), **counts,
                "ntotal": int(self.index.ntotal) if self.index is not None else 0,
                "nlist": self.codec.nlist if self.codec else None, "device": str(self.extractor.device)}

    def close(self) -> None:
        self.catalog.close()


class ReadWriteLock:
    """Many readers at once, or one writer (faiss indexes may be searched concurrently, but not while vectors
    are added). A waiting writer holds back new readers, so a stream of searches cannot starve a commit. The
    writer may re-enter (a refresh that syncs) and may read what it is writing."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None  # thread id of the writer
        self._depth = 0  # the writer's re-entries
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            own = self._writer == threading.get_ident()  # the writer reads what it writes
            while not own and (self._writer is not None or self._writers_waiting):
                self._condition.wait()
            self._readers += not own
        try:
            yield
        finally:
            with self._condition:
                self._readers -= not own
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            if self._writer != me:
                self._writers_waiting += 1
                while self._writer is not None or self._readers:
                    self._condition.wait()
                self._writers_waiting -= 1
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._condition:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._condition.notify_all()


def _contains(sorted_values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Whether each element of ``x`` is in ``sorted_values``, by binary search (numpy's hash-based set
    operations took 3 s on a million ids)."""
    if not len(sorted_values):
        return np.zeros(len(x), bool)
    return sorted_values[np.minimum(np.searchsorted(sorted_values, x), len(sorted_values) - 1)] == x


def _expand_folders(items: Iterable[ImageSource]) -> Iterator[ImageSource]:
    """Arrays and files as they come; folders replaced by the images inside them."""
    for item in items:
        if isinstance(item, np.ndarray):
            yield item
        else:
            yield from list_images([item])


def _read_manifest(root: Path) -> dict:
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


def _write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
