"""Benchmark corpora: ours (manifest.json), and the user's own DISC21 and Copydays folders built here, small,
from real photos (telescope photos of Debian's stellarium-data, scikit-image's bundled photos)."""
from __future__ import annotations

import glob
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activeindex.bench.corpus import SPLITS, CopydaysCorpus, Corpus, DISC21Corpus, cached_descriptors, open_corpus
from activeindex.errors import CorruptCollectionError, InvalidInputError, UnknownNameError
from activeindex.imageio import load_image

from .conftest import NEBULAE, PHOTO_NAMES, SKIMAGE_DATA, small


def _photos(n: int, offset: int = 0) -> list[np.ndarray]:
    """n distinct real photos, scaled so their shorter side is 64 pixels (fast to encode)."""
    paths = sorted(glob.glob(NEBULAE))[offset:offset + n]
    assert len(paths) == n, "photo packages missing: run `make photos`"
    return [small(load_image(p), 64) for p in paths]


def _save(folder: Path, names: list[str], images: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(folder / name)
    return [folder / name for name in names]


def _files(root: Path) -> dict[str, int]:
    """Every file under a folder with its modification time: what a reader must leave untouched."""
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def disc21(tmp_path_factory) -> Path:
    """6 references (two of them matched by a query), 4 queries (2 matching, 2 not), 5 training images."""
    root = tmp_path_factory.mktemp("disc21")
    references = _photos(6)
    _save(root / "references", [f"R00000{i}.{ext}" for i, ext in enumerate(["jpg", "png", "jpeg"] * 2)], references)
    copies = [references[1][8:-8, 8:-8], references[4][:, ::-1]]  # DISC21's matching queries are edited copies
    others = [small(load_image(SKIMAGE_DATA / name), 64) for name in PHOTO_NAMES[:2]]
    _save(root / "queries", ["Q00000.jpg", "Q00001.jpg", "Q00002.jpg", "Q00003.png"], copies + others)
    _save(root / "training", [f"T00000{i}.jpg" for i in range(5)], _photos(5, offset=6))
    (root / "public_ground_truth.csv").write_text("query_id,reference_id\nQ00000,R000001\nQ00001,R000004\n"
                                                  "Q00002,\nQ00003,\n")
    return root


@pytest.fixture(scope="module")
def copydays(tmp_path_factory) -> Path:
    """3 originals, 2 non-matching photos, 3 training images, no distractors; strong/ to be ignored."""
    root = tmp_path_factory.mktemp("copydays")
    originals = _save(root / "original", ["200000.jpg", "200100.jpg", "200200.jpg"], _photos(3, offset=20))
    _save(root / "strong", ["200000.jpg"], [load_image(originals[0])[:, ::-1]])
    _save(root / "nonmatching", ["n0.png", "n1.png"], _photos(2, offset=30))
    _save(root / "training" / "yfcc", ["t0.jpg", "t1.jpg", "t2.jpg"], _photos(3, offset=40))
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def test_disc21_splits_follow_the_ground_truth(disc21, tmp_path, extractor):
    corpus = open_corpus(disc21, tmp_path / "cache", extractor)
    assert isinstance(corpus, DISC21Corpus) and corpus.nonmatching_edited and corpus.root == disc21
    names = {s: [p.name for p in corpus.paths(s)] for s in SPLITS}
    assert names == {"activate": ["R000001.png", "R000004.png"],
                     "distractors": ["R000000.jpg", "R000002.jpeg", "R000003.jpg", "R000005.jpeg"],
                     "train": [f"T00000{i}.jpg" for i in range(5)],
                     "nonmatching": ["Q00002.jpg", "Q00003.png"]}  # matching queries are not used
    assert corpus.counts() == {"activate": {"disc21/references": 2}, "distractors": {"disc21/references": 4},
                               "train": {"disc21/training": 5}, "nonmatching": {"disc21/queries": 2}}
    assert corpus.packages("train") == ["disc21/training"] * 5
    line = corpus.describe()
    assert "\n" not in line and line.startswith("DISC21") and "activate 2" in line and "train 5" in line
    assert not (tmp_path / "cache").exists()  # listing computes no descriptor
    with pytest.raises(UnknownNameError, match="activate"):
        corpus.split("queries")


def test_disc21_descriptors_are_the_extractors_and_cached_outside_the_dataset(disc21, tmp_path, extractor,
                                                                             monkeypatch):
    before = _files(disc21)
    corpus = open_corpus(disc21, tmp_path / "cache", extractor)
    splits = {s: corpus.split(s) for s in SPLITS}
    for name, (paths, x) in splits.items():
        assert x.shape == (len(paths), 512) and x.dtype == np.float32, name
    paths, x = splits["distractors"]
    assert np.allclose(x[2], extractor.encode(paths[2]), atol=1e-5)
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert _files(disc21) == before  # nothing written into the user's dataset
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # one chunk per split

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(extractor, "encode", refuse)
    again = open_corpus(disc21, tmp_path / "cache", extractor)
    for name, (paths, x) in splits.items():
        assert again.split(name)[0] == paths and np.array_equal(again.split(name)[1], x), name


def test_a_changed_file_is_encoded_again(disc21, tmp_path, extractor, monkeypatch):
    root = _copy(disc21, tmp_path)
    open_corpus(root, tmp_path / "cache", extractor).split("nonmatching")
    encoded = []
    encode = extractor.encode
    monkeypatch.setattr(extractor, "encode", lambda images, **kw: encoded.append(len(images)) or encode(images, **kw))
    path = root / "queries" / "Q00003.png"
    Image.fromarray(load_image(path)[:, ::-1]).save(path)
    os.utime(path, ns=(1, 1))
    _, x = open_corpus(root, tmp_path / "cache", extractor).split("nonmatching")
    assert encoded == [2] and np.allclose(x[1], encode(path), atol=1e-5)


def test_cached_descriptors_chunks_resume(tmp_path, extractor, monkeypatch, photo_paths):
    monkeypatch.setattr("activeindex.bench.corpus.CACHE_CHUNK", 2)
    x = cached_descriptors(photo_paths[:3], extractor, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    next(iter(sorted(tmp_path.glob("*.npy")))).unlink()  # as if interrupted: the other chunk is reused
    assert np.array_equal(cached_descriptors(photo_paths[:3], extractor, tmp_path), x)
    assert cached_descriptors([], extractor, tmp_path).shape == (0, 512)


def test_disc21_errors_name_what_is_wrong(disc21, tmp_path):
    root = _copy(disc21, tmp_path)
    shutil.rmtree(root / "training")
    with pytest.raises(InvalidInputError, match="training: missing, required by the DISC21 layout"):
        open_corpus(root, tmp_path / "cache")
    (root / "training").mkdir()
    with pytest.raises(InvalidInputError, match=r"training: no \.jpg, \.jpeg or \.png image"):
        open_corpus(root, tmp_path / "cache")
    shutil.copytree(disc21 / "training", root / "training", dirs_exist_ok=True)
    truth = root / "public_ground_truth.csv"
    truth.write_text(truth.read_text() + "Q00002,R000099\n")
    with pytest.raises(CorruptCollectionError, match="references/R000099"):
        open_corpus(root, tmp_path / "cache")
    truth.write_text("query,reference\nQ00000,R000001\n")
    with pytest.raises(InvalidInputError, match="header query_id,reference_id"):
        open_corpus(root, tmp_path / "cache")
    truth.unlink()
    with pytest.raises(InvalidInputError, match=r"no \*ground_truth\*.csv"):
        open_corpus(root, tmp_path / "cache")


def test_copydays_activates_the_originals(copydays, tmp_path, extractor):
    corpus = open_corpus(copydays, tmp_path / "cache", extractor)
    assert isinstance(corpus, CopydaysCorpus) and not corpus.nonmatching_edited
    assert [p.name for p in corpus.paths("activate")] == ["200000.jpg", "200100.jpg", "200200.jpg"]
    assert all("strong" not in p.parts for s in SPLITS for p in corpus.paths(s))
    assert corpus.counts() == {"activate": {"copydays/original": 3}, "distractors": {},
                               "train": {"copydays/training": 3}, "nonmatching": {"copydays/nonmatching": 2}}
    paths, x = corpus.split("distractors")  # optional: absent, so empty
    assert paths == [] and x.shape == (0, 512)
    paths, x = corpus.split("activate")
    assert np.allclose(x[0], extractor.encode(paths[0]), atol=1e-5)
    assert "Copydays" in corpus.describe() and "distractors 0" in corpus.describe()


def test_copydays_without_training_says_to_bring_one(copydays, tmp_path):
    root = _copy(copydays, tmp_path)
    shutil.rmtree(root / "training")
    with pytest.raises(InvalidInputError, match="Copydays has no training set") as e:
        open_corpus(root)
    assert "\n" not in str(e.value)


def test_ours_answers_the_same_interface(tmp_path):
    images = [{"file": f"images/{i:05d}.jpg", "split": s, "package": p, "original_path": "", "licence": "",
               "sha256": ""} for i, (s, p) in enumerate([("activate", "a"), ("activate", "b"), ("train", "a"),
                                                         ("nonmatching", "b")])]
    (tmp_path / "manifest.json").write_text(json.dumps({"images": images}))
    np.save(tmp_path / "descriptors.npy", np.eye(4, 512, dtype=np.float32))
    corpus = open_corpus(tmp_path)
    assert isinstance(corpus, Corpus) and not corpus.nonmatching_edited
    assert corpus.packages("activate") == ["a", "b"] and corpus.split("train")[1][0, 2] == 1
    assert corpus.counts() == {"activate": {"a": 1, "b": 1}, "distractors": {}, "train": {"a": 1},
                               "nonmatching": {"b": 1}}
    assert corpus.describe() == f"activeindex corpus {tmp_path}: activate 2 (a 1, b 1); distractors 0; train 1; " \
                                "nonmatching 1"


def test_unknown_layouts_list_the_accepted_ones(tmp_path):
    with pytest.raises(InvalidInputError, match=r"DISC21: references/, queries/.*Copydays: original/"):
        open_corpus(tmp_path)
    with pytest.raises(InvalidInputError, match="no such folder"):
        open_corpus(tmp_path / "nowhere")


def test_benchmark_runs_on_a_disc21_folder(disc21, tmp_path):
    """`activeindex benchmark` on the user's own DISC21-layout data: the references named by the ground truth
    are activated, the non-matching queries are used as they are (already edited)."""
    from activeindex.bench.evaluation import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig(corpus=str(disc21), out=str(tmp_path / "bench"), factories=["PCA16,LSH"],
                             edits=["none", "auto"], sweeps=[], iterations=1, n_activate=2, train_vectors=40,
                             distractor_crops=4, bootstrap=50, device="cpu")
    results = run_benchmark(config)
    setup = results["setup"]
    assert setup["corpus"].startswith("DISC21 corpus") and setup["nonmatching_edited"]
    assert setup["sources"]["activate"] == {"disc21/references": 2} and setup["nonmatching"] == 2
    assert setup["references"] == {"photos": 4, "crops": 4, "total": 8}
    (index,) = results["indexes"]
    assert [Path(p).name for p in index["originals"]] == ["R000001.png", "R000004.png"]
    assert 0 <= index["icd"]["plain"]["active"]["uap"] <= 1
    assert (tmp_path / "bench" / "report.html").exists()
