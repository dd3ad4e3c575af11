"""The optimiser: move each image's descriptor towards its index target, under a perceptual budget.

I = I_o + s * H(I_o) * alpha_c * tanh(delta) in ImageNet-normalised space (METHOD.md section 3),
loss = -cos(f(I), t) + lambda * MSE(I, I_o), Adam on delta at full resolution.
"""
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .codec import TARGET_KINDS, Codec
from .errors import InvalidInputError, UnknownNameError
from .extractor import IMAGENET_STD, Extractor, to_tensor
from .perceptual import jnd_heatmap, quality
from .progress import progress_bar

__all__ = ["ActivationConfig", "ActivatedImage", "Activator", "PRESETS", "get_preset"]

logger = logging.getLogger(__name__)

JND_PADDINGS = ("replicate", "zeros")  # the padding modes of perceptual.jnd_heatmap


def _is_finite(value: object) -> bool:
    """A real number (Python or numpy, not a bool) that is neither NaN nor infinite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    """An integer (Python or numpy) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class ActivationConfig:
    """Activation settings; every field but ``scaling`` defaults to the paper's value."""

    scaling: float = 2.0  # s; the paper's 3.0 gives ~38.5 dB on textured photos (README, "Default scaling")
    alpha_c: tuple[float, float, float] = (0.072 / 0.299, 0.072 / 0.587, 0.072 / 0.114)  # R, G, B weights
    lambda_mse: float = 0.01  # weight of the MSE term (normalised space)
    lr: float = 1.0  # Adam learning rate
    iterations: int = 10
    batch_size: int = 16  # images of the same size optimised together
    seed: int = 0  # delta initialisation
    jnd_padding: str = "replicate"  # see perceptual.jnd_heatmap
    target: str = "index"  # see Codec.targets: "index" (the paper's) or "ivf_cluster_half"

    def __post_init__(self) -> None:
        """Refuse values the optimiser cannot use (a NaN scaling would silently destroy the images).

        Raises:
            InvalidInputError: the first invalid field, named with its value and the allowed range.
        """
        rules = {
            "scaling": (_is_finite(self.scaling) and self.scaling > 0, "a finite number > 0"),
            "alpha_c": (isinstance(self.alpha_c, (tuple, list)) and len(self.alpha_c) == 3
                        and all(_is_finite(a) and a >= 0 for a in self.alpha_c), "three finite weights >= 0 (R, G, B)"),
            "lambda_mse": (_is_finite(self.lambda_mse) and self.lambda_mse >= 0, "a finite number >= 0"),
            "lr": (_is_finite(self.lr) and self.lr > 0, "a finite number > 0"),
            "iterations": (_is_int(self.iterations) and self.iterations >= 1, "an integer >= 1"),
            "batch_size": (_is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            "jnd_padding": (self.jnd_padding in JND_PADDINGS, f"one of {list(JND_PADDINGS)}"),
            "target": (self.target in TARGET_KINDS, f"one of {list(TARGET_KINDS)}"),
        }
        for name, (valid, rule) in rules.items():
            if not valid:
                raise InvalidInputError(f"ActivationConfig.{name} must be {rule}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ActivationConfig:
        return cls(**{**data, "alpha_c": tuple(data.get("alpha_c", cls.alpha_c))})


PRESETS: dict[str, ActivationConfig] = {
    "default": ActivationConfig(),
    "paper": ActivationConfig(scaling=3.0),  # Fernandez et al. 2023 (correct Gy, replicate padding)
}


def get_preset(name: str) -> ActivationConfig:
    """A named configuration: ``"default"`` or ``"paper"``."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown activation preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass
class ActivatedImage:
    """One activated image and what it achieved."""

    image: np.ndarray  # (H, W, 3) uint8, what gets written
    psnr: float  # dB, against the original
    ssim: float
    linf: int  # largest change in 8-bit levels
    cos_before: float  # cosine of the original's descriptor to its target
    cos_after: float  # cosine of the activated 8-bit image's descriptor to the same target
    same_cell: bool | None  # activated descriptor in the original's IVF cell (None: no IVF)
    same_code: bool  # activated descriptor encodes to the original's code
    descriptor: np.ndarray = field(repr=False)  # (d,) float32, the ORIGINAL's descriptor (what is indexed)

    def metrics(self) -> dict:
        """The scalar fields, for catalogs and JSON."""
        return {k: v for k, v in asdict(self).items() if k not in ("image", "descriptor")}


class Activator:
    """Activates images for one frozen codec.

    Args:
        extractor: the descriptor model (its differentiable path is optimised through).
        codec: the trained codec that gives the targets.
        config: the settings (``ActivationConfig()`` or ``get_preset("paper")``).

    Example:
        >>> results = Activator(extractor, codec).activate([image])
        >>> results[0].psnr, results[0].same_code
        (43.1, True)
    """

    def __init__(self, extractor: Extractor, codec: Codec, config: ActivationConfig = ActivationConfig()):
        self.extractor, self.codec, self.config = extractor, codec, config
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self._alpha = torch.tensor(config.alpha_c).view(1, 3, 1, 1)

    def activate(self, images: Sequence[np.ndarray], progress: bool | None = None) -> list[ActivatedImage]:
        """Activate (H, W, 3) uint8 RGB images of any sizes (same-size ones are batched).

        Returns:
            one `ActivatedImage` per input, in input order.
        """
        descriptors = self.extractor.encode_arrays(images)
        targets = self.codec.targets(descriptors, self.config.target)
        out: list[np.ndarray | None] = [None] * len(images)
        bar = progress_bar(len(images), "activate", progress)
        for idx in self._batches(images):
            batch = torch.cat([to_tensor(images[i]) for i in idx])
            activated = self.optimize(batch, torch.from_numpy(targets[idx]), seeds=idx)
            for i, image in zip(idx, activated):
                out[i] = image
            bar.update(len(idx))
        bar.close()
        return self._assess(images, out, descriptors, targets)

    def _batches(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices grouped by image shape, in chunks of ``batch_size``."""
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
        size = self.config.batch_size
        return [g[s:s + size] for g in groups.values() for s in range(0, len(g), size)]

    def optimize(self, batch: torch.Tensor, targets: torch.Tensor, seeds: Sequence[int] = ()) -> list[np.ndarray]:
        """Run the optimisation on one batch of same-size images.

        Args:
            batch: (B, 3, H, W) float in [0, 1].
            targets: (B, d) float target descriptors.
            seeds: one extra seed per image (its position), so results do not depend on batching.

        Returns:
            B activated images, (H, W, 3) uint8.
        """
        cfg, device = self.config, self.extractor.device
        batch, targets = batch.to(device), targets.to(device)
        std = self._std.to(device)
        budget = cfg.scaling * jnd_heatmap(batch, cfg.jnd_padding) * self._alpha.to(device) * std
        delta = torch.cat([_init_delta(batch.shape[1:], cfg.seed + int(s)) for s in (seeds or range(len(batch)))])
        delta = delta.to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=cfg.lr)
        for _ in range(cfg.iterations):
            optimizer.zero_grad()
            activated = batch + budget * torch.tanh(delta)
            cosine = F.cosine_similarity(self.extractor.embed(activated), targets, dim=1)
            mse = (((activated - batch) / std) ** 2).flatten(1).mean(1)
            loss = (-cosine + cfg.lambda_mse * mse).sum()  # a sum: each image's gradient is its own
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            final = (batch + budget * torch.tanh(delta)).clamp(0.0, 1.0)
            as_uint8 = (final * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return list(as_uint8)

    def _assess(self, images, activated, descriptors, targets) -> list[ActivatedImage]:
        """Measure quality and whether the 8-bit result reaches the original's cell and code."""
        after = self.extractor.encode_arrays(activated)
        same_cell = self.codec.cells(after) == self.codec.cells(descriptors)
        same_code = (self.codec.codes(after) == self.codec.codes(descriptors)).all(axis=1)
        has_ivf = self.codec.nlist > 0
        results = []
        for i, image in enumerate(activated):
            results.append(ActivatedImage(
                image=image, **quality(images[i], image),
                cos_before=_cosine(descriptors[i], targets[i]), cos_after=_cosine(after[i], targets[i]),
                same_cell=bool(same_cell[i]) if has_ivf else None, same_code=bool(same_code[i]),
                descriptor=descriptors[i]))
        return results


def _init_delta(shape: torch.Size, seed: int) -> torch.Tensor:
    """delta_0 = 1e-6 * N(0, 1), seeded per image."""
    generator = torch.Generator().manual_seed(seed)
    return 1e-6 * torch.randn((1, *shape), generator=generator)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
