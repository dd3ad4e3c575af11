"""The benchmark end to end on a small real corpus, and its building blocks."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from activeindex import Activator, Codec
from activeindex.bench.corpus import SOURCES, Corpus, fetch_corpus
from activeindex.bench.evaluation import STREAMS, BenchmarkConfig, _crops, prepare, run_benchmark, sample, seeds
from activeindex.decision import SHORTLIST
from activeindex.edits import apply_edit
from activeindex.errors import InvalidInputError
from activeindex.imageio import load_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, extractor) -> Corpus:
    sources = [s for s in SOURCES if s.package in ("stellarium-data", "tuxpaint-stamps-default", "scikit-image")]
    return fetch_corpus(tmp_path_factory.mktemp("corpus"), max_side=160, n_activate=8, n_nonmatching=5,
                        seed=1, extractor=extractor, sources=sources, per_source=45,
                        min_query_side=100)


def test_corpus_manifest_and_splits(corpus):
    counts = corpus.manifest["counts"]
    assert counts["activate"] == 8 and counts["nonmatching"] == 5 and counts["train"] > 30
    assert len(corpus.images) == len(corpus.descriptors) == sum(counts.values())
    first = corpus.images[0]
    assert first.package in ("stellarium-data", "tuxpaint-stamps-default", "scikit-image")
    assert first.licence and len(first.sha256) == 64
    assert max(max(_size(corpus.root / im.file)) for im in corpus.images) <= 160
    queries = [im for im in corpus.images if im.split in ("activate", "nonmatching")]
    assert all(min(_size(corpus.root / im.file)) == im.short_side >= 100 for im in queries)
    assert any(im.short_side < 100 for im in corpus.images)  # small images remain, as references or training
    # near-duplicates were dropped: no two kept descriptors are closer than the threshold
    gram = corpus.descriptors @ corpus.descriptors.T
    np.fill_diagonal(gram, 0)
    assert gram.max() <= 0.9


def _size(path):
    from PIL import Image

    return Image.open(path).size


def test_subsets_are_seeded_random_draws_not_a_prefix():
    """Files are numbered source by source: a prefix would come from one source, a random draw from all."""
    packages = ["telescope"] * 50 + ["stamps"] * 30 + ["wallpapers"] * 20
    chosen = sample(len(packages), 20, seed=0, stream="activate")
    assert len(set(chosen)) == 20 and list(chosen) != list(range(20))
    assert set(Counter(packages[i] for i in chosen)) == {"telescope", "stamps", "wallpapers"}
    np.testing.assert_array_equal(chosen, sample(100, 20, seed=0, stream="activate"))  # seeded
    assert list(chosen) != list(sample(100, 20, seed=1, stream="activate"))
    assert list(chosen) != list(sample(100, 20, seed=0, stream="nonmatching"))  # streams differ
    np.testing.assert_array_equal(sample(10, None, 0, "activate"), np.arange(10))  # None: everything


def test_seed_streams_are_independent():
    """Matching and non-matching queries never share a draw (query i is not copy 7+i's edit plan)."""
    draws = {stream: [np.random.default_rng(s).integers(1 << 62) for s in seeds(0, stream, 200)]
             for stream in STREAMS}
    every = [d for values in draws.values() for d in values]
    assert len(set(every)) == len(every)
    again = [np.random.default_rng(s).integers(1 << 62) for s in seeds(0, "matching_edits", 200)]
    assert again == draws["matching_edits"]


def test_config_compares_presets_at_one_psnr():
    """`psnr` puts every preset at one quality floor; a preset compared with itself, an unknown one, or a PSNR
    floor beside a scaling curve is refused before any work."""
    settings = BenchmarkConfig(psnr=42.0, compare=["robust", "paper"]).activations()
    assert list(settings) == ["active", "robust", "paper"]
    assert {s.psnr for s in settings.values()} == {42.0}
    assert settings["robust"].edits and not settings["active"].edits and settings["paper"].gradient == "ste"
    for bad, match in (({"compare": ["default"]}, "distinct presets"), ({"compare": ["passive"]}, "distinct presets"),
                       ({"compare": ["strong"]}, "unknown activation preset 'strong'"),
                       ({"psnr": 42.0, "scalings": [1.0]}, "cannot be combined"), ({"psnr": 5.0}, "psnr must be")):
        with pytest.raises(InvalidInputError, match=match):
            BenchmarkConfig(**bad)


def test_config_refuses_unknown_targets_and_keys(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown target 'centroid'"):
        BenchmarkConfig(factories=["IVF{nlist},Flat:centroid"])
    (tmp_path / "bad.toml").write_text('simulated_distractors = 20000\n')
    with pytest.raises(InvalidInputError, match=r"unknown keys \['simulated_distractors'\]"):
        BenchmarkConfig.from_toml(tmp_path / "bad.toml")
    with pytest.raises(InvalidInputError, match=r"variants.fast: unknown settings \['steps'\]"):
        BenchmarkConfig(variants={"fast": {"steps": 4}})
    with pytest.raises(InvalidInputError, match=r"ActivationConfig\.lr must be a finite number > 0"):
        BenchmarkConfig(variants={"frozen": {"lr": 0}})


def test_activation_raises_cell_agreement_under_edits(extractor, training_vectors, small_photos):
    """A seeded check that fails if the "active" queries were the passive ones: edited copies of activated
    photos land in their original's cell more often than edited copies of the originals."""
    codec = Codec.create("IVF64,Flat", 512)
    codec.train(training_vectors)
    images = small_photos[:4]
    cells = codec.cells(extractor.encode_arrays(images))
    activated = [r.image for r in Activator(extractor, codec).activate(images)]
    edits = ["brightness_2.0", "contrast_2.0", "blur_11", "jpeg_50", "hue_0.2", "auto"]

    def agreement(sources):
        queries = [apply_edit(e, im, seed=i) for e in edits for i, im in enumerate(sources)]
        return float(np.mean(codec.cells(extractor.encode_arrays(queries)) == np.tile(cells, len(edits))))

    passive, active = agreement(images), agreement(activated)
    assert passive < 1  # there is something to repair
    assert active > passive


def test_small_benchmark_end_to_end(corpus, tmp_path):
    config = BenchmarkConfig(corpus=str(corpus.root), out=str(tmp_path / "bench"), nlists=[4, 1024],
                             factories=["IVF{nlist},PQ8x4", "IVF{nlist},Flat:ivf_cluster_half", "PCA16,LSH"],
                             edits=["none", "brightness_2.0", "auto"], sweeps=["jpeg"], iterations=2, n_activate=6,
                             compare=["robust"],
                             variants={"lr 0.3, crops": {"lr": 0.3, "edits": ["crop"], "edit_draws": 1}},
                             train_vectors=300, distractor_crops=40, scalings=[1.0], bootstrap=200, device="cpu",
                             decision_edits=["none", "auto"])
    results = run_benchmark(config)
    out = tmp_path / "bench"
    setup = json.loads((out / "results.json").read_text())["setup"]
    assert setup["train"]["total"] == 300 and setup["train"]["crops"] == 300 - setup["train"]["photos"]
    assert setup["references"]["total"] == setup["references"]["photos"] + 40
    assert sum(setup["sources"]["activate"].values()) == 6 and sum(setup["sources"]["nonmatching"].values()) == 5
    assert len(setup["skipped"]) == 2 and "needs 39936 training vectors, has 300" in setup["skipped"][0]
    assert setup["auto_deviations"]
    decision = setup["decision"]  # the non-matching photos and the training photos, never indexed, each edited
    assert decision["photos"] == {"nonmatching": 5, "train": setup["train"]["photos"]}
    assert decision["queries"] == 2 * (5 + setup["train"]["photos"]) and decision["edits"] == ["none", "auto"]
    assert sum(decision["sources"].values()) == 5 + setup["train"]["photos"]

    ivf, flat, lsh = results["indexes"]
    assert (ivf["factory"], ivf["target"], flat["factory"], flat["target"]) == (
        "IVF4,PQ8x4", "index", "IVF4,Flat", "ivf_cluster_half")
    assert lsh["nlist"] == 0 and all(r["cell"] is None for r in lsh["edits"])
    labels = 3 + 8  # three edits, eight JPEG qualities
    baselines = results["baselines"]
    for name in ("pdq", "exact_sscd"):
        point = baselines[name]["operating_point"]  # 5 non-matching queries: 1 % of them is none
        assert point["nonmatching"] == 5 and point["false_copies"] == 0
        assert point["ci"][0] <= point["rate"] <= point["ci"][1] and point["ci"][1] > 0
        assert baselines[name]["references"] == setup["references"]["total"] + 6  # the indexes' references
        assert len(baselines[name]["edits"]) == labels and baselines[name]["r1_paper_average"]["edits"] == 3
        assert baselines[name]["edits"]["none"]["r1"] == 1.0  # an unedited copy is found, hashed or exact
        for r in baselines[name]["edits"].values():
            assert r["n"] == 6 and r["r1_ci"][0] - 1e-9 <= r["r1"] <= r["r1_ci"][1] + 1e-9
    assert baselines["exact_sscd"]["edits"]["brightness_2.0"]["r10"] >= baselines["exact_sscd"]["edits"][
        "brightness_2.0"]["r1"] and baselines["pdq"]["edits"]["none"]["r10"] is None
    for index in results["indexes"]:
        modes = ["pdq", "exact_sscd", "passive", "active", "robust", "active-passive", "robust-active"]
        assert len(index["edits"]) == len(modes) * labels
        assert [r["mode"] for r in index["edits"][:len(modes)]] == modes
        assert {r["edit"] for r in index["edits"][:len(modes)]} == {"none"}
        for r in index["edits"]:
            assert r["r1_ci"][0] <= r["r1"] + 1e-9 and r["r1"] <= r["r1_ci"][1] + 1e-9
            if "-" not in r["mode"] and r["mode"] != "pdq":  # PDQ answers one reference or none: no R@10
                assert 0 <= r["r1"] <= r["r10"] <= 1
        avg = index["r1_paper_average"]
        assert avg["edits"] == 3 and avg["active-passive"] == pytest.approx(avg["active"] - avg["passive"])
        assert avg["robust-active"] == pytest.approx(avg["robust"] - avg["active"])
        robust = index["compared"]["robust"]
        assert robust["activated_dir"] != index["activated_dir"] and min(robust["quality"]["psnr"]) > 35
        first = Path(index["originals"][0]).stem + ".png"  # the edit-aware loss changes the written image
        assert not np.array_equal(load_image(Path(robust["activated_dir"]) / first),
                                  load_image(Path(index["activated_dir"]) / first))
        for name in ("plain", "normalized"):
            entry = index["icd"][name]
            assert 0 <= entry["active"]["uap"] <= 1 and entry["active"]["ci"][0] <= entry["active"]["ci"][1]
        assert 1 <= index["icd"]["list_length"]["passive"]["min"] <= index["icd"]["list_length"]["passive"]["max"]
        points = index["icd"]["operating_point"]
        assert points["active-passive"]["rate"] == pytest.approx(points["active"]["rate"] - points["passive"]["rate"])
        assert all(points[m]["false_copies"] == 0 and points[m]["nonmatching"] == 5 for m in ("passive", "active"))
        _check_decisions(index, decision["queries"], labels)
        rows = {(r["edit"], r["mode"]): r for r in index["edits"]}
        for edit in ("none", "brightness_2.0", "auto"):  # a paired difference: the mean of per-image differences
            assert rows[edit, "active-passive"]["r1"] == pytest.approx(
                rows[edit, "active"]["r1"] - rows[edit, "passive"]["r1"])
            low, high = rows[edit, "active-passive"]["r1_ci"]
            assert low <= rows[edit, "active-passive"]["r1"] <= high and high - low > 0.1  # 6 images: never a point
        assert min(index["quality"]["psnr"]) > 35
    none = {r["mode"]: r for r in ivf["edits"] if r["edit"] == "none"}
    assert none["passive"]["cell"] == 1.0  # an unedited original falls in its own cell (PQ may still rank it lower)
    assert none["passive"]["r10"] == 1.0
    curve = results["scaling_curve"]
    assert [p["scaling"] for p in curve["points"]] == [1.0, 2.0, 2.0] and curve["factory"] == "IVF4,PQ8x4"
    assert curve["points"][0]["psnr"] > curve["points"][1]["psnr"]  # a smaller budget costs less quality
    default, variant = curve["points"][1:]
    assert default["default"] and default["vs_default"]["r1"] == 0 and default["passes"] == 2
    assert variant["name"] == "lr 0.3, crops" and variant["settings"]["lr"] == 0.3 and variant["passes"] == 4
    assert variant["vs_default"]["r1"] == pytest.approx(variant["r1"]["active"] - default["r1"]["active"])

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # per index: per edit, the paper average, uAP x 2, the ADC point at 1 % false (2 baselines, 2 modes, difference),
    # the shipped rule's points at 1 % and 0.1 % false (passive, active, robust, active - passive)
    assert len(rows) == 3 * (7 * labels + 7 + 2 * 3 + 5 + 2 * 4)
    assert {r["edit"] for r in rows} >= {"true_copies_at_1pct_false", "true_copies_at_0.1pct_false",
                                         "adc_true_copies_at_1pct_false"}
    pdq_none = [r for r in rows if r["edit"] == "none" and r["mode"] == "pdq"]
    assert len(pdq_none) == 3 and pdq_none[0]["r1"] == "1.0000"  # the baselines' rows in every index's table
    assert rows[0]["factory"] == "IVF4,PQ8x4" and rows[0]["r1_low"] <= rows[0]["r1"] <= rows[0]["r1_high"]
    report = (out / "report.html").read_text()
    # bars, scaling curve, robustness curves, precision-recall, quality histograms, thumbnails, activations
    assert report.count("<img src=\"data:image/png;base64,") == 7 and "SIMULATED" not in report
    assert report.count("<th>edit</th><th>PDQ</th><th>exact SSCD</th><th>passive</th><th>active</th>"
                        "<th>active (robust)</th><th>active - passive</th><th>active (robust) - active</th>") == 3
    assert "<th>R@1 PDQ</th><th>R@1 exact SSCD</th><th>R@1 passive</th>" in report
    assert "tuxpaint-stamps-default" in report and "deviations" in report
    assert (out / "r1-per-edit.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "activations.png").read_bytes().startswith(b"\x89PNG")
    summary = (out / "summary.md").read_text()
    assert [summary.count(f"\n| {name} |") for name in ("IVF4,PQ8x4", "IVF4,Flat (ivf_cluster_half)", "PCA16,LSH")] == [
        1, 1, 1]  # one summary row per index
    assert summary.count("R@1 per edit") == 3 and summary.count("\n| brightness_2.0 | ") == 6  # R@1, decisions
    assert summary.count("\n| edit | PDQ | exact SSCD | passive | active | active (robust) | active - passive |") == 3
    assert summary.count("at any distance") == 3
    assert summary.count("true copies at 1 % and 0.1 % false copies per edit, the shipped rule") == 3
    assert "true copies at 0.1 % false, passive -> active" in summary and "Copy decisions per edit" in report
    assert "R@1 as answered, passive -> active" in summary and "active, answered" in summary
    assert "\n| lr 0.3, crops | 4 | " in summary and "\n| s=2 (default) | 2 | " in summary

    # PDQ hashed the very crops whose descriptors are the references: one shared, seeded draw
    data, _, extractor = prepare(config, progress=False)
    crops = [c for photo in _crops(data.distractors, 40, config.seed, "distractor_crops", "", False) for c in photo]
    np.testing.assert_allclose(extractor.encode_arrays(crops), data.x_refs[len(data.distractors):], atol=1e-4)

    activated = sorted((out / "cache" / "activated").rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in activated]
    run_benchmark(config)  # resumes: activated files are reused, not rewritten
    assert [p.stat().st_mtime_ns for p in activated] == stamps


def _check_decisions(index: dict, nonmatching: int, labels: int) -> None:
    """The shipped rule's operating points (bench/operating.py): one threshold per rate on the non-matching
    queries, at most that share of them called copies, true copies per edit and pooled over the paper's."""
    decision = index["decision"]
    assert decision["nonmatching"] == nonmatching and decision["shortlist"] == SHORTLIST
    for mode in ("passive", "active", "robust"):
        for rate in ("0.01", "0.001"):
            point = decision["points"][mode][rate]
            assert point["false_copies"] <= float(rate) * nonmatching and point["nonmatching"] == nonmatching
            assert len(point["edits"]) == labels and point["paper_average"]["n"] == 6 * 3  # 6 images, 3 edits
            pooled = point["paper_average"]
            assert pooled["ci"][0] <= pooled["rate"] <= pooled["ci"][1]
            assert pooled["rate"] == pytest.approx(np.mean(point["hits"]))
        answered = decision["answered"][mode]["paper_average"]  # R@1 as answered: the match, whatever its similarity
        assert answered["n"] == 6 * 3 and answered["ci"][0] <= answered["rate"] <= answered["ci"][1]
        assert all(decision["points"][mode][rate]["paper_average"]["rate"] <= answered["rate"]  # a copy needs both
                   for rate in ("0.01", "0.001"))
        strict, loose = decision["points"][mode]["0.001"], decision["points"][mode]["0.01"]
        assert strict["threshold"] >= loose["threshold"]  # fewer false copies: a higher bar, fewer true ones
        assert strict["paper_average"]["rate"] <= loose["paper_average"]["rate"]
    assert decision["points"]["active"]["0.01"]["edits"]["none"]["rate"] == 1.0  # a released file: its own descriptor
    assert decision["answered"]["active"]["edits"]["none"]["rate"] == 1.0
    difference = decision["points"]["active-passive"]["0.01"]
    assert difference["rate"] == pytest.approx(decision["points"]["active"]["0.01"]["paper_average"]["rate"]
                                               - decision["points"]["passive"]["0.01"]["paper_average"]["rate"])


def test_published_formats_are_queried_from_the_released_files(corpus, tmp_path):
    """`publish`: the activated files released as JPEG 50 get their own rows and their paired difference with
    the lossless PNG; their quality and sizes are the released files'."""
    config = BenchmarkConfig(corpus=str(corpus.root), out=str(tmp_path / "bench"), nlists=[4],
                             factories=["IVF{nlist},PQ8x4"], edits=["none", "brightness_2.0"], sweeps=[],
                             iterations=2, n_activate=6, publish=["jpeg:50"], train_vectors=300,
                             distractor_crops=40, bootstrap=200, device="cpu")
    [index] = run_benchmark(config)["indexes"]
    modes = {r["mode"] for r in index["edits"]}
    assert {"JPEG 50", "JPEG 50-active"} <= modes
    released = index["compared"]["JPEG 50"]
    files = sorted(Path(released["activated_dir"]).iterdir())
    assert [p.suffix for p in files] == [".jpg"] * 6
    assert np.mean(released["quality"]["psnr"]) < np.mean(index["quality"]["psnr"])  # JPEG 50 costs quality
    assert np.mean(released["bytes"]) < np.mean(index["bytes"])
    rows = {(r["edit"], r["mode"]): r for r in index["edits"]}
    for edit in ("none", "brightness_2.0"):
        difference = rows[edit, "JPEG 50"]["r1"] - rows[edit, "active"]["r1"]
        assert rows[edit, "JPEG 50-active"]["r1"] == pytest.approx(difference)
    with pytest.raises(ValueError, match="FORMAT:QUALITY"):
        BenchmarkConfig(publish=["jpeg"])
