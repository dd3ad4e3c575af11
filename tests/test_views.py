"""Indexed views (views.py): crops and turns of registered images found through them, every view removed with
its image, collections made without views opened as before and upgraded, calibration on the best-over-views
score. Real photos, the real model, real faiss, a real SQLite catalog."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from activeindex import Collection
from activeindex.calibrate import _scores
from activeindex.codec import index_ids
from activeindex.decision import SHORTLIST
from activeindex.edits import rotation
from activeindex.views import NO_VIEWS, SLOTS, Crop, Turn, get_view_set, view_inputs

from .conftest import TEST_FACTORY

VIEWS = get_view_set("crops+turns")


def corner_crop(image: np.ndarray, area: float) -> np.ndarray:
    """The bottom-right corner keeping ``area`` of the pixels (not one of the indexed views' windows)."""
    h, w = image.shape[:2]
    return image[h - round(h * math.sqrt(area)):, w - round(w * math.sqrt(area)):].copy()


@pytest.fixture
def photo_files(small_photos, tmp_path) -> list[Path]:
    paths = []
    for i, image in enumerate(small_photos):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.fixture
def with_views(tmp_path, training_npy, photo_files) -> Collection:
    collection = Collection.create(tmp_path / "views", TEST_FACTORY, device="cpu", nprobe=8)  # every cell
    collection.train(training_npy)
    collection.add(photo_files)
    yield collection
    collection.close()


def test_views_are_cut_from_the_network_input_and_preprocessed_again(extractor, small_photos):
    from activeindex.extractor import network_input

    whole = network_input(small_photos[0], extractor.preprocessing)
    cut = view_inputs(whole, VIEWS, extractor.preprocessing)
    assert len(cut) == len(VIEWS.views) == 9 and all(v.dtype == torch.uint8 for v in cut)
    assert all(min(v.shape[-2:]) == extractor.preprocessing.short_side for v in cut)
    corner = Crop(0.55, 0, 0)(whole)
    assert corner.shape[-2] == round(whole.shape[-2] * math.sqrt(0.55))
    torch.testing.assert_close(corner, whole[..., :corner.shape[-2], :corner.shape[-1]])
    turned = Turn(40)(whole)
    assert turned.shape[-1] > whole.shape[-1] and float(turned[..., 0, 0].abs().sum()) == 0.0  # black corner


def test_every_view_is_a_vector_pointing_to_its_image(with_views):
    assert with_views.manifest["views"] == VIEWS.to_dict()
    ids = np.sort(index_ids(with_views.index))
    assert len(ids) == 6 * (1 + len(VIEWS.views))
    assert set((ids // SLOTS).tolist()) == set(with_views.catalog.ids().tolist())
    assert set((ids % SLOTS).tolist()) == set(range(1 + len(VIEWS.views)))


def test_a_corner_crop_and_a_turn_are_found_through_the_views(with_views, small_photos, extractor):
    crop, turn = corner_crop(small_photos[2], 0.35), rotation(30)(small_photos[3], None)
    found = with_views.search([crop, turn], k=3)
    assert [hits[0].id for hits in found] == [3, 4]
    assert [len({m.id for m in hits}) for hits in found] == [len(hits) for hits in found]  # each image once
    assert found[0][0].view.startswith("crop") and found[1][0].view.startswith("turn")
    whole = with_views.catalog.descriptors_of([3, 4])
    queries = extractor.encode_arrays([crop, turn])
    for hits, image_id, query in zip(found, (3, 4), queries):  # the view is nearer than the whole image
        assert hits[0].similarity > float(whole[image_id] @ query) + 0.05


def test_removal_takes_out_every_view_and_a_reopened_collection_agrees(with_views, small_photos):
    with_views.remove([3])
    crop = corner_crop(small_photos[2], 0.35)
    assert all(m.id != 3 for m in with_views.search(crop, k=6)[0])
    assert with_views.compact() == 1
    ids = index_ids(with_views.index)
    assert len(ids) == 5 * (1 + len(VIEWS.views)) and not np.any(ids // SLOTS == 3)
    with_views.snapshot()
    reopened = Collection.open(with_views.root, device="cpu")
    assert sorted(index_ids(reopened.index).tolist()) == sorted(ids.tolist())
    assert all(m.id != 3 for m in reopened.search(crop, k=6)[0])
    reopened.close()


def test_a_collection_made_before_views_opens_searches_and_upgrades(tmp_path, training_npy, photo_files,
                                                                    small_photos):
    old = Collection.create(tmp_path / "old", TEST_FACTORY, device="cpu", views="none")
    old.train(training_npy)
    old.add(photo_files)
    old.close()
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["views"]  # as written before views existed
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    reopened = Collection.open(tmp_path / "old", device="cpu")
    assert reopened.views == NO_VIEWS and sorted(index_ids(reopened.index).tolist()) == [1, 2, 3, 4, 5, 6]
    assert reopened.search(small_photos[1], k=1)[0][0].id == 2  # ids unchanged: faiss id = image id
    assert reopened.search(small_photos[1], k=1)[0][0].view == "whole"
    turn = rotation(30)(small_photos[3], None)
    before = reopened.search(turn, k=6)[0]
    result = reopened.index_views("crops+turns", progress=False)
    assert result == {"views": "crops+turns", "images": 6, "without_views": []}
    reopened.close()
    upgraded = Collection.open(tmp_path / "old", device="cpu")
    assert upgraded.views == VIEWS and upgraded.index.ntotal == 6 * (1 + len(VIEWS.views))
    after = upgraded.search(turn, k=6)[0]
    assert after[0].id == 4 and after[0].view.startswith("turn")
    assert after[0].similarity > next(m.similarity for m in before if m.id == 4) + 0.05
    upgraded.close()


def test_an_upgrade_keeps_an_image_whose_original_is_gone_with_its_whole_vector(tmp_path, training_npy,
                                                                                photo_files):
    old = Collection.create(tmp_path / "old", TEST_FACTORY, device="cpu", views="none")
    old.train(training_npy)
    old.add(photo_files[:3])
    photo_files[1].unlink()
    result = old.index_views("crops", progress=False)
    assert [item["path"] for item in result["without_views"]] == [str(photo_files[1].resolve())]
    assert old.index.ntotal == 2 * 6 + 1
    old.close()


def test_an_unknown_view_set_in_a_manifest_is_one_clear_error(with_views):
    from activeindex.errors import CorruptCollectionError

    manifest = dict(with_views.manifest, views={"name": "crops+turns", "version": 99, "slots": 16, "views": []})
    (with_views.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptCollectionError, match="version 99 is not one this activeindex knows"):
        Collection.open(with_views.root, device="cpu")


def test_calibration_scores_are_the_best_over_each_images_views(with_views, extractor, training_paths):
    nonmatching = [Path(p) for p in training_paths[-8:]]
    scores = _scores(with_views, [(p, None) for p in nonmatching], {"geometric": ("rotation_25",)}, 0, "test", False)
    from activeindex.edits import apply_edit
    from activeindex.imageio import load_image

    gained = 0
    for path, (score, _) in zip(nonmatching, scores["geometric"]):
        query = extractor.encode_arrays([apply_edit("rotation_25", load_image(path), seed=0)])[0]
        # the verdict's match: the best by exact similarity of the shortlist (nprobe 8: every query has one)
        best = with_views.search_descriptors(query[None], k=SHORTLIST)[0][0]
        vectors = with_views.catalog.paths_and_descriptors([best.id])[best.id][2]
        assert score == pytest.approx(float(np.max(vectors @ query)), abs=1e-5)
        gained += score > float(vectors[0] @ query) + 1e-6
    assert gained >= 1  # a view, not the whole image, gave some score: calibrate sees the views


def test_the_views_command_changes_the_set_and_info_names_it(with_views, capsys):
    from activeindex.cli import main

    root = str(with_views.root)
    with_views.close()
    assert main(["views", root, "none"]) == 0
    assert "6 images indexed with view set none" in capsys.readouterr().out
    assert main(["info", root]) == 0
    assert "views              none (the whole image alone)" in capsys.readouterr().out
    reopened = Collection.open(root, device="cpu")
    assert sorted(index_ids(reopened.index).tolist()) == [1, 2, 3, 4, 5, 6]  # one vector each, under its id
    reopened.close()
