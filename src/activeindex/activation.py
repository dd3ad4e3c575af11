"""The optimiser: move each image's descriptor towards its index target, under a perceptual budget.

I = I_o + s * H(I_o) * alpha_c * tanh(delta) in ImageNet-normalised space (METHOD.md section 3),
loss = -cos(f(I), t) + lambda * MSE(I, I_o), Adam on delta at full resolution (the paper's), or, for a photo over
twice the network's size, at twice the network's size with the JND map still at full resolution (coarse.py).
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .coarse import CoarseChange
from .codec import Codec
from .config import PRESETS, ActivationConfig, get_preset
from .extractor import (
    IMAGENET_STD,
    Extractor,
    network_input,
    preprocess,
    preprocessed_size,
    resize_to,
    round_to_levels,
    to_tensor,
)
from .perceptual import jnd_heatmap, psnr, quality, row_blocks
from .progress import progress_bar
from .release import Release
from .transforms import random_edit
from .views import NO_VIEWS, ViewSet, encode_views

__all__ = ["ActivationConfig", "ActivatedImage", "Activator", "PRESETS", "get_preset"]

logger = logging.getLogger(__name__)

MAX_FILL = 2.0  # a PSNR floor may scale the optimised change up to 2x (6 dB) to spend what it allows
MAX_FLOOR_STEPS = 30  # shrinking steps towards a PSNR floor before the release format itself is blamed
ACTIVATION_BYTES_PER_PIXEL = 56  # an upper bound of the measured peak (`activation_memory`)
ACTIVATION_FIXED_BYTES = 200e6  # the network's activations and gradients at 288 px, per image


@dataclass
class ActivatedImage:
    """One activated image and what it achieved."""

    image: np.ndarray  # (H, W, 3) uint8: the displayed pixels of the released file
    psnr: float  # dB, against the original
    ssim: float
    linf: int  # largest change in 8-bit levels
    cos_before: float  # cosine of the original's descriptor to its target
    cos_after: float  # cosine of the activated 8-bit image's descriptor to the same target
    same_cell: bool | None  # activated descriptor in the original's IVF cell (None: no IVF)
    same_code: bool  # activated descriptor encodes to the original's code
    scaling: float  # the budget's scaling this image got (``config.scaling`` unless a PSNR floor set it)
    descriptor: np.ndarray = field(repr=False)  # (d,) float32, the ORIGINAL's descriptor (what is indexed)
    format: str = "png"  # the released file's format
    # a release whose encoding (lossy, grey, over an alpha) took the activation out of the original's cell
    # (code, without IVF) that the 8-bit result reached; None for a colour PNG
    lost_in_encoding: bool | None = None
    encoded: bytes | None = field(default=None, repr=False)  # the released bytes measured (None: a colour PNG)
    views: np.ndarray | None = field(default=None, repr=False)  # (V, d): the ORIGINAL's views' (indexed), if any
    # (d,) float32: the RELEASED file's descriptor (its displayed pixels): its fingerprint as a C2PA soft binding,
    # and the copy verdict's extra candidate (stored, never indexed)
    released_descriptor: np.ndarray | None = field(default=None, repr=False)

    def metrics(self) -> dict:
        """The scalar fields, for catalogs and JSON."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("image", "descriptor", "encoded", "views", "released_descriptor")}


class Optimized(NamedTuple):
    """One optimised image, as released."""

    image: np.ndarray  # (H, W, 3) uint8: the displayed pixels of the released file
    scaling: float
    lossless: np.ndarray  # the 8-bit result before a lossy encoding (``image`` itself for PNG)
    encoded: bytes | None  # a lossy release's bytes


