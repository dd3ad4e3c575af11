"""Calibrating the copy threshold on real unrelated photos; the CLI and the service use the stored value."""
from __future__ import annotations

import glob
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from activeindex import Collection
from activeindex.calibrate import threshold_for_fpr, wilson_interval

from .conftest import NEBULAE, TEST_FACTORY, start_server, stop_server


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
    return root, unrelated


def test_calibrate_stores_a_threshold_that_meets_the_target(registered, tmp_path):
    root, unrelated = registered
    result = subprocess.run([sys.executable, "-m", "activeindex", "calibrate", str(root), *unrelated, "--fpr", "0.05",
                             "--edit", "jpeg_50", "--edit", "brightness_2.0", "--json", "-q"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    calibration = json.loads(result.stdout)
    assert calibration["n_nonmatching"] == 100 and calibration["n_matching"] == 6
    assert calibration["fpr"] <= 0.05 and calibration["fpr_interval"][0] <= calibration["fpr"]
    assert calibration["tpr"] >= 0.8  # photometric edits of registered photos stay above it
    collection = Collection.open(root)
    assert collection.threshold == calibration["threshold"] != 0.4
    info = subprocess.run([sys.executable, "-m", "activeindex", "info", str(root), "-q"], capture_output=True,
                          text=True, timeout=300).stdout
    assert f"threshold          {calibration['threshold']:.4f} (calibrated for FPR 0.05" in info
    process, url = start_server(root)
    try:
        status = httpx.get(f"{url}/v1/status", timeout=30).json()
    finally:
        stop_server(process)
    assert status["threshold"] == calibration["threshold"]


def test_too_few_nonmatching_images_is_refused(registered):
    root, unrelated = registered
    result = subprocess.run([sys.executable, "-m", "activeindex", "calibrate", str(root), *unrelated[:50],
                             "--fpr", "0.01", "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "give at least 100" in result.stderr
