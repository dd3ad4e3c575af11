"""Activation on real photos: closer to the target, imperceptible, seeded, mixed sizes."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from activeindex import ActivationConfig, Activator, get_preset
from activeindex.edits import apply_edit
from activeindex.errors import InvalidInputError, UnknownNameError
from activeindex.extractor import network_input
from activeindex.transforms import EDIT_FAMILIES
from activeindex.views import encode_views, get_view_set

FAST = ActivationConfig(iterations=5)  # fewer iterations keep the suite fast; defaults otherwise


@pytest.fixture(scope="module")
def activated(extractor, codec, small_photos):
    """Three real photos of two different sizes (192 x 288 and 192 x 256 after scaling)."""
    images = [small_photos[0], small_photos[1], small_photos[2]]
    return images, Activator(extractor, codec, FAST).activate(images)


def test_paper_defaults_are_the_config_fields():
    paper = get_preset("paper")
    assert (paper.scaling, paper.lambda_mse, paper.lr, paper.iterations) == (3.0, 0.01, 1.0, 10)
    assert (paper.gradient, paper.precision, paper.resolution) == ("ste", "float32", 0)
    assert paper.alpha_c == pytest.approx((0.072 / 0.299, 0.072 / 0.587, 0.072 / 0.114))
    # the default's departures: chosen by R@1 under edits per dB (scaling, lr) and for speed (the rest)
    departures = {"scaling": 2.0, "lr": 0.3, "iterations": 8, "gradient": "relu", "precision": "auto", "resolution": 2}
    assert dataclasses.replace(paper, **departures) == ActivationConfig()
    with pytest.raises(UnknownNameError, match="unknown activation preset 'fast'"):
        get_preset("fast")


def test_activation_moves_descriptors_towards_their_targets(activated):
    images, results = activated
    for image, result in zip(images, results):
        assert result.image.shape == image.shape and result.image.dtype == np.uint8
        assert result.cos_after > result.cos_before + 0.05
        assert result.same_cell is not None


def test_activation_is_imperceptible(activated):
    images, results = activated
    for image, result in zip(images, results):
        assert result.psnr > 38 and result.ssim > 0.95
        assert 0 < result.linf <= 20
        assert not np.array_equal(result.image, image)


def test_activation_is_seeded(extractor, codec, small_photos):
    activator = Activator(extractor, codec, dataclasses.replace(FAST, iterations=2))
    first, again = activator.activate(small_photos[3:4]), activator.activate(small_photos[3:4])
    np.testing.assert_array_equal(first[0].image, again[0].image)


def test_paper_scaling_spends_more_budget(extractor, codec, small_photos, activated):
    _, default = activated
    paper = Activator(extractor, codec, dataclasses.replace(get_preset("paper"), iterations=5)).activate(
        small_photos[:1])
    assert paper[0].psnr < default[0].psnr - 2  # 1.5x the budget costs up to 3.5 dB
    assert paper[0].cos_after > default[0].cos_after


def test_metrics_dict_has_no_arrays(activated):
    metrics = activated[1][0].metrics()
    assert set(metrics) == {"psnr", "ssim", "linf", "cos_before", "cos_after", "same_cell", "same_code", "scaling",
                            "format", "lost_in_encoding"}


@pytest.mark.parametrize("field, value", [
    ("scaling", float("nan")), ("scaling", float("inf")), ("scaling", 0.0), ("scaling", -1.0), ("lr", 0.0),
    ("lr", float("nan")), ("lambda_mse", -0.01), ("lambda_mse", float("inf")), ("iterations", 0),
    ("iterations", 2.5), ("batch_size", 0), ("jnd_padding", "reflect"), ("alpha_c", (0.2, 0.1)),
    ("alpha_c", (0.2, 0.1, float("nan"))), ("gradient", "fp16"), ("precision", "float16"),
    ("psnr", 10.0), ("psnr", float("nan")), ("edits", ("crop", "warp")), ("edit_draws", 0),
])
def test_config_refuses_unusable_values(field, value):
    with pytest.raises(InvalidInputError, match=rf"^ActivationConfig\.{field} must be [^\n]*, got ") as raised:
        dataclasses.replace(ActivationConfig(), **{field: value})
    assert "\n" not in str(raised.value)
    with pytest.raises(InvalidInputError):
        ActivationConfig.from_dict({**ActivationConfig().to_dict(), field: value})


def test_config_accepts_numpy_scalars_and_zero_mse_weight():
    config = ActivationConfig(scaling=np.float32(2.5), iterations=np.int64(3), lambda_mse=0.0)
    assert ActivationConfig.from_dict(config.to_dict()) == config


def test_fast_gradients_reach_the_cell_the_exact_ones_reach(extractor, codec, small_photos):
    """relu graph in bfloat16 (the default where it is faster) against the paper's exact float32 gradients, same
    budget and iterations: the written image's descriptor (always the exact function) moves as far on a real photo."""
    fast = dataclasses.replace(FAST, gradient="relu", precision="bfloat16")
    exact = dataclasses.replace(FAST, gradient="ste", precision="float32")
    [fast_result] = Activator(extractor, codec, fast).activate(small_photos[:1])
    [exact_result] = Activator(extractor, codec, exact).activate(small_photos[:1])
    assert fast_result.same_cell and exact_result.same_cell
    fast_gain = fast_result.cos_after - fast_result.cos_before
    exact_gain = exact_result.cos_after - exact_result.cos_before
    assert fast_gain > 0.9 * exact_gain > 0.05
    assert abs(fast_result.psnr - exact_result.psnr) < 0.5
    assert not np.array_equal(fast_result.image, exact_result.image)  # really another gradient path


