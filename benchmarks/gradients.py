"""Why a photo optimised at twice the network's size takes fewer steps: Adam's epsilon and the first step.

Adam's first step moves each value by lr * g / (|g| + eps) (bias-corrected, eps = 1e-8): a whole learning rate
where |g| >> eps, a fraction of it where |g| is near eps. A per-pixel delta's gradient is the network's 288-px
gradient shared among the full-resolution pixels under each network pixel, so it shrinks as the photo grows; the
coarse delta's sums those pixels'. For each photo, the product's own first step both ways (`resolution` 0 and 2):
the median |g| and the median first step as a share of the learning rate. Photos: speed.py's seeded draw of
full-size wallpapers (each at its largest size).

    python benchmarks/gradients.py [--photos 4] [--wallpapers GLOB ...]
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from activeindex import ActivationConfig, Activator, Codec, Extractor, activation
from speed import NEBULAE, WALLPAPERS, query_jpegs, wallpapers  # the same seeded draw of full-size photos

FIRST_GRADIENTS: list[torch.Tensor] = []  # |g| of each delta at its first step


class _FirstStep(activation._Adam):
    """The product's Adam, recording each parameter's gradient before its first update."""

    def step(self) -> None:
        if self.steps == 0:
            FIRST_GRADIENTS.extend(p.grad.detach().abs().flatten() for p in self.params)
        super().step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--wallpapers", nargs="+", default=WALLPAPERS)
    parser.add_argument("--cache", default=str(Path.home() / ".cache/activeindex/speed"), help="speed.py's queries")
    args = parser.parse_args()
    extractor = Extractor(device="cpu")
    queries = [np.asarray(Image.open(p).convert("RGB")) for p in query_jpegs(300, Path(args.cache), NEBULAE)]
    codec = Codec.create("IVF32,PQ8x8", extractor.dim)
    codec.train(extractor.encode_arrays(queries))
    activation._Adam = _FirstStep  # the optimiser the product builds in `Activator.optimize`
    config = ActivationConfig(iterations=1, coarse_iterations=1)
    eps = 1e-8
    print(f"first Adam step (lr {ActivationConfig.lr}, eps {eps:g}), {args.photos} full-size photos")
    print(f"{'MP':>5}  {'per pixel: median |g|':>21} {'step / lr':>9}  {'coarse: median |g|':>18} {'step / lr':>9}")
    for path in wallpapers(args.photos, 3, args.wallpapers):
        photo = np.asarray(Image.open(path).convert("RGB"))
        row = f"{photo.shape[0] * photo.shape[1] / 1e6:5.1f}"
        for resolution in (0, ActivationConfig.resolution):
            FIRST_GRADIENTS.clear()
            Activator(extractor, codec, replace(config, resolution=resolution)).activate([photo], progress=False)
            [g] = FIRST_GRADIENTS
            step = g / (g + eps)
            row += f"  {float(g.median()):21.2e} {float(step.median()):9.2f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
