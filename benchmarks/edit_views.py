"""How faithful the edited copies that edit-aware activation optimises are, on full-size photos.

The loss averages the descriptor's cosine over drawn crops and rotations. They used to be cut from the
network's 288-px input and resized back; a photo more than twice the network's size now has them cut from its
view at twice the network's size. Each is compared here with the same edit (same draw) cut from the
full-resolution photo and resized as a copy's would be: the cosine between their descriptors, per photo and
draw, with a 95 % bootstrap interval over photos. Photos: seeded random wallpapers (each at its largest size).

With --activate N it also activates N of them with the robust preset both ways (edits cut from the network's
input, and from the 2x view) and pairs them per photo: time, PSNR, gain towards the target, and the cosine to
the target of geometric copies made of the full-resolution activated photo (what decides their cell and code).

    python benchmarks/edit_views.py [--photos 12] [--draws 4] [--activate 6] [--wallpapers GLOB ...]
"""
from __future__ import annotations

import argparse
import collections
import glob
import os

import numpy as np
import torch
from PIL import Image

from activeindex import Activator, Codec, Extractor, get_preset
from activeindex.bench.metrics import mean_interval
from activeindex.edits import apply_edit
from activeindex.extractor import preprocessed_size, resize_to, round_to_levels, to_tensor
from activeindex.transforms import random_edit

WALLPAPERS = ["/usr/share/wallpapers/*/contents/images/*.jpg", "/usr/share/backgrounds/mate/**/*.jpg"]
FACTOR = 2  # ActivationConfig.resolution
NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"  # the codec's training photos (as speed.py's)
GEOMETRIC = ["rotation_25", "center_crop_0.5", "resize_0.5", "rotation_90"]


class NetworkInputEdits(Activator):
    """The robust preset as before: every drawn edit cut from the network's input."""

    def _edits_from_detail(self, shape, size) -> bool:
        return False


def wallpapers(n: int, seed: int, patterns: list[str]) -> list[str]:
    """n distinct wallpapers, seeded random; each is its largest file (a wallpaper ships in several sizes)."""
    by_picture = collections.defaultdict(list)
    for pattern in patterns:
        for path in glob.glob(pattern, recursive=True):
            by_picture[path.split("/contents/")[0] if "/contents/" in path else path].append(path)
    pictures = sorted(max(files, key=os.path.getsize) for files in by_picture.values())
    if len(pictures) < n:
        raise SystemExit(f"found {len(pictures)} wallpapers, need {n}: install the wallpaper packages (make photos)")
    return [pictures[i] for i in np.random.default_rng(seed).choice(len(pictures), n, replace=False)]


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
    parser.add_argument("--activate", type=int, default=0, help="photos to activate with the robust preset both ways")
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
    if args.activate:
        activate(extractor, wallpapers(args.photos, 5, args.wallpapers)[:args.activate])


def activate(extractor: Extractor, paths: list[str]) -> None:
    """The robust preset with edits from the network's input and from the 2x view, paired per photo."""
    import time

    codec = Codec.create("IVF32,PQ8x8", extractor.dim)
    codec.train(extractor.encode(sorted(glob.glob(NEBULAE))[:300], progress=False))
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    targets = codec.targets(extractor.encode_arrays(photos), "index")
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    robust, results, seconds, copies_cosine = get_preset("robust"), {}, {}, {}
    for name, kind in (("network input", NetworkInputEdits), ("2x view", Activator)):
        activator = kind(extractor, codec, robust)
        start = time.perf_counter()
        results[name] = [activator.activate([photo], progress=False)[0] for photo in photos]
        seconds[name] = (time.perf_counter() - start) / len(photos)
        copies = [apply_edit(edit, r.image, seed=i) for i, r in enumerate(results[name]) for edit in GEOMETRIC]
        descriptors = extractor.encode_arrays(copies).reshape(len(photos), len(GEOMETRIC), -1)
        copies_cosine[name] = np.einsum("ped,pd->pe", descriptors, targets)
    print(f"robust preset on {len(photos)} of these photos, edits cut from the network input / the 2x view:")
    for name in results:
        gain = np.array([r.cos_after - r.cos_before for r in results[name]])
        print(f"  {name:13s} {seconds[name]:5.1f} s an image  PSNR {np.mean([r.psnr for r in results[name]]):.2f} dB  "
              f"gain {gain.mean():+.4f}  geometric copies' cosine to the target {copies_cosine[name].mean():.4f} "
              f"({', '.join(f'{e} {v:.4f}' for e, v in zip(GEOMETRIC, copies_cosine[name].mean(0)))})")
    new, old = results["2x view"], results["network input"]
    gains = np.array([(a.cos_after - a.cos_before) - (b.cos_after - b.cos_before) for a, b in zip(new, old)])
    closer = copies_cosine["2x view"] - copies_cosine["network input"]
    print(f"  2x view - network input, paired: geometric copies' cosine to the target {_paired(closer.mean(1), 4)} "
          f"({', '.join(f'{e} {_paired(c, 4)}' for e, c in zip(GEOMETRIC, closer.T))}), gain {_paired(gains, 4)},"
          f" PSNR {_paired(np.array([a.psnr - b.psnr for a, b in zip(new, old)]), 2)} dB, time "
          f"{seconds['2x view'] / seconds['network input']:.2f}x")


def _paired(differences: np.ndarray, digits: int) -> str:
    low, high = mean_interval(differences)
    return f"{differences.mean():+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


if __name__ == "__main__":
    main()
