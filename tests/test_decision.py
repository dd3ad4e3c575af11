"""The one copy verdict (decision.py): the rule itself, its array form for the benchmark, the threshold a
collection stores and re-reads, search lists ordered by exact similarity, and `search --evidence` on a
known crop and a known rotation of a registered photo. Real photos, the real model, real faiss."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activeindex import ActivationConfig, Collection
from activeindex.cli import main
from activeindex.collection import Match
from activeindex.config import DEFAULT_THRESHOLD
from activeindex.decision import SHORTLIST, StoredThreshold, best_of, decide, rank, shortlist, with_evidence
from activeindex.edits import apply_edit
from activeindex.evidence import Alignment
from activeindex.imageio import load_image
from activeindex.manifest import MANIFEST, read_manifest, write_manifest

from .conftest import SKIMAGE_DATA, TEST_FACTORY


def match(image_id: int, similarity: float, distance: float = 0.0) -> Match:
    return Match(image_id, f"/photos/{image_id}.png", None, distance, similarity)


# ---------------------------------------------------------------- the rule


def test_candidates_are_ranked_by_similarity_and_ties_keep_the_index_order():
    found = [match(1, 0.3), match(2, 0.8), match(3, 0.5), match(4, 0.8)]
    assert [m.id for m in rank(found)] == [2, 4, 3, 1]


def test_the_best_is_a_copy_from_the_threshold_on():
    for similarity, expected in ((0.6, True), (0.59999, False), (0.9, True)):
        verdict = decide([match(1, 0.2), match(2, similarity)], 0.6, calibrated=True)
        assert verdict.is_copy is expected and verdict.match.id == 2 and verdict.calibrated is True
    empty = decide([], 0.6, calibrated=False)
    assert empty.is_copy is False and empty.match is None and empty.to_dict()["matches"] == []


def test_the_decision_looks_at_the_shortlist_and_shows_k():
    found = [match(i, s) for i, s in enumerate([0.1, 0.2, 0.3, 0.95, 0.7, 0.65], 1)]
    verdict = decide(found, 0.6, calibrated=False, k=2)
    assert [m.id for m in verdict.candidates] == [4, 5]  # the best two of all six
    assert [m.id for m in verdict.copies] == [4, 5] and verdict.is_copy
    assert shortlist(1) == shortlist(SHORTLIST) == SHORTLIST and shortlist(50) == 50
    record = verdict.to_dict()
    assert set(record) == {"is_copy", "threshold", "calibrated", "matches"} and record["threshold"] == 0.6
    assert [m["id"] for m in record["matches"]] == [4, 5] and "evidence" not in record["matches"][0]


def test_evidence_rides_on_the_first_match_and_a_non_copy_says_why():
    verdict = decide([match(1, 0.3)], 0.6, calibrated=False)
    aligned = with_evidence(verdict, np.zeros((32, 32, 3), np.uint8), lambda m: pytest.fail("not aligned"))
    assert aligned.evidence == Alignment(None, "not a copy")
    first = aligned.to_dict()["matches"][0]
    assert first["evidence"] is None and first["evidence_reason"] == "not a copy"
    copy = decide([match(1, 0.9)], 0.6, calibrated=False)
    gone = with_evidence(copy, np.zeros((32, 32, 3), np.uint8), lambda m: load_image(m.original_path))
    assert gone.evidence.evidence is None and gone.evidence.reason.startswith("original not reachable (")


def test_best_of_is_decides_choice_over_arrays():
    rng = np.random.default_rng(0)
    sims = np.round(rng.uniform(-0.2, 1, (300, SHORTLIST)), 2)  # rounded: ties happen
    ids = rng.integers(0, 50, (300, SHORTLIST))
    ids[::7, 6:] = -1  # shorter lists
    sims[ids < 0] = np.nan
    best, found = best_of(sims, ids)
    for row in range(300):
        candidates = [match(int(i), float(s)) for i, s in zip(ids[row], sims[row]) if i >= 0]
        verdict = decide(candidates, 0.5, calibrated=True)
        assert (found[row], best[row]) == (verdict.match.id, verdict.match.similarity)
        assert bool(best[row] >= 0.5) == verdict.is_copy
    assert best_of(np.full((2, 3), np.nan), np.full((2, 3), -1))[1].tolist() == [-1, -1]


def test_a_calibration_written_later_is_read_at_the_next_call(tmp_path):
    manifest = {"format_version": 1, "views": None}
    write_manifest(tmp_path, manifest)
    stored = StoredThreshold(tmp_path / MANIFEST, read_manifest(tmp_path))
    assert stored.threshold() == DEFAULT_THRESHOLD and stored.calibration() is None
    write_manifest(tmp_path, manifest | {"calibration": {"threshold": 0.71}})  # another process calibrates
    assert stored.threshold() == 0.71 and stored.calibration() == {"threshold": 0.71}
    (tmp_path / MANIFEST).unlink()  # gone: the last value read stays
    assert stored.threshold() == 0.71


# ---------------------------------------------------------------- a real collection


@pytest.fixture(scope="module")
def collection(tmp_path_factory, training_npy, small_photos, training_paths) -> Collection:
    """The default views, the six small photos and 40 telescope photos registered (passive)."""
    folder = tmp_path_factory.mktemp("decision-photos")
    for i, image in enumerate(small_photos):
        Image.fromarray(image).save(folder / f"photo{i}.png")
    collection = Collection.create(tmp_path_factory.mktemp("decision") / "col", TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.add([folder, *training_paths[-40:]])
    yield collection
    collection.close()


def test_search_lists_are_ordered_by_exact_similarity(collection, small_photos):
    queries = [apply_edit(edit, photo, seed=i) for i, photo in enumerate(small_photos)
               for edit in ("rotation_25", "center_crop_0.5", "auto")]
    lists = collection.search(queries, k=10)
    assert all(len(found) == 10 for found in lists)
    for found in lists:
        similarities = [m.similarity for m in found]
        assert similarities == sorted(similarities, reverse=True)
    # the index's own order differs: without the re-ranking some lists would be out of similarity order
    assert any([m.id for m in sorted(found, key=lambda m: m.distance)] != [m.id for m in found] for found in lists)
    for verdict, found in zip(collection.verdicts(queries, k=3), lists):
        assert verdict.match.similarity == max(m.similarity for m in found)  # the verdict's match: the best
        assert len(verdict.candidates) == 3 and verdict.is_copy == (verdict.match.similarity >= collection.threshold)
        assert verdict.calibrated is False and verdict.threshold == DEFAULT_THRESHOLD


def test_the_verdict_does_not_depend_on_k_up_to_the_shortlist(collection, small_photos):
    queries = [apply_edit("auto", photo, seed=10 + i) for i, photo in enumerate(small_photos)]
    for k in (1, 5, SHORTLIST):
        assert [(v.is_copy, v.match.id) for v in collection.verdicts(queries, k=k)] == [
            (v.is_copy, v.match.id) for v in collection.verdicts(queries, k=1)]


def test_an_operators_threshold_is_uncalibrated(collection, small_photos):
    [verdict] = collection.verdicts_for_descriptors(collection.extractor.encode(small_photos[0])[None], 5,
                                                    threshold=0.99)
    assert (verdict.threshold, verdict.calibrated) == (0.99, False)
    assert replace(verdict, evidence=None).to_dict()["calibrated"] is False


# ---------------------------------------------------------------- evidence from the command line


def test_search_evidence_gives_the_box_of_a_crop_and_the_angle_of_a_rotation(tmp_path, training_npy, capsys):
    """A 512 x 512 photo registered; its crop's outline within 3 % of the image size of the true box, its
    rotation by 20 degrees read within 2; the overlays written."""
    original = load_image(SKIMAGE_DATA / "astronaut.png")
    Image.fromarray(original).save(tmp_path / "astronaut.png")
    root = tmp_path / "col"
    collection = Collection.create(root, TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.add([tmp_path / "astronaut.png"])
    collection.close()
    Image.fromarray(original[100:400, 50:450]).save(tmp_path / "crop.png")
    Image.fromarray(original).rotate(20, resample=Image.BICUBIC, expand=True).save(tmp_path / "turned.png")
    command = ["search", str(root), str(tmp_path / "crop.png"), str(tmp_path / "turned.png"), "--evidence",
               str(tmp_path / "overlays"), "-q"]
    assert main([*command, "--json"]) == 0
    crop, turned = json.loads(capsys.readouterr().out)
    assert crop["is_copy"] and turned["is_copy"] and crop["calibrated"] is False
    box = np.array([[50, 100], [450, 100], [450, 400], [50, 400]])
    evidence = crop["matches"][0]["evidence"]
    assert crop["matches"][0]["evidence_reason"] is None
    assert np.abs(np.array(evidence["corners"]) - box).max() <= 0.03 * 512
    assert abs(evidence["rotation_deg"]) <= 2 and 0.4 < evidence["share_of_original"] < 0.5
    assert abs(turned["matches"][0]["evidence"]["rotation_deg"] - 20) <= 2
    for entry in (crop, turned):
        overlay = Path(entry["matches"][0]["overlay"])
        assert overlay.parent == tmp_path / "overlays" and load_image(overlay).shape[0] == 720
    assert main(command) == 0
    text = capsys.readouterr().out
    assert f"{tmp_path / 'crop.png'}: a copy of {tmp_path / 'astronaut.png'} (similarity" in text
    assert "uncalibrated threshold: run activeindex calibrate" in text
    assert "evidence: rotation 0.0 deg" in text or "evidence: rotation -0.0 deg" in text
    assert "crop-evidence-2.png" in text  # the first run's overlays are kept


def test_an_activated_images_released_file_is_a_candidate_never_indexed(tmp_path, training_npy, small_photos,
                                                                        extractor):
    """The catalog keeps each released file's own descriptor; the index does not hold it; a copy of the
    released file is judged on it where it is closer than the original's."""
    for i in (0, 1):
        Image.fromarray(small_photos[i]).save(tmp_path / f"photo{i}.png")
    collection = Collection.create(tmp_path / "col", TEST_FACTORY, device="cpu", views="none")
    collection.train(training_npy)
    [active] = collection.activate([tmp_path / "photo0.png"], tmp_path / "out", ActivationConfig(iterations=3)).records
    [passive] = collection.add([tmp_path / "photo1.png"]).records
    rows = collection.catalog.paths_and_descriptors([active.id, passive.id])
    released = extractor.encode(active.activated_path)
    assert rows[passive.id][3] is None and np.allclose(rows[active.id][3], released, atol=2e-3)
    assert collection.index.ntotal == 2  # one vector each: the released file's is not indexed
    copy = load_image(active.activated_path)  # the released file itself, as a copy found on the web
    [verdict] = collection.verdicts(copy, k=2)
    query = extractor.encode(copy)
    assert verdict.match.id == active.id and verdict.match.view == "released file"
    assert verdict.match.similarity == pytest.approx(float(rows[active.id][3] @ query), abs=1e-5)
    assert verdict.match.similarity > float(rows[active.id][2][0] @ query)  # closer than the original's
    collection.close()
