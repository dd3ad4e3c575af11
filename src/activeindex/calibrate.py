"""The copy decision: a similarity threshold with an honest false-copy rate.

A query is called a copy when its best match's similarity (exact cosine to the stored descriptors, the
best over the index's shortlist re-ranked: decision.py, the rule every interface applies) is at least the
threshold. `calibrate` chooses it on the collection itself, from real photos that are NOT
registered (non-matching queries), for the queries a server sees: each non-matching photo is queried as
every KIND of query (unedited, photometric edits, geometric and overlay edits, DISC21's "auto"
compositions; `DEFAULT_KINDS`), one edit drawn per query.

The rule (split conformal): the photos are split at random into a part that CHOOSES the threshold and a
held-out part that MEASURES it. For each kind, with n choosing scores, the threshold lets through at most
k of them, k the largest with (k + 1) / (n + 1) <= target: for a new non-matching query of that kind
(exchangeable with the choosing ones), the chance of being called a copy is then at most the target,
whatever the scores' distribution. The stored threshold is the highest over the kinds, so the bound holds
for each kind, the worst included. The false-copy rate reported is the held-out part's, on queries the
threshold was not chosen from, with its 95 % interval; edited copies of registered images (matching
queries) give the true-copy rate at that threshold. The result is stored in the collection's manifest,
and the service uses it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ActiveIndexError, InvalidInputError
from .imageio import ImageLimits, image_size, list_images, load_image, read_file, sha256_file
from .progress import progress_bar

if TYPE_CHECKING:  # the inputs are checked before torch and the model load (`check_nonmatching`)
    from .collection import Collection

__all__ = ["Calibration", "calibrate", "check_nonmatching", "held_out", "conformal_threshold", "threshold_for_fpr",
           "wilson_interval", "DEFAULT_KINDS", "MAX_TARGET", "HELD_OUT"]

logger = logging.getLogger(__name__)

# the kinds of query a server sees, each a list of edits (one drawn per query)
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "unedited": ("none",),
    "photometric": ("brightness_0.5", "brightness_2.0", "contrast_0.5", "contrast_2.0", "hue_0.2", "blur_11",
                    "jpeg_50", "resize_0.5"),
    "geometric": ("rotation_25", "center_crop_0.5", "meme", "screenshot"),
    "auto": ("auto",),
}
MAX_TARGET = 0.2  # a higher false-copy rate makes the copy decision meaningless
HELD_OUT = 0.25  # share of the non-matching photos kept out of the choice, to measure it
MIN_PER_TARGET = 10  # non-matching photos needed: MIN_PER_TARGET / target


@dataclass
class Calibration:
    """A calibrated threshold and what it achieves on queries it was not chosen from."""

    threshold: float  # call a copy when the best match's similarity is >= this
    target_fpr: float
    fpr: float  # held-out non-matching queries called copies, the worst kind's
    fpr_interval: tuple[float, float]  # 95 % Wilson interval
    tpr: float  # matching queries whose best match is their source with similarity >= threshold, all kinds
    tpr_interval: tuple[float, float]
    n_nonmatching: int  # non-matching photos (each queried as every kind)
    n_held_out: int  # of them, kept out of the choice
    n_matching: int  # matching queries (all kinds)
    kinds: dict[str, dict] = field(default_factory=dict)  # per kind: edits, threshold, fpr (+interval), tpr
    seed: int = 0
    rule: str = "split conformal: (k + 1) / (n + 1) <= target per kind; the highest threshold over the kinds"
    calibrated_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def held_out(n: int, seed: int = 0) -> np.ndarray:
    """(n,) bool: a seeded random `HELD_OUT` share of n items, kept out of the choice to measure it."""
    held = np.zeros(n, bool)
    held[np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]).permutation(n)[:math.ceil(HELD_OUT * n)]] = 1
    return held


def conformal_threshold(scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold letting through at most k of the n ``scores``, k the largest with
    (k + 1) / (n + 1) <= ``target_fpr``: a new exchangeable score passes it with probability <= the target.

    Raises:
        InvalidInputError: too few scores for any k (n + 1 < 1 / target).
    """
    allowed = math.floor(target_fpr * (len(scores) + 1)) - 1
    if allowed < 0:
        raise InvalidInputError(f"{len(scores)} scores cannot bound a false-copy rate of {target_fpr}: "
                                f"at least {math.ceil(1 / target_fpr) - 1} are needed")
    return threshold_for_fpr(scores, allowed / len(scores))


