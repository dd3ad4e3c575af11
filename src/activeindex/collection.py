"""A collection: one folder holding the manifest, the faiss index and the SQLite catalog.

    COLLECTION/
      manifest.json    format version, model id + weight hash, preprocessing, factory string, codec fingerprint
      index.faiss      a snapshot of the searchable index (the trained codec + registered descriptors)
      catalog.sqlite   one row per image: paths, sha256s, activation metrics, time, float16 descriptor

`Collection` is the facade: create / open / train / add / activate / search / verdicts / remove. Several
processes may share a collection (a server and CLI runs). The heavy work of add and activate runs unlocked
(ingest.py: in this process, or on Ray through pipeline.py); each batch is then committed under the folder
lock (locking.py), and the in-memory index is kept equal to the catalog by live_index.py. A commit costs O(batch):
index.faiss is only a snapshot, rewritten when it is older than `snapshot_interval` seconds and lacks
images, and at the end of a run that leaves it lacking `snapshot_records` images (so a server's trickle of
single activations does not rewrite a large index each time). A process killed anywhere leaves a folder
that opens consistently, and re-running its command skips what was registered (by sha256) and resumes.

Above ~450 lines: the facade over the folder's writers (ingest, removal, views) and its readers (search,
verdicts); each method delegates to the module that does the work (ingest.py, live_index.py, decision.py).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import ingest, removal
from .activation import ActivationConfig, default_activation_memory
from .catalog import Catalog, Record
from .codec import Codec, load_index, save_index, set_nprobe
from .config import DEFAULT_THRESHOLD, MAX_K
from .credentials import SigningMaterial
from .decision import StoredThreshold, Verdict, decide, rank, shortlist, with_evidence
from .errors import ActiveIndexError, InvalidInputError, ModelMismatchError, StorageFullError
from .extractor import Extractor, ImageSource, PreprocessConfig, network_input
from .faults import pause_point
from .imageio import load_image
from .ingest import BatchCallback, BatchReport, Prepared
from .live_index import LiveIndex
from .locking import FolderLock
from .manifest import FORMAT_VERSION, MANIFEST, new_manifest, read_manifest, write_manifest
from .progress import progress_bar
from .removal import RemovalReport
from .views import DEFAULT_VIEWS, ViewSet, encode_views, from_manifest, get_view_set

__all__ = ["Collection", "Match", "Verdict", "FORMAT_VERSION", "DEFAULT_THRESHOLD"]

logger = logging.getLogger(__name__)

INDEX, CATALOG, LOCK = "index.faiss", "catalog.sqlite", ".lock"


@dataclass
class Match:
    """One search result."""

    id: int
    original_path: str
    activated_path: str | None
    distance: float  # as the index reports it (squared L2 for most indexes, Hamming for LSH)
    similarity: float  # exact cosine between the query's descriptor and the registered image's (catalog): the
    # best over the image, its indexed views and, for an activated image, its released file
    view: str = "whole"  # which of them: "whole", the view's name (views.py), or "released file"

    def to_dict(self) -> dict:
        return asdict(self)


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
        self._folder_lock = FolderLock(root / LOCK)
        self.views: ViewSet = from_manifest(manifest)  # the views of each image it indexes (views.py)
        self._threshold = StoredThreshold(root / MANIFEST, manifest)
        self._live: LiveIndex | None = None  # once trained: the index, kept equal to the catalog
        if manifest["codec_fingerprint"]:
            self._live = self._live_index(load_index(root / INDEX, manifest["codec_fingerprint"]))

    def _live_index(self, index) -> LiveIndex:
        return LiveIndex(index, self.catalog, self.manifest["nprobe"], self.views.slots, 1 + len(self.views.views))

    @property
    def index(self):
        """The searchable faiss index (None until trained)."""
        return self._live.index if self._live else None

    @property
    def indexed_images(self) -> int:
        """Images the index holds (each with its views' vectors; removed ones not yet compacted included)."""
        return self._live.indexed_images() if self._live else 0

    @property
    def codec(self) -> Codec | None:
        """The frozen codec (None until trained)."""
        return self._live.codec if self._live else None

    # ---------------------------------------------------------------- create / open

    @classmethod
    def create(cls, root: str | os.PathLike, factory: str, model: str | os.PathLike = "sscd",
               device: str | None = None, nprobe: int = 1,
               preprocessing: PreprocessConfig = PreprocessConfig(), views: str = DEFAULT_VIEWS) -> Collection:
        """Create an empty, untrained collection folder (it must not exist or be empty).

        Args:
            views: the views of each registered image it indexes beside the whole image (views.py;
                ``"none"``: the whole image alone).

        Raises:
            InvalidInputError: the folder is not empty, or the factory string is invalid or exact (Flat).
            UnknownNameError: no such view set.
        """
        root = Path(root)
        if root.exists() and any(root.iterdir()):
            raise InvalidInputError(f"{root}: already exists and is not empty; choose a new folder")
        extractor = Extractor(model, device=device, preprocessing=preprocessing)
        Codec.create(factory, extractor.dim)  # validates the factory string before anything is written
        view_set = get_view_set(views)
        root.mkdir(parents=True, exist_ok=True)
        manifest = new_manifest(extractor.model_id, extractor.dim, preprocessing.to_dict(), factory, nprobe,
                                view_set.to_dict())
        write_manifest(root, manifest)
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
        manifest = read_manifest(root)
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
        """Exclusive write access across threads and processes (locking.FolderLock), waiting up to
        `lock_timeout` for another writer; the index is then brought up to the catalog, so what is written
        next includes every other process's records."""
        with self._folder_lock.held(self.lock_timeout):
            self.refresh()
            yield

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
            write_manifest(self.root, self.manifest)
            self._live = self._live_index(index)
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
        vectors, failed = ingest.embed_stream(self.extractor, items, progress)
        for _, error in failed:  # the error names the file
            logger.warning("skipped training image: %s", error)
        return vectors

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
                 on_batch: BatchCallback | None = None, signing: SigningMaterial | None = None,
                 memory: float | None = None) -> BatchReport:
        """Register and activate images, writing the files to release to ``out_dir``.

        The ORIGINAL descriptor is indexed; the catalog records the sha256 of each written file. Each file is
        released in ``config.output`` (``auto``: the source's format) with the source's EXIF, IPTC, XMP and
        ICC profile; every recorded figure is measured on the file as written (release.py).

        Args:
            images: files and/or folders.
            out_dir: where the released files go (``<stem>.<ext>``); on a Ray cluster, a folder every
                node sees at the same path.
            config: activation settings, the output format and quality included.
            progress: progress bar.
            ray, workers, on_batch: as in `add`.
            signing: sign each released file's Content Credentials (C2PA), its original as the ingredient.
            memory: bytes an activation batch may use (`activation.activation_memory` per image, read from the
                files' headers); None: half the memory available when the run starts.

        Returns:
            a `BatchReport` whose records carry PSNR, SSIM, L-inf, cosines and cell / code agreement, and
            whose warnings say which released files lost their cell to a lossy encoding or their original's
            Content Credentials.
        """
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise InvalidInputError(f"{out_dir}: exists and is not a folder; choose a folder for the activated PNGs")
        self._require_trained()
        out_dir.mkdir(parents=True, exist_ok=True)
        ingest.remove_stale_staged(out_dir)
        memory = default_activation_memory() if memory is None else memory
        return self._ingest(images, config.batch_size, config, out_dir, progress, ray, workers, on_batch, signing,
                            memory)

    def _ingest(self, images, batch_size: int, config: ActivationConfig | None, out_dir: Path | None,
                progress: bool | None, ray: str | None, workers: int | None, on_batch: BatchCallback | None,
                signing: SigningMaterial | None = None, memory: float | None = None) -> BatchReport:
        """Plan batches of new files, prepare them here or on Ray, commit each, snapshot the index at the end."""
        stored, run = self.catalog.descriptor_dtype.name, ingest.run_tag()
        if ray is None:
            prepare = ingest.prepare_here(self.extractor, self.codec, config, out_dir, stored, run, signing, memory,
                                          self.views)
        else:
            from .pipeline import prepare_on_ray  # Ray is imported only when asked for

            def prepare(batches, pool):
                return prepare_on_ray(ray, self.extractor, self.codec, list(batches), config, out_dir, workers,
                                      stored, run, signing, memory, self.views)
        def commit(prepared: list[Prepared], report: BatchReport) -> None:
            self.commit(prepared, out_dir, report)

        report = ingest.run(images, self.catalog, prepare, commit, batch_size, keep_bytes=ray is None,
                            progress=progress, on_batch=on_batch, memory=memory)
        self._snapshot_if_due(end_of_run=True)
        return report

    def commit(self, prepared: list[Prepared], out_dir: str | os.PathLike | None = None,
               report: BatchReport | None = None) -> BatchReport:
        """Register one prepared batch under the folder lock (`ingest.commit_batch`): rename the staged PNGs
        into ``out_dir``, one catalog transaction, add to the in-memory index (index.faiss is written by
        `snapshot`). `add` and `activate` call this; call it yourself for descriptors made elsewhere
        (``ingest.Prepared`` with a record and a descriptor).

        Returns:
            ``report`` (a new one if not given) with this batch's records, skips and failures added.
        """
        report = report if report is not None else BatchReport()
        registered = len(report.records)
        for item in prepared:
            item.written()
        with self._writing():
            ingest.commit_batch(prepared, Path(out_dir) if out_dir is not None else None, self._live, report)
        if len(report.records) > registered:
            pause_point("after_commit")
        self._snapshot_if_due()
        return report

    def remove(self, items: Sequence[int | str | os.PathLike], delete_files: bool = False) -> RemovalReport:
        """Remove registered images (takedown): from this moment no search of any process sharing the
        collection returns them, and the same image may be registered again (under a new id).

        Args:
            items: image ids, sha256s of original or activated files, or files (matched by content, or by
                the path they were registered from or activated to when they no longer exist).
            delete_files: also delete their activated files (the originals are never touched).

        Returns:
            a `RemovalReport`: the removed records, the items that name no registered image, the deleted files.

        Example:
            >>> col.remove([12, "published/cat.png"], delete_files=True).deleted_files
            ['/srv/published/cat.png']
        """
        self._require_trained()
        report = RemovalReport()
        with self._writing():
            ids, report.not_found = removal.resolve(self.catalog, items)
            report.removed = self._live.remove(ids)
            compacted = self._live.compact() if self._live.compaction_due() else 0
        if compacted:  # the space goes on disk too; a full disk only postpones it: the removal is done
            try:
                self.snapshot()
            except StorageFullError as e:
                report.warnings.append(f"the index snapshot was not rewritten after compaction ({e}); the "
                                       "removal stands, and the next snapshot writes it")
        if delete_files:
            removal.delete_activated_files(report.removed, report)
        return report

    def index_views(self, views: str, progress: bool | None = None) -> dict:
        """Index another view set (views.py) for every registered image, from its original file: how a
        collection made without views gets them (``"none"`` takes them out). Holds the folder lock throughout,
        so no other process commits meanwhile; restart the servers sharing the collection afterwards.

        Returns:
            ``{"views": name, "images": registered images, "without_views": [{"path", "error"}]}``: an image
            whose original cannot be read keeps its whole-image vector alone (it stays findable as before).
        """
        self._require_trained()
        view_set, missing = get_view_set(views), []
        with self._writing():
            ids = self.catalog.ids()
            bar = progress_bar(len(ids), "views", progress)
            for start in range(0, len(ids), 64):
                records = self.catalog.get(list(ids[start:start + 64]))
                stored = {i: None for i in records}
                if view_set.views:
                    inputs = {}
                    for i, record in records.items():
                        try:
                            inputs[i] = network_input(self.extractor.load(record.original_path),
                                                      self.extractor.preprocessing)
                        except ActiveIndexError as e:
                            missing.append({"path": record.original_path, "error": str(e)})
                    if inputs:
                        stored |= dict(zip(inputs, encode_views(self.extractor, list(inputs.values()), view_set)))
                self.catalog.set_views(stored)
                bar.update(len(records))
            bar.close()
            self.manifest = read_manifest(self.root) | {"views": view_set.to_dict()}
            write_manifest(self.root, self.manifest)
            self.views = view_set
            self._live = self._live_index(self.codec.empty_index())  # rebuilt from the catalog
            self._live.save(self.root / INDEX)
        return {"views": view_set.name, "images": len(ids), "without_views": missing}

    def compact(self) -> int:
        """Take every removed image out of the index now and rewrite index.faiss (removal does it by itself
        once removed images are more than `LiveIndex.compact_at` of the index); returns how many."""
        self._require_trained()
        with self._writing():
            count = self._live.compact()
        self.snapshot()
        return count

    def snapshot(self) -> None:
        """Write index.faiss (atomically) from the in-memory index brought up to the catalog. Searches go on
        meanwhile; commits made by other processes during the write are caught up on the next open."""
        if self._live is not None:
            self._live.save(self.root / INDEX)

    def _snapshot_if_due(self, end_of_run: bool = False) -> None:
        """During a run: when index.faiss is older than `snapshot_interval` and lacks images. At its end, also
        when it lacks `snapshot_records` images (so many small runs do not pile up catch-up work on open).
        A full disk only postpones it: the catalog holds every committed image."""
        if self._live is None or not self._live.unsnapshotted:
            return
        old = time.time() - (self.root / INDEX).stat().st_mtime > self.snapshot_interval
        if old or (end_of_run and self._live.unsnapshotted >= self.snapshot_records):
            try:
                self.snapshot()
            except StorageFullError as e:
                logger.warning("index snapshot not written (%s); the images are registered and the next run "
                               "writes it", e)

    def refresh(self) -> None:
        """Add the records other processes have committed since the last look."""
        if self._live is not None:
            self._live.refresh()

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
            one list of `Match` per query: the index's ``k`` nearest images, each once, ordered by exact
            similarity (best first; `decision.rank`). For the copy verdict, use `verdicts`.
        """
        single = isinstance(images, (str, os.PathLike, np.ndarray))
        return self.search_descriptors(self.extractor.encode([images] if single else list(images), progress=False), k)

    def search_descriptors(self, queries: np.ndarray, k: int = 10) -> list[list[Match]]:
        """`search` for (n, d) query descriptors computed by this collection's extractor."""
        self._require_trained()
        if not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be between 1 and {MAX_K}, got {k}")
        found = self._live.search(queries, k)
        rows = self.catalog.paths_and_descriptors(sorted({i for hits in found for i, _ in hits}))
        return [rank([self._match(i, d, rows[i], query) for i, d in hits if i in rows])
                for query, hits in zip(queries, found)]  # an id removed meanwhile by another process has no row

    def _match(self, image_id: int, distance: float, row: tuple, query: np.ndarray) -> Match:
        """A result, its similarity the best over the image's stored vectors (the image's, its views') and its
        released file's descriptor: a copy is a copy of the released file (docs/decision.md)."""
        similarities = row[2] @ query
        best = int(np.argmax(similarities))
        similarity, view = float(similarities[best]), self.views.label(best)
        if row[3] is not None and float(row[3] @ query) > similarity:
            similarity, view = float(row[3] @ query), "released file"
        return Match(image_id, row[0], row[1], distance, similarity, view)

    def verdicts(self, images: ImageSource | Sequence[ImageSource], k: int = 10,
                 evidence: bool = False) -> list[Verdict]:
        """Is each query a copy of a registered image, and of which? The one rule of every interface
        (decision.py): the index's `decision.SHORTLIST` nearest images (or ``k``), re-ranked by exact
        similarity; the best is a copy when its similarity is >= `threshold`.

        Args:
            images: one query (path or (H, W, 3) uint8 array) or a sequence of them.
            k: candidates each verdict shows, 1 to 1000.
            evidence: also find where each copy sits in its source's original (`evidence.align`, about 0.2 s
                a copy); a query that is not a copy gets none, with the reason "not a copy".

        Returns:
            one `Verdict` per query, in order.

        Example:
            >>> [v] = col.verdicts("suspect.jpg", evidence=True)
            >>> v.is_copy, v.match.original_path, v.evidence.evidence.rotation_deg
            (True, 'photos/cat.png', 20.1)
        """
        items = [images] if isinstance(images, (str, os.PathLike, np.ndarray)) else list(images)
        if evidence:  # the pixels are needed twice: decoded once
            items = [self.extractor.load(item) for item in items]
        found = self.verdicts_for_descriptors(self.extractor.encode(items, progress=False), k)
        return [with_evidence(v, image, self.original_image) for v, image in zip(found, items)] if evidence else found

    def verdicts_for_descriptors(self, queries: np.ndarray, k: int = 10,
                                 threshold: float | None = None) -> list[Verdict]:
        """`verdicts` (without evidence) for (n, d) query descriptors computed by this collection's extractor.

        Args:
            threshold: an operator's own threshold instead of the collection's (the verdicts then say
                ``calibrated=False``).
        """
        calibrated = self.calibrated if threshold is None else False
        threshold = self.threshold if threshold is None else threshold
        return [decide(matches, threshold, calibrated, k)
                for matches in self.search_descriptors(queries, shortlist(k))]

    def original_image(self, match: Match | Record) -> np.ndarray:
        """The registered original of a result (or record) as (H, W, 3) uint8, else its released file (the same
        size).

        Raises:
            ImageDecodeError: neither file can be read any more.
        """
        try:
            return load_image(match.original_path)
        except ActiveIndexError:
            if match.activated_path is None:
                raise
            return load_image(match.activated_path)

    @property
    def calibration(self) -> dict | None:
        """The stored calibration (`calibrate.Calibration.to_dict`: threshold, measured rates), or None; one
        stored by another process since is read at the next call."""
        return self._threshold.calibration()

    @property
    def calibrated(self) -> bool:
        """Whether `activeindex calibrate` stored a threshold (with its measured false-copy rate)."""
        return self.calibration is not None

    @property
    def threshold(self) -> float:
        """The copy threshold: the calibrated one, else `DEFAULT_THRESHOLD`; a calibration stored by another
        process (a CLI run beside a server) is picked up at the next call (`decision.StoredThreshold`)."""
        return self._threshold.threshold()

    def save_calibration(self, calibration: dict) -> None:
        """Store a calibration (calibrate.py) in the manifest."""
        with self._writing():
            self.manifest = read_manifest(self.root) | {"calibration": calibration}
            write_manifest(self.root, self.manifest)

    def info(self) -> dict:
        """The manifest plus counts and index facts."""
        self.refresh()
        counts = self.catalog.counts()
        return {**self.manifest, "calibration": self.calibration, "path": str(self.root),
                "images": sum(counts.values()), **counts,
                "removed": self.catalog.removed_count(),
                "removed_in_index": len(self._live.tombstones) if self._live else 0,
                "ntotal": int(self.index.ntotal) if self.index is not None else 0,  # vectors: images and views
                "indexed_images": self.indexed_images,
                "nlist": self.codec.nlist if self.codec else None, "device": str(self.extractor.device)}

    def close(self) -> None:
        self.catalog.close()