class Activator:
    """Activates images for one frozen codec.

    Args:
        extractor: the descriptor model (its differentiable path is optimised through).
        codec: the trained codec that gives the targets.
        config: the settings (``ActivationConfig()`` or ``get_preset("paper")``).
        stored_dtype: the precision the index is fed descriptors in (a collection: ``"float16"``); targets
            and the reported cell / code agreement come from the descriptor rounded to it.
        memory: bytes a batch may use (`activation_memory`); None: ``batch_size`` alone decides.
        views: the views the collection indexes beside each image: their descriptors come with each result,
            and ``config.view_draws`` of them per iteration are pushed towards their own codes.

    Example:
        >>> results = Activator(extractor, codec).activate([image])
        >>> results[0].psnr, results[0].same_code
        (43.1, True)
    """

    def __init__(self, extractor: Extractor, codec: Codec, config: ActivationConfig = ActivationConfig(),
                 stored_dtype: str = "float32", memory: float | None = None, views: ViewSet = NO_VIEWS):
        self.extractor, self.codec, self.config, self.views = extractor, codec, config, views
        self.stored_dtype = np.dtype(stored_dtype)
        self.memory = memory
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self._alpha = torch.tensor(config.alpha_c).view(1, 3, 1, 1)
        self._precision = compute_dtype(config.precision, extractor.device)

    def activate(self, images: Sequence[np.ndarray], progress: bool | None = None,
                 releases: Sequence[Release] | None = None) -> list[ActivatedImage]:
        """Activate (H, W, 3) uint8 RGB images of any sizes (those the network sees at one size are batched).

        Args:
            images: the displayed pixels of each image.
            progress: progress bar.
            releases: how each image is released (default: PNG): its figures and the PSNR floor are
                measured on the decoded released file.

        Returns:
            one `ActivatedImage` per input, in input order.
        """
        releases = list(releases or [Release()] * len(images))
        # rounded as the index will store them: the target is the code the index holds, not a neighbour's
        descriptors = self.extractor.encode_arrays(images).astype(self.stored_dtype).astype(np.float32)
        targets = self.codec.targets(descriptors, self.config.target)
        views = self._original_views(images)
        view_targets = None if views is None or not self.config.view_draws else self.codec.targets(
            views.reshape(-1, views.shape[-1]), self.config.target).reshape(views.shape)
        out: list[Optimized | None] = [None] * len(images)
        bar = progress_bar(len(images), "activate", progress)
        for idx in self._batches(images):
            batch_view_targets = None if view_targets is None else torch.from_numpy(view_targets[idx])
            activated = self.optimize([images[i] for i in idx], torch.from_numpy(targets[idx]), seeds=idx,
                                      releases=[releases[i] for i in idx], view_targets=batch_view_targets)
            for i, result in zip(idx, activated):
                out[i] = result
            bar.update(len(idx))
        bar.close()
        results = self._assess(images, out, releases, descriptors, targets)
        for i, result in enumerate(results):
            result.views = None if views is None else views[i]
        return results

    def _original_views(self, images: Sequence[np.ndarray]) -> np.ndarray | None:
        """(n, V, d): the descriptors of the originals' views, rounded as the index stores them; None without."""
        if not self.views.views:
            return None
        inputs = [network_input(image, self.extractor.preprocessing) for image in images]
        return encode_views(self.extractor, inputs, self.views).astype(self.stored_dtype).astype(np.float32)

    def _batches(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices grouped by the size the network sees (one aspect ratio, any resolution) and by how their change
        is parametrised (`_coarse`), in chunks of at most ``batch_size`` whose `activation_memory` fits ``memory``:
        mixed-size uploads still fill the network's batches, and full-size photos are not optimised sixteen at a
        time on a small server."""
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            size = preprocessed_size(image.shape[:2], self.extractor.preprocessing)
            groups.setdefault((size, self._coarse(image.shape[:2], size)), []).append(i)
        batches = []
        for group in groups.values():
            batch, used = [], 0.0
            for i in group:
                need = activation_memory(images[i].shape[0] * images[i].shape[1])
                if batch and (len(batch) == self.config.batch_size or (self.memory and used + need > self.memory)):
                    batches.append(batch)
                    batch, used = [], 0.0
                batch.append(i)
                used += need
            batches.append(batch)
        return batches

    def optimize(self, images: Sequence[np.ndarray], targets: torch.Tensor, seeds: Sequence[int] = (),
                 releases: Sequence[Release] | None = None,
                 view_targets: torch.Tensor | None = None) -> list[Optimized]:
        """Run the optimisation on images that the network sees at one size and that take one number of `steps`.

        Memory per image, at full resolution: the budget map (1 channel), delta, its gradient and Adam's two
        moments (3 channels, float32 each), and row blocks; the original stays 8-bit. A coarse change keeps only
        the budget map at full resolution until the change is composed.

        Args:
            images: (H_i, W_i, 3) uint8, each at its full resolution.
            targets: (B, d) float target descriptors.
            seeds: one extra seed per image (its position), so results do not depend on batching.
            releases: how each is released (default: PNG); a PSNR floor holds on the released file.
            view_targets: (B, V, d) the targets of each image's views (`views`), ``config.view_draws`` of which,
                drawn per iteration, join the loss; None: the whole image (and its edits) alone.

        Returns:
            B `Optimized`: the released pixels, the scaling each got, the lossless result, the lossy bytes.
        """
        releases = list(releases or [Release()] * len(images))
        cfg, device, preprocessing = self.config, self.extractor.device, self.extractor.preprocessing
        targets = targets.to(device)
        view_targets = None if view_targets is None else view_targets.to(device)
        per_channel = (self._alpha * self._std).to(device)  # alpha_c and the normalisation, folded: (1, 3, 1, 1)
        size = preprocessed_size(images[0].shape[:2], preprocessing)
        maps, views_of_originals = map(list, zip(*[self._budget_and_view(image, size) for image in images]))
        scalings = [cfg.scaling if cfg.psnr is None else _scaling_for_map(m, per_channel, cfg.psnr) for m in maps]
        for m, s in zip(maps, scalings):
            m.mul_(s)  # one precomputed map: JND x scaling; the channels' factors stay a (1, 3, 1, 1) vector
        changes = [self._change(m, size, per_channel) for m in maps]
        del maps  # each change holds its own
        deltas = [_init_delta(c.shape, cfg.seed + int(s)).to(device).requires_grad_(True)
                  for c, s in zip(changes, seeds or range(len(images)))]
        edits = torch.Generator().manual_seed(cfg.seed * 1_000_003 + int((seeds or [0])[0]))  # draws of this batch
        adam = _Adam(deltas, cfg.lr)  # elementwise: each image's steps are its own
        for _ in range(self.steps(images[0].shape[:2])):
            seen, mse = zip(*[change(d) for change, d in zip(changes, deltas)])
            inputs = torch.cat([round_to_levels(o + v) for o, v in zip(views_of_originals, seen)])
            seen_as = [(inputs, targets)] + [
                (preprocess(random_edit(inputs, cfg.edits, edits), self.extractor.preprocessing), targets)
                for _ in range(cfg.edit_draws if cfg.edits else 0)]
            if view_targets is not None:
                seen_as += [(preprocess(self.views.views[v](inputs).clamp(0.0, 1.0), self.extractor.preprocessing),
                             view_targets[:, v]) for v in self._view_draws(edits)]
            cosine = torch.stack([F.cosine_similarity(
                self.extractor.embed_preprocessed(x, cfg.gradient, self._precision), target, dim=1)
                for x, target in seen_as]).mean(0)
            loss = (-cosine + cfg.lambda_mse * torch.stack(mse)).sum()  # a sum: each image's gradient is its own
            loss.backward()
            adam.step()
        del adam  # its full-resolution moments are not needed to compose the result
        with torch.no_grad():
            results = []
            for i, (image, s, r) in enumerate(zip(images, scalings, releases)):  # one image's change at a time
                change = changes[i].full(deltas[i])
                deltas[i] = changes[i] = None  # freed as we go
                results.append(_release(_compose(image, change), s, r) if cfg.psnr is None
                               else _meet_floor(image, change, s, cfg.psnr, r))
            return results

    def _view_draws(self, generator: torch.Generator) -> list[int]:
        """Which views join this iteration's loss: ``config.view_draws`` distinct ones, drawn for the batch."""
        count = min(self.config.view_draws, len(self.views.views))
        return torch.randperm(len(self.views.views), generator=generator)[:count].tolist()

    def _change(self, budget: torch.Tensor, size: tuple[int, int],
                per_channel: torch.Tensor) -> _PixelChange | _CoarseChange:
        """The change of one image: per full-resolution pixel, or at ``config.resolution`` x the network's size
        when the image is larger than that."""
        preprocessing = self.extractor.preprocessing
        mse_weight = (1.0 / self._std.to(budget.device).square()).flatten()
        if self._coarse(budget.shape[-2:], size):
            coarse = CoarseChange(budget[0, 0], size, self.config.resolution, preprocessing)
            return _CoarseChange(coarse, per_channel, mse_weight)
        return _PixelChange(budget, per_channel, mse_weight, size, preprocessing)

    def steps(self, shape: Sequence[int]) -> int:
        """Adam's steps for an image of ``shape`` (H, W): ``coarse_iterations`` on the coarse path, else
        ``iterations``."""
        coarse = self._coarse(shape, preprocessed_size(shape, self.extractor.preprocessing))
        return self.config.coarse_iterations if coarse else self.config.iterations

    def _coarse(self, shape: Sequence[int], size: tuple[int, int]) -> bool:
        """Whether an image of ``shape`` (H, W), seen by the network at ``size``, is optimised at
        ``config.resolution`` x that size: when it is larger than that on both sides."""
        factor = self.config.resolution
        return bool(factor) and min(shape[0] / size[0], shape[1] / size[1]) > factor

    def _budget_and_view(self, image: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's JND map (1, 1, H, W) and what the network sees of it (resized, not rounded); the
        full-resolution float copy is freed on return."""
        original = to_tensor(image).to(self.extractor.device)
        return jnd_heatmap(original, self.config.jnd_padding), resize_to(original, size, self.extractor.preprocessing)

    def _assess(self, images, activated: list[Optimized], releases: list[Release], descriptors,
                targets) -> list[ActivatedImage]:
        """Measure quality and whether the released file reaches the original's cell and code (and, for a lossy
        release, whether the lossless result did and the encoding lost it)."""
        after = self.extractor.encode_arrays([a.image for a in activated])
        reached = self._reached(after, descriptors)
        lossy = [i for i, r in enumerate(releases) if not r.exact]
        before_encoding = dict(zip(lossy, self._reached(self.extractor.encode_arrays(
            [activated[i].lossless for i in lossy]), descriptors[lossy]))) if lossy else {}
        has_ivf = self.codec.nlist > 0
        where = 0 if has_ivf else 1  # the cell decides retrieval with IVF; the code without
        results = []
        for i, a in enumerate(activated):
            results.append(ActivatedImage(
                image=a.image, **quality(images[i], a.image), scaling=a.scaling,
                cos_before=_cosine(descriptors[i], targets[i]), cos_after=_cosine(after[i], targets[i]),
                same_cell=bool(reached[i][0]) if has_ivf else None, same_code=bool(reached[i][1]),
                descriptor=descriptors[i], format=releases[i].format, encoded=a.encoded, released_descriptor=after[i],
                lost_in_encoding=(bool(before_encoding[i][where] and not reached[i][where])
                                  if i in before_encoding else None)))
        return results

    def _reached(self, after: np.ndarray, descriptors: np.ndarray) -> list[tuple[bool, bool]]:
        """(same cell, same code) of each activated descriptor against its original's."""
        cells = self.codec.cells(after) == self.codec.cells(descriptors)
        codes = (self.codec.codes(after) == self.codec.codes(descriptors)).all(axis=1)
        return list(zip(cells.tolist(), codes.tolist()))


def activation_memory(pixels: int) -> float:
    """Bytes that activating one image of ``pixels`` pixels needs at most, above the loaded model: measured
    (tests/test_activation.py) at about 50 bytes a pixel at full size (delta, its gradient, Adam's moments,
    the budget map, the original), plus the network's batch at 288 px."""
    return ACTIVATION_BYTES_PER_PIXEL * pixels + ACTIVATION_FIXED_BYTES


def default_activation_memory(share: float = 0.5) -> float:
    """The budget of an activation batch when none is given: ``share`` of the memory available now (Linux's
    MemAvailable; elsewhere the free pages), so a folder of camera photos is cut into batches that fit instead
    of being killed."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return share * available


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The gradient pass's type: ``"auto"`` is bfloat16 where it is the faster one: CPUs with AMX tiles, and CUDA
    cards from Ampere on. AVX-512 BF16 alone is not enough: on such a Xeon (2 cores) ResNet-50's forward and
    input-gradient pass at 288 x 461 took 0.33 s in bfloat16 autocast against 0.25 s in float32."""
    if precision == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.cpu._is_amx_tile_supported()
        precision = "bfloat16" if native else "float32"
    return getattr(torch, precision)


class _Adam:
    """Adam (Kingma & Ba; torch.optim.Adam's update) with its two moments stored in bfloat16 and updated in
    float32 over row blocks: at 24 MP the float32 moments alone were 576 MB, and with delta, its gradient and
    the network's pass they took an activation past 1.5 GB. The moments only scale and average the steps;
    their 8-bit mantissa leaves the gain unchanged (benchmarks/speed.py: now vs autograd)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps, self.steps = params, lr, betas, eps, 0
        self.moments = [(torch.zeros_like(p, dtype=torch.bfloat16), torch.zeros_like(p, dtype=torch.bfloat16))
                        for p in params]

    @torch.no_grad()
    def step(self) -> None:
        """One update from the parameters' gradients, which it then frees."""
        self.steps += 1
        (b1, b2), t = self.betas, self.steps
        size, correction = self.lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t)
        for p, (m, v) in zip(self.params, self.moments):
            for rows in row_blocks(p.shape[-2], p.shape[-1]):
                g = p.grad[..., rows, :]
                mb = m[..., rows, :].float().lerp_(g, 1 - b1)
                vb = v[..., rows, :].float().mul_(b2).addcmul_(g, g, value=1 - b2)
                m[..., rows, :], v[..., rows, :] = mb, vb
                p[..., rows, :].addcdiv_(mb, vb.sqrt_().div_(correction).add_(self.eps), value=-size)
            p.grad = None


