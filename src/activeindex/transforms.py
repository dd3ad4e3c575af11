"""Differentiable edits: the copies people make of published images, as torch ops, for edit-aware activation.

The paper optimises the descriptor of the unedited image only, which barely helps geometric edits. Here the
loss also averages over edits drawn from this distribution (expectation over transformations), so the image
is moved where its crops, rotations and re-encodings land too. The edits act on the network's input (shorter
side 288), where they cost little; crops and rotations are resized back to that size, as a copy would be.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .config import EDIT_FAMILIES

__all__ = ["EDIT_FAMILIES", "random_edit", "rotate"]


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _crop(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random crop of 25-100 % of the area, aspect 3/4-4/3 (the usual re-framing of a re-shared photo)."""
    h, w = x.shape[-2:]
    area, aspect = _uniform(g, 0.25, 1.0) * h * w, math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
    ch, cw = min(h, round(math.sqrt(area / aspect))), min(w, round(math.sqrt(area * aspect)))
    top, left = int(_uniform(g, 0, h - ch + 1)), int(_uniform(g, 0, w - cw + 1))
    return x[..., top:top + ch, left:left + cw]


def _rotate(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A rotation of up to 30 degrees either way, canvas expanded with black corners (as the benchmark's)."""
    return rotate(x, _uniform(g, -30.0, 30.0))


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """(B, 3, h, w) turned by ``angle`` degrees counter-clockwise, the canvas expanded with black corners."""
    from kornia.geometry.transform import rotate as kornia_rotate

    h, w = x.shape[-2:]
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    new_h, new_w = math.ceil(h * c + w * s), math.ceil(w * c + h * s)
    pad_h, pad_w = new_h - h, new_w - w
    padded = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return kornia_rotate(padded, torch.full((x.shape[0],), angle, device=x.device, dtype=x.dtype))


def _flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x.flip(-1)


def _color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness and contrast 0.5-2x and a hue shift of up to 0.2 of the circle (the paper's photometric edits)."""
    from kornia.enhance import adjust_hue

    x = x * _uniform(g, 0.5, 2.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (mean + _uniform(g, 0.5, 2.0) * (x - mean)).clamp(0.0, 1.0)
    return adjust_hue(x, _uniform(g, -0.2, 0.2) * 2 * math.pi)


def _blur(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    from kornia.filters import gaussian_blur2d

    sigma = _uniform(g, 0.5, 2.5)
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur2d(x, (size, size), (sigma, sigma))


def _jpeg(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Re-encoding at quality 30-90 (kornia's differentiable JPEG: it wants sides that are multiples of 16)."""
    from kornia.enhance import jpeg_codec_differentiable

    h, w = x.shape[-2:]
    padded = F.pad(x, (0, -w % 16, 0, -h % 16), mode="replicate")
    quality = torch.full((x.shape[0],), _uniform(g, 30.0, 90.0), device=x.device, dtype=x.dtype)
    return jpeg_codec_differentiable(padded, quality)[..., :h, :w]


_EDITS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop": _crop, "rotate": _rotate, "flip": _flip, "color": _color, "blur": _blur, "jpeg": _jpeg}
assert tuple(_EDITS) == EDIT_FAMILIES, "config.EDIT_FAMILIES names the edits defined here"


def random_edit(x: torch.Tensor, families: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """One edit of a family drawn uniformly from ``families``, its parameters drawn once for the batch.

    Args:
        x: (B, 3, h, w) float in [0, 1].
        families: names from `EDIT_FAMILIES`.
        generator: the seeded source of every draw.

    Returns:
        the edited batch (its size changes with crops and rotations), differentiable with respect to ``x``.
    """
    family = families[int(torch.randint(len(families), (), generator=generator))]
    return _EDITS[family](x, generator).clamp(0.0, 1.0)
