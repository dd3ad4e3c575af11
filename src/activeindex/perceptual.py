"""Perceptual model and image-quality metrics: pure functions.

`jnd_heatmap` is the just-noticeable-difference model of METHOD.md section 3.1 (Wu et al., TIP 2017).
PSNR, SSIM and L-inf compare two 8-bit images at full resolution.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["jnd_heatmap", "psnr", "ssim", "linf", "quality", "row_blocks"]

_LUMA = (0.299, 0.587, 0.114)


# The heatmap and the metrics run over blocks of rows (about a million pixels each), SSIM over small tiles: a
# 64-megapixel pair needs tens of MB of temporaries, not the gigabytes of whole float copies.
_BLOCK_PIXELS = 1 << 20
_JND_BLOCK_PIXELS = 1 << 18  # the heatmap's ~20 temporaries a block then stay in cache: 1.8x faster at 18 MP
_SSIM_WINDOW = 11
_SSIM_KERNEL = np.exp(-((np.arange(_SSIM_WINDOW) - _SSIM_WINDOW // 2) ** 2) / (2 * 1.5 ** 2)).astype(np.float32)
_SSIM_KERNEL /= _SSIM_KERNEL.sum()
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
# The SSIM filters are products with a banded matrix, `_SSIM_STEP` rows (columns) at a time (the float32 weights,
# in float64). A tile of `_SSIM_TILE` output rows and columns (multiples of the step) stays in cache, and each
# product stays under OpenBLAS's threading threshold (m * n * k <= 2**18), so it runs on the calling pool thread.
_SSIM_STEP = 16
_SSIM_TILE = (144, 512)
_SSIM_BAND = np.stack([np.roll(np.pad(_SSIM_KERNEL.astype(np.float64), (0, _SSIM_STEP - 1)), i)
                       for i in range(_SSIM_STEP)])  # row i: the weights in columns i to i + 10


def _checked(a: np.ndarray, b: np.ndarray) -> None:
    """Two 8-bit images of one shape, as every metric compares."""
    for image in (a, b):
        if image.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")


def row_blocks(height: int, width: int, overlap: int = 0, pixels: int = _BLOCK_PIXELS) -> list[slice]:
    """Row ranges of about ``pixels`` pixels covering ``height - overlap`` rows (a filter of ``overlap`` + 1 rows
    then reads each block plus ``overlap`` rows): bounded temporaries at any image size."""
    step = max(1, pixels // max(1, width))
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
    # luminance, one map: a product over the channels, which a decoded image holds side by side (3x faster
    # than weighted sums of its strided channel planes)
    y = (images.permute(0, 2, 3, 1) @ images.new_tensor(_LUMA).mul_(255.0)).unsqueeze(1)
    padded = F.pad(y, (2, 2, 2, 2), mode="replicate" if padding == "replicate" else "constant")
    out = torch.empty_like(y)
    for rows in row_blocks(y.shape[-2], y.shape[-1], pixels=_JND_BLOCK_PIXELS):  # local filters: exact by blocks
        out[..., rows, :] = _jnd(padded[..., rows.start:rows.stop + 4, :])  # the block and its 2-row margins
    return out.div_(255.0)


def _jnd(window: torch.Tensor) -> torch.Tensor:
    """JND (0-255 units) of the rows of a luminance window padded by 2 on each side. The filters are separable
    sums of shifted slices: oneDNN's one-channel 5x5 convolution cost 5x more."""
    inner, centre = window[..., 1:-1, 1:-1], window[..., 2:-2, 2:-2]
    # METHOD.md's 5x5 luminance kernel (1 on the rim, 2 inside, 0 at the centre) / 32: two box sums less the centre
    background = (_box(window, 5) + _box(inner, 3) - 2.0 * centre) / 32.0
    dark = 17.0 * (1.0 - torch.sqrt(background / 127.0 + 1e-3)) + 3.0
    bright = 3.0 / 128.0 * (background - 127.0) + 3.0
    la = torch.where(background <= 127.0, dark, bright)
    smooth_rows = inner[..., :-2, :] + 2.0 * inner[..., 1:-1, :] + inner[..., 2:, :]  # Sobel: [1 2 1] x [-1 0 1]
    smooth_cols = inner[..., :, :-2] + 2.0 * inner[..., :, 1:-1] + inner[..., :, 2:]
    gx, gy = smooth_rows[..., :, 2:] - smooth_rows[..., :, :-2], smooth_cols[..., :-2, :] - smooth_cols[..., 2:, :]
    c2 = gx * gx + gy * gy  # C^2
    cm = 0.117 * 16.0 * c2.pow(1.2) / (c2 + 26.0 ** 2)  # C^2.4 = (C^2)^1.2
    return torch.clamp(la + cm - 0.3 * torch.minimum(la, cm), min=5.0)


