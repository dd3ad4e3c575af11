"""Perceptual model and image-quality metrics: pure functions.

`jnd_heatmap` is the just-noticeable-difference model of METHOD.md section 3.1 (Wu et al., TIP 2017).
PSNR, SSIM and L-inf compare two 8-bit images at full resolution.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["jnd_heatmap", "psnr", "ssim", "linf", "quality", "row_blocks"]

_LUMA = (0.299, 0.587, 0.114)
_LUMINANCE_KERNEL = torch.tensor([[1, 1, 1, 1, 1],
                                  [1, 2, 2, 2, 1],
                                  [1, 2, 0, 2, 1],
                                  [1, 2, 2, 2, 1],
                                  [1, 1, 1, 1, 1]], dtype=torch.float32) / 32.0
_SOBEL_X = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float32)
_SOBEL_Y = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=torch.float32)  # the correct Gy (not Gx)


# The heatmap and the metrics run over blocks of rows (about a million pixels each): a 64-megapixel pair needs
# tens of MB of temporaries, not the gigabytes of whole float copies, and nothing is converted to float64.
_BLOCK_PIXELS = 1 << 20
_SSIM_WINDOW = 11
_SSIM_KERNEL = np.exp(-((np.arange(_SSIM_WINDOW) - _SSIM_WINDOW // 2) ** 2) / (2 * 1.5 ** 2)).astype(np.float32)
_SSIM_KERNEL /= _SSIM_KERNEL.sum()
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _checked(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    return image


def row_blocks(height: int, width: int, overlap: int = 0) -> list[slice]:
    """Row ranges of about `_BLOCK_PIXELS` pixels covering ``height - overlap`` rows (a filter of ``overlap``
    + 1 rows then reads each block plus ``overlap`` rows): bounded temporaries at any image size."""
    step = max(1, _BLOCK_PIXELS // max(1, width))
    return [slice(start, min(height - overlap, start + step)) for start in range(0, max(1, height - overlap), step)]


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
    y = images[:, 0:1] * (_LUMA[0] * 255.0)  # luminance, one map (no 3-channel temporary)
    y.add_(images[:, 1:2], alpha=_LUMA[1] * 255.0).add_(images[:, 2:3], alpha=_LUMA[2] * 255.0)
    padded = F.pad(y, (2, 2, 2, 2), mode="replicate" if padding == "replicate" else "constant")
    out = torch.empty_like(y)
    for rows in row_blocks(y.shape[-2], y.shape[-1]):  # the filters are local: row blocks, exactly
        out[..., rows, :] = _jnd(padded[..., rows.start:rows.stop + 4, :])  # the block and its 2-row margins
    return out.div_(255.0)


def _jnd(window: torch.Tensor) -> torch.Tensor:
    """JND (0-255 units) of the rows of a luminance window padded by 2 on each side."""
    background = F.conv2d(window, _LUMINANCE_KERNEL.to(window)[None, None])
    dark = 17.0 * (1.0 - torch.sqrt(background / 127.0 + 1e-3)) + 3.0
    bright = 3.0 / 128.0 * (background - 127.0) + 3.0
    la = torch.where(background <= 127.0, dark, bright)
    inner = window[..., 1:-1, 1:-1]  # padded by 1: the Sobel filters' own padding
    c = torch.sqrt(F.conv2d(inner, _SOBEL_X.to(window)[None, None]) ** 2
                   + F.conv2d(inner, _SOBEL_Y.to(window)[None, None]) ** 2)
    cm = 0.117 * 16.0 * c ** 2.4 / (c ** 2 + 26.0 ** 2)
    return torch.clamp(la + cm - 0.3 * torch.minimum(la, cm), min=5.0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (inf when identical)."""
    _checked(a), _checked(b)
    squared = 0
    for rows in row_blocks(*a.shape[:2]):
        diff = a[rows].astype(np.int32) - b[rows]
        squared += int(np.dot(diff.ravel().astype(np.int64), diff.ravel()))  # exact integer sum
    mse = squared / a.size
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K = 0.01 / 0.03, RGB channels averaged) between
    two (H, W, 3) uint8 images: the mean of the SSIM map over every valid window (as pytorch-msssim computes
    it, to 1e-7), over row blocks that overlap by the window, with separable float32 filters."""
    _checked(a), _checked(b)
    total, count = 0.0, 0
    for rows in row_blocks(*a.shape[:2], overlap=_SSIM_WINDOW - 1):
        x, y = (im[rows.start:rows.stop + _SSIM_WINDOW - 1].astype(np.float32) for im in (a, b))
        mu_x, mu_y = _gaussian(x), _gaussian(y)
        var_x, var_y, cov = _gaussian(x * x) - mu_x ** 2, _gaussian(y * y) - mu_y ** 2, _gaussian(x * y) - mu_x * mu_y
        contrast = (2 * cov + _C2) / (var_x + var_y + _C2)
        total += float(np.sum(((2 * mu_x * mu_y + _C1) / (mu_x ** 2 + mu_y ** 2 + _C1)) * contrast, dtype=np.float64))
        count += contrast.size
    return total / count


def _gaussian(x: np.ndarray) -> np.ndarray:
    """The SSIM window's Gaussian over rows then columns, keeping valid positions only."""
    margin = _SSIM_WINDOW // 2
    rows = ndimage.correlate1d(x, _SSIM_KERNEL, axis=0, mode="constant")[margin:-margin]
    return ndimage.correlate1d(rows, _SSIM_KERNEL, axis=1, mode="constant")[:, margin:-margin]


def linf(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute difference in 8-bit levels."""
    _checked(a), _checked(b)
    return max(int(np.abs(a[rows].astype(np.int16) - b[rows]).max()) for rows in row_blocks(*a.shape[:2]))


def quality(original: np.ndarray, changed: np.ndarray) -> dict[str, float]:
    """``{"psnr", "ssim", "linf"}`` of a changed 8-bit image against its original."""
    return {"psnr": psnr(original, changed), "ssim": ssim(original, changed), "linf": linf(original, changed)}
