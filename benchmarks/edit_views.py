"""How faithful the edited copies that edit-aware activation optimises are, on full-size photos.

The loss averages the descriptor's cosine over drawn crops and rotations, cut from the network's 288-px input
and resized back. A photo more than twice the network's size also has a view at twice that size (where its
change is optimised): edits cut from it are compared too. Each is compared with the same edit (same draw) cut
from the full-resolution photo and resized as a copy's would be: the cosine between their descriptors, per
photo and draw, with a 95 % bootstrap interval over photos. Photos: seeded random wallpapers (each at its largest size).

The 2x view is nearer the real edit, yet an optimiser using it did no better: at commit bc72a2b (where the
product could cut them from the 2x view), `python benchmarks/edit_views.py --activate 8` activated 8 of these
photos with the robust preset both ways, and the geometric copies of the released files ended no nearer their
targets (docs/method.md), 1.16x slower. The product keeps cutting them from the network's input.

    python benchmarks/edit_views.py [--photos 12] [--draws 4] [--wallpapers GLOB ...]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from activeindex import ActivationConfig, Extractor
from activeindex.bench.metrics import mean_interval
from activeindex.extractor import preprocessed_size, resize_to, round_to_levels, to_tensor
from activeindex.transforms import random_edit
from speed import WALLPAPERS, wallpapers  # the same seeded draw of full-size photos

FACTOR = ActivationConfig().resolution  # the size, in network sizes, a large photo's change is optimised at


def descriptor(extractor: Extractor, edited: torch.Tensor) -> np.ndarray:
    """The exact descriptor of an edited (1, 3, h, w) float image, as the copy's 8-bit file would give."""
    pixels = (edited[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return extractor.encode_arrays([pixels])[0]


def edited(image: torch.Tensor, family: str, seed: int) -> torch.Tensor:
    return random_edit(image, [family], torch.Generator().manual_seed(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--draws", type=int, default=4, help="draws of each family per photo")
    parser.add_argument("--wallpapers", nargs="+", default=WALLPAPERS)
    args = parser.parse_args()
    extractor = Extractor(device="cpu")
    cosines = {(family, source): [] for family in ("crop", "rotate") for source in ("network input", "2x view")}
    pixels = []
    for index, path in enumerate(wallpapers(args.photos, 5, args.wallpapers)):
        photo = to_tensor(np.asarray(Image.open(path).convert("RGB")))
        pixels.append(photo.shape[-2] * photo.shape[-1])
        size = preprocessed_size(photo.shape[-2:], extractor.preprocessing)
        sources = {"network input": round_to_levels(resize_to(photo, size, extractor.preprocessing)),
                   "2x view": round_to_levels(resize_to(photo, [FACTOR * n for n in size], extractor.preprocessing))}
        for family in ("crop", "rotate"):
            per_photo = {source: [] for source in sources}
            for draw in range(args.draws):
                seed = 1000 * index + draw  # the same draw for every source
                real = descriptor(extractor, edited(photo, family, seed))
                for source, image in sources.items():
                    per_photo[source].append(float(descriptor(extractor, edited(image, family, seed)) @ real))
            for source, values in per_photo.items():
                cosines[family, source].append(np.mean(values))
    print(f"{len(pixels)} full-size photos (median {np.median(pixels) / 1e6:.1f} MP), {args.draws} draws of each "
          "family per photo: cosine of the descriptor of the edited copy the loss sees to the same edit cut at full "
          "resolution (mean over photos, 95 % interval)")
    for (family, source), values in cosines.items():
        low, high = mean_interval(np.array(values))
        print(f"  {family:6s} cut from the {source:13s} {np.mean(values):.4f} [{low:.4f}, {high:.4f}]  "
              f"min {np.min(values):.4f}")
    for family in ("crop", "rotate"):
        print(f"  {family:6s} 2x view - network input, paired: "
              f"{_paired(np.array(cosines[family, '2x view']) - cosines[family, 'network input'], 4)}")


def _paired(differences: np.ndarray, digits: int) -> str:
    low, high = mean_interval(differences)
    return f"{differences.mean():+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


if __name__ == "__main__":
    main()
