"""The benchmark end to end on a small real corpus, and its building blocks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from activeindex.bench.corpus import SOURCES, Corpus, fetch_corpus
from activeindex.bench.evaluation import BenchmarkConfig, choose_nlist, run_benchmark, simulated_distractors


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, extractor) -> Corpus:
    sources = [s for s in SOURCES if s.package in ("stellarium-data", "scikit-image")]
    return fetch_corpus(tmp_path_factory.mktemp("corpus"), max_side=256, n_activate=4, n_nonmatching=4,
                        seed=1, extractor=extractor, sources=sources, per_source=90)


def test_corpus_manifest_and_splits(corpus):
    counts = corpus.manifest["counts"]
    assert counts["activate"] == 4 and counts["nonmatching"] == 4 and counts["train"] > 30
    assert len(corpus.images) == len(corpus.descriptors) == sum(counts.values())
    first = corpus.images[0]
    assert first.package in ("stellarium-data", "scikit-image") and first.licence and len(first.sha256) == 64
    assert max(max(_size(corpus.root / im.file)) for im in corpus.images) <= 256
    # near-duplicates were dropped: no two kept descriptors are closer than the threshold
    gram = corpus.descriptors @ corpus.descriptors.T
    np.fill_diagonal(gram, 0)
    assert gram.max() <= 0.9


def _size(path):
    from PIL import Image

    return Image.open(path).size


def test_choose_nlist_keeps_39_vectors_per_cell():
    assert choose_nlist(1500) == 32 and choose_nlist(100) == 2 and choose_nlist(10) == 1


def test_simulated_distractors_match_the_real_statistics(training_vectors):
    fake = simulated_distractors(training_vectors, 5000, seed=0)
    assert fake.shape == (5000, 512) and np.allclose(np.linalg.norm(fake, axis=1), 1, atol=1e-5)
    real_mean = training_vectors.mean(0) / np.linalg.norm(training_vectors.mean(0))
    fake_mean = fake.mean(0) / np.linalg.norm(fake.mean(0))
    assert real_mean @ fake_mean > 0.95


def test_small_benchmark_end_to_end(corpus, tmp_path):
    config = BenchmarkConfig(corpus=str(corpus.root), out=str(tmp_path / "bench"),
                             factories=["IVF{nlist},PQ8x4", "PCA16,LSH"], edits=["none", "brightness_2.0", "auto"],
                             sweeps=["jpeg"], iterations=2, simulated_distractors=300, device="cpu")
    results = run_benchmark(config)
    out = tmp_path / "bench"
    assert json.loads((out / "results.json").read_text())["setup"]["simulated_distractors"] == 300
    labels = 3 + 8  # three edits, eight JPEG qualities
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 2 * 2 * labels and all(line.endswith(",SIMULATED") for line in csv[1:])
    ivf, lsh = results["indexes"]
    assert ivf["factory"] == f"IVF{results['setup']['nlist']},PQ8x4" and ivf["nlist"] >= 1
    assert lsh["nlist"] == 0 and all(r["cell"] is None for r in lsh["edits"])
    for index in results["indexes"]:
        assert all(0 <= r["r1"] <= r["r10"] <= 1 for r in index["edits"])
        assert 0 <= index["icd"]["active_normalized"]["uap"] <= 1
        assert min(index["quality"]["psnr"]) > 35
    none = {r["mode"]: r for r in ivf["edits"] if r["edit"] == "none"}
    assert none["passive"]["cell"] == 1.0  # an unedited original falls in its own cell (PQ may still rank it lower)
    assert none["passive"]["r10"] == 1.0
    report = (out / "report.html").read_text()
    # bars, robustness curves, precision-recall, quality histograms, thumbnails
    assert report.count("<img src=\"data:image/png;base64,") == 5 and "SIMULATED SCALE" in report
    assert (out / "r1-per-edit.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "summary.md").read_text().count("\n| ") == 2  # one row per index

    activated = sorted((out / "activated").rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in activated]
    run_benchmark(config)  # resumes: activated files are reused, not rewritten
    assert [p.stat().st_mtime_ns for p in activated] == stamps