class _PixelChange:
    """A change with one delta per full-resolution pixel (the paper's): ``budget`` (1, 1, H, W) x the channels'
    factors x tanh(delta). Calling it gives what the network sees of it and its MSE (`_Change`)."""

    def __init__(self, budget: torch.Tensor, per_channel: torch.Tensor, mse_weight: torch.Tensor,
                 size: tuple[int, int], preprocessing):
        self.budget, self.per_channel, self.mse_weight = budget, per_channel, mse_weight
        self.size, self.preprocessing = size, preprocessing
        self.shape = (3, *budget.shape[-2:])  # delta's

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _Change.apply(delta, self.budget, self.per_channel, self.mse_weight, self.size, self.preprocessing)

    @torch.no_grad()
    def full(self, delta: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W): the change to add to the image."""
        return torch.tanh(delta).mul_(self.budget).mul_(self.per_channel)


class _CoarseChange:
    """A change whose delta is at a multiple of the network's size (`CoarseChange`), with `_PixelChange`'s
    interface; every term of the loss is computed at that size."""

    def __init__(self, coarse: CoarseChange, per_channel: torch.Tensor, mse_weight: torch.Tensor):
        self.coarse, self.per_channel, self.mse_weight = coarse, per_channel, mse_weight
        self.shape = (3, *coarse.size)
        self._values = 3 * coarse.budget.numel()  # the MSE's mean is over the full-resolution change

    def __call__(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tanh(delta)
        squares = self.coarse.square_sums(t)[0] * self.per_channel.flatten().square()
        return self.coarse.seen(t) * self.per_channel, (squares * self.mse_weight).sum() / self._values

    @torch.no_grad()
    def full(self, delta: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W): the change to add to the image."""
        return self.coarse.full(torch.tanh(delta)).mul_(self.per_channel)


