"""Benchmark corpora: the real-photo corpus assembled from offline sources (STACK.md), or the user's own
DISC21 or Copydays download ("bring your own benchmark data").

Every corpus answers the same four splits:

  activate     images to activate and query (the "owner's" images)
  distractors  passive references indexed beside them
  train        the index training set (disjoint from everything indexed)
  nonmatching  images never indexed: the copy-detection negatives

`open_corpus` recognises three layouts:

- ours (`fetch_corpus`): a folder with ``manifest.json`` (each image with its split, source package, original
  path and licence) and ``descriptors.npy`` (their descriptors, same order). `fetch_corpus` copies every readable
  photo of the Debian photo packages and scikit-image, scaled to at most ``max_side`` pixels (JPEG q95), drops
  exact and near duplicates (descriptor cosine > 0.9: one wallpaper's light / dark / portrait variants are one
  photo), and splits the rest, seeded. Its non-matching images are unedited photos: the benchmark edits them.
- DISC21 (`DISC21Corpus`): ``references/``, ``queries/``, ``training/`` and a ``*ground_truth*.csv``.
- Copydays (`CopydaysCorpus`): ``original/`` and ``training/`` (Copydays has none: the user brings one), with
  optional ``distractors/`` and ``nonmatching/``.

For DISC21 and Copydays the descriptors are computed with the given `Extractor` on first use of a split and kept
under a cache folder (never in the dataset), in chunks keyed by the files' names, sizes and modification times
and the model (`cached_descriptors`): an interrupted run over a million references resumes at the last chunk.

Above ~400 lines: three corpus layouts answering one interface; each is short, and they share the split
and cache helpers that would otherwise be imported back and forth.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ActiveIndexError, CorruptCollectionError, InvalidInputError, UnknownNameError
from ..extractor import Extractor
from ..imageio import load_image, sha256_file
from ..progress import progress_bar

__all__ = ["SPLITS", "PhotoSource", "SOURCES", "CorpusImage", "BaseCorpus", "Corpus", "DISC21Corpus",
           "CopydaysCorpus", "open_corpus", "cached_descriptors", "default_cache_dir", "fetch_corpus",
           "save_atomic"]

logger = logging.getLogger(__name__)

SPLITS = ("activate", "distractors", "train", "nonmatching")
NEAR_DUPLICATE_COSINE = 0.9


@dataclass(frozen=True)
class PhotoSource:
    """Photos shipped by one package."""

    package: str
    pattern: str  # glob, recursive
    licence: str


def _skimage_pattern() -> str:
    import skimage

    return str(Path(skimage.__file__).parent / "data" / "*.[jp][pn]g")


SOURCES = [
    PhotoSource("stellarium-data", "/usr/share/stellarium/nebulae/default/*.png",
                "GPL-2+; telescope photos with per-image credits (CC-BY / CC-BY-SA), see the package copyright"),
    PhotoSource("tuxpaint-stamps-default", "/usr/share/tuxpaint/stamps/**/*.png", "GPL-2+"),
    PhotoSource("plasma-workspace-wallpapers", "/usr/share/wallpapers/*/contents/images*/*.*",
                "GPL-2+ / LGPL-3 / CC-BY-SA 4.0, per wallpaper (see the package copyright)"),
    PhotoSource("mate-backgrounds", "/usr/share/backgrounds/mate/**/*.*", "GPL-2+ / CC-BY-SA, per image"),
    PhotoSource("scikit-image", "", "BSD-3-Clause / public domain, per image (skimage/data/README.txt)"),
]


@dataclass
class CorpusImage:
    file: str  # relative to the corpus folder
    split: str
    package: str
    original_path: str
    licence: str
    sha256: str  # of the original file
    short_side: int = 0  # of the stored copy, pixels


class BaseCorpus:
    """What the benchmark reads from any corpus; subclasses say which files form each split.

    Attributes:
        root: the corpus folder.
        layout: its name ("activeindex", "DISC21", "Copydays").
        nonmatching_edited: True when the non-matching images are already edited queries, to be used as they
            are; False when the benchmark must edit them itself.
    """

    layout = ""
    nonmatching_edited = False
    root: Path

    def split(self, name: str) -> tuple[list[Path], np.ndarray]:
        """(paths, (n, d) float32 descriptors, same order) of one split (one of `SPLITS`)."""
        raise NotImplementedError

    def paths(self, name: str) -> list[Path]:
        """The files of one split, in the order of `split`, without computing any descriptor."""
        raise NotImplementedError

    def packages(self, name: str) -> list[str]:
        """The source (package) of each image of one split, in the order of `split`."""
        raise NotImplementedError

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split, per source: number of images (no descriptor computed)."""
        return {name: dict(Counter(self.packages(name))) for name in SPLITS}

    def describe(self) -> str:
        """One line: the layout, the folder and the counts per split (per source where there are several)."""
        parts = []
        for name, by_source in self.counts().items():
            sources = ", ".join(f"{p} {n}" for p, n in sorted(by_source.items()))
            parts.append(f"{name} {sum(by_source.values())}" + (f" ({sources})" if len(by_source) > 1 else ""))
        return f"{self.layout} corpus {self.root}: " + "; ".join(parts)


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise UnknownNameError(f"unknown split {name!r}; expected one of {list(SPLITS)}")


