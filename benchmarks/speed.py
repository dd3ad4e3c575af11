"""Throughput of the two hot paths, today's (--baseline) and the current one side by side in ONE run.

  embedding   end to end from JPEG files on disk (decode, resize, network), images/s:
              512-px telescope photos (Stellarium, saved as JPEG q90 once) and full-size wallpapers
  activation  512x768 crops and full-size wallpapers (decoding excluded), images/s, with what each path
              buys: cosine gain towards the target, the share of edited copies in their original's IVF cell
              (the paper's photometric edits plus rotation 25 and centre crop), PSNR; 95 % bootstrap
              intervals over photos (sample sizes printed)
  PNG         encoding time and size of the activated photos at zlib levels 6 (before) and 1 (now)

Photos are seeded random draws (one file per wallpaper, its largest), never a file-order prefix. Usage:

    python benchmarks/speed.py --baseline [--device auto|cpu|cuda] [--activate 12] [--full-size 4]
        [--photos GLOB] [--wallpapers GLOB ...]   # elsewhere than Debian with the photo packages
"""
from __future__ import annotations

import argparse
import collections
import glob
import io
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from activeindex import ActivationConfig, Activator, Codec, Extractor
from activeindex.bench.metrics import mean_interval
from activeindex.edits import apply_edit
from activeindex.imageio import PNG_COMPRESS_LEVEL

NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"
WALLPAPERS = ["/usr/share/wallpapers/*/contents/images/*.jpg", "/usr/share/backgrounds/mate/**/*.jpg"]
# today's activation path before issue 10: the exact (ste) graph in float32, 10 iterations
BASELINE = ActivationConfig(gradient="ste", precision="float32", iterations=10)
EDITS = ["contrast_0.5", "contrast_2.0", "brightness_0.5", "brightness_2.0", "hue_0.2", "blur_11", "jpeg_50",
         "rotation_25", "center_crop_0.5"]


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


def query_jpegs(n: int, cache: Path, pattern: str) -> list[str]:
    """n photos (seeded random) saved once as JPEG q90: realistic query uploads of ~512 px."""
    paths = sorted(glob.glob(pattern))
    if len(paths) < n:
        raise SystemExit(f"found {len(paths)} photos matching {pattern}, need {n}: install stellarium-data")
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i in np.random.default_rng(0).choice(len(paths), n, replace=False):
        jpeg = cache / (Path(paths[i]).stem + ".jpg")
        if paths[i].lower().endswith((".jpg", ".jpeg")):
            jpeg = Path(paths[i])
        elif not jpeg.exists():
            Image.open(paths[i]).convert("RGB").save(jpeg, quality=90)
        out.append(str(jpeg))
    return out


def embedding(extractor: Extractor, paths: list[str], label: str, repeats: int = 3) -> np.ndarray:
    """Today's path (decoding in line, readers=0) and the current one (readers=2), alternated ``repeats`` times."""
    extractor.encode(paths[:4], progress=False)  # warm-up
    rates, vectors = {0: [], 2: []}, {}
    for _ in range(repeats):
        for readers in rates:
            start = time.perf_counter()
            vectors[readers] = extractor.encode(paths, progress=False, readers=readers)
            rates[readers].append(len(paths) / (time.perf_counter() - start))
    sizes = np.array([Image.open(p).size for p in paths])
    agreement = float((vectors[0] * vectors[2]).sum(1).min())
    print(f"embedding   {label}: {len(paths)} JPEGs, median {int(np.median(sizes[:, 0]))}x{int(np.median(sizes[:, 1]))}"
          f" px; median (min-max) of {repeats} runs")
    for readers, name in [(0, "baseline (decode in line)"), (2, "now (2 reader threads)")]:
        low, high = min(rates[readers]), max(rates[readers])
        print(f"  {name:28s} {np.median(rates[readers]):6.1f} img/s ({low:.1f}-{high:.1f})")
    print(f"  ratio {np.median(rates[2]) / np.median(rates[0]):.2f}x; descriptor cosine between the paths, min "
          f"{agreement:.6f}")
    return vectors[2]


