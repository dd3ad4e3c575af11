"""The command line as a user runs it: real processes, exit codes, stdout and stderr apart."""
from __future__ import annotations

import argparse
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from activeindex import Collection, cli
from activeindex.cli import finite_float, int_in
from activeindex.config import DEFAULT_THRESHOLD
from activeindex.edits import apply_edit
from activeindex.imageio import load_image, sha256_file

from .conftest import TEST_FACTORY, free_port


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m activeindex ARGS`` as a user runs it; raises on a non-zero exit unless ``check`` is False."""
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
    Image.fromarray(apply_edit("hue_0.2", load_image(out / "photo1.png"))).save(copy, quality=80)
    found = json.loads(run("search", cli_collection, copy, "-k", "2", "--json").stdout)
    assert found[0]["matches"][0]["id"] == report["records"][1]["id"]
    assert (found[0]["is_copy"], found[0]["calibrated"], found[0]["threshold"]) == (True, False, DEFAULT_THRESHOLD)
    text = run("search", cli_collection, copy).stdout
    assert text.splitlines()[0].startswith(f"{copy}: a copy of {photo_dir / 'photo1.png'} (similarity ")
    assert text.splitlines()[1].lstrip().startswith(f"1. id {report['records'][1]['id']} ")


def test_activate_to_a_psnr_floor(cli_collection, photo_dir, tmp_path):
    """--psnr 42: the written PNG, read back, is at least 42 dB from its original; the scaling is reported."""
    original = tmp_path / "mirrored.png"
    Image.fromarray(np.ascontiguousarray(load_image(photo_dir / "photo3.png")[:, ::-1])).save(original)
    result = run("activate", cli_collection, original, "--out", tmp_path / "out", "--iterations", "2",
                 "--psnr", "42", "--json", "-q")
    [record] = json.loads(result.stdout)["records"]
    written = load_image(record["activated_path"]).astype(float)
    mse = np.mean((written - load_image(original).astype(float)) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) >= 42.0 and record["psnr"] >= 42.0 and record["scaling"] > 0


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
    assert collection.indexed_images == collection.catalog.count() == registered
    for record in collection.catalog.get(list(range(1, registered + 1))).values():
        assert sha256_file(record.activated_path) == record.activated_sha256

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith(f"{6 - registered} registered, {registered} skipped, 0 failed")
    assert Collection.open(root).indexed_images == _count(root) == 6


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


USAGE_ERRORS = [  # (arguments, the flag argparse names): refused with a usage line and exit 2
    (["search", "col", "q.png", "-k", "0"], "-k"),
    (["search", "col", "q.png", "-k", "-1"], "-k"),
    (["activate", "col", "q.png", "--out", "out", "--batch-size", "0"], "--batch-size"),
    (["activate", "col", "q.png", "--out", "out", "--iterations", "0"], "--iterations"),
    (["activate", "col", "q.png", "--out", "out", "--scaling", "nan"], "--scaling"),
    (["activate", "col", "q.png", "--out", "out", "--lr", "0"], "--lr"),
    (["activate", "col", "q.png", "--out", "out", "--lambda-mse", "-1"], "--lambda-mse"),
    (["activate", "col", "q.png", "--out", "out", "--gradient", "fp16"], "--gradient"),
    (["activate", "col", "q.png", "--out", "out", "--psnr", "90"], "--psnr"),
    (["activate", "col", "q.png", "--out", "out", "--edits", "crop,warp"], "--edits"),
    (["init", "col", "--factory", "Flat", "--train", "x.npy", "--nprobe", "0"], "--nprobe"),
    (["serve", "col", "--port", "99999"], "--port"),
    (["serve", "col", "--threshold", "1.5"], "--threshold"),
    (["data", "fetch", "--max-side", "0"], "--max-side"),
    (["data", "fetch", "--activate", "0"], "--activate"),
    (["data", "fetch", "--nonmatching", "-1"], "--nonmatching"),
    (["info", "col", "--device", "tpu"], "--device"),
]


def test_gradient_flags_override_the_preset():
    args = cli.build_parser().parse_args(["activate", "col", "q.png", "--out", "out", "--preset", "paper",
                                          "--gradient", "relu", "--precision", "bfloat16"])
    config = cli._activation_config(args)
    assert (config.scaling, config.iterations, config.gradient, config.precision) == (3.0, 10, "relu", "bfloat16")
    robust = cli._activation_config(cli.build_parser().parse_args(
        ["activate", "col", "q.png", "--out", "out", "--preset", "robust", "--edits", "rotate,jpeg"]))
    assert robust.edits == ("rotate", "jpeg") and (robust.edit_draws, robust.lr) == (2, 0.3)


def test_iterations_alone_sets_the_steps_of_large_photos_too():
    """--iterations was ignored by photos over twice the network's size (the coarse path's own steps)."""
    def config(*flags):
        return cli._activation_config(cli.build_parser().parse_args(["activate", "col", "q.png", "--out", "o", *flags]))
    assert (config("--iterations", "3").iterations, config("--iterations", "3").coarse_iterations) == (3, 3)
    assert config("--iterations", "3", "--coarse-iterations", "5").coarse_iterations == 5
    assert config().coarse_iterations == 6


@pytest.mark.parametrize("args, flag", USAGE_ERRORS, ids=[" ".join(a[-2:]) for a, _ in USAGE_ERRORS])
def test_bad_arguments_are_usage_errors(args, flag, tmp_path):
    result = run(*args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"activeindex {args[0]}: error: argument {flag}")


ONE_LINE_ERRORS = [  # (arguments, what the error names): refused before the collection opens (no model loads)
    (["serve", "{col}", "--host", "myhost.invalid"], "myhost.invalid"),
    (["serve", "{col}", "--port", "{busy_port}"], "port {busy_port}"),
    (["activate", "{col}", "q.png", "--out", "{file}"], "--out {file}: exists and is not a folder"),
    (["add", "{col}", "{empty}"], "no image files found in {empty}"),
    (["activate", "{col}", "{empty}", "--out", "{tmp}/out"], "no image files found in {empty}"),
    (["activate", "{col}", "{image}", "--out", "{tmp}/out", "--c2pa-trust", "{file}"],
     "--c2pa-trust names the roots trusted when signing"),  # without --c2pa-sign it would do nothing
    (["serve", "{col}", "--port", "{free_port}", "--c2pa-trust", "{file}"], "{file}: not a PEM certificate file"),
    pytest.param(["info", "{col}", "--device", "cuda"], "CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
]


@pytest.mark.parametrize("args, named", ONE_LINE_ERRORS, ids=["host", "port in use", "out is a file", "add empty",
                                                                "activate empty", "trust without signing",
                                                                "trust not PEM", "no cuda"])
def test_bad_arguments_fail_fast_in_one_line(args, named, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a folder")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "image.png")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"col": tmp_path / "col", "tmp": tmp_path, "empty": tmp_path / "empty", "file": tmp_path / "file",
                  "busy_port": busy.getsockname()[1], "image": tmp_path / "image.png", "free_port": free_port()}
        result = run(*[a.format(**values) for a in args], check=False)
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and named.format(**values) in lines[0]
    assert not (tmp_path / "col").exists()


def test_search_answers_good_queries_and_reports_bad_ones(cli_collection, photo_dir, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    queries = [photo_dir / "photo2.png", tmp_path / "broken.png", photo_dir / "photo3.png", tmp_path / "missing.jpg"]
    result = run("search", cli_collection, *queries, "-k", "2", "--json", "-q", check=False)
    assert result.returncode == 1
    entries = json.loads(result.stdout)
    assert [e["query"] for e in entries] == [str(q) for q in queries]
    verdict = ["calibrated", "is_copy", "matches", "query", "threshold"]
    assert [sorted(e) for e in entries] == [verdict, ["error", "query"]] * 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "broken.png" in errors[0] and "missing.jpg" in errors[1]
    assert result.stderr.splitlines()[-1] == "2 searched, 2 failed"
    text = run("search", cli_collection, *queries, "-q", check=False).stdout
    heads = [line for line in text.splitlines() if not line.startswith(" ")]
    assert [line.split(": ")[0] for line in heads] == [str(queries[0]), str(queries[2])]
    assert all(line.endswith("uncalibrated threshold: run activeindex calibrate)") for line in heads)


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt(), 130, "interrupted"),
    (PermissionError(13, "Permission denied", "/srv/col"), 1, "error: /srv/col: Permission denied"),
])
def test_interrupts_and_os_errors_end_in_one_line(raised, code, line, monkeypatch, capsys):
    def fail(args: argparse.Namespace) -> None:
        raise raised

    monkeypatch.setitem(cli.COMMANDS, "info", cli.COMMANDS["info"]._replace(run=fail))
    assert cli.main(["info", "col", "-q"]) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_programming_errors_still_raise(monkeypatch):
    def fail(args: argparse.Namespace) -> None:
        raise TypeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, "info", cli.COMMANDS["info"]._replace(run=fail))
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["info", "col", "-q"])


@pytest.mark.parametrize("parse, text", [(int_in(1, 1000), "0"), (int_in(1, 1000), "1001"), (int_in(1), "x"),
                                         (finite_float(above=0), "0"), (finite_float(above=0), "inf"),
                                         (finite_float(at_least=-1, at_most=1), "nan")])
def test_argument_types_refuse_out_of_range_values(parse, text):
    assert int_in(1, 65535)("65535") == 65535 and finite_float(at_least=-1, at_most=1)("-1") == -1.0
    with pytest.raises(argparse.ArgumentTypeError, match=rf"(must be|expected) .*, got '?{text}'?$"):
        parse(text)