def test_mixed_resolutions_of_one_aspect_share_a_batch(extractor, codec, small_photos):
    """A photo and its 2x enlargement are one batch for the network, and each comes out as if alone."""
    small = small_photos[0]
    large = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    activator = Activator(extractor, codec, dataclasses.replace(FAST, iterations=3, precision="float32"))
    assert activator._batches([small, large, small_photos[1]]) == [[0, 1], [2]]
    together = activator.activate([small, large])
    alone = activator.optimize([large], torch.from_numpy(codec.targets(
        extractor.encode_arrays([large]), "index")), seeds=[1])[0][0]
    assert together[1].image.shape == large.shape
    assert np.abs(together[1].image.astype(int) - alone).max() <= 1


def test_a_psnr_floor_sets_each_images_scaling_and_every_result_meets_it(extractor, codec, small_photos):
    """Photos of different texture get different scalings; each 8-bit result is at or just above the floor,
    where one scaling for all lands anywhere from the floor's -3 dB to +4 dB."""
    floor = 42.0
    saturating = dataclasses.replace(FAST, psnr=floor, lr=1.0)
    results = Activator(extractor, codec, saturating).activate(small_photos[:4])
    assert all(floor <= r.psnr < floor + 0.5 for r in results), [r.psnr for r in results]
    assert max(r.scaling for r in results) > 1.2 * min(r.scaling for r in results)
    assert all(r.cos_after > r.cos_before for r in results)
    # at the default lr 0.3 the tanh does not saturate and part of the budget is unused: the change is scaled
    # up to the floor
    filled = Activator(extractor, codec, dataclasses.replace(FAST, psnr=floor)).activate(small_photos[:4])
    assert all(floor <= r.psnr < floor + 0.5 for r in filled), [r.psnr for r in filled]
    assert all(f.scaling > 1.05 * r.scaling for f, r in zip(filled, results))
    fixed = Activator(extractor, codec, FAST).activate(small_photos[:4])
    assert all(r.scaling == FAST.scaling for r in fixed)


def test_the_floor_holds_where_rounding_alone_would_break_it(extractor, codec, small_photos):
    """A floor so high that the budget is below half a level: rounding decides, and the change shrinks."""
    [result] = Activator(extractor, codec, dataclasses.replace(FAST, iterations=2, psnr=60.0)).activate(
        small_photos[:1])
    assert result.psnr >= 60.0 and result.scaling < 0.5


def test_robust_preset_is_the_default_with_crops_rotations_and_more_steps():
    robust = get_preset("robust")
    assert robust.edits == ("crop", "rotate") and robust.edit_draws == 2 and robust.lr == 0.3
    assert robust.iterations == robust.coarse_iterations == 12  # large photos too: fewer are not measured with edits
    assert set(robust.edits) < set(EDIT_FAMILIES)
    assert dataclasses.replace(robust, edits=(), iterations=8, coarse_iterations=6) == ActivationConfig()
    assert ActivationConfig.from_dict(robust.to_dict()) == robust  # a JSON round trip keeps the tuple


