"""The copy decision: a similarity threshold chosen for a target false-positive rate.

A query is called a copy when its best match's similarity (exact cosine to the stored descriptor) is
at least the threshold. `calibrate` measures it on the collection itself: edited copies of REAL photos
that are not registered (non-matching queries) give the false-positive rate, edited copies of registered
images (matching queries) give the true-positive rate at the chosen threshold. The result is stored in
the collection's manifest and the service uses it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .collection import Collection
from .edits import apply_edit
from .errors import ActiveIndexError, InvalidInputError
from .imageio import list_images, load_image
from .progress import progress_bar

__all__ = ["Calibration", "calibrate", "threshold_for_fpr", "wilson_interval"]

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    """A calibrated threshold and what it achieves on the calibration queries."""

    threshold: float  # call a copy when the best match's similarity is >= this
    target_fpr: float
    fpr: float  # non-matching queries called copies, at the threshold
    fpr_interval: tuple[float, float]  # 95 % Wilson interval
    tpr: float  # matching queries whose best match is their source with similarity >= threshold
    tpr_interval: tuple[float, float]
    n_nonmatching: int
    n_matching: int
    edits: tuple[str, ...]  # applied to both kinds of query, one drawn per query (seeded)
    seed: int
    calibrated_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def threshold_for_fpr(nonmatching: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold at which at most ``floor(target_fpr * n)`` of the given best-match similarities
    (non-matching queries) are >= it."""
    allowed = math.floor(target_fpr * len(nonmatching))
    ranked = np.sort(np.asarray(nonmatching, np.float64))[::-1]
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else float(ranked[-1])


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def calibrate(collection: Collection, nonmatching: Sequence[str | Path], target_fpr: float = 0.01,
              n_matching: int = 100, edits: Sequence[str] = ("auto",), seed: int = 0,
              progress: bool | None = None) -> Calibration:
    """Choose the copy threshold for ``target_fpr`` and store it in the collection.

    Args:
        collection: a trained collection with registered images.
        nonmatching: files or folders of real photos that are NOT registered (and not near-copies of
            registered ones); at least ``1 / target_fpr`` of them, so the rate can be measured.
        target_fpr: the share of non-matching queries that may be called copies.
        n_matching: registered images (a seeded random sample) turned into matching queries.
        edits: edit names (`activeindex.edits`), one drawn per query for both kinds.
        seed: draws of images and edits.
        progress: progress bar.

    Returns:
        the `Calibration`, also written to the collection's manifest.

    Raises:
        InvalidInputError: target out of (0, 1), too few non-matching images, nothing registered.
    """
    if not 0 < target_fpr < 1:
        raise InvalidInputError(f"target false-positive rate must be in (0, 1), got {target_fpr}")
    paths = list_images(list(nonmatching))
    if len(paths) < math.ceil(1 / target_fpr):
        raise InvalidInputError(f"{len(paths)} non-matching images cannot measure a false-positive rate of "
                                f"{target_fpr}: give at least {math.ceil(1 / target_fpr)}")
    streams = np.random.SeedSequence(seed).spawn(3)  # independent draws: negatives' edits, sample, its edits
    negatives = _best_matches(collection, [(p, None) for p in paths], edits, streams[0], progress)
    positives = _best_matches(collection, _matching_sources(collection, n_matching, streams[1]), edits,
                              streams[2], progress)
    if len(negatives) < math.ceil(1 / target_fpr):
        raise InvalidInputError(f"only {len(negatives)} non-matching images were readable: give at least "
                                f"{math.ceil(1 / target_fpr)} to measure a false-positive rate of {target_fpr}")
    threshold = threshold_for_fpr(np.array([s for s, _ in negatives]), target_fpr)
    false_pos = sum(s >= threshold for s, _ in negatives)
    true_pos = sum(found and s >= threshold for s, found in positives)
    result = Calibration(
        threshold, target_fpr, fpr=false_pos / len(negatives), fpr_interval=wilson_interval(false_pos, len(negatives)),
        tpr=true_pos / max(1, len(positives)), tpr_interval=wilson_interval(true_pos, len(positives)),
        n_nonmatching=len(negatives), n_matching=len(positives), edits=tuple(edits), seed=seed,
        calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"))
    collection.save_calibration(result.to_dict())
    return result


def _matching_sources(collection: Collection, n: int, stream: np.random.SeedSequence) -> list[tuple[Path, int]]:
    """(file, id) of a seeded random sample of registered images: the activated file when there is one."""
    ids = collection.catalog.ids()
    if not len(ids):
        raise InvalidInputError(f"{collection.root}: no registered images to make matching queries from")
    chosen = np.random.default_rng(stream).choice(ids, size=min(n, len(ids)), replace=False)
    records = collection.catalog.get(sorted(int(i) for i in chosen))
    return [(Path(r.activated_path or r.original_path), image_id) for image_id, r in records.items()]


def _best_matches(collection: Collection, queries: list[tuple[Path, int | None]], edits: Sequence[str],
                  stream: np.random.SeedSequence, progress: bool | None) -> list[tuple[float, bool]]:
    """(best similarity, best match is the expected id) of each edited query; unreadable files skipped."""
    rng = np.random.default_rng(stream)
    out = []
    bar = progress_bar(len(queries), "calibrate", progress)
    for path, expected in queries:
        edit, edit_seed = edits[int(rng.integers(len(edits)))], int(rng.integers(2**31))
        try:
            query = apply_edit(edit, load_image(path), seed=edit_seed)
        except ActiveIndexError as e:
            logger.warning("skipped calibration query: %s", e)
            continue
        best = collection.search(query, k=1)[0]
        out.append((best[0].similarity, best[0].id == expected) if best else (-1.0, False))
        bar.update(1)
    bar.close()
    return out
