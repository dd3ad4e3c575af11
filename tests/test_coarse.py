"""The coarse change: its stencil is exactly the network's resize of the full-resolution change, on a real
photo's JND map, and an activation optimised through it gains as much as one per pixel."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from activeindex import ActivationConfig, Activator
from activeindex.coarse import CoarseChange, resize_matrix, upsample_matrix
from activeindex.edits import apply_edit
from activeindex.extractor import PreprocessConfig, preprocessed_size, resize_to, to_tensor
from activeindex.imageio import load_image
from activeindex.perceptual import jnd_heatmap

from .conftest import small

RESIZES = [PreprocessConfig(short_side=64), PreprocessConfig(short_side=64, interpolation="bicubic"),
           PreprocessConfig(short_side=64, antialias=False)]


@pytest.fixture(scope="module")
def budget(photo_paths) -> torch.Tensor:
    """A real photo's JND map at its full 512 x 512, times the default scaling."""
    return 2.0 * jnd_heatmap(to_tensor(load_image(photo_paths[0])))[0, 0]


@pytest.mark.parametrize("preprocessing", RESIZES, ids=["bilinear-aa", "bicubic-aa", "bilinear"])
def test_the_measured_matrices_are_the_resizes(photo_paths, preprocessing):
    photo = to_tensor(load_image(photo_paths[1]))  # 400 x 600
    down = resize_matrix(400, 64, preprocessing)
    assert torch.allclose(down @ photo[0, 0], resize_to(photo, (64, 600), preprocessing)[0, 0], atol=1e-6)
    column = photo[:, :, :64, :1]
    up = torch.nn.functional.interpolate(column, size=(400, 1), mode="bilinear", align_corners=False)
    assert torch.allclose(upsample_matrix(64, 400) @ column[0, 0, :, 0], up[0, 0, :, 0], atol=1e-6)


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("preprocessing", RESIZES, ids=["bilinear-aa", "bicubic-aa", "bilinear"])
def test_what_the_network_sees_and_the_mse_are_exact(budget, factor, preprocessing):
    size = preprocessed_size(budget.shape, preprocessing)
    change = CoarseChange(budget, size, factor, preprocessing)
    t = torch.tanh(torch.randn(2, 3, *change.size, generator=torch.Generator().manual_seed(factor)))
    full = change.full(t)
    assert full.shape == (2, 3, 512, 512) and (full.abs() <= budget + 1e-6).all()  # the JND bounds every pixel
    assert torch.allclose(change.seen(t), resize_to(full, size, preprocessing), atol=1e-6)
    assert torch.allclose(change.square_sums(t), full.square().sum((-2, -1)), rtol=1e-5)


def test_the_gradients_are_those_of_the_full_resolution_computation(budget):
    """The stencil's and the quadratic form's own backward passes against autograd through the full-resolution
    change (the upsampling, the map, the resize)."""
    preprocessing = RESIZES[0]
    change = CoarseChange(budget, (64, 64), 2, preprocessing)
    t = torch.randn(1, 3, *change.size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = torch.autograd.grad((change.seen(t) * weights).sum() + change.square_sums(t).sum(), t)[0]
    upsampled = torch.nn.functional.interpolate(t, size=(512, 512), mode="bilinear", align_corners=False) * budget
    direct = (resize_to(upsampled, (64, 64), preprocessing) * weights).sum() + upsampled.square().sum()
    expected = torch.autograd.grad(direct, t)[0]
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_a_photo_over_twice_the_networks_size_is_optimised_coarsely_and_gains_as_much(extractor, codec,
                                                                                      photo_paths):
    image = small(load_image(photo_paths[0]), 600)  # the network sees it at 288: delta at 576 x 576
    config = ActivationConfig(iterations=5, coarse_iterations=5, precision="float32")  # equal steps
    coarse, pixel = Activator(extractor, codec, config), Activator(extractor, codec,
                                                                   dataclasses.replace(config, resolution=0))
    per_channel = torch.ones(1, 3, 1, 1)
    assert coarse._change(torch.ones(1, 1, 600, 600), (288, 288), per_channel).shape == (3, 576, 576)
    assert pixel._change(torch.ones(1, 1, 600, 600), (288, 288), per_channel).shape == (3, 600, 600)
    [fine], [smooth] = pixel.activate([image]), coarse.activate([image])
    fine_gain, smooth_gain = fine.cos_after - fine.cos_before, smooth.cos_after - smooth.cos_before
    assert smooth_gain > 0.9 * fine_gain > 0.05
    assert abs(smooth.psnr - fine.psnr) < 1.0
    assert smooth.same_cell
    assert np.abs(smooth.image.astype(int) - fine.image).max() > 0  # really another parametrisation


def test_coarse_photos_take_their_own_number_of_steps_in_their_own_batches(extractor, codec, photo_paths,
                                                                           monkeypatch):
    """A 600-px photo (coarse) and a 400-px one (per pixel) the network sees at one size: two batches, of
    ``coarse_iterations`` and ``iterations`` network passes."""
    image = load_image(photo_paths[0])
    images = [small(image, 600), small(image, 400)]
    activator = Activator(extractor, codec, ActivationConfig(iterations=3, coarse_iterations=2, precision="float32"))
    assert activator._batches(images) == [[0], [1]]
    passes = []
    embed = extractor.embed_preprocessed
    monkeypatch.setattr(extractor, "embed_preprocessed",
                        lambda inputs, *args: passes.append(len(inputs)) or embed(inputs, *args))
    activator.activate(images)
    assert passes == [1, 1, 1, 1, 1]


def test_edit_aware_activation_of_a_large_photo_moves_its_crops_closer(extractor, codec, photo_paths):
    """The loss over drawn crops with the coarse change: the centre crop of the activated photo ends nearer its
    target than with the unedited-only loss, at the same budget."""
    image = small(load_image(photo_paths[0]), 600)
    [target] = codec.targets(extractor.encode_arrays([image]), "index")
    config = ActivationConfig(iterations=4, coarse_iterations=4, lr=1.0, precision="float32")  # lr 1: both fill
    [plain] = Activator(extractor, codec, config).activate([image])
    [aware] = Activator(extractor, codec, dataclasses.replace(config, edits=("crop",))).activate([image])

    def cropped_cosine(result) -> float:
        [cropped] = extractor.encode_arrays([apply_edit("center_crop_0.5", result.image)])
        return float(cropped @ target / np.linalg.norm(target))

    assert cropped_cosine(aware) > cropped_cosine(plain) + 0.01
    assert abs(aware.psnr - plain.psnr) < 0.5
