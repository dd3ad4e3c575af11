"""Activation on real photos: closer to the target, imperceptible, seeded, mixed sizes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from activeindex import ActivationConfig, Activator, get_preset
from activeindex.errors import InvalidInputError, UnknownNameError

FAST = ActivationConfig(iterations=5)  # fewer iterations keep the suite fast; defaults otherwise


@pytest.fixture(scope="module")
def activated(extractor, codec, small_photos):
    """Three real photos of two different sizes (192 x 288 and 192 x 256 after scaling)."""
    images = [small_photos[0], small_photos[1], small_photos[2]]
    return images, Activator(extractor, codec, FAST).activate(images)


def test_paper_defaults_are_the_config_fields():
    paper = get_preset("paper")
    assert (paper.scaling, paper.lambda_mse, paper.lr, paper.iterations) == (3.0, 0.01, 1.0, 10)
    assert paper.alpha_c == pytest.approx((0.072 / 0.299, 0.072 / 0.587, 0.072 / 0.114))
    assert dataclasses.replace(paper, scaling=ActivationConfig().scaling) == ActivationConfig()
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
    assert set(metrics) == {"psnr", "ssim", "linf", "cos_before", "cos_after", "same_cell", "same_code"}


@pytest.mark.parametrize("field, value", [
    ("scaling", float("nan")), ("scaling", float("inf")), ("scaling", 0.0), ("scaling", -1.0), ("lr", 0.0),
    ("lr", float("nan")), ("lambda_mse", -0.01), ("lambda_mse", float("inf")), ("iterations", 0),
    ("iterations", 2.5), ("batch_size", 0), ("jnd_padding", "reflect"), ("alpha_c", (0.2, 0.1)),
    ("alpha_c", (0.2, 0.1, float("nan"))),
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