def threshold_for_fpr(nonmatching: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold at which at most ``floor(target_fpr * n)`` of the given best-match similarities
    are >= it (an in-sample rule: its rate on NEW queries is higher; `conformal_threshold` bounds that)."""
    allowed = math.floor(target_fpr * len(nonmatching) + 1e-9)
    ranked = np.sort(np.asarray(nonmatching, np.float64))[::-1]
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else float(ranked[-1])


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def check_nonmatching(nonmatching: Sequence[str | Path], target_fpr: float,
                      limits: ImageLimits = ImageLimits()) -> list[Path]:
    """The readable images among ``nonmatching``, checked without a model (paths, counts, image headers).

    Raises:
        InvalidInputError: a target outside (0, `MAX_TARGET`], a path that does not exist, or fewer than
            ``MIN_PER_TARGET / target`` readable images (said as soon as that many can no longer be reached).
    """
    if not 0 < target_fpr <= MAX_TARGET:
        raise InvalidInputError(f"the target false-copy rate must be in (0, {MAX_TARGET}], got {target_fpr}")
    missing = [str(p) for p in nonmatching if not Path(p).exists()]
    if missing:
        raise InvalidInputError(f"no such file or folder: {', '.join(missing[:5])}"
                                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    needed, paths = math.ceil(MIN_PER_TARGET / target_fpr), list_images(list(nonmatching))
    if len(paths) < needed:
        raise InvalidInputError(f"{len(paths)} non-matching images cannot calibrate a false-copy rate of "
                                f"{target_fpr}: give at least {needed} ({MIN_PER_TARGET} / target)")
    readable, skipped = [], []
    for path in paths:
        try:
            width, height = image_size(read_file(path), str(path))
            if width * height > limits.max_pixels or min(width, height) < limits.min_side:
                raise InvalidInputError(f"{path}: {width}x{height} is outside the image limits")
            readable.append(path)
        except ActiveIndexError as e:
            skipped.append(str(e))
            if len(paths) - len(skipped) < needed:  # stop as soon as the count cannot be reached
                raise InvalidInputError(f"{len(skipped)} of the {len(paths)} non-matching images are unreadable "
                                        f"(the first: {skipped[0]}): fewer than the {needed} needed remain") from None
    for reason in skipped:
        logger.warning("skipped non-matching image: %s", reason)
    return readable


def calibrate(collection: Collection, nonmatching: Sequence[str | Path], target_fpr: float = 0.01,
              n_matching: int = 100, kinds: dict[str, Sequence[str]] | None = None, seed: int = 0,
              progress: bool | None = None) -> Calibration:
    """Choose the copy threshold for ``target_fpr`` (split conformal, per kind of query) and store it.

    Args:
        collection: a trained collection with registered images.
        nonmatching: files or folders of real photos that are NOT registered (nor near-copies of registered
            ones); at least ``10 / target_fpr`` of them.
        target_fpr: the false-copy rate allowed for each kind of query, at most 0.2.
        n_matching: registered images (a seeded random sample) turned into matching queries of every kind.
        kinds: {kind: edit names}, one edit drawn per query; default `DEFAULT_KINDS`.
        seed: the split, the sample and the edits' draws.
        progress: progress bar.

    Returns:
        the `Calibration`, also written to the collection's manifest.

    Raises:
        InvalidInputError: a bad target or path, too few readable non-matching images, non-matching images
            that are registered (named), nothing registered.
    """
    kinds = {k: tuple(v) for k, v in (kinds or DEFAULT_KINDS).items()}
    paths = check_nonmatching(nonmatching, target_fpr, collection.extractor.limits)
    _refuse_registered(collection, paths)
    held = set(np.flatnonzero(held_out(len(paths), seed)).tolist())
    negatives = _scores(collection, [(p, None) for p in paths], kinds, seed, "non-matching", progress)
    positives = _scores(collection, _matching_sources(collection, n_matching, seed), kinds, seed + 1, "matching",
                        progress)
    _refuse_registered(collection, paths)  # registered meanwhile: their scores were not non-matching
    per_kind, threshold = {}, -math.inf
    for kind, edits in kinds.items():
        choose = np.array([s for i, (s, _) in enumerate(negatives[kind]) if i not in held and s is not None])
        per_kind[kind] = {"edits": list(edits), "threshold": conformal_threshold(choose, target_fpr)}
        threshold = max(threshold, per_kind[kind]["threshold"])
    worst = _rates(per_kind, kinds, negatives, positives, held, threshold)
    result = Calibration(threshold, target_fpr, fpr=worst[0], fpr_interval=worst[1], tpr=worst[2],
                         tpr_interval=worst[3], n_nonmatching=len(paths), n_held_out=len(held),
                         n_matching=sum(len(v) for v in positives.values()), kinds=per_kind, seed=seed,
                         calibrated_at=datetime.now(UTC).isoformat(timespec="seconds"))
    collection.save_calibration(result.to_dict())
    return result


def _rates(per_kind: dict, kinds: dict, negatives: dict, positives: dict, held: set[int],
           threshold: float) -> tuple[float, tuple[float, float], float, tuple[float, float]]:
    """Fill each kind's held-out false-copy rate and true-copy rate at ``threshold``; returns the worst kind's
    false-copy rate (and interval) and the true-copy rate over all kinds (and interval)."""
    worst, hits, total = (0.0, (0.0, 1.0)), 0, 0
    for kind in kinds:
        test = [s for i, (s, _) in enumerate(negatives[kind]) if i in held and s is not None]
        false = sum(s >= threshold for s in test)
        found = [bool(ok and s >= threshold) for s, ok in positives[kind] if s is not None]
        per_kind[kind] |= {"fpr": false / max(1, len(test)), "fpr_interval": wilson_interval(false, len(test)),
                           "n_held_out": len(test), "tpr": sum(found) / max(1, len(found)),
                           "tpr_interval": wilson_interval(sum(found), len(found)), "n_matching": len(found)}
        if per_kind[kind]["fpr"] >= worst[0]:
            worst = (per_kind[kind]["fpr"], per_kind[kind]["fpr_interval"])
        hits, total = hits + sum(found), total + len(found)
    return worst[0], worst[1], hits / max(1, total), wilson_interval(hits, total)


def _refuse_registered(collection: Collection, paths: list[Path]) -> None:
    """Non-matching photos must not be registered: their queries would be matches."""
    collection.refresh()
    registered = [p.name for p in paths if collection.catalog.find_sha256(sha256_file(p)) is not None]
    if registered:
        raise InvalidInputError(f"{len(registered)} of the non-matching images are registered in "
                                f"{collection.root}: {', '.join(registered[:5])}"
                                + (f" (and {len(registered) - 5} more)" if len(registered) > 5 else "")
                                + "; leave them out")


def _matching_sources(collection: Collection, n: int, seed: int) -> list[tuple[Path, int]]:
    """(file, id) of a seeded random sample of registered images: the activated file when there is one."""
    ids = collection.catalog.ids()
    if not len(ids):
        raise InvalidInputError(f"{collection.root}: no registered images to make matching queries from")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    chosen = rng.choice(ids, size=min(n, len(ids)), replace=False)
    records = collection.catalog.get(sorted(int(i) for i in chosen))
    return [(Path(r.activated_path or r.original_path), image_id) for image_id, r in records.items()]


def _scores(collection: Collection, queries: list[tuple[Path, int | None]], kinds: dict[str, tuple[str, ...]],
            seed: int, what: str, progress: bool | None) -> dict[str, list[tuple[float | None, bool]]]:
    """Per kind, per query in order: (the verdict's match's similarity, it is the expected id); (None, False) for
    a file that could not be read or edited. Each image is decoded once and queried as every kind."""
    from .edits import apply_edit
    out: dict[str, list] = {kind: [] for kind in kinds}
    streams = dict(zip(kinds, np.random.SeedSequence(seed).spawn(len(kinds) + 2)[2:]))
    rngs = {kind: np.random.default_rng(stream) for kind, stream in streams.items()}
    bar = progress_bar(len(queries), f"calibrate ({what})", progress)
    for path, expected in queries:
        draws = {kind: (edits[int(rngs[kind].integers(len(edits)))], int(rngs[kind].integers(2**31)))
                 for kind, edits in kinds.items()}  # drawn whether or not the file reads: seeds stay aligned
        try:
            image = load_image(path)
            edited = [apply_edit(edit, image, seed=edit_seed) for edit, edit_seed in draws.values()]
        except ActiveIndexError as e:
            logger.warning("skipped calibration query: %s", e)
            for kind in kinds:
                out[kind].append((None, False))
            bar.update(1)
            continue
        for kind, verdict in zip(kinds, collection.verdicts(edited, k=1)):  # the verdicts' own rule (decision.py)
            match = verdict.match
            out[kind].append((match.similarity, match.id == expected) if match else (-1.0, False))
        bar.update(1)
    bar.close()
    return out