def activation(extractor: Extractor, codec: Codec, images: list[np.ndarray], label: str,
               configs: dict[str, ActivationConfig]) -> dict[str, list]:
    """Each config on the same images (timed after a one-image warm-up), with gain, cell agreement, PSNR."""
    originals = extractor.encode_arrays(images)
    original_cells = codec.cells(originals)
    h, w = images[0].shape[:2] if len({im.shape for im in images}) == 1 else (0, 0)
    megapixels = np.median([im.shape[0] * im.shape[1] for im in images]) / 1e6
    size = f"{h}x{w}" if h else f"full size, median {megapixels:.1f} MP"
    print(f"activation  {label}: {len(images)} photos ({size}), codec IVF{codec.nlist},PQ8x8, {len(EDITS)} edits "
          "per photo for the cell agreement")
    results, rates = {}, {}
    for name, config in configs.items():
        activator = Activator(extractor, codec, replace(config, batch_size=len(images)))
        activator.activate(images[:1], progress=False)  # warm-up: graph conversion, allocations
        start = time.perf_counter()
        results[name] = activator.activate(images, progress=False)
        _sync(extractor.device)
        rates[name] = len(images) / (time.perf_counter() - start)
    for name, config in configs.items():
        gain = np.array([r.cos_after - r.cos_before for r in results[name]])
        edited = [[apply_edit(edit, r.image, seed=i) for edit in EDITS] for i, r in enumerate(results[name])]
        cells = codec.cells(extractor.encode_arrays([e for per_image in edited for e in per_image]))
        same_cell = (cells.reshape(len(images), len(EDITS)) == original_cells[:, None]).astype(float)
        psnr = np.array([r.psnr for r in results[name]])
        print(f"  {name:28s} {rates[name]:6.2f} img/s  gain {gain.mean():+.4f} {_ci(gain, 4)}  edited copies in "
              f"cell {same_cell.mean():.3f} {_ci(same_cell, 3)}  PSNR {psnr.mean():.2f} dB {_ci(psnr, 2)}  "
              f"({config.gradient}, {config.precision}, {config.iterations} it)")
    names = list(configs)
    if "baseline" in configs and len(names) > 1:
        now = names[1]
        now_gain = np.array([r.cos_after - r.cos_before for r in results[now]])
        base_gain = np.array([r.cos_after - r.cos_before for r in results["baseline"]])
        difference = now_gain - base_gain
        print(f"  {now} vs baseline: {rates[now] / rates['baseline']:.2f}x img/s; gain difference "
              f"{difference.mean():+.4f} {_ci(difference, 4)} ({difference.mean() / np.mean(base_gain):+.1%}); PSNR "
              f"difference {np.mean([a.psnr - b.psnr for a, b in zip(results[now], results['baseline'])]):+.2f} dB")
    return results


def png_levels(images: list[np.ndarray], label: str) -> None:
    for level in sorted({6, PNG_COMPRESS_LEVEL}):
        start, size = time.perf_counter(), 0
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG", compress_level=level)
            size += buffer.tell()
        elapsed, megabytes = (time.perf_counter() - start) / len(images), size / len(images) / 1e6
        print(f"PNG         {label}: zlib level {level}: {elapsed * 1000:6.0f} ms and {megabytes:.2f} MB per image "
              f"({len(images)} activated photos)")


def _ci(values: np.ndarray, digits: int) -> str:
    low, high = mean_interval(np.asarray(values))
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--baseline", action="store_true", help="also run today's paths (before issue 10)")
    parser.add_argument("--embed", type=int, default=300, help="512-px JPEG queries to embed")
    parser.add_argument("--activate", type=int, default=12, help="512x768 photos to activate")
    parser.add_argument("--full-size", type=int, default=4, help="full-size photos to activate")
    parser.add_argument("--iterations", default="4,6", help="extra iteration counts of the current path (gain per "
                                                             "iteration), on the 512x768 photos")
    parser.add_argument("--cache", default=str(Path.home() / ".cache/activeindex/speed"))
    parser.add_argument("--photos", default=NEBULAE, help="glob of the 512-px query photos (JPEGs are used as they "
                                                          "are, others saved as JPEG q90 once)")
    parser.add_argument("--wallpapers", nargs="+", default=WALLPAPERS, help="globs of the full-size photos")
    args = parser.parse_args()

    extractor = Extractor(device=args.device)
    device = extractor.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")

    queries = embedding(extractor, query_jpegs(args.embed, Path(args.cache), args.photos), "512-px photos")
    embedding(extractor, wallpapers(24, 1, args.wallpapers), "full-size wallpapers")
    codec = Codec.create("IVF32,PQ8x8", extractor.dim)  # 300 real vectors: coarse, enough to compare two paths
    codec.train(queries)

    configs = {"baseline": BASELINE} if args.baseline else {}
    configs["now"] = ActivationConfig()
    crops = [np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (768, 512), Image.BICUBIC))
             for p in wallpapers(args.activate, 2, args.wallpapers)]
    extra = {f"now, {n} iterations": replace(ActivationConfig(), iterations=int(n))
             for n in args.iterations.split(",") if n}
    results = activation(extractor, codec, crops, "512x768", configs | extra)
    full = [np.asarray(Image.open(p).convert("RGB")) for p in wallpapers(args.full_size, 3, args.wallpapers)]
    full_results = activation(extractor, codec, full, "full size", configs)
    png_levels([r.image for r in results["now"]], "512x768")
    png_levels([r.image for r in full_results["now"]], "full size")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
