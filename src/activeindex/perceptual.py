"""Perceptual model and image-quality metrics: pure functions.

`jnd_heatmap` is the just-noticeable-difference model of METHOD.md section 3.1 (Wu et al., TIP 2017).
PSNR, SSIM and L-inf compare two 8-bit images at full resolution.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_msssim import ssim as _ssim

__all__ = ["jnd_heatmap", "psnr", "ssim", "linf", "quality"]

_LUMA = (0.299, 0.587, 0.114)
_LUMINANCE_KERNEL = torch.tensor([[1, 1, 1, 1, 1],
                                  [1, 2, 2, 2, 1],
                                  [1, 2, 0, 2, 1],
                                  [1, 2, 2, 2, 1],
                                  [1, 1, 1, 1, 1]], dtype=torch.float32) / 32.0
_SOBEL_X = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float32)
_SOBEL_Y = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=torch.float32)  # the correct Gy (not Gx)


def _filter(y: torch.Tensor, kernel: torch.Tensor, padding: str) -> torch.Tensor:
    """2-D correlation of a (B, 1, H, W) map with a square kernel, same size out."""
    p = kernel.shape[-1] // 2
    y = F.pad(y, (p, p, p, p), mode="replicate" if padding == "replicate" else "constant")
    return F.conv2d(y, kernel.to(y)[None, None])


def jnd_heatmap(images: torch.Tensor, padding: str = "replicate") -> torch.Tensor:
    """Just-noticeable difference of each pixel, as a fraction of the 0-255 range.

    Padding: ``"replicate"`` (default) treats the border like its neighbours. ``"zeros"`` (the paper's)
    sees a black frame around the image, so the 1-2 px border gets a huge contrast-masking budget and
    a visible frame of noise; we do not use it.

    Args:
        images: (B, 3, H, W) RGB float in [0, 1].
        padding: ``"replicate"`` or ``"zeros"``.

    Returns:
        (B, 1, H, W) float, JND / 255 (>= 5 / 255).
    """
    if padding not in ("replicate", "zeros"):
        raise ValueError(f"padding must be 'replicate' or 'zeros', got {padding!r}")
    luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    y = (images * 255.0 * luma).sum(1, keepdim=True)
    background = _filter(y, _LUMINANCE_KERNEL, padding)
    dark = 17.0 * (1.0 - torch.sqrt(background / 127.0 + 1e-3)) + 3.0
    bright = 3.0 / 128.0 * (background - 127.0) + 3.0
    la = torch.where(background <= 127.0, dark, bright)
    c = torch.sqrt(_filter(y, _SOBEL_X, padding) ** 2 + _filter(y, _SOBEL_Y, padding) ** 2)
    cm = 0.117 * 16.0 * c ** 2.4 / (c ** 2 + 26.0 ** 2)
    jnd = torch.clamp(la + cm - 0.3 * torch.minimum(la, cm), min=5.0)
    return jnd / 255.0


def _as_float(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    return image.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (inf when identical)."""
    mse = float(np.mean((_as_float(a) - _as_float(b)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Gaussian window 11, sigma 1.5, on RGB averaged) between two (H, W, 3) uint8 images."""
    ta, tb = (torch.from_numpy(_as_float(x)).float().permute(2, 0, 1)[None] for x in (a, b))
    return float(_ssim(ta, tb, data_range=255.0, size_average=True))


def linf(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute difference in 8-bit levels."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def quality(original: np.ndarray, changed: np.ndarray) -> dict[str, float]:
    """``{"psnr", "ssim", "linf"}`` of a changed 8-bit image against its original."""
    return {"psnr": psnr(original, changed), "ssim": ssim(original, changed), "linf": linf(original, changed)}
