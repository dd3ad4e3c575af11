"""The real-photo corpus for benchmarks, assembled from offline sources (STACK.md).

`fetch_corpus` copies every readable photo of the Debian photo packages and scikit-image, scaled to at
most ``max_side`` pixels (JPEG q95), drops exact and near duplicates (descriptor cosine > 0.9: one
wallpaper's light / dark / portrait variants are one photo), and splits the rest, seeded, into:

  activate     images to activate and query (the "owner's" images)
  distractors  passive references indexed beside them
  train        the index training set (disjoint from everything indexed)
  nonmatching  images never indexed, edited into the copy-detection negatives

A ``manifest.json`` lists each image with its source package, original path and licence;
``descriptors.npy`` holds their descriptors in the same order.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ActiveIndexError, CorruptCollectionError
from ..extractor import Extractor
from ..imageio import load_image, sha256_file
from ..progress import progress_bar

__all__ = ["PhotoSource", "SOURCES", "CorpusImage", "Corpus", "fetch_corpus", "SPLITS"]

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


class Corpus:
    """A fetched corpus folder: images by split and their descriptors."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        try:
            manifest = json.loads((self.root / "manifest.json").read_text())
            self.descriptors = np.load(self.root / "descriptors.npy")
        except (OSError, ValueError) as e:
            raise CorruptCollectionError(f"{self.root}: not a corpus ({e}); run `make data` "
                                         "(activeindex data fetch)") from e
        self.manifest = manifest
        self.images = [CorpusImage(**item) for item in manifest["images"]]

    def split(self, name: str) -> tuple[list[Path], np.ndarray]:
        """(paths, (n, d) descriptors) of one split."""
        idx = [i for i, im in enumerate(self.images) if im.split == name]
        return [self.root / self.images[i].file for i in idx], self.descriptors[idx]


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
                 sources: list[PhotoSource] = SOURCES, per_source: int | None = None,
                 progress: bool | None = None) -> Corpus:
    """Assemble the corpus (module docstring) into ``out``.

    Args:
        out: the corpus folder (created; replaced files are rewritten).
        max_side: longest side of the stored copies, pixels.
        n_activate, n_nonmatching: sizes of those splits.
        train_share: share of the remaining images used for training (the rest are distractors).
        seed: the split's seed.
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
            Image.fromarray(_scaled(load_image(path), max_side)).save(out / name, quality=95)
            vector = extractor.encode(out / name)  # the descriptor of the stored file, as queries will see it
        except ActiveIndexError as e:
            logger.info("left out %s", e)
            continue
        if kept and float(np.max(vectors[:len(kept)] @ vector)) > NEAR_DUPLICATE_COSINE:
            continue
        vectors[len(kept)] = vector
        kept.append(CorpusImage(name, "", source.package, path, source.licence, sha))
    bar.close()
    _assign_splits(kept, n_activate, n_nonmatching, train_share, seed)
    np.save(out / "descriptors.npy", vectors[:len(kept)])
    counts = {s: sum(im.split == s for im in kept) for s in SPLITS}
    manifest = {"max_side": max_side, "seed": seed, "near_duplicate_cosine": NEAR_DUPLICATE_COSINE,
                "candidates": len(candidates), "counts": counts, "images": [asdict(im) for im in kept]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return Corpus(out)


def _assign_splits(images: list[CorpusImage], n_activate: int, n_nonmatching: int, train_share: float,
                   seed: int) -> None:
    order = np.random.default_rng(seed).permutation(len(images))
    rest = len(images) - n_activate - n_nonmatching
    if rest < 2:
        raise ActiveIndexError(f"only {len(images)} distinct photos: too few for {n_activate} + {n_nonmatching}")
    n_train = int(rest * train_share)
    bounds = np.cumsum([n_activate, n_nonmatching, n_train])
    for rank, i in enumerate(order):
        images[i].split = ("activate" if rank < bounds[0] else "nonmatching" if rank < bounds[1]
                           else "train" if rank < bounds[2] else "distractors")
