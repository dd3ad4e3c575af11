"""The copy verdict: one rule, used by every interface (the CLI, the Python API, the service and its C2PA
routes, the web page, `calibrate` and the benchmark's operating points).

A query's candidates are the registered images its index search returns: the `SHORTLIST` nearest by the
index's (approximate) distance, or ``k`` when more are asked for. Each carries its EXACT similarity: the
cosine between the query's descriptor and the image's stored descriptors, the best over the image, its
indexed views and, for an activated image, its released file (a copy is made from the released file,
whose descriptor activation moved: docs/decision.md measures what that adds). The candidates are re-ranked
by that similarity, best first (ties keep the index's order); the best one is called a copy when its
similarity is >= the threshold. The threshold is the collection's
calibrated one (`activeindex calibrate`: a measured false-copy rate), else `DEFAULT_THRESHOLD`, and every
verdict says which (``calibrated``).

`decide` applies the rule to one query's candidates; `best_of` is the same rule over arrays, for the
benchmark's thousands of queries.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import DEFAULT_THRESHOLD
from .errors import ActiveIndexError
from .evidence import Alignment, align

__all__ = ["SHORTLIST", "DEFAULT_THRESHOLD", "Candidate", "Verdict", "decide", "rank", "is_copy", "shortlist",
           "with_evidence", "best_of", "StoredThreshold"]

# candidates a verdict looks at, whatever k is asked (up to this many): the same verdict for k = 1 and k = 10
# (chosen by benchmarks/decision.py, docs/decision.md)
SHORTLIST = 10


class Candidate(Protocol):
    """What the rule reads of a search result (`collection.Match`)."""

    similarity: float  # exact cosine to the registered image's stored descriptors (its views', its released file's)

    def to_dict(self) -> dict: ...


def shortlist(k: int) -> int:
    """How many index results a verdict asked for ``k`` candidates looks at: max(k, `SHORTLIST`)."""
    return max(k, SHORTLIST)


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The candidates by exact similarity, best first; ties keep their given (the index's) order."""
    return sorted(candidates, key=lambda c: -c.similarity)


def is_copy(similarity: float | np.ndarray, threshold: float) -> bool | np.ndarray:
    """The rule itself: a similarity at or above the threshold is a copy (elementwise for arrays)."""
    return similarity >= threshold


@dataclass(frozen=True)
class Verdict:
    """One query's answer.

    Attributes:
        is_copy: the best candidate's similarity is >= ``threshold``.
        threshold: the similarity from which a candidate is a copy.
        calibrated: whether ``threshold`` was chosen by `activeindex calibrate` on this collection (with a
            measured false-copy rate); False: the default (`DEFAULT_THRESHOLD`) or an operator's own value.
        candidates: the candidates shown (at most the k asked for), by exact similarity, best first.
        evidence: where the copy sits in the match's original (`evidence.align`), when asked for; for a
            query that is not a copy, no evidence with the reason "not a copy". None: not asked for.
    """

    is_copy: bool
    threshold: float
    calibrated: bool
    candidates: tuple[Candidate, ...]
    evidence: Alignment | None = None

    @property
    def match(self) -> Candidate | None:
        """The best candidate (a copy's source when ``is_copy``), or None when the collection is empty."""
        return self.candidates[0] if self.candidates else None

    @property
    def copies(self) -> list[Candidate]:
        """The candidates the rule calls copies: the match first, then any other at or above the threshold."""
        return [c for c in self.candidates if is_copy(c.similarity, self.threshold)]

    def to_dict(self) -> dict[str, Any]:
        """``{"is_copy", "threshold", "calibrated", "matches": [...]}``; with evidence asked for, the first match
        also carries ``evidence`` (`evidence.Evidence.to_dict`, or None) and ``evidence_reason`` (None, or why)."""
        matches = [c.to_dict() for c in self.candidates]
        if matches and self.evidence is not None:
            found = self.evidence.to_dict()
            matches[0] |= {"evidence": found["evidence"], "evidence_reason": found["reason"]}
        return {"is_copy": self.is_copy, "threshold": self.threshold, "calibrated": self.calibrated,
                "matches": matches}


