"""Throughput of the two hot paths, printed with their settings.

  embedding   no-grad descriptors (onnxruntime int8 on CPU, the torch graph on CUDA), images/s
  activation  the optimisation at the default settings, images/s and image-iterations/s

Real photos: Stellarium's telescope photos (embedding, codec training) and scikit-image's photos
(activation). Decoding is excluded from both timings. Usage:

    python benchmarks/speed.py [--device auto|cpu|cuda] [--embed 300] [--activate 16] [--modes ste,relu]
"""
from __future__ import annotations

import argparse
import glob
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import skimage
import torch
from PIL import Image

from activeindex import ActivationConfig, Activator, Codec, Extractor
from activeindex.imageio import load_image

NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"
PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]


def load_nebulae(n: int, pattern: str = NEBULAE) -> list[np.ndarray]:
    paths = sorted(glob.glob(pattern))[:n]
    if len(paths) < n:
        raise SystemExit(f"found {len(paths)} photos matching {pattern}, need {n}: install stellarium-data "
                         "(make photos)")
    return [load_image(p) for p in paths]


def photos(n: int, height: int) -> list[np.ndarray]:
    """n real photos, all resized to height x 1.5 height (one shape, so they batch)."""
    folder = Path(skimage.__file__).parent / "data"
    size = (round(height * 1.5), height)
    base = [np.asarray(Image.open(folder / name).convert("RGB").resize(size, Image.BICUBIC)) for name in PHOTOS]
    return [base[i % len(base)] for i in range(n)]


def bench_embedding(extractor: Extractor, images: list[np.ndarray], batch_size: int) -> tuple[float, np.ndarray]:
    extractor.encode_arrays(images[:4])  # warm-up (graph conversion, allocations)
    start = time.perf_counter()
    vectors = np.concatenate([extractor.encode_arrays(images[i:i + batch_size])
                              for i in range(0, len(images), batch_size)])
    _sync(extractor.device)
    return len(images) / (time.perf_counter() - start), vectors


def bench_activation(activator: Activator, images: list[np.ndarray]) -> tuple[float, list]:
    activator.activate(images[:1], progress=False)  # warm-up
    start = time.perf_counter()
    results = activator.activate(images, progress=False)
    _sync(activator.extractor.device)
    return len(images) / (time.perf_counter() - start), results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--embed", type=int, default=300, help="telescope photos to embed (>= 256)")
    parser.add_argument("--photos", default=NEBULAE, help="glob of the photos to embed (default: Stellarium's)")
    parser.add_argument("--activate", type=int, default=16, help="photos to activate")
    parser.add_argument("--height", type=int, default=512, help="activated photos are height x 1.5 height")
    parser.add_argument("--batch-size", type=int, default=ActivationConfig.batch_size)
    parser.add_argument("--modes", default="ste", help="torch conversion modes to compare, e.g. ste,relu")
    args = parser.parse_args()

    extractor = Extractor(device=args.device)
    device = extractor.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    nebulae = load_nebulae(args.embed, args.photos)
    rate, vectors = bench_embedding(extractor, nebulae, batch_size=16)
    sizes = np.array([im.shape[:2] for im in nebulae])
    print(f"embedding   {rate:7.1f} img/s   ({len(nebulae)} photos, median {int(np.median(sizes[:, 0]))}"
          f"x{int(np.median(sizes[:, 1]))} px, resized to short side 288, batch 16, "
          f"{'onnxruntime int8' if device.type == 'cpu' else 'torch ste graph'})")

    codec = Codec.create("IVF16,PQ8x8", extractor.dim)
    codec.train(vectors)
    images = photos(args.activate, args.height)
    config = replace(ActivationConfig(), batch_size=args.batch_size)
    for mode in args.modes.split(","):
        activator = Activator(Extractor(device=args.device, torch_mode=mode), codec, config)
        rate, results = bench_activation(activator, images)
        gain = np.mean([r.cos_after - r.cos_before for r in results])
        print(f"activation  {rate:7.2f} img/s = {rate * config.iterations:7.1f} image-iterations/s   "
              f"(mode {mode}, {len(images)} photos {args.height}x{round(args.height * 1.5)}, batch "
              f"{config.batch_size}, {config.iterations} iterations, scaling {config.scaling}; "
              f"mean cos gain {gain:+.3f}, PSNR {np.mean([r.psnr for r in results]):.1f} dB, "
              f"same code {np.mean([r.same_code for r in results]):.2f})")


if __name__ == "__main__":
    main()
