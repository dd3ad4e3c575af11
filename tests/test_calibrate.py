"""Calibrating the copy threshold: the split-conformal rule's guarantee on new queries, its refusals, and a
real calibration whose stored value the CLI and the service use."""
from __future__ import annotations

import glob
import json
import math
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from activeindex import Collection
from activeindex.calibrate import conformal_threshold, held_out, threshold_for_fpr, wilson_interval
from activeindex.config import DEFAULT_THRESHOLD

from .conftest import NEBULAE, TEST_FACTORY, start_server, stop_server


def out_of_sample_rate(threshold: float) -> float:
    """The exact share of NEW standard-normal scores >= threshold."""
    return 0.5 * math.erfc(threshold / math.sqrt(2))


def test_the_conformal_rule_bounds_the_rate_on_new_queries_where_the_in_sample_rule_does_not():
    """200 seeded simulations of 1,000 non-matching photos (a quarter held out, as `calibrate` does): the
    out-of-sample false-copy rate averages <= 1 % with the conformal rule; choosing in sample, as calibrate
    once did, averages above it (about 1.1 %)."""
    conformal, in_sample = [], []
    for seed in range(200):
        scores = np.random.default_rng(seed).normal(size=1000)
        choose = scores[~held_out(1000, seed)]
        conformal.append(out_of_sample_rate(conformal_threshold(choose, 0.01)))
        in_sample.append(out_of_sample_rate(threshold_for_fpr(scores, 0.01)))
    assert np.mean(conformal) <= 0.01 < np.mean(in_sample)
    assert np.mean(conformal) > 0.008  # and not by throwing away the true copies: close to the target


def test_held_out_is_a_seeded_quarter():
    assert held_out(1000, 3).sum() == 250 and np.array_equal(held_out(1000, 3), held_out(1000, 3))
    assert not np.array_equal(held_out(1000, 3), held_out(1000, 4))


def test_conformal_threshold_lets_through_at_most_k_and_needs_enough_scores():
    scores = np.random.default_rng(0).uniform(-0.2, 0.9, 999)
    threshold = conformal_threshold(scores, 0.01)  # (k + 1) / 1000 <= 0.01: k = 9
    assert (scores >= threshold).sum() == 9 and (scores >= np.nextafter(threshold, -np.inf)).sum() == 10
    with pytest.raises(ValueError, match="at least 19"):
        conformal_threshold(scores[:18], 0.05)


def test_threshold_lets_through_at_most_the_target_share():
    scores = np.random.default_rng(0).uniform(-0.2, 0.9, 1000)
    for fpr in (0.001, 0.01, 0.05, 0.2):
        threshold = threshold_for_fpr(scores, fpr)
        assert (scores >= threshold).sum() <= int(fpr * 1000)
        assert (scores >= np.nextafter(threshold, -np.inf)).sum() > int(fpr * 1000)  # and the lowest such
    ties = np.array([0.5] * 10 + [0.1] * 90)
    assert (ties >= threshold_for_fpr(ties, 0.05)).sum() == 0  # 10 tied scores cannot be split


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(5, 100)  # 5 % of 100: [2.15 %, 11.17 %]
    assert low == pytest.approx(0.0215, abs=2e-4) and high == pytest.approx(0.1117, abs=2e-4)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, training_npy, small_photos):
    """A collection with six real photos registered, and 100 real telescope photos that are not."""
    root = tmp_path_factory.mktemp("calibrate") / "col"
    folder = tmp_path_factory.mktemp("calibrate-photos")
    for i, image in enumerate(small_photos):
        Image.fromarray(image).save(folder / f"photo{i}.png")
    collection = Collection.create(root, TEST_FACTORY, device="cpu")
    collection.train(training_npy)
    collection.add([folder])
    collection.close()
    unrelated = sorted(glob.glob(NEBULAE))[400:500]  # the training set used the first 360
    assert len(unrelated) == 100
    return root, unrelated, folder


def calibrate_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "activeindex", "calibrate", *map(str, args)], capture_output=True,
                          text=True, timeout=900)


