"""The benchmark's copy decisions: the operating points of the rule the product ships (decision.py).

Every query's candidates are the index's first `decision.SHORTLIST` results; each gets its exact similarity
(the cosine to the stored descriptors of what it points to: the original's, a reference's, in the rows
with views the best over the image's views, and in a mode that released activated files the best with the
released file's own descriptor, as the catalog stores them), and the best is called a copy at or above a
threshold (`decision.best_of`, `decision.is_copy`). For a false-copy rate r the threshold is the
lowest that calls at most floor(r m) of the m non-matching queries copies (`calibrate.threshold_for_fpr`);
a matching query is a true copy when its verdict is a copy of its own original. Reported at `RATES`, per
edit and over the paper's 14 edits pooled, with Wilson intervals (the threshold taken as fixed).

The non-matching queries: photos never indexed (the corpus's non-matching and training photos: the training
set trains the codec but is never added), each under every edit of `decision_edits`; DISC21's queries as
they come.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..calibrate import threshold_for_fpr
from ..codec import search
from ..decision import SHORTLIST, best_of, is_copy
from .metrics import paired_difference_interval, proportion_interval
from .views import SUFFIX, search_images

__all__ = ["RATES", "Stored", "exact_similarities", "verdicts", "operating_points", "answered", "difference",
           "decisions", "point_rows", "decision_cells", "decision_setup", "DECISION_NOTE", "ANSWERED"]

RATES = (0.01, 0.001)  # the false-copy rates reported
DECISION_NOTE = ("the share of matching queries (the paper's 14 edits of each activated image, pooled; or one "
                 "edit) whose verdict is a copy of their own original under the rule every interface ships: the "
                 "index's first {shortlist} results re-ranked by exact similarity to the stored descriptors, the "
                 "best a copy at or above the threshold that calls at most 1 % (0.1 %) of {queries} non-matching "
                 "queries copies ({photos} photos never indexed, from {sources}, each under {edits} edits); "
                 "Wilson's interval, the threshold taken as fixed.")
ANSWERED = "answered"  # the column of the share of queries whose verdict's match is their original (any similarity)


@dataclass
class Stored:
    """The stored descriptors of what an index holds, found by id as the benchmark numbers them.

    Attributes:
        references: (m, d) the references (distractor photos, then their crops), ids ``offset + row``.
        originals: (n, d) the originals' (never the activated files'), ids ``0..n-1``.
        offset: the references' first id.
        reference_views: (p, V, d) the views of the first p references (the photos), or None.
        original_views: (n, V, d) the originals' views, or None.
        released: (n, d) the released files' descriptors (a mode that activated the originals), or None.
    """

    references: np.ndarray
    originals: np.ndarray
    offset: int
    reference_views: np.ndarray | None = None
    original_views: np.ndarray | None = None
    released: np.ndarray | None = None


def exact_similarities(queries: np.ndarray, ids: np.ndarray, stored: Stored, views: bool,
                       chunk: int = 256) -> np.ndarray:
    """(n, c) exact similarity of each query to each of its candidates ((n, c) ids, -1: none -> NaN): the best
    over the candidate's stored vectors (its own, and with ``views`` its views')."""
    whole = np.concatenate([stored.references, stored.originals])
    refs = len(stored.references)
    row = np.where(ids >= stored.offset, ids - stored.offset, refs + ids)
    out = np.full(ids.shape, np.nan)
    for start in range(0, len(ids), chunk):
        part, q = slice(start, start + chunk), queries[start:start + chunk]
        valid = ids[part] >= 0
        sims = np.einsum("nd,ncd->nc", q, whole[np.where(valid, row[part], 0)])
        if views and stored.original_views is not None:
            sims = np.maximum(sims, _view_similarities(q, ids[part], stored))
        if stored.released is not None:
            original = (ids[part] >= 0) & (ids[part] < len(stored.originals))
            released = np.einsum("nd,ncd->nc", q, stored.released[np.where(original, ids[part], 0)])
            sims = np.maximum(sims, np.where(original, released, -np.inf))
        out[part] = np.where(valid, sims, np.nan)
    return out


def _view_similarities(q: np.ndarray, ids: np.ndarray, stored: Stored) -> np.ndarray:
    """(n, c) the best similarity over each candidate's views (-inf for a candidate without views)."""
    photos = len(stored.reference_views)
    table = np.concatenate([stored.reference_views, stored.original_views])
    local = ids - stored.offset
    row = np.where(ids < 0, -1, np.where(ids >= stored.offset, np.where(local < photos, local, -1), photos + ids))
    sims = np.einsum("nd,ncvd->ncv", q, table[np.maximum(row, 0)]).max(axis=2)
    return np.where(row >= 0, sims, -np.inf)


def verdicts(queries: np.ndarray, ids: np.ndarray, stored: Stored, views: bool) -> tuple[np.ndarray, np.ndarray]:
    """The verdicts' (n,) best similarity and (n,) id (-1: none) over each query's first `SHORTLIST` candidates."""
    shortlist = ids[:, :SHORTLIST]
    return best_of(exact_similarities(queries, shortlist, stored, views), shortlist)


def operating_points(nonmatching: tuple[np.ndarray, np.ndarray], matching: dict[str, tuple[np.ndarray, np.ndarray]],
                     gt: np.ndarray, edits: list[str]) -> dict:
    """True copies at each of `RATES` false copies.

    Args:
        nonmatching: the non-matching queries' verdicts ((m,) best similarity, (m,) id).
        matching: label -> the verdicts of that edit's matching queries.
        gt: (n,) each matching query's original.
        edits: the labels pooled into "paper average" (the paper's 14 edits present).

    Returns:
        ``{rate: {"threshold", "false_copies", "nonmatching", "edits": {label: {"rate", "ci"}},
        "paper_average": {"rate", "ci", "n"}, "hits": (n * len(edits),) bool list, pooled}}``.
    """
    out = {}
    for rate in RATES:
        threshold = threshold_for_fpr(nonmatching[0], rate)
        hits = {label: (found == gt) & is_copy(best, threshold) for label, (best, found) in matching.items()}
        pooled = np.concatenate([hits[label] for label in edits]) if edits else np.zeros(0, bool)
        out[str(rate)] = {"threshold": threshold, "false_copies": int(is_copy(nonmatching[0], threshold).sum()),
                          "nonmatching": len(nonmatching[0]),
                          "edits": {label: {"rate": float(h.mean()), "ci": proportion_interval(h)}
                                    for label, h in hits.items()},
                          "paper_average": {"rate": float(pooled.mean()) if pooled.size else float("nan"),
                                            "ci": proportion_interval(pooled), "n": int(pooled.size)},
                          "hits": pooled.tolist()}
    return out


def answered(matching: dict[str, tuple[np.ndarray, np.ndarray]], gt: np.ndarray, edits: list[str]) -> dict:
    """R@1 as the product answers: the share of matching queries whose verdict's match (the re-ranked shortlist's
    best, whatever its similarity) is their own original, per edit and pooled over ``edits``, with Wilson's
    intervals: ``{"edits": {label: {"rate", "ci"}}, "paper_average": {"rate", "ci", "n"}}``."""
    hits = {label: found == gt for label, (_, found) in matching.items()}
    pooled = np.concatenate([hits[label] for label in edits]) if edits else np.zeros(0, bool)
    return {"edits": {label: {"rate": float(h.mean()), "ci": proportion_interval(h)} for label, h in hits.items()},
            "paper_average": {"rate": float(pooled.mean()) if pooled.size else float("nan"),
                              "ci": proportion_interval(pooled), "n": int(pooled.size)}}


def difference(a: dict, b: dict) -> dict:
    """Paired difference of two modes' pooled true copies at each rate (Newcombe's interval)."""
    return {rate: {"rate": a[rate]["paper_average"]["rate"] - b[rate]["paper_average"]["rate"],
                   "ci": paired_difference_interval(np.array(a[rate]["hits"]), np.array(b[rate]["hits"]))}
            for rate in a}


