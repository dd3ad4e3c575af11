"""Peak memory of activating one photo of a given size on CPU, above the loaded model, in this process.

A real photo resized to the size asked (memory depends on the pixel count, not on the content), two iterations
(the second runs with every full-resolution buffer alive), against `activation_memory`, the estimate the
service admits activations by. Usage:

    python benchmarks/memory.py [--width 10000 --height 6400] [--photo FILE] [--preset robust]

``--preset``: that preset's settings with two steps (the robust preset's edited copies are optimised too);
a panorama is just a width and a height (e.g. --width 16000 --height 2000).
"""
from __future__ import annotations

import argparse
import glob
import resource
from dataclasses import replace

import numpy as np
from PIL import Image

from activeindex import Activator, Codec, Extractor, get_preset
from activeindex.activation import activation_memory
from activeindex.config import PRESETS

PHOTO = "/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg"  # the largest real photo of `make photos`
NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=10_000)
    parser.add_argument("--height", type=int, default=6_400)
    parser.add_argument("--photo", default=PHOTO)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    args = parser.parse_args()

    Image.MAX_IMAGE_PIXELS = None  # the point is a photo above Pillow's decompression-bomb guard
    photo = np.asarray(Image.open(args.photo).convert("RGB").resize((args.width, args.height), Image.BICUBIC))
    extractor = Extractor(device="cpu")
    codec = Codec.create("IVF8,PQ8x4", extractor.dim)
    codec.train(extractor.encode(sorted(glob.glob(NEBULAE))[:320], progress=False))
    activator = Activator(extractor, codec, replace(get_preset(args.preset), iterations=2, coarse_iterations=2))
    activator.activate([photo[:500, :750]])  # the model and a small activation's buffers: the baseline
    baseline = peak_rss()
    [result] = activator.activate([photo])
    pixels = args.width * args.height
    growth = (peak_rss() - baseline) / 1e6
    print(f"{args.width}x{args.height} ({pixels / 1e6:.0f} MP), {args.preset} preset: peak RSS +{growth:.0f} MB "
          f"above the loaded model; activation_memory estimate {activation_memory(pixels) / 1e6:.0f} MB; "
          f"PSNR {result.psnr:.2f} dB")


if __name__ == "__main__":
    main()
