"""Ingestion: how new image files become registered records, in four steps.

1. plan: list the files, hash each, drop those already registered (by sha256) or repeated in the run,
   and form batches BEFORE decoding, so every executor activates the same images together (an image's
   result depends on its batch); an activation batch's images fit the memory budget together (their sizes
   read from the headers);
2. read and decode each planned file (a bad one becomes a per-file error, never a failed run); a passive
   reference keeps only what the network sees of it (`read_planned`), so memory is bounded by the pixels
   in flight, never by the number or size of the files;
3. prepare: embed (passive references) or activate and write the activated PNG under a staging name, in
   this process (`prepare_here`: two threads decode the next batch and write this one's PNGs while the
   model runs) or on Ray (pipeline.py runs the same `Preparer` in its actors);
4. commit, batch by batch, under the collection's folder lock (`commit_batch`): skip what another process
   registered meanwhile, rename the staged PNGs to their final names, insert the records and add their
   descriptors to the index (live_index.py).

Batch k is committed once batch k+1 is prepared, so its PNGs are written meanwhile; an error while
preparing a later batch still commits what was prepared before it. A run killed anywhere leaves nothing
registered that is not complete, and re-running it skips what was registered and resumes.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .activation import ActivatedImage, ActivationConfig, Activator, activation_memory
from .binding import defines, encode_binding
from .catalog import Catalog, Record
from .codec import Codec
from .credentials import SigningMaterial, ingredient_format, manifest_store, sign_activated
from .errors import ActiveIndexError, StorageFullError
from .extractor import Extractor, ImageSource, PreprocessConfig, network_input
from .faults import pause_point
from .imageio import (
    ImageLimits,
    SourceInfo,
    decode_layers,
    image_size,
    list_images,
    read_ahead,
    read_file,
    sha256_bytes,
    sha256_file,
    source_info,
    write_atomically,
)
from .live_index import LiveIndex
from .locking import process_alive
from .progress import progress_bar
from .release import Release, copy_metadata, release_warnings, resolve_release
from .views import NO_VIEWS, ViewSet, encode_views

__all__ = ["BatchReport", "Prepared", "Preparer", "PlannedFile", "read_and_decode", "read_planned", "plan_batches",
           "prepare_here", "commit_batch", "run", "run_tag", "embed_stream", "remove_stale_staged", "BatchCallback"]

logger = logging.getLogger(__name__)

STAGED = ".staged"  # staged files: .SHA~HOST~PID~RANDOM.staged.EXT
STALE_STAGED_SECONDS = 3600.0  # a staged PNG this old belongs to a run that died (a batch commits in minutes)
BatchCallback = Callable[[int, int], None]  # (files handled, files in total)
PlannedFile = tuple[str, str, bytes | None]  # (path, sha256 of its bytes, the bytes when kept for decoding)
KEPT_BYTES = 64 << 20  # a planned batch keeps its files' bytes up to this; larger files are read again to decode
Prepare = Callable[[Iterator[list[PlannedFile]], Executor], Iterable[list["Prepared"]]]


@dataclass
class BatchReport:
    """What a batch operation did: registered records, skipped duplicates, per-file failures."""

    records: list[Record] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line error)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, what a registered file's owner must know)

    @property
    def handled(self) -> int:
        """Input files dealt with so far, whatever their outcome."""
        return len(self.records) + len(self.skipped) + len(self.failed)

    def to_dict(self) -> dict:
        return {"records": [r.to_dict() for r in self.records],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "failed": [{"path": p, "error": e} for p, e in self.failed],
                "warnings": [{"path": p, "warning": w} for p, w in self.warnings]}


@dataclass
class Prepared:
    """One new file on its way into the collection: decoded, then embedded or activated, then committed."""

    path: str
    sha256: str
    image: np.ndarray | None = field(default=None, repr=False)  # decoded; dropped once prepared
    shape: tuple[int, int] | None = None  # the decoded image's (height, width)
    network_input: torch.Tensor | None = field(default=None, repr=False)  # a passive reference's, uint8
    record: Record | None = None
    descriptor: np.ndarray | None = field(default=None, repr=False)  # the ORIGINAL's, as indexed
    views: np.ndarray | None = field(default=None, repr=False)  # (V, d): the original's indexed views' (views.py)
    released: np.ndarray | None = field(default=None, repr=False)  # (d,): an activated image's released file's
    staged: str | None = None  # the activated file under its staging name; the commit renames it
    source: SourceInfo | None = field(default=None, repr=False)  # how the original is encoded
    rgba: np.ndarray | None = field(default=None, repr=False)  # (H, W, 4) colour and alpha of a transparent image
    warnings: list[str] = field(default_factory=list)  # about the released file, for its owner
    error: str | None = None  # one line: why this file is not registered
    writing: Future | None = field(default=None, repr=False, compare=False)  # the staged PNG, being written

    def written(self) -> None:
        """Wait until the staged PNG is on disk (a write error is raised here, as if written in line)."""
        if self.writing is not None:
            self.writing.result()
            self.writing = None


# ---------------------------------------------------------------- 1. plan

def plan_batches(paths: list[Path], catalog: Catalog, batch_size: int, report: BatchReport,
                 keep_bytes: bool, memory: float | None = None) -> Iterator[list[PlannedFile]]:
    """Batches of the files not registered yet, in file order; unreadable files and duplicates go to the
    report.

    Args:
        keep_bytes: keep the files' bytes for decoding (in process), up to `KEPT_BYTES` a batch; the reader
            reads the others again.
        memory: bytes an activation batch may use: a batch is cut before the `activation_memory` of its
            images (read from their headers) passes it (None: ``batch_size`` alone decides).
    """
    batch, seen, kept, used = [], set(), 0, 0.0
    for path in paths:
        try:
            data = read_file(path)
            need = _activation_need(data, str(path)) if memory is not None else 0.0
        except ActiveIndexError as e:
            report.failed.append((str(path), str(e)))
            continue
        data_sha = sha256_bytes(data)
        known = catalog.find_sha256(data_sha)
        if known is not None or data_sha in seen:
            report.skipped.append((str(path), "duplicate of an earlier file in this run" if known is None
                                   else f"already registered (id {known})"))
            continue
        if batch and (len(batch) == batch_size or (memory is not None and used + need > memory)):
            yield batch
            batch, kept, used = [], 0, 0.0
        seen.add(data_sha)
        keep = keep_bytes and kept + len(data) <= KEPT_BYTES
        batch.append((str(path), data_sha, data if keep else None))
        kept, used = kept + (len(data) if keep else 0), used + need
    if batch:
        yield batch


def _activation_need(data: bytes, name: str) -> float:
    """`activation_memory` of an image file, from its header."""
    width, height = image_size(data, name)
    return activation_memory(width * height)


# ---------------------------------------------------------------- 2. read and decode

def read_and_decode(path: str, sha256: str, data: bytes | None = None,
                    limits: ImageLimits = ImageLimits()) -> Prepared:
    """Decode one planned file; a bad file becomes ``Prepared.error``.

    Without ``data`` the file is read again (on a Ray worker): bytes that no longer hash to the planned
    ``sha256`` (the file changed since it was planned) are refused, so what is registered under a sha256
    is always the content of those bytes.
    """
    try:
        if data is None and sha256_bytes(data := read_file(path)) != sha256:
            raise ActiveIndexError(f"{path}: the file changed while it was being registered; run again")
        image, rgba = decode_layers(data, path, limits)
        return Prepared(path, sha256, image=image, rgba=rgba, source=source_info(data, path))
    except ActiveIndexError as e:
        return Prepared(path, sha256, error=str(e))


def read_planned(file: PlannedFile, limits: ImageLimits, preprocessing: PreprocessConfig | None = None) -> Prepared:
    """`read_and_decode` one planned file; with ``preprocessing`` (a passive reference) only its network input is
    kept, as uint8 (a quarter of float32, and exact: preprocessing rounds to 8-bit levels), the decoded image
    dropped at once."""
    item = read_and_decode(*file, limits=limits)
    if item.image is not None:
        item.shape = item.image.shape[:2]
        if preprocessing is not None:
            levels = network_input(item.image, preprocessing).mul_(255.0).round_()
            item.network_input, item.image, item.rgba = levels.to(torch.uint8), None, None
    return item


# ---------------------------------------------------------------- 3. prepare

class Preparer:
    """The heavy work on a batch of decoded files: embed them (``config=None``: passive references) or
    activate them and write each released file (its format, the original's metadata) under a staging name
    in ``out_dir``. Holds no collection, so Ray's
    actors hold one each (pipeline.py); a batch gives the same bytes wherever it runs.

    Args:
        extractor: the descriptor model.
        codec: the frozen codec (activation targets).
        config: activation settings, or ``None`` to register passive references.
        out_dir: where the staged PNGs go (activation only).
        writer: threads that write the staged PNGs while the next batch is prepared (None: in line).
        stored_dtype: how the catalog stores descriptors (the activation targets the code it will index).
        run: the run's `run_tag`, part of every staged name (which run, of which process, wrote it).
        signing: sign each released file's Content Credentials (C2PA), the original as its ingredient, and, when
            the model and preprocessing are `binding.ALG`'s, the released file's fingerprint as a soft binding.
        memory: bytes a batch of activations may use (`activation.activation_memory`); None: no limit.
        views: the views of each image to index beside it (their descriptors go to ``Prepared.views``).
    """

    def __init__(self, extractor: Extractor, codec: Codec, config: ActivationConfig | None = None,
                 out_dir: str | os.PathLike | None = None, writer: Executor | None = None,
                 stored_dtype: str = "float16", run: str | None = None, signing: SigningMaterial | None = None,
                 memory: float | None = None, views: ViewSet = NO_VIEWS):
        self.extractor, self.config, self.writer, self.signing = extractor, config, writer, signing
        # a fingerprint of another model or preprocessing is not ALG's: such manifests carry no soft binding
        self.binds = signing is not None and defines(extractor.model_id, extractor.preprocessing.to_dict())
        self.views = views
        self.run = run or run_tag()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.activator = (Activator(extractor, codec, config, stored_dtype, memory, views) if config is not None
                          else None)

    def __call__(self, batch: list[Prepared]) -> list[Prepared]:
        ready = [p for p in batch if p.error is None]
        if not ready:
            return batch
        pause_point("prepare")
        results, releases = [None] * len(ready), [None] * len(ready)
        if self.activator is None:
            descriptors = self.extractor.encode_network_inputs([p.network_input for p in ready])
            views = self._views([p.network_input for p in ready])
        else:
            releases = [resolve_release(self.config.output, self.config.quality, p.source, p.rgba) for p in ready]
            results = self.activator.activate([p.image for p in ready], progress=False, releases=releases)
            descriptors = np.stack([r.descriptor for r in results])
            views = [r.views for r in results]
        for item, descriptor, result, release, item_views in zip(ready, descriptors, results, releases, views):
            item.views = item_views
            height, width = item.shape
            item.record = Record(id=None, kind="passive" if result is None else "active",
                                 original_path=str(Path(item.path).resolve()), original_sha256=item.sha256,
                                 width=width, height=height, **(result.metrics() if result is not None else {}))
            item.descriptor, item.image, item.network_input, item.rgba = descriptor, None, None, None
            item.released = None if result is None else result.released_descriptor
            if result is not None:  # a name of its own: two processes may activate the same image at once
                item.staged = str(self.out_dir / f".{item.sha256[:16]}~{self.run}{STAGED}{release.extension}")
                item.warnings += release_warnings(item.source, release)
                if result.lost_in_encoding:
                    item.warnings.append(f"released as {release.format.upper()} {release.quality or ''}, the activated "
                                         "image left its cell: edited copies are found less often (try a higher "
                                         "--quality, or --format png)")
                fingerprint = encode_binding(result.released_descriptor) if self.binds else None
                if self.writer is None:
                    _write_staged(item, result, release, self.signing, fingerprint)
                else:  # encoding, metadata and signing are slow: done while the next batch is activated
                    item.writing = self.writer.submit(_write_staged, item, result, release, self.signing, fingerprint)
        return batch


    def _views(self, inputs: list[torch.Tensor]) -> list[np.ndarray | None]:
        """Each passive reference's (V, d) view descriptors, from its network input, in one encode; None without
        views (an activated image's come with its result)."""
        if not self.views.views:
            return [None] * len(inputs)
        return list(encode_views(self.extractor, inputs, self.views))


def _write_staged(item: Prepared, result: ActivatedImage, release: Release, signing: SigningMaterial | None,
                  fingerprint: str | None) -> None:
    """The released file, under its staging name (`_write_release`). One file's failure to encode, copy its
    metadata or sign becomes its ``Prepared.error`` (its staged file removed), so the rest of the batch is
    registered; a full disk stops the run."""
    try:
        _write_release(item, result, release, signing, fingerprint)
    except StorageFullError:
        raise
    except (ActiveIndexError, OSError, ValueError) as e:  # PIL's encoders raise OSError and ValueError
        Path(item.staged).unlink(missing_ok=True)
        reason = str(e).replace(item.staged, "its released file")  # the staging name means nothing to its owner
        item.error = reason if reason.startswith(item.path) else f"{item.path}: {reason}"
        item.staged = None


def _write_release(item: Prepared, result: ActivatedImage, release: Release, signing: SigningMaterial | None,
                   fingerprint: str | None) -> None:
    """The measured bytes (a PNG: encoded here), the original's metadata (its profile unless the release has its
    own), then its Content Credentials (with signing material and an original C2PA takes as ingredient, else
    a warning; without signing material, a warning when the original had some), ``fingerprint`` (the released
    file's `binding.ALG` value, measured on the very pixels written) as their soft binding."""
    staged, original = Path(item.staged), Path(item.path)
    write_atomically(staged, lambda f: f.write(result.encoded or release.encode(result.image)))
    if item.source is not None and item.source.metadata:
        copy_metadata(original, staged, profile=release.profile is None)
    if signing is not None and ingredient_format(original) is None:
        item.warnings.append("released without Content Credentials: C2PA cannot name an original of this format "
                             "as the ingredient of an edit (JPEG, PNG, WebP, TIFF, GIF, HEIC or AVIF can)")
    elif signing is not None:
        item.record.manifest_id = sign_activated(
            original, staged, staged, signing, title=f"{original.stem}{release.extension}", soft_binding=fingerprint,
            parameters={"format": release.format, "quality": release.quality, "psnr": round(result.psnr, 2),
                        "scaling": round(result.scaling, 4)})
    elif item.source is not None and item.source.metadata and manifest_store(original) is not None:
        item.warnings.append("the original's Content Credentials are not carried over: activate with --c2pa-sign "
                             "CERT KEY to sign the released file with the original as its ingredient")
    item.record.activated_sha256 = sha256_file(staged)


def prepare_here(extractor: Extractor, codec: Codec, config: ActivationConfig | None, out_dir: Path | None,
                 stored_dtype: str, run: str, signing: SigningMaterial | None = None,
                 memory: float | None = None, views: ViewSet = NO_VIEWS) -> Prepare:
    """The in-process executor: the pool's two threads decode the next batch and write this one's files while
    the model runs."""
    def prepare(batches: Iterator[list[PlannedFile]], pool: Executor) -> Iterable[list[Prepared]]:
        preparer = Preparer(extractor, codec, config, out_dir, writer=pool, stored_dtype=stored_dtype, run=run,
                            signing=signing, memory=memory, views=views)
        read = functools.partial(read_planned, limits=extractor.limits,
                                 preprocessing=extractor.preprocessing if config is None else None)
        return map(preparer, read_ahead(batches, read, pool))
    return prepare


def _driver_alive(staged_name: str) -> bool | None:
    """Whether the staged file's run is driven by a living process: None when its driver is on another host
    (or the name is not a run's), where this host cannot tell."""
    parts = staged_name[1:].split(STAGED)[0].split("~")
    if len(parts) != 4 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return None
    return process_alive(int(parts[2]))


def run_tag() -> str:
    """``HOST~PID~RANDOM``: names one run of one driver process, in its staged files' names."""
    return f"{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}"


def remove_stale_staged(out_dir: Path) -> int:
    """Delete the staged files that runs killed before their commit left in ``out_dir``: those of a dead driver
    process on this host, whatever their age (a living driver's, however old, are never touched), and those of
    another host's driver older than `STALE_STAGED_SECONDS`; returns how many."""
    removed, now = 0, time.time()
    for path in out_dir.glob(f".*{STAGED}.*"):
        try:
            alive = _driver_alive(path.name)
            if alive is False or (alive is None and now - path.stat().st_mtime > STALE_STAGED_SECONDS):
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process took it meanwhile
            continue
    if removed:
        logger.info("%s: removed %d staged files left by interrupted runs", out_dir, removed)
    return removed


# ---------------------------------------------------------------- 4. commit

def commit_batch(prepared: list[Prepared], out_dir: Path | None, index: LiveIndex, report: BatchReport) -> None:
    """Register one prepared batch; call it under the collection's folder lock, with the staged PNGs written.

    Files another process registered since they were planned are skipped. Each released file is moved to a
    name of its own (`publish`); a commit killed after those moves and before its catalog transaction
    registered nothing, and its moved files are deleted by the next commit (`remove_unregistered`).
    """
    catalog = index.catalog
    remove_unregistered(catalog)
    known = catalog.find_sha256s([item.sha256 for item in prepared if item.error is None])
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
                item.record.activated_path = str(publish(catalog, Path(item.staged), out_dir, Path(item.path).stem,
                                                         item.sha256, item.record.activated_sha256))
            keep.append(item)
            report.warnings += [(item.path, warning) for warning in item.warnings]
    if keep:
        try:
            index.insert([item.record for item in keep], np.stack([item.descriptor for item in keep]),
                         None if keep[0].views is None else np.stack([item.views for item in keep]),
                         [item.released for item in keep])
        except BaseException:  # e.g. a full disk: the files this commit moved into place go with it
            with contextlib.suppress(Exception):
                remove_unregistered(catalog)
            raise
        report.records += [item.record for item in keep]
        catalog.drop_pending([item.record.activated_path for item in keep if item.record.activated_path])


def publish(catalog: Catalog, staged: Path, out_dir: Path, stem: str, data_sha: str, activated_sha: str) -> Path:
    """Move a staged file to the first free name of ``<stem><ext>``, ``<stem>-<sha8><ext>``, ``<stem>-<sha8>-2<ext>``...
    in ``out_dir``, never replacing a file (another collection's, another run's, the user's): the name is taken
    by a hard link, which fails if the name exists. The move is noted first (`Catalog.note_pending`).

    Returns:
        the final, resolved path.
    """
    extension = staged.suffix
    names = itertools.chain([f"{stem}{extension}", f"{stem}-{data_sha[:8]}{extension}"],
                            (f"{stem}-{data_sha[:8]}-{n}{extension}" for n in itertools.count(2)))
    for name in names:
        path = (out_dir / name).resolve()
        catalog.note_pending(str(path), activated_sha)
        if _take_name(staged, path):
            return path
        catalog.drop_pending([str(path)])
    raise AssertionError("unreachable: the names never run out")


def _take_name(staged: Path, path: Path) -> bool:
    """Move ``staged`` to ``path`` if no file has that name (atomically); False if one has."""
    try:
        os.link(staged, path)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: reserve the name by creating it, then replace it
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        os.replace(staged, path)
        return True
    staged.unlink()
    return True


def remove_unregistered(catalog: Catalog) -> int:
    """Delete the released files that commits killed before their catalog transaction moved into place (their
    notes in `Catalog.pending`, only while they hold the bytes noted); call under the folder lock. Returns how
    many."""
    notes, removed = catalog.pending(), 0
    for path, sha in notes:
        try:
            if not catalog.activated_path_taken(path) and sha256_file(path) == sha:
                Path(path).unlink()
                removed += 1
        except FileNotFoundError:
            continue
    if notes:
        catalog.drop_pending([path for path, _ in notes])
    if removed:
        logger.info("removed %d released files that an interrupted commit left unregistered", removed)
    return removed


# ---------------------------------------------------------------- the run

def run(images: Iterable[str | os.PathLike], catalog: Catalog, prepare: Prepare,
        commit: Callable[[list[Prepared], BatchReport], None], batch_size: int, keep_bytes: bool,
        progress: bool | None, on_batch: BatchCallback | None, memory: float | None = None) -> BatchReport:
    """Plan the new files among ``images`` (files and folders), prepare them batch by batch with ``prepare``
    and ``commit`` each; the report lists failures and skips in input order. ``memory``: an activation
    batch's budget (`plan_batches`)."""
    report, paths = BatchReport(), list_images(list(images))
    _return_large_buffers()
    bar = progress_bar(len(paths), "images", progress)

    def commit_and_count(prepared: list[Prepared]) -> None:
        commit(prepared, report)
        bar.update(report.handled - bar.n)
        if on_batch is not None:
            on_batch(report.handled, len(paths))

    with ThreadPoolExecutor(2) as pool:
        pending = None  # prepared, not committed yet
        try:
            for prepared in prepare(plan_batches(paths, catalog, batch_size, report, keep_bytes, memory), pool):
                if pending is not None:  # batch k is committed once k+1 is prepared: its PNGs were written meanwhile
                    batch, pending = pending, None  # a commit that fails is not tried again below
                    commit_and_count(batch)
                pending = prepared
        finally:  # an error while preparing a later batch loses nothing prepared before it
            if pending is not None:
                commit_and_count(pending)
    order = {str(path): n for n, path in enumerate(paths)}  # unreadable files were reported when planned
    report.failed.sort(key=lambda failure: order[failure[0]])
    report.skipped.sort(key=lambda skip: order[skip[0]])
    bar.update(len(paths) - bar.n)
    bar.close()
    if on_batch is not None and report.handled < len(paths):
        on_batch(len(paths), len(paths))
    return report


@functools.cache
def _return_large_buffers() -> None:
    """Have glibc give buffers of 4 MB and more back to the system as soon as they are freed. Its default
    threshold rises with every large block freed, so the decoding threads' full-size buffers piled up in
    their heaps: `add` of 300 24-megapixel photos peaked at 2.1 GB instead of ~1 GB
    (benchmarks/ingest_memory.py). A process-wide setting, harmless elsewhere; no-op off glibc."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 4 << 20)
    except (AttributeError, OSError):
        pass


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


# ---------------------------------------------------------------- training images

def embed_stream(extractor: Extractor, items: Iterable[ImageSource], progress: bool | None,
                 batch_size: int = 32) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Descriptors of a stream of images and folders, batch by batch; (item, error) for unreadable ones."""
    vectors, failed, batch = [], [], []
    bar = progress_bar(None, "embed", progress)
    for item in _expand_folders(items):
        try:
            batch.append(extractor.load(item))
        except ActiveIndexError as e:
            failed.append((str(item), str(e)))
        if len(batch) == batch_size:
            vectors.append(extractor.encode_arrays(batch))
            bar.update(len(batch))
            batch = []
    if batch:
        vectors.append(extractor.encode_arrays(batch))
        bar.update(len(batch))
    bar.close()
    return np.concatenate(vectors) if vectors else np.zeros((0, extractor.dim), np.float32), failed


def _expand_folders(items: Iterable[ImageSource]) -> Iterator[ImageSource]:
    """Arrays and files as they come; folders replaced by the images inside them."""
    for item in items:
        if isinstance(item, np.ndarray):
            yield item
        else:
            yield from list_images([item])