def decide(candidates: Iterable[Candidate], threshold: float, calibrated: bool, k: int | None = None) -> Verdict:
    """The verdict on one query's candidates (its index search results, `shortlist` of them).

    Args:
        candidates: the search results, in any order.
        threshold: the copy threshold.
        calibrated: whether the threshold is a calibrated one.
        k: how many candidates the verdict keeps to show (all when None); the decision is made on all of them.

    Returns:
        the `Verdict`, its candidates re-ranked by exact similarity.

    Example:
        >>> v = decide(col.search_descriptors(q, shortlist(5))[0], col.threshold, col.calibrated, k=5)
        >>> v.is_copy, v.match.original_path
        (True, 'photos/cat.png')
    """
    ranked = rank(candidates)
    copy = bool(ranked) and bool(is_copy(ranked[0].similarity, threshold))
    return Verdict(copy, float(threshold), bool(calibrated), tuple(ranked[:k] if k is not None else ranked))


def with_evidence(verdict: Verdict, query: np.ndarray, original: Callable[[Candidate], np.ndarray]) -> Verdict:
    """``verdict`` with the evidence of where ``query`` ((H, W, 3) uint8) sits in its match's original
    (`evidence.align`); only a copy is aligned, the others get the reason "not a copy".

    Args:
        original: loads a candidate's original as (H, W, 3) uint8 (`Collection.original_image`); an
            `ActiveIndexError` it raises becomes the reason "original not reachable (...)".
    """
    if not verdict.is_copy:
        return replace(verdict, evidence=Alignment(None, "not a copy"))
    try:
        source = original(verdict.match)
    except ActiveIndexError as e:
        return replace(verdict, evidence=Alignment(None, f"original not reachable ({e})"))
    return replace(verdict, evidence=align(query, source))


def best_of(similarities: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`decide`'s choice over arrays: per query, the best exact similarity among its candidates and its id.

    Args:
        similarities: (n, c) float, each candidate's exact similarity in the index's order; NaN where a query
            has fewer candidates.
        ids: (n, c) int, the candidates' ids (-1 where there is none).

    Returns:
        (n,) float64 best similarities (-inf for a query with no candidate) and (n,) int64 their ids (-1); a
        tie goes to the earlier candidate, as in `rank`.
    """
    scores = np.where(np.isnan(similarities) | (ids < 0), -np.inf, similarities).astype(np.float64)
    if scores.shape[1] == 0:
        return np.full(len(scores), -np.inf), np.full(len(scores), -1, np.int64)
    best = np.argmax(scores, axis=1)  # the first maximum: ties go to the index's earlier rank
    rows = np.arange(len(scores))
    found = scores[rows, best]
    return found, np.where(np.isfinite(found), ids[rows, best], -1).astype(np.int64)


class StoredThreshold:
    """A collection's threshold as its manifest stores it (`calibrate.calibrate` writes it there), read again
    whenever the file changed: a server started before a calibration uses it from the next request on."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self._calibration = path, manifest.get("calibration")
        self._seen = self._stat()  # the file as ``manifest`` was read from it

    def calibration(self) -> dict | None:
        """The stored calibration (`calibrate.Calibration.to_dict`), or None; one stat per call."""
        seen = self._stat()
        if seen != self._seen and seen is not None:
            try:
                self._calibration = json.loads(self.path.read_text()).get("calibration")
                self._seen = seen
            except (OSError, ValueError):  # caught mid-replace or gone: keep the last one read
                pass
        return self._calibration

    def threshold(self) -> float:
        """The calibrated threshold, else `DEFAULT_THRESHOLD`."""
        calibration = self.calibration()
        return float(calibration["threshold"]) if calibration else DEFAULT_THRESHOLD

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino
