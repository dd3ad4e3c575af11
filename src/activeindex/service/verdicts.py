"""The service's copy verdicts (decision.py, the rule every interface applies): searches decided in a worker
thread, their public form, and the evidence overlay.

A search's answer never names a server path. Without the token (``full`` False) it names only the candidates
the verdict calls copies; the others are a count, ``below_threshold``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import HTTPException

from ..catalog import Record
from ..collection import Collection, Match
from ..decision import Verdict, with_evidence
from ..errors import ActiveIndexError
from ..evidence import align, overlay
from ..imageio import encode_png
from . import http

__all__ = ["current_threshold", "verdicts", "public_verdict", "public_match", "overlay_png"]


def current_threshold(collection: Collection, threshold: float | None) -> tuple[float, bool]:
    """The threshold the verdicts use now and whether it is calibrated (an operator's ``threshold``: never)."""
    if threshold is not None:
        return threshold, False
    return collection.threshold, collection.calibrated


def verdicts(collection: Collection, named: list[tuple[str, bytes]], k: int, threshold: float | None,
             max_pixels: int, evidence: bool) -> list[Verdict]:
    """(In a worker thread.) Decode and embed one image at a time (bounded memory), decide on them all, then,
    with ``evidence``, align each copy with its source's original (decoded again: one image held at a time)."""
    http.check_pixels(named, max_pixels)
    queries = np.stack([collection.extractor.encode(collection.extractor.load_bytes(data, name))
                        for name, data in named])
    found = collection.verdicts_for_descriptors(queries, k, threshold)
    if evidence:
        found = [with_evidence(v, collection.extractor.load_bytes(data, name) if v.is_copy else None,
                               collection.original_image) for v, (name, data) in zip(found, named)]
    return found


def public_verdict(collection: Collection, verdict: Verdict, full: bool) -> dict:
    """A verdict as ``/v1/search`` answers it; ``full``: every candidate, else the copies and a count of the
    others. A copy with evidence also says its original's ``width`` and ``height`` (the outline's frame)."""
    shown = list(verdict.candidates if full else verdict.copies)
    answer = {"is_copy": verdict.is_copy, "threshold": verdict.threshold, "calibrated": verdict.calibrated,
              "matches": [public_match(m) for m in shown]}
    if not full:
        answer["below_threshold"] = len(verdict.candidates) - len(shown)
    if verdict.evidence is not None and shown:
        found = verdict.evidence.to_dict()
        reason = found["reason"]  # an unreadable original's error names its server path: not said
        reason = "original not reachable on the server" if (reason or "").startswith("original not") else reason
        answer["matches"][0] |= {"evidence": found["evidence"], "evidence_reason": reason}
        if found["evidence"]:
            record = collection.catalog.get([verdict.match.id]).get(verdict.match.id)
            answer["matches"][0] |= {"width": record.width, "height": record.height} if record else {}
    return answer


def public_match(match: Match) -> dict:
    """A search result without server paths: the original's file name."""
    return {"id": match.id, "filename": Path(match.original_path).name, "distance": match.distance,
            "similarity": match.similarity, "activated": match.activated_path is not None, "view": match.view}


def overlay_png(collection: Collection, record: Record, named: tuple[str, bytes], max_pixels: int) -> bytes:
    """(In a worker thread.) The evidence overlay of an uploaded copy on a registered original, as PNG bytes.

    Raises:
        HTTPException: 404 when the original (and its released file) can no longer be read, 422 when the copy
            does not align with it (the reason said).
    """
    http.check_pixels([named], max_pixels)
    query = collection.extractor.load_bytes(named[1], named[0])
    try:
        original = collection.original_image(record)
    except ActiveIndexError as e:
        raise HTTPException(404, f"image {record.id}: its original is no longer readable on the server") from e
    found = align(query, original)
    if found.evidence is None:
        raise HTTPException(422, f"{named[0]} does not align with image {record.id}: {found.reason}")
    return encode_png(overlay(original, query, found.evidence))
