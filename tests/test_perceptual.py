"""JND heatmap against hand-computed values, and the quality metrics on known cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from activeindex.perceptual import jnd_heatmap, linf, psnr, ssim


def flat(value: float, size: int = 16) -> torch.Tensor:
    return torch.full((1, 3, size, size), value / 255.0)


def test_flat_mid_gray_gets_the_floor_of_5():
    # B = 128 (the kernel sums to 32), LA = 3/128 * (128 - 127) + 3 = 3.02, no contrast: JND = max(3.02, 5)
    heat = jnd_heatmap(flat(128.0)) * 255.0
    torch.testing.assert_close(heat, torch.full_like(heat, 5.0))


def test_flat_black_gets_the_luminance_adaptation_value():
    expected = 17.0 * (1.0 - math.sqrt(0.0 / 127.0 + 1e-3)) + 3.0  # 19.46
    heat = jnd_heatmap(flat(0.0)) * 255.0
    torch.testing.assert_close(heat, torch.full_like(heat, expected))


def test_replicate_padding_keeps_the_border_like_the_interior():
    image = flat(200.0)
    replicate = jnd_heatmap(image, padding="replicate")
    zeros = jnd_heatmap(image, padding="zeros")
    assert torch.allclose(replicate, replicate[0, 0, 8, 8])  # uniform everywhere
    # zero padding sees a black frame: the outer pixels get a large contrast-masking budget
    assert zeros[0, 0, 0, 8] > 3 * zeros[0, 0, 8, 8]
    assert torch.allclose(zeros[0, 0, 4:-4, 4:-4], replicate[0, 0, 4:-4, 4:-4])


def test_horizontal_edges_are_seen_by_the_correct_sobel_y():
    # rows 0-7 black, rows 8-15 white: only Gy responds (with the research code's Gy = Gx bug, C = 0)
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:, :] = 1.0
    heat = jnd_heatmap(image) * 255.0
    # last black row: Gy = -(1 + 2 + 1) * 255; the 5x5 window holds 2 white rows of weights 8 + 5
    c = 4 * 255.0
    cm = 0.117 * 16 * c ** 2.4 / (c ** 2 + 26 ** 2)
    b = 255.0 * 13 / 32
    la = 17 * (1 - math.sqrt(b / 127 + 1e-3)) + 3
    assert heat[0, 0, 7, 8].item() == pytest.approx(la + cm - 0.3 * min(la, cm), rel=1e-4)
    assert heat[0, 0, 12, 8].item() == pytest.approx(6.0)  # flat white: LA = 3/128 * 128 + 3


def test_heatmap_is_differentiable_and_shaped():
    image = torch.rand(2, 3, 20, 30, requires_grad=True)
    heat = jnd_heatmap(image)
    assert heat.shape == (2, 1, 20, 30)
    heat.sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()


def test_psnr_of_one_level_everywhere():
    a = np.full((32, 32, 3), 100, np.uint8)
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255.0))  # 48.13 dB
    identical = psnr(a, a)  # finite (JSON has no infinity), above any changed image's
    assert identical == pytest.approx(10 * math.log10(255.0 ** 2 * a.size)) and identical > psnr(a, a + 1)


def test_linf_and_ssim_known_cases():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = a.copy()
    b[3, 4, 1] = 255 - b[3, 4, 1] if b[3, 4, 1] < 128 else 0
    assert linf(a, b) == abs(int(a[3, 4, 1]) - int(b[3, 4, 1]))
    assert ssim(a, a) == pytest.approx(1.0)
    assert 0.0 < ssim(a, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) < 0.1


def ssim_float64(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM by its definition on whole images, in float64 (with the same float32 window weights)."""
    kernel = np.exp(-(np.arange(-5, 6) ** 2) / 4.5).astype(np.float32)
    kernel = (kernel / kernel.sum()).astype(np.float64)
    window = torch.from_numpy(np.outer(kernel, kernel))[None, None]
    x, y = (torch.from_numpy(image).permute(2, 0, 1)[:, None].double() for image in (a, b))
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x, var_y = F.conv2d(x * x, window) - mu_x ** 2, F.conv2d(y * y, window) - mu_y ** 2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean().item()


def smooth_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth RGB gradient (where float32 filters err most) and a copy with +-2 levels of noise."""
    rows, cols, channels = np.mgrid[:height, :width, :3]
    a = np.clip(128 + 100 * np.sin(cols / 37 + rows / 53 + channels), 0, 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(-2, 3, a.shape)
    return a, np.clip(a + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(11, 11), (20, 30), (161, 530)])  # one window; one tile; tiles and remainders
def test_ssim_is_exact(shape):
    a, b = smooth_pair(*shape)
    assert ssim(a, b) == pytest.approx(ssim_float64(a, b), abs=1e-9)
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(2))
    assert ssim(a, b) == pytest.approx(ssim_float64(a, b), abs=1e-9)


def test_ssim_is_the_same_on_any_number_of_threads():
    a, b = smooth_pair(300, 1100)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ssim(a, b)
        torch.set_num_threads(2)
        assert ssim(a, b) == one
    finally:
        torch.set_num_threads(threads)


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((10, 40, 3), np.uint8), np.zeros((10, 40, 3), np.uint8))


def test_metrics_refuse_float_images():
    with pytest.raises(TypeError, match="uint8"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