def test_edit_aware_activation_moves_rotated_copies_closer_to_the_target(extractor, codec, small_photos):
    """Same budget and iterations, the loss also over drawn rotations: the 25-degree rotated copy of each
    activated photo ends nearer its target (what decides its cell and code) than with the unedited-only loss.
    At lr 1 both fill the whole budget, so the two differ only by the loss, not by the PSNR spent."""
    photos = small_photos[:3]
    targets = codec.targets(extractor.encode_arrays(photos), "index")
    saturating = dataclasses.replace(FAST, lr=1.0)
    plain = Activator(extractor, codec, saturating).activate(photos)
    aware = Activator(extractor, codec, dataclasses.replace(saturating, edits=("rotate",))).activate(photos)

    def rotated_cosines(results):
        rotated = extractor.encode_arrays([apply_edit("rotation_25", r.image) for r in results])
        return (rotated * targets).sum(1) / np.linalg.norm(targets, axis=1)

    assert (rotated_cosines(aware) > rotated_cosines(plain) + 0.01).all()
    assert all(abs(a.psnr - p.psnr) < 0.5 for a, p in zip(aware, plain))


def test_targets_come_from_the_descriptor_as_the_index_stores_it(extractor, codec, small_photos, monkeypatch):
    """A collection stores float16 descriptors: the target is the code of THAT vector (0.18 % of IVF64,PQ8x8
    codes differ from the float32 one's), and the indexed descriptor is it."""
    images = small_photos[:2]
    exact = extractor.encode_arrays(images)
    rounded = exact.astype(np.float16).astype(np.float32)
    asked = []
    real_targets = codec.targets
    monkeypatch.setattr(codec, "targets", lambda x, kind="index": asked.append(x.copy()) or real_targets(x, kind))
    results = Activator(extractor, codec, dataclasses.replace(FAST, iterations=1), stored_dtype="float16").activate(
        images)
    np.testing.assert_array_equal(asked[0], rounded)
    np.testing.assert_array_equal(np.stack([r.descriptor for r in results]), rounded)
    assert not np.array_equal(rounded, exact)  # the test would not see a float32 target


def test_activating_a_24_megapixel_photo_fits_in_1_5_gb_above_the_loaded_model():
    """Measured, in a process of its own (benchmarks/memory.py): the peak RSS while activating a real photo at
    6000 x 4000 (two iterations: the second runs with every full-resolution buffer alive), above the process's
    peak once the model, the codec and a small activation have run."""
    script = Path(__file__).parent.parent / "benchmarks" / "memory.py"
    out = subprocess.run([sys.executable, str(script), "--width", "6000", "--height", "4000"], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    growth, estimate, psnr = (float(v) for v in re.search(
        r"peak RSS \+(\d+) MB .* estimate (\d+) MB; PSNR ([\d.]+) dB", out.stdout).groups())
    print(out.stdout.strip())
    assert growth <= 1.5e3 and psnr > 35  # MB
    assert growth <= estimate  # `activation_memory` bounds what was measured


def test_batches_are_cut_to_the_memory_budget(extractor, codec):
    """Full-size photos are not optimised sixteen at a time on a small server: the batch fits the budget."""
    from activeindex.activation import activation_memory

    photos = [np.zeros((1000, 1500, 3), np.uint8)] * 3
    two = 2 * activation_memory(1000 * 1500)
    assert Activator(extractor, codec, FAST, memory=two)._batches(photos) == [[0, 1], [2]]
    assert Activator(extractor, codec, FAST)._batches(photos) == [[0, 1, 2]]


def test_activated_views_move_each_view_of_the_released_image_towards_its_own_code(extractor, codec, small_photos):
    """With views drawn into the loss, each indexed view of the released image ends nearer its own target (the
    original view's code) than when only the whole image is optimised, at the same budget (lr 1 fills it);
    the result carries the original's view descriptors, the ones the collection indexes."""
    views = get_view_set("crops+turns")
    photos = small_photos[:3]
    saturating = dataclasses.replace(FAST, lr=1.0)
    plain = Activator(extractor, codec, saturating, views=views).activate(photos)
    drawn = Activator(extractor, codec, dataclasses.replace(saturating, view_draws=3), views=views).activate(photos)
    originals = encode_views(extractor, [network_input(p) for p in photos], views)
    np.testing.assert_allclose(np.stack([r.views for r in drawn]), originals, atol=1e-5)
    targets = codec.targets(originals.reshape(-1, extractor.dim), "index").reshape(originals.shape)

    def view_cosines(results):
        released = encode_views(extractor, [network_input(r.image) for r in results], views)
        return ((released * targets).sum(-1) / np.linalg.norm(targets, axis=-1)).mean(1)

    assert (view_cosines(drawn) > view_cosines(plain) + 0.01).all()
    assert all(abs(a.psnr - p.psnr) < 0.5 for a, p in zip(drawn, plain))