def test_calibrate_stores_a_threshold_bounded_for_every_kind_of_query(registered):
    """Before: every interface says the threshold is uncalibrated (the server warns at start). A running
    server picks the calibration up without a restart; its verdicts then say calibrated."""
    root, unrelated, folder = registered
    process, url = start_server(root)
    try:
        before = httpx.get(f"{url}/v1/status", timeout=30).json()
        search = httpx.post(f"{url}/v1/search", files={"images": ("q.png", (folder / "photo1.png").read_bytes())},
                            timeout=120).json()
        result = calibrate_cli(root, *unrelated, "--fpr", "0.1", "--json", "-q")
        after = httpx.get(f"{url}/v1/status", timeout=30).json()
        again = httpx.post(f"{url}/v1/search", files={"images": ("q.png", (folder / "photo1.png").read_bytes())},
                           timeout=120).json()
    finally:
        stop_server(process)
    log = process.stderr.read()
    assert (before["calibrated"], before["threshold"], before["calibration"]) == (False, DEFAULT_THRESHOLD, None)
    assert (search["calibrated"], search["results"][0]["calibrated"]) == (False, False)
    assert f"{root} is not calibrated: copies are called from a similarity of {DEFAULT_THRESHOLD:.3f}" in log
    assert result.returncode == 0, result.stderr
    calibration = json.loads(result.stdout)
    assert (calibration["n_nonmatching"], calibration["n_held_out"]) == (100, 25)
    assert set(calibration["kinds"]) == {"unedited", "photometric", "geometric", "auto"}
    assert calibration["threshold"] == max(k["threshold"] for k in calibration["kinds"].values())
    worst = max(k["fpr"] for k in calibration["kinds"].values())
    assert calibration["fpr"] == worst and all(k["n_held_out"] == 25 for k in calibration["kinds"].values())
    assert calibration["kinds"]["unedited"]["tpr"] == 1.0  # registered photos themselves are always copies
    assert calibration["n_matching"] == 24  # 6 registered photos x 4 kinds
    collection = Collection.open(root)
    assert (collection.threshold, collection.calibrated) == (calibration["threshold"], True)
    info = subprocess.run([sys.executable, "-m", "activeindex", "info", str(root), "-q"], capture_output=True,
                          text=True, timeout=300).stdout
    assert f"threshold          {calibration['threshold']:.4f} (calibrated for FPR 0.1: worst kind's FPR" in info
    assert (after["threshold"], after["calibrated"]) == (calibration["threshold"], True)  # the same server
    assert after["calibration"]["target_fpr"] == 0.1
    assert (again["threshold"], again["calibrated"], again["results"][0]["calibrated"]) == (
        calibration["threshold"], True, True)


def test_calibrate_refuses_bad_input_before_loading_the_model(registered, tmp_path):
    root, unrelated, folder = registered
    too_few = calibrate_cli(root, *unrelated, "--fpr", "0.01", "-q")  # 100 images for 1 %: 1,000 needed
    assert too_few.returncode == 1
    assert too_few.stderr.strip() == ("error: 100 non-matching images cannot calibrate a false-copy rate of 0.01: "
                                      "give at least 1000 (10 / target)")
    missing = calibrate_cli(root, *unrelated, tmp_path / "nowhere", "--fpr", "0.1", "-q")
    assert missing.returncode == 1 and f"no such file or folder: {tmp_path / 'nowhere'}" in missing.stderr
    assert calibrate_cli(root, *unrelated, "--fpr", "0.5", "-q").returncode == 2  # at most 0.2
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(120):
        (junk / f"{i}.png").write_text("not an image")
    unreadable = calibrate_cli(root, junk, "--fpr", "0.1", "-q")
    assert unreadable.returncode == 1 and "fewer than the 100 needed remain" in unreadable.stderr
    registered_ones = calibrate_cli(root, *unrelated, folder / "photo2.png", "--fpr", "0.1", "-q")
    assert registered_ones.returncode == 1
    assert "1 of the non-matching images are registered" in registered_ones.stderr
    assert "photo2.png; leave them out" in registered_ones.stderr
    for result in (too_few, missing, unreadable):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1



def test_bad_calibration_arguments_are_refused_without_loading_torch(tmp_path):
    """The command line checks the arguments and the photos first: neither torch nor faiss is imported."""
    script = ("import sys; from activeindex.cli import main; code = main(sys.argv[1:]); "
              "print(code, 'torch' in sys.modules, 'faiss' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script, "calibrate", str(tmp_path), str(tmp_path / "nowhere"),
                             "--fpr", "0.1"], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["1", "False", "False"] and "no such file or folder" in result.stderr
