"""The command line as a user runs it: real processes, exit codes, stdout and stderr apart."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from activeindex import Collection
from activeindex.edits import apply_edit
from activeindex.imageio import load_image, sha256_file

from .conftest import TEST_FACTORY


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "activeindex", *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def photo_dir(small_photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("publish")
    for i, image in enumerate(small_photos):
        Image.fromarray(image).save(folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="module")
def cli_collection(tmp_path_factory, training_npy):
    root = tmp_path_factory.mktemp("cli") / "col"
    result = run("init", root, "--factory", TEST_FACTORY, "--train", training_npy, "--json", "-q")
    info = json.loads(result.stdout)
    assert info["factory"] == TEST_FACTORY and info["train_size"] > 600 and info["images"] == 0
    return root


def test_activate_then_search_an_edited_copy(cli_collection, photo_dir, tmp_path):
    out = tmp_path / "published"
    result = run("activate", cli_collection, photo_dir / "photo0.png", photo_dir / "photo1.png",
                 "--out", out, "--iterations", "3", "--json", "-q")
    report = json.loads(result.stdout)
    assert [r["activated_path"] for r in report["records"]] == [str(out / "photo0.png"), str(out / "photo1.png")]
    assert result.stderr.strip().endswith("2 registered, 0 skipped, 0 failed")
    copy = tmp_path / "copy.jpg"
    Image.fromarray(apply_edit("contrast_2.0", load_image(out / "photo1.png"))).save(copy, quality=80)
    found = json.loads(run("search", cli_collection, copy, "-k", "2", "--json").stdout)
    assert found[0]["matches"][0]["id"] == report["records"][1]["id"]
    text = run("search", cli_collection, copy).stdout
    assert text.splitlines()[1].lstrip().startswith(f"1. id {report['records'][1]['id']} ")


def test_info_and_add(cli_collection, photo_dir):
    run("add", cli_collection, photo_dir / "photo5.png", "-q")
    text = run("info", cli_collection).stdout
    assert f"factory            {TEST_FACTORY}" in text and "passive            1" in text


def test_bad_inputs_give_one_line_each_and_exit_1(cli_collection, photo_dir, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = run("add", cli_collection, tmp_path / "broken.png", tmp_path / "missing.jpg", photo_dir / "photo4.png",
                 "-q", check=False)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "broken.png" in errors[0] and "missing.jpg" in errors[1]
    assert result.stderr.strip().endswith("1 registered, 0 skipped, 2 failed")


def test_usage_errors(tmp_path):
    assert run("search", tmp_path / "nothing", "q.jpg", check=False).stderr.startswith("error: ")
    result = run("init", tmp_path / "c", "--factory", "Flat", "--train", "x.npy", check=False)
    assert result.returncode == 1 and "nothing to activate" in result.stderr
    assert run("frobnicate", check=False).returncode == 2


def test_killed_activation_leaves_a_consistent_collection_and_resumes(tmp_path, training_npy, photo_dir):
    root, out = tmp_path / "col", tmp_path / "out"
    run("init", root, "--factory", TEST_FACTORY, "--train", training_npy, "-q")
    command = [sys.executable, "-m", "activeindex", "activate", str(root), str(photo_dir), "--out", str(out),
               "--batch-size", "1", "--iterations", "3", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _count(root) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    registered = _count(root)
    assert 2 <= registered < 6, "the kill must land in the middle of the run"

    collection = Collection.open(root)  # opens, and index and catalog agree
    assert collection.index.ntotal == collection.catalog.count() == registered
    for record in collection.catalog.get(list(range(1, registered + 1))).values():
        assert sha256_file(record.activated_path) == record.activated_sha256

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith(f"{6 - registered} registered, {registered} skipped, 0 failed")
    assert Collection.open(root).index.ntotal == _count(root) == 6


def _count(root) -> int:
    try:
        with sqlite3.connect(root / "catalog.sqlite", timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0



def test_failed_init_leaves_no_folder(tmp_path, training_npy):
    np.save(tmp_path / "few.npy", np.load(training_npy)[:10])
    result = run("init", tmp_path / "col", "--factory", TEST_FACTORY, "--train", tmp_path / "few.npy", check=False)
    assert result.returncode == 1 and "too few" in result.stderr
    assert not (tmp_path / "col").exists()