class _Change(torch.autograd.Function):
    """delta -> (what the network sees of the change, its MSE): resize(m * k * tanh(delta)) at the network's
    size, and mean(((m * k * tanh(delta)) / std)^2), with m the (1, 1, H, W) budget map (JND x scaling) and
    k the channels' factors (alpha_c x std).

    At full resolution this chain was ~30 memory-bound passes an iteration under autograd, each keeping a
    full-resolution tensor for the backward pass. Here the forward pass makes one full-resolution tensor (the
    change, freed once resized) and keeps none; the backward pass gets the resize's gradient, then adds the
    MSE's and multiplies by the tanh's derivative in row blocks, recomputing tanh instead of storing it:
    about 8 passes, and peak memory of delta, its gradient, Adam's two moments and one block.
    """

    @staticmethod
    def forward(ctx, delta: torch.Tensor, budget: torch.Tensor, per_channel: torch.Tensor, mse_weight: torch.Tensor,
                size: tuple[int, int], preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
        change = torch.tanh(delta).mul_(budget).mul_(per_channel)
        seen = resize_to(change, size, preprocessing)
        squares = torch.stack([torch.linalg.vector_norm(change[0, c]).square() for c in range(change.shape[1])])
        mse = (squares * mse_weight).sum() / change.numel()
        ctx.save_for_backward(delta, budget, per_channel, mse_weight)
        ctx.size, ctx.preprocessing = size, preprocessing
        return seen, mse

    @staticmethod
    def backward(ctx, grad_seen: torch.Tensor, grad_mse: torch.Tensor):
        delta, budget, per_channel, mse_weight = ctx.saved_tensors
        grad = _resize_gradient(grad_seen, delta.shape, ctx.preprocessing)
        mse_factor = (2.0 * grad_mse / delta.numel()) * mse_weight.view(1, -1, 1, 1)
        for rows in row_blocks(delta.shape[-2], delta.shape[-1]):
            t = torch.tanh(delta[..., rows, :])
            unit = budget[..., rows, :] * per_channel  # d change / d tanh
            change = unit * t
            block = grad[..., rows, :]
            block.addcmul_(change, mse_factor)  # + the MSE's gradient
            block.mul_(unit.sub_(change.mul_(t)))  # x d change / d delta = unit (1 - tanh^2)
        return grad, None, None, None, None, None


def _resize_gradient(grad_seen: torch.Tensor, shape: torch.Size, preprocessing) -> torch.Tensor:
    """The gradient that `resize_to` passes back to its full-resolution input (a linear map's transpose)."""
    if tuple(grad_seen.shape[-2:]) == tuple(shape[-2:]):
        return grad_seen.clone()
    if (preprocessing.interpolation, preprocessing.antialias) == ("bilinear", True):  # the default: direct
        return torch.ops.aten._upsample_bilinear2d_aa_backward(grad_seen, list(grad_seen.shape[-2:]), list(shape),
                                                                False, None, None)
    with torch.enable_grad():  # any other resize: its gradient does not depend on the input (linear)
        probe = torch.zeros(shape, dtype=grad_seen.dtype, device=grad_seen.device, requires_grad=True)
        return torch.autograd.grad(resize_to(probe, tuple(grad_seen.shape[-2:]), preprocessing), probe, grad_seen)[0]


def _scaling_for_map(budget: torch.Tensor, per_channel: torch.Tensor, floor: float) -> float:
    """`_scaling_for` of the unit budget ``budget`` (1, 1, H, W) x ``per_channel`` (1, 3, 1, 1), without making
    it: its mean square is the map's times the channels' factors'."""
    mean_square = float(torch.linalg.vector_norm(budget)) ** 2 / budget.numel() * float(per_channel.square().mean())
    return _scaling_at(mean_square * 255 ** 2, floor)


def _scaling_for(change: torch.Tensor, floor: float) -> float:
    """The factor that makes ``change`` cost exactly ``floor`` dB; for the unit budget (tanh = +-1 everywhere),
    the scaling whose whole budget does."""
    return _scaling_at(float((change * 255.0).square().mean()), floor)  # 8-bit levels, over pixels and channels


def _scaling_at(mse: float, floor: float) -> float:
    """The factor that turns a change of mean square error ``mse`` (8-bit levels) into one of ``floor`` dB."""
    return 255.0 / math.sqrt(mse * 10 ** (floor / 10))


def _release(lossless: np.ndarray, scaling: float, release: Release) -> Optimized:
    """The 8-bit result as released (unless a colour PNG: encoded, and decoded as a viewer sees it: grey,
    over white, lossy)."""
    if release.exact:
        return Optimized(lossless, scaling, lossless, None)
    image, encoded = release.roundtrip(lossless)
    return Optimized(image, scaling, lossless, encoded)


def _meet_floor(original: np.ndarray, change: torch.Tensor, scaling: float, floor: float,
                release: Release) -> Optimized:
    """The released result whose change costs ``floor`` dB and no more: the change is scaled to spend exactly
    the floor (up to `MAX_FILL` times when the optimiser left part of the budget unused, as it does at lr < 1),
    then shrunk until the released file meets the floor (rounding costs ~0.1 dB; a lossy encoding more). When
    even an unchanged image misses it (a lossy release costs more than the floor on its own), the unchanged
    image is released, and its PSNR says so."""
    factor = min(MAX_FILL, _scaling_for(change, floor)) if bool(change.any()) else 1.0
    reference = original
    for _ in range(MAX_FLOOR_STEPS):
        result = _release(_compose(original, change, factor), scaling * factor, release)
        achieved = psnr(result.image, reference)
        if achieved >= floor:
            return result
        factor *= 10 ** ((achieved - floor) / 20) * 0.99
    logger.warning("a %s release at quality %s costs more than the %.1f dB floor on its own", release.format,
                   release.quality, floor)
    return _release(reference, 0.0, release)


def _compose(original: np.ndarray, change: torch.Tensor, factor: float = 1.0) -> np.ndarray:
    """``original`` (H, W, 3) uint8 plus ``factor`` x ``change`` (1, 3, H, W), as the 8-bit file will hold it,
    composed in row blocks."""
    out = np.empty_like(original)
    for rows in row_blocks(*original.shape[:2]):
        block = torch.tensor(original[rows], device=change.device).permute(2, 0, 1)[None].float().div_(255.0)
        out[rows] = _to_uint8(block.add_(change[..., rows, :], alpha=factor))
    return out


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8, clamped and rounded as the written file will be."""
    return (image[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _init_delta(shape: torch.Size, seed: int) -> torch.Tensor:
    """delta_0 = 1e-6 * N(0, 1), seeded per image."""
    generator = torch.Generator().manual_seed(seed)
    return 1e-6 * torch.randn((1, *shape), generator=generator)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