class Corpus(BaseCorpus):
    """A corpus folder assembled by `fetch_corpus`: images by split and their descriptors."""

    layout = "activeindex"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            manifest = json.loads((self.root / "manifest.json").read_text())
            self.descriptors = np.load(self.root / "descriptors.npy")
            self.images = [CorpusImage(**item) for item in manifest["images"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptCollectionError(f"{self.root}: not a corpus ({e}); run `make data` "
                                         "(activeindex data fetch)") from e
        if len(self.descriptors) != len(self.images):
            raise CorruptCollectionError(f"{self.root}: descriptors.npy has {len(self.descriptors)} rows for "
                                         f"{len(self.images)} images; run `make data` again")
        self.manifest = manifest

    def _indices(self, name: str) -> list[int]:
        _check_split(name)
        return [i for i, im in enumerate(self.images) if im.split == name]

    def split(self, name: str) -> tuple[list[Path], np.ndarray]:
        idx = self._indices(name)
        return [self.root / self.images[i].file for i in idx], self.descriptors[idx]

    def paths(self, name: str) -> list[Path]:
        return [self.root / self.images[i].file for i in self._indices(name)]

    def packages(self, name: str) -> list[str]:
        return [self.images[i].package for i in self._indices(name)]


def _candidates(sources: list[PhotoSource], per_source: int | None) -> list[tuple[PhotoSource, str]]:
    found, seen = [], set()
    for source in sources:
        pattern = source.pattern or _skimage_pattern()
        for path in sorted(glob.glob(pattern, recursive=True))[:per_source]:
            if os.path.isfile(path) and path not in seen:
                seen.add(path)
                found.append((source, path))
    return found


def _scaled(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BICUBIC))


def fetch_corpus(out: str | os.PathLike, max_side: int = 512, n_activate: int = 100, n_nonmatching: int = 100,
                 train_share: float = 0.5, seed: int = 0, extractor: Extractor | None = None,
                 sources: list[PhotoSource] = SOURCES, per_source: int | None = None, min_query_side: int = 256,
                 progress: bool | None = None) -> Corpus:
    """Assemble the corpus (module docstring) into ``out``.

    Args:
        out: the corpus folder (created; replaced files are rewritten).
        max_side: longest side of the stored copies, pixels.
        n_activate, n_nonmatching: sizes of those splits.
        train_share: share of the remaining images used for training (the rest are distractors).
        seed: the split's seed.
        min_query_side: the images to activate and the non-matching ones are drawn from stored copies whose
            shorter side has at least this many pixels: photos people publish, not the packages' 64-128 px
            clip-art stamps (activation has little to work with there); every image can be a reference or train.
        sources, per_source: where photos come from, and at most how many files from each (tests).

    Returns:
        the `Corpus`.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    extractor = extractor or Extractor()
    candidates = _candidates(sources, per_source)
    kept, hashes = [], set()
    vectors = np.zeros((len(candidates), extractor.dim), np.float32)
    bar = progress_bar(len(candidates), "corpus", progress)
    for source, path in candidates:
        bar.update(1)
        sha = sha256_file(path)
        if sha in hashes:
            continue
        hashes.add(sha)
        name = f"images/{len(kept):05d}.jpg"
        try:
            stored = _scaled(load_image(path), max_side)
            Image.fromarray(stored).save(out / name, quality=95)
            vector = extractor.encode(out / name)  # the descriptor of the stored file, as queries will see it
        except ActiveIndexError as e:
            logger.info("left out %s", e)
            continue
        if kept and float(np.max(vectors[:len(kept)] @ vector)) > NEAR_DUPLICATE_COSINE:
            continue
        vectors[len(kept)] = vector
        kept.append(CorpusImage(name, "", source.package, path, source.licence, sha, min(stored.shape[:2])))
    bar.close()
    _assign_splits(kept, n_activate, n_nonmatching, train_share, seed, min_query_side)
    np.save(out / "descriptors.npy", vectors[:len(kept)])
    counts = {s: sum(im.split == s for im in kept) for s in SPLITS}
    manifest = {"max_side": max_side, "seed": seed, "near_duplicate_cosine": NEAR_DUPLICATE_COSINE,
                "min_query_side": min_query_side,
                "candidates": len(candidates), "counts": counts, "images": [asdict(im) for im in kept]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return Corpus(out)


def _assign_splits(images: list[CorpusImage], n_activate: int, n_nonmatching: int, train_share: float,
                   seed: int, min_query_side: int) -> None:
    """Seeded random splits; activate and nonmatching only from images with a short side >= min_query_side."""
    order = np.random.default_rng(seed).permutation(len(images))
    eligible = [i for i in order if images[i].short_side >= min_query_side]
    if len(eligible) < n_activate + n_nonmatching:
        raise ActiveIndexError(f"only {len(eligible)} distinct photos with a short side >= {min_query_side} px: too "
                               f"few for {n_activate} to activate + {n_nonmatching} non-matching")
    queries = eligible[:n_activate + n_nonmatching]
    taken = set(queries)
    rest = [i for i in order if i not in taken]
    if len(rest) < 2:
        raise ActiveIndexError(f"only {len(images)} distinct photos: too few for {n_activate} + {n_nonmatching}")
    n_train = int(len(rest) * train_share)
    for rank, i in enumerate(queries):
        images[i].split = "activate" if rank < n_activate else "nonmatching"
    for rank, i in enumerate(rest):
        images[i].split = "train" if rank < n_train else "distractors"


# --- the user's own data: DISC21 and Copydays ------------------------------------------------------------------

IMAGE_FILE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_CHUNK = 8192  # descriptors per cache file (16 MiB): the unit an interrupted encoding resumes from
ENCODE_BATCH = 64  # files per call to the extractor (one progress step)
LAYOUTS = ("manifest.json + descriptors.npy (activeindex data fetch); "
           "DISC21: references/, queries/, training/ and *ground_truth*.csv; "
           "Copydays: original/ and training/ (optional distractors/, nonmatching/)")


class _ImageFolders(BaseCorpus):
    """A dataset the user downloaded: each split is a list of image files from one source, whose descriptors
    are computed on first use and cached (`cached_descriptors`). Subclasses fill ``self._splits``."""

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 extractor: Extractor | None = None, progress: bool | None = None):
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.progress = progress
        self._extractor = extractor
        self._splits: dict[str, tuple[list[Path], str]] = {}  # split -> (sorted files, source)

    @property
    def extractor(self) -> Extractor:
        """The descriptor model (the default one, built on first use, when none was given)."""
        if self._extractor is None:
            self._extractor = Extractor()
        return self._extractor

    def split(self, name: str) -> tuple[list[Path], np.ndarray]:
        paths = self.paths(name)
        return paths, cached_descriptors(paths, self.extractor, self.cache_dir, root=self.root,
                                         desc=f"{self.layout} {name}", progress=self.progress)

    def paths(self, name: str) -> list[Path]:
        _check_split(name)
        return list(self._splits[name][0])

    def packages(self, name: str) -> list[str]:
        _check_split(name)
        paths, source = self._splits[name]
        return [source] * len(paths)


class DISC21Corpus(_ImageFolders):
    """DISC21 (Douze et al. 2021, the paper's dataset) as downloaded.

    The folder holds ``references/``, ``queries/`` and ``training/`` (images: .jpg, .jpeg or .png, listed
    recursively and sorted by name) and one ``*ground_truth*.csv`` with the header ``query_id,reference_id``
    (ids are file stems such as Q00001 and R000123; an empty reference_id marks a non-matching query). DISC21
    ships dev_queries/ with dev_ground_truth.csv and final_queries/ with final_ground_truth.csv: link the pair you
    use as ``queries/`` and the CSV.

    Splits: activate = the references some query maps to (the benchmark draws its subset from them);
    distractors = all other references; train = ``training/``; nonmatching = the queries without a reference,
    used as they are (``nonmatching_edited``: DISC21 already edited them). The matching queries are not used:
    active indexing must edit the activated files itself, so the benchmark makes its own copies of them.

    Args:
        root: the DISC21 folder (read only).
        cache_dir: where descriptors are cached (default `default_cache_dir`).
        extractor: the descriptor model (the default one when None).
        progress: show progress bars while encoding; None follows the log level.

    Raises:
        InvalidInputError: a folder or the CSV is missing, or the CSV has the wrong header.
        CorruptCollectionError: the CSV names files that are not there.
    """

    layout = "DISC21"
    nonmatching_edited = True

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 extractor: Extractor | None = None, progress: bool | None = None):
        super().__init__(root, cache_dir, extractor, progress)
        for name in ("references", "queries", "training"):
            _require_folder(self.root / name, self.layout)
        truth = _ground_truth_csv(self.root)
        references = _by_stem(_image_files(self.root / "references", required=True))
        queries = _by_stem(_image_files(self.root / "queries", required=True))
        matched, unmatched = _read_ground_truth(truth, set(queries), set(references))
        self._splits = {
            "activate": ([p for r, p in references.items() if r in matched], "disc21/references"),
            "distractors": ([p for r, p in references.items() if r not in matched], "disc21/references"),
            "train": (_image_files(self.root / "training", required=True), "disc21/training"),
            "nonmatching": ([p for q, p in queries.items() if q in unmatched], "disc21/queries"),
        }
        logger.info("%s", self.describe())


class CopydaysCorpus(_ImageFolders):
    """INRIA Copydays (Jegou et al. 2008): ``original/`` holds its 157 original photos, all of them activated.

    Copydays' other folders (``strong/``, ``jpegqual/``, ``crops/``) are ignored: they are edited copies of the
    ORIGINALS, while the benchmark must query edited copies of the ACTIVATED files (and, for the passive
    baseline, the same edits of the originals), so it makes its own edits of both.

    Copydays has no distractors, negatives or training set: ``distractors/`` (indexed beside the originals) and
    ``nonmatching/`` (unedited photos never indexed; the benchmark edits them) are optional and empty when
    absent; ``training/`` is required (a sample of YFCC100M or DISC21 training images, say). Images: .jpg,
    .jpeg or .png, listed recursively and sorted by name.

    Args:
        root: the Copydays folder (read only).
        cache_dir, extractor, progress: as for `DISC21Corpus`.

    Raises:
        InvalidInputError: ``original/`` or ``training/`` is missing or holds no image.
    """

    layout = "Copydays"

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 extractor: Extractor | None = None, progress: bool | None = None):
        super().__init__(root, cache_dir, extractor, progress)
        hint = ("Copydays has no training set: put training images there (e.g. a sample of YFCC100M or DISC21 "
                "training images, none of them indexed)")
        for name in ("original", "training"):
            _require_folder(self.root / name, self.layout, hint if name == "training" else "")
        self._splits = {
            "activate": (_image_files(self.root / "original", required=True), "copydays/original"),
            "distractors": (_image_files(self.root / "distractors"), "copydays/distractors"),
            "train": (_image_files(self.root / "training", required=True, hint=hint), "copydays/training"),
            "nonmatching": (_image_files(self.root / "nonmatching"), "copydays/nonmatching"),
        }
        logger.info("%s", self.describe())


def open_corpus(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                extractor: Extractor | None = None, progress: bool | None = None) -> BaseCorpus:
    """Open a benchmark corpus, recognising its layout (module docstring).

    Args:
        root: the corpus folder: ours (``manifest.json``), DISC21 (``references/`` or ``queries/``) or Copydays
            (``original/``).
        cache_dir: where DISC21 / Copydays descriptors are cached (default `default_cache_dir`); ours has its own.
        extractor: the descriptor model for DISC21 / Copydays (the default one, built on first use, when None).
        progress: progress bars while encoding; None follows the log level.

    Returns:
        a `Corpus`, `DISC21Corpus` or `CopydaysCorpus`.

    Raises:
        InvalidInputError: no such folder, an unknown layout, or an incomplete one.
        CorruptCollectionError: a damaged corpus (see the layouts).

    Example:
        >>> open_corpus("/data/disc21", cache_dir="bench/cache").describe()
        'DISC21 corpus /data/disc21: activate 10000; distractors 990000; train 1000000; nonmatching 40000'
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root}: no such folder; expected a benchmark corpus ({LAYOUTS})")
    if (root / "manifest.json").is_file():
        return Corpus(root)
    if (root / "references").is_dir() or (root / "queries").is_dir():
        return DISC21Corpus(root, cache_dir, extractor, progress)
    if (root / "original").is_dir():
        return CopydaysCorpus(root, cache_dir, extractor, progress)
    raise InvalidInputError(f"{root}: not a benchmark corpus; expected one of: {LAYOUTS}")


def _require_folder(folder: Path, layout: str, hint: str = "") -> None:
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: missing, required by the {layout} layout" + (f"; {hint}" if hint else ""))


def _image_files(folder: Path, required: bool = False, hint: str = "") -> list[Path]:
    """Image files under a folder, recursively, hidden ones left out, sorted by name; [] for a missing folder
    unless ``required`` (which also refuses an empty one)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and f.lower().endswith(IMAGE_FILE_SUFFIXES)]
    if required and not found:
        what = "no .jpg, .jpeg or .png image" if folder.is_dir() else "missing"
        raise InvalidInputError(f"{folder}: {what}" + (f"; {hint}" if hint else ""))
    return [Path(p) for p in sorted(found)]


def _by_stem(paths: list[Path]) -> dict[str, Path]:
    """{file stem: path}, in the order of ``paths``; two files with one stem are ambiguous ids."""
    ids: dict[str, Path] = {}
    for path in paths:
        if path.stem in ids:
            raise InvalidInputError(f"{path}: id {path.stem} is also {ids[path.stem]}; keep one file per id")
        ids[path.stem] = path
    return ids


def _ground_truth_csv(root: Path) -> Path:
    """The one ``*ground_truth*.csv`` of a DISC21 folder."""
    found = sorted(root.glob("*ground_truth*.csv"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise InvalidInputError(f"{root}: {what} *ground_truth*.csv; the DISC21 layout needs exactly one, "
                                "with the header query_id,reference_id")
    return found[0]


def _read_ground_truth(path: Path, queries: set[str], references: set[str]) -> tuple[set[str], set[str]]:
    """(references some query maps to, queries mapped to none) of a DISC21 ground-truth CSV, checked against
    the files there are."""
    matched, unmatched, unknown = set(), set(), []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"query_id", "reference_id"} <= set(reader.fieldnames or ()):
            raise InvalidInputError(f"{path}: expected the header query_id,reference_id, got {reader.fieldnames}")
        for row in reader:
            query, reference = (row["query_id"] or "").strip(), (row["reference_id"] or "").strip()
            if query not in queries:
                unknown.append(f"queries/{query}")
            if reference and reference not in references:
                unknown.append(f"references/{reference}")
            if reference:
                matched.add(reference)
            else:
                unmatched.add(query)
    if unknown:
        raise CorruptCollectionError(f"{path}: names {len(unknown)} images that are not in the folder, e.g. "
                                     f"{', '.join(unknown[:3])}")
    if not matched:
        raise InvalidInputError(f"{path}: no query maps to a reference, so there is nothing to activate")
    return matched, unmatched


# --- descriptors of a list of files, cached --------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/activeindex/descriptors`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "activeindex" / "descriptors"


def cached_descriptors(paths: list[Path], extractor: Extractor, cache_dir: str | os.PathLike,
                       root: str | os.PathLike | None = None, desc: str = "descriptors",
                       progress: bool | None = None) -> np.ndarray:
    """Descriptors of image files, encoded once and kept under ``cache_dir``.

    The list is cut into chunks of `CACHE_CHUNK` files; each chunk's ``.npy`` is named by a hash of its files'
    names (relative to ``root`` when under it), sizes and modification times, and of the model and its
    preprocessing. Files are decoded in batches of `ENCODE_BATCH`, never all at once; a finished chunk is
    written atomically, so an interrupted run resumes from it.

    Args:
        paths: the image files, in order.
        extractor: the descriptor model.
        cache_dir: the cache folder (created).
        root: names in the hash are relative to it (a moved dataset keeps its cache).
        desc: the progress bar's label.
        progress: show a progress bar while encoding; None follows the log level.

    Returns:
        (len(paths), d) float32, L2-normalised, in the order of ``paths``.

    Raises:
        ImageDecodeError: a file cannot be decoded (chunks finished before it stay cached).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = json.dumps({"model": extractor.model_id, "preprocessing": extractor.preprocessing.to_dict()},
                       sort_keys=True)
    out = np.empty((len(paths), extractor.dim), np.float32)
    todo = []
    for start in range(0, len(paths), CACHE_CHUNK):
        chunk = paths[start:start + CACHE_CHUNK]
        file = cache_dir / f"{_chunk_key(chunk, root, model)}.npy"
        if not _load_chunk(file, out[start:start + len(chunk)]):
            todo.append((start, chunk, file))
    bar = progress_bar(sum(len(chunk) for _, chunk, _ in todo), desc, progress)
    for start, chunk, file in todo:
        for i in range(0, len(chunk), ENCODE_BATCH):
            batch = chunk[i:i + ENCODE_BATCH]
            out[start + i:start + i + len(batch)] = extractor.encode(batch, progress=False)
            bar.update(len(batch))
        save_atomic(file, out[start:start + len(chunk)])
    bar.close()
    logger.info("%s: %d descriptors, %d encoded, the rest from %s", desc, len(paths),
                sum(len(chunk) for _, chunk, _ in todo), cache_dir)
    return out


def _chunk_key(paths: list[Path], root: str | os.PathLike | None, model: str) -> str:
    """sha256 of the model and of each file's name, size and modification time."""
    digest = hashlib.sha256(model.encode())
    prefix = os.path.join(root, "") if root is not None else None  # plain strings: a million Path ops are slow
    for path in map(str, paths):
        try:
            stat = os.stat(path)
        except OSError as e:
            raise InvalidInputError(f"{path}: cannot read ({e.strerror or e})") from e
        name = path[len(prefix):] if prefix and path.startswith(prefix) else path
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_chunk(file: Path, out: np.ndarray) -> bool:
    """Fill ``out`` from a cached chunk; False when there is none (or an unusable one, then logged)."""
    if not file.is_file():
        return False
    try:
        cached = np.load(file)
    except (OSError, ValueError) as e:
        logger.warning("%s: unreadable cached descriptors (%s); encoding again", file, e)
        return False
    if cached.shape != out.shape or cached.dtype != np.float32:
        logger.warning("%s: cached descriptors of shape %s, expected %s; encoding again", file, cached.shape,
                       out.shape)
        return False
    out[:] = cached
    return True


def save_atomic(file: Path, x: np.ndarray) -> None:
    """np.save through a temporary file and a rename: readers never see half a chunk."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, x)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