def point_rows(index: dict, modes: list[str]) -> list[dict[str, str]]:
    """One row per edit (and the paper's average): each mode's true copies at each rate, with intervals."""
    decision = index["decision"]
    first = decision["points"][modes[0]][str(RATES[0])]
    labels = list(first["edits"])
    rows = []
    for label in [*labels, "paper average"]:
        row = {"edit": label}
        for mode in modes:
            if ANSWERED in decision:  # runs before the column existed lack it
                answer = decision[ANSWERED][mode]
                row[f"{mode}, {ANSWERED}"] = _cell(answer["paper_average"] if label == "paper average"
                                                   else answer["edits"][label])
            for rate in RATES:
                point = decision["points"][mode][str(rate)]
                cell = point["paper_average"] if label == "paper average" else point["edits"][label]
                row[f"{mode}, {100 * rate:g} % false"] = _cell(cell)
        rows.append(row)
    return rows


def decisions(index, views_index, per_image: int, results: dict, stored: Stored, released: dict[str, np.ndarray],
              negatives: np.ndarray, gt: np.ndarray, edits: list[str]) -> dict:
    """One index's operating points, per mode (`operating_points`), and the paired active - passive difference.

    Args:
        index: the index (the modes without views); ``views_index``: the same with the views (or None).
        per_image: vectors per image in ``views_index``.
        results: label -> mode -> the mode's queries and their search results (``.queries``, ``.I``).
        released: mode -> (n, d) its released files' descriptors (modes that activated the originals).
        negatives: (m, d) the non-matching queries.
        edits: the labels pooled into the paper's average.
    """
    found = {False: search(index, negatives, SHORTLIST)[1]}
    if views_index is not None:
        found[True] = search_images(views_index, negatives, SHORTLIST, per_image)[1]
    points, answers = {}, {}
    for mode in next(iter(results.values())):
        views, base = mode.endswith(SUFFIX), mode.removesuffix(SUFFIX)
        mode_stored = replace(stored, released=released.get(base))  # what this mode's collection holds
        nonmatching = verdicts(negatives, found[views], mode_stored, views)
        matching = {label: verdicts(by_mode[mode].queries, by_mode[mode].I, mode_stored, views)
                    for label, by_mode in results.items()}
        points[mode] = operating_points(nonmatching, matching, gt, edits)
        answers[mode] = answered(matching, gt, edits)
    points["active-passive"] = difference(points["active"], points["passive"])
    return {"nonmatching": len(negatives), "shortlist": SHORTLIST, "points": points, "answered": answers}


def decision_setup(setup: dict) -> dict[str, object]:
    """The fields of `DECISION_NOTE` from a run's setup."""
    decision = setup["decision"]
    return {"shortlist": SHORTLIST, "queries": decision["queries"], "photos": sum(decision["photos"].values()),
            "sources": ", ".join(f"{k} {v}" for k, v in decision.get("sources", {}).items()) or "the corpus",
            "edits": len(decision["edits"]) or "their own"}


def decision_cells(index: dict) -> dict[str, str]:
    """An index's summary cells: R@1 as the product answers (`answered`), and true copies at each rate over the
    paper's edits, passive -> active (+ paired difference)."""
    points, answers = index["decision"]["points"], index["decision"].get(ANSWERED, {})
    cells = {}
    for suffix in ("", SUFFIX):  # R@1 as the product answers it, without and with views (when run)
        if f"active{suffix}" in answers:
            passive, active = (answers[m + suffix]["paper_average"] for m in ("passive", "active"))
            cells[f"R@1 as answered{suffix}, passive -> active"] = f"{_cell(passive)} -> {_cell(active)}"
    for rate in RATES:
        passive, active = (points[m][str(rate)]["paper_average"] for m in ("passive", "active"))
        diff = points["active-passive"][str(rate)]
        cells[f"true copies at {100 * rate:g} % false, passive -> active"] = (
            f"{_cell(passive)} -> {_cell(active)} ({diff['rate']:+.3f} [{diff['ci'][0]:+.2f}, {diff['ci'][1]:+.2f}])")
    return cells


def _cell(point: dict) -> str:
    return f"{point['rate']:.3f} [{point['ci'][0]:.2f}, {point['ci'][1]:.2f}]"
