"""The gain-vs-quality trade-off of the activation scaling s, on real photos at full resolution.

For each scaling: mean PSNR / SSIM / L-inf of the 8-bit results, the mean cosine gain towards the
target, and the share of activated images whose descriptor lands in the original's cell and code.
The product default was chosen from this table (docs/method.md, "Default scaling"). Usage:

    python benchmarks/scaling.py [--scalings 1.5,2,2.5,3] [--device auto]
"""
from __future__ import annotations

import argparse
import glob
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import skimage

from activeindex import ActivationConfig, Activator, Codec, Extractor
from activeindex.imageio import load_image

MATE_NATURE = "/usr/share/backgrounds/mate/nature/*.jpg"
NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"
SKIMAGE_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]


def real_photos() -> list[np.ndarray]:
    """MATE's 12 nature photos (1280-2560 px) and scikit-image's 6 photos (300-800 px)."""
    folder = Path(skimage.__file__).parent / "data"
    return [load_image(p) for p in sorted(glob.glob(MATE_NATURE))] + [load_image(folder / n) for n in SKIMAGE_PHOTOS]


def telescope_photos(n: int) -> list[np.ndarray]:
    """The codec's training photos (stellarium-data, `make photos`)."""
    paths = sorted(glob.glob(NEBULAE))[:n]
    if len(paths) < n:
        raise SystemExit(f"found {len(paths)} photos matching {NEBULAE}, need {n}: install stellarium-data "
                         "(make photos)")
    return [load_image(p) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scalings", default="1.5,2,2.5,3")
    parser.add_argument("--factory", default="IVF32,PQ8x8")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    extractor = Extractor(device=args.device)
    codec = Codec.create(args.factory, extractor.dim)
    codec.train(extractor.encode_arrays(telescope_photos(555)))
    photos = real_photos()
    print(f"{len(photos)} real photos, codec {args.factory} trained on 555 telescope photos, "
          f"{ActivationConfig.iterations} iterations ({ActivationConfig.coarse_iterations} for a photo over twice the "
          f"network's size), device {extractor.device}")
    print(f"{'scaling':>7} {'PSNR dB':>8} {'min PSNR':>8} {'SSIM':>7} {'min SSIM':>8} {'L-inf':>6} "
          f"{'cos gain':>8} {'cell':>5} {'code':>5} {'s/img':>6}")
    for scaling in map(float, args.scalings.split(",")):
        start = time.perf_counter()
        results = Activator(extractor, codec, replace(ActivationConfig(), scaling=scaling)).activate(photos)
        seconds = (time.perf_counter() - start) / len(photos)
        psnr, ssim = np.array([r.psnr for r in results]), np.array([r.ssim for r in results])
        gain = np.mean([r.cos_after - r.cos_before for r in results])
        print(f"{scaling:7.2f} {psnr.mean():8.2f} {psnr.min():8.2f} {ssim.mean():7.4f} {ssim.min():8.4f} "
              f"{np.mean([r.linf for r in results]):6.1f} {gain:+8.3f} "
              f"{np.mean([bool(r.same_cell) for r in results]):5.2f} {np.mean([r.same_code for r in results]):5.2f} "
              f"{seconds:6.1f}", flush=True)


if __name__ == "__main__":
    main()