def _box(window: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over every ``size`` x ``size`` square lying inside ``window`` (valid positions)."""
    height, width = window.shape[-2] - size + 1, window.shape[-1] - size + 1
    rows = sum(window[..., i:i + height, :] for i in range(size))
    return sum(rows[..., :, j:j + width] for j in range(size))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape. Identical images get the PSNR of the smallest
    change they could differ by (one value one level off: 10 log10(255^2 n) for n values, 107.1 dB at 512 x 512
    RGB), so it is always finite (JSON has no infinity) and never ranks a changed image above them."""
    return _psnr(_differences(a, b))


def _psnr(counts: np.ndarray) -> float:
    squared = int(counts @ np.arange(256, dtype=np.int64) ** 2)  # an exact integer sum
    mse = max(squared, 1) / counts.sum()
    return float(10.0 * np.log10(255.0 ** 2 / mse))


def _differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(256,) int64: how many values of ``a`` and ``b`` differ by 0, 1, ... 255 levels. PSNR and L-inf both follow,
    from one pass over row blocks (torch's bincount runs on all cores)."""
    _checked(a, b)
    counts = torch.zeros(256, dtype=torch.int64)
    for rows in row_blocks(*a.shape[:2]):
        difference = np.maximum(a[rows], b[rows])
        difference -= np.minimum(a[rows], b[rows])
        counts += torch.bincount(torch.from_numpy(difference).ravel(), minlength=256)
    return counts.numpy()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K = 0.01 / 0.03, RGB channels averaged) between
    two (H, W, 3) or (H, W) uint8 images: the mean of the SSIM map over every valid window, as pytorch-msssim
    defines it but exact (float64; float32 filters err by up to a few 1e-6 on photos). Over tiles that overlap by the
    window, on `torch.get_num_threads()` threads (numpy and BLAS release the GIL)."""
    _checked(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    (height, width, channels), margin = a.shape, _SSIM_WINDOW - 1
    if min(height, width) <= margin:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW} x {_SSIM_WINDOW} pixels, got {a.shape}")
    rows, cols = _SSIM_TILE
    tiles = [(slice(r, min(r + rows, height - margin) + margin), slice(c, min(c + cols, width - margin) + margin), k)
             for r in range(0, height - margin, rows) for c in range(0, width - margin, cols) for k in range(channels)]
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        sums = list(pool.map(lambda tile: _ssim_sum(a[tile], b[tile]), tiles))
    return sum(sums) / (channels * (height - margin) * (width - margin))  # summed in tile order: deterministic


def _ssim_sum(x: np.ndarray, y: np.ndarray) -> float:
    """Sum of the SSIM map of one channel of a tile, over its valid windows (10 fewer rows and columns)."""
    step, margin = _SSIM_STEP, _SSIM_WINDOW - 1
    rows, cols = x.shape[0] - margin, x.shape[1] - margin
    # s = x + y, s^2, d = x - y, d^2: 4 filtered planes instead of x, y, x^2, y^2, xy (see _ssim_map)
    q = np.empty((4, -(-rows // step) * step + margin, -(-cols // step) * step + margin))  # padded to whole steps
    q[:, rows + margin:], q[:, :, cols + margin:] = 0, 0
    np.copyto(q[0, :rows + margin, :cols + margin], x), np.copyto(q[1, :rows + margin, :cols + margin], y)
    np.subtract(q[0], q[1], out=q[2]), np.add(q[0], q[1], out=q[0])
    np.multiply(q[0], q[0], out=q[1]), np.multiply(q[2], q[2], out=q[3])
    ssim_map = _ssim_map(*_gaussian(q))
    ssim_map[:, rows:], ssim_map[-1, :, cols - (len(ssim_map) - 1) * step:] = 0, 0  # outputs of the padding
    return float(ssim_map.sum())


def _gaussian(q: np.ndarray) -> np.ndarray:
    """The SSIM window over (n, rows + 10, cols + 10) planes, rows and columns multiples of the step, valid
    positions only, as (n, cols / step, rows, step). In float64: E[s^2] - E[s]^2 cancels ~7 digits in flat areas."""
    step, margin = _SSIM_STEP, _SSIM_WINDOW - 1
    n, rows = len(q), q.shape[1] - margin
    # each step of rows is the band times the (step + 10)-row window starting there, in one batched matmul
    columns = _SSIM_BAND @ sliding_window_view(q, step + margin, axis=1)[:, ::step].swapaxes(-1, -2)
    columns = columns.reshape(n * rows, q.shape[2])
    out = sliding_window_view(columns, step + margin, axis=1)[:, ::step].swapaxes(0, 1) @ _SSIM_BAND.T
    return out.reshape(len(out), n, rows, step).swapaxes(0, 1)


def _ssim_map(mu_s: np.ndarray, s2: np.ndarray, mu_d: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """SSIM from the filtered s, s^2, d, d^2 (overwritten): 4 mu_x mu_y = mu_s^2 - mu_d^2, 2 (mu_x^2 + mu_y^2) =
    mu_s^2 + mu_d^2, 4 cov = var_s - var_d and 2 (var_x + var_y) = var_s + var_d."""
    mu_s *= mu_s
    mu_d *= mu_d
    s2 -= mu_s  # var_s
    d2 -= mu_d  # var_d
    mu_s += 2 * _C1
    s2 += 2 * _C2
    ssim_map = (mu_s - mu_d) * (s2 - d2)  # 4 (2 mu_x mu_y + C1) (2 cov + C2)
    mu_s += mu_d
    s2 += d2
    mu_s *= s2  # 4 (mu_x^2 + mu_y^2 + C1) (var_x + var_y + C2)
    ssim_map /= mu_s
    return ssim_map


def linf(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute difference in 8-bit levels."""
    return _linf(_differences(a, b))


def _linf(counts: np.ndarray) -> int:
    return int(np.flatnonzero(counts)[-1])


def quality(original: np.ndarray, changed: np.ndarray) -> dict[str, float]:
    """``{"psnr", "ssim", "linf"}`` of a changed 8-bit image against its original."""
    counts = _differences(original, changed)
    return {"psnr": _psnr(counts), "ssim": ssim(original, changed), "linf": _linf(counts)}
