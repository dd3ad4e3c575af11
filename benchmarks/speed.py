"""Throughput of the hot paths, the earlier ones (--baseline) and the current ones side by side in ONE run.

  embedding   end to end from JPEG files on disk (decode, resize, network), images/s:
              512-px telescope photos (Stellarium, saved as JPEG q90 once) and full-size wallpapers
  activation  512x768 crops, full-size wallpapers (median >= 9 MP) and the largest real photos resized to
              24 MP (decoding excluded): images/s and the peak RSS an image adds, with what each path buys:
              cosine gain towards the target, the share of edited copies in their original's IVF cell (the
              paper's photometric edits plus rotation 25 and centre crop), PSNR; 95 % bootstrap intervals over
              photos (sample sizes printed). Paths: "now" (activation.py) and, with --baseline, "autograd"
              (the same optimisation, one delta per pixel under autograd, bfloat16 where the CPU has AVX-512
              BF16: as before the speed work) and, at full size, "now, per pixel" (resolution 0), both also
              at a 46 dB floor: the coarse change against the per-pixel one at equal PSNR
  PNG         encoding time and size of the activated photos at zlib levels 6 (before) and 1 (now)

Photos are seeded random draws (one file per wallpaper, its largest), never a file-order prefix. Usage:

    python benchmarks/speed.py --baseline [--device auto|cpu|cuda] [--activate 12] [--full-size 4] [--large 2]
        [--photos GLOB] [--wallpapers GLOB ...]   # elsewhere than Debian with the photo packages
    python benchmarks/speed.py --tiny         # two small images per case: checks that it runs (tests, CI)
"""
from __future__ import annotations

import argparse
import collections
import glob
import io
import os
import platform
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from activeindex import ActivationConfig, Activator, Codec, Extractor
from activeindex.activation import Optimized, _init_delta, _to_uint8
from activeindex.bench.metrics import mean_interval
from activeindex.edits import apply_edit
from activeindex.extractor import preprocess, to_tensor
from activeindex.imageio import PNG_COMPRESS_LEVEL
from activeindex.perceptual import jnd_heatmap

NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"
WALLPAPERS = ["/usr/share/wallpapers/*/contents/images/*.jpg", "/usr/share/backgrounds/mate/**/*.jpg"]
LARGE_PIXELS = 24_000_000  # the 24 MP case: the largest real photos, resized to this
FLOOR = 46.0  # dB: the paired comparison of the coarse and the per-pixel change at equal PSNR
COMPARISONS = [("now", "autograd"), ("now", "now, per pixel"),
               (f"now, {FLOOR:g} dB floor", f"per pixel, {FLOOR:g} dB floor")]
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


class AutogradActivator(Activator):
    """The optimisation before the speed work (--baseline): the same loss and steps, one delta per full-resolution
    pixel, its chain (tanh, the budget, the sum with the original, the resize, the MSE) under autograd, and the
    gradient pass in bfloat16 wherever the CPU has AVX-512 BF16 (the earlier "auto")."""

    def __init__(self, extractor: Extractor, codec: Codec, config: ActivationConfig):
        super().__init__(extractor, codec, replace(config, resolution=0))
        if config.precision == "auto" and extractor.device.type == "cpu" and torch.cpu._is_avx512_bf16_supported():
            self._precision = torch.bfloat16

    def optimize(self, images, targets, seeds=(), releases=None, view_targets=None):  # no views: the earlier path
        cfg, device = self.config, self.extractor.device
        originals, targets = [to_tensor(image).to(device) for image in images], targets.to(device)
        std, alpha = self._std.to(device), self._alpha.to(device)
        budgets = [cfg.scaling * jnd_heatmap(o, cfg.jnd_padding) * alpha * std for o in originals]
        deltas = [_init_delta(o.shape[1:], cfg.seed + int(s)).to(device).requires_grad_(True)
                  for o, s in zip(originals, seeds or range(len(originals)))]
        optimizer = torch.optim.Adam(deltas, lr=cfg.lr, fused=True)
        for _ in range(cfg.iterations):
            optimizer.zero_grad()
            changes = [b * torch.tanh(d) for b, d in zip(budgets, deltas)]
            inputs = torch.cat([preprocess(o + c, self.extractor.preprocessing) for o, c in zip(originals, changes)])
            cosine = F.cosine_similarity(self.extractor.embed_preprocessed(inputs, cfg.gradient, self._precision),
                                         targets, dim=1)
            mse = torch.stack([(c / std).square().mean() for c in changes])
            (-cosine + cfg.lambda_mse * mse).sum().backward()
            optimizer.step()
        with torch.no_grad():
            lossless = [_to_uint8(o + b * torch.tanh(d)) for o, b, d in zip(originals, budgets, deltas)]
        return [Optimized(image, cfg.scaling, image, None) for image in lossless]


class PeakRSS:
    """The largest resident set size while the block runs, above what it was before (sampled every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        self.process, self.stop = psutil.Process(), threading.Event()
        self.before = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.added = max(0, self.peak - self.before)


def activation(extractor: Extractor, codec: Codec, images: list[np.ndarray], label: str,
               paths: dict[str, Activator]) -> dict[str, list]:
    """Each path on the same images, one at a time (timed after a small warm-up), with gain, cell agreement,
    PSNR and the peak RSS an image adds."""
    originals = extractor.encode_arrays(images)
    original_cells = codec.cells(originals)
    h, w = images[0].shape[:2] if len({im.shape for im in images}) == 1 else (0, 0)
    megapixels = np.median([im.shape[0] * im.shape[1] for im in images]) / 1e6
    size = f"{h}x{w}, {megapixels:.1f} MP" if h else f"full size, median {megapixels:.1f} MP"
    print(f"activation  {label}: {len(images)} photos ({size}), codec IVF{codec.nlist},PQ8x8, {len(EDITS)} edits "
          "per photo for the cell agreement")
    results, rates, memory, in_cell = {}, {}, {}, {}
    for name, activator in paths.items():
        activator.activate([images[0][:256, :384]], progress=False)  # warm-up: graph conversion, allocations
        start, results[name], memory[name] = time.perf_counter(), [], []
        for image in images:
            with PeakRSS() as peak:
                results[name] += activator.activate([image], progress=False)
            memory[name].append(peak.added)
        _sync(extractor.device)
        rates[name] = len(images) / (time.perf_counter() - start)
    for name, activator in paths.items():
        config = activator.config
        gain = np.array([r.cos_after - r.cos_before for r in results[name]])
        edited = [[apply_edit(edit, r.image, seed=i) for edit in EDITS] for i, r in enumerate(results[name])]
        cells = codec.cells(extractor.encode_arrays([e for per_image in edited for e in per_image]))
        same_cell = in_cell[name] = (cells.reshape(len(images), len(EDITS)) == original_cells[:, None]).astype(float)
        psnr = np.array([r.psnr for r in results[name]])
        print(f"  {name:28s} {rates[name]:6.2f} img/s  gain {gain.mean():+.4f} {_ci(gain, 4)}  edited copies in "
              f"cell {same_cell.mean():.3f} {_ci(same_cell, 3)}  PSNR {psnr.mean():.2f} dB {_ci(psnr, 2)}  peak "
              f"RSS +{max(memory[name]) / 1e6:.0f} MB an image ({config.gradient}, {str(activator._precision)[6:]}, "
              f"{activator.steps(images[0].shape[:2])} it)")
    for new, old in COMPARISONS:
        if {new, old} <= set(paths):
            compare(results, rates, in_cell, new, old)
    return results


def compare(results: dict[str, list], rates: dict[str, float], in_cell: dict[str, np.ndarray], new: str,
            old: str) -> None:
    """Paired per photo: the speed ratio and the differences in gain, cell agreement and PSNR."""
    gain = {n: np.array([r.cos_after - r.cos_before for r in results[n]]) for n in (new, old)}
    difference, cells = gain[new] - gain[old], in_cell[new].mean(1) - in_cell[old].mean(1)
    psnr = np.array([a.psnr - b.psnr for a, b in zip(results[new], results[old])])
    print(f"  {new} vs {old}: {rates[new] / rates[old]:.2f}x img/s; gain difference {difference.mean():+.4f} "
          f"{_ci(difference, 4)} ({difference.mean() / np.mean(gain[old]):+.1%}); cell agreement difference "
          f"{cells.mean():+.3f} {_ci(cells, 3)}; PSNR difference {psnr.mean():+.2f} dB {_ci(psnr, 2)}")


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
    parser.add_argument("--baseline", action="store_true", help="also run the earlier paths")
    parser.add_argument("--tiny", action="store_true", help="two small images per case: that the script runs")
    parser.add_argument("--embed", type=int, default=300, help="512-px JPEG queries to embed")
    parser.add_argument("--activate", type=int, default=12, help="512x768 photos to activate")
    parser.add_argument("--full-size", type=int, default=4, help="full-size photos to activate")
    parser.add_argument("--large", type=int, default=2, help="24 MP photos to activate")
    parser.add_argument("--iterations", default="4,6", help="extra iteration counts of the current path (gain per "
                                                             "iteration), on the 512x768 photos")
    parser.add_argument("--cache", default=str(Path.home() / ".cache/activeindex/speed"))
    parser.add_argument("--photos", default=NEBULAE, help="glob of the 512-px query photos (JPEGs are used as they "
                                                          "are, others saved as JPEG q90 once)")
    parser.add_argument("--wallpapers", nargs="+", default=WALLPAPERS, help="globs of the full-size photos")
    args = parser.parse_args()
    if args.tiny:
        args.embed, args.activate, args.full_size, args.large, args.iterations = 40, 2, 2, 0, ""

    extractor = Extractor(device=args.device)
    device = extractor.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")

    queries = embedding(extractor, query_jpegs(args.embed, Path(args.cache), args.photos), "512-px photos")
    embedding(extractor, wallpapers(4 if args.tiny else 24, 1, args.wallpapers), "full-size wallpapers")
    codec = Codec.create("IVF8,PQ8x4" if args.tiny else "IVF32,PQ8x8", extractor.dim)  # real vectors: coarse
    codec.train(queries)

    def paths(config: ActivationConfig = ActivationConfig(), coarse: bool = False) -> dict[str, Activator]:
        """The current path and, with --baseline, the earlier one; ``coarse``: also the current path with one delta
        per full-resolution pixel, at the default scaling and at an equal PSNR floor."""
        now = {"now": Activator(extractor, codec, config)}
        if coarse and args.baseline:
            per_pixel, floor = replace(config, resolution=0), replace(config, psnr=FLOOR)
            now |= {"now, per pixel": Activator(extractor, codec, per_pixel),
                    f"now, {FLOOR:g} dB floor": Activator(extractor, codec, floor),
                    f"per pixel, {FLOOR:g} dB floor": Activator(extractor, codec, replace(floor, resolution=0))}
        return ({"autograd": AutogradActivator(extractor, codec, config)} if args.baseline else {}) | now

    crops = [np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (768, 512), Image.BICUBIC))
             for p in wallpapers(args.activate, 2, args.wallpapers)]
    extra = {f"now, {n} iterations": Activator(extractor, codec, replace(ActivationConfig(), iterations=int(n)))
             for n in args.iterations.split(",") if n}
    results = activation(extractor, codec, crops, "512x768", paths() | extra)
    side = 384 if args.tiny else None  # --tiny: full-size photos reduced, so that the script runs in seconds
    full = [_photo(p, side) for p in wallpapers(args.full_size, 3, args.wallpapers)]
    full_results = activation(extractor, codec, full, "full size", paths(coarse=True))
    if args.large:
        large = [_photo(p, pixels=LARGE_PIXELS) for p in largest(args.large, args.wallpapers)]
        activation(extractor, codec, large, "24 MP (the largest real photos, resized)", paths(coarse=True))
    png_levels([r.image for r in results["now"]], "512x768")
    png_levels([r.image for r in full_results["now"]], "full size")


def largest(n: int, patterns: list[str]) -> list[str]:
    """The n largest real photos (by pixel count) among ``patterns``; ties (a wallpaper's copies in two packages)
    broken by path, so every run draws the same ones."""
    files = {p for pattern in patterns for p in glob.glob(pattern, recursive=True)}
    return sorted(files, key=lambda p: (-np.prod(Image.open(p).size), p))[:n]


def _photo(path: str, short_side: int | None = None, pixels: int | None = None) -> np.ndarray:
    """A photo as it is, or with its shorter side ``short_side``, or resized to about ``pixels`` pixels."""
    image = Image.open(path).convert("RGB")
    if short_side:
        scale = short_side / min(image.size)
    elif pixels:
        scale = (pixels / (image.width * image.height)) ** 0.5
    else:
        return np.asarray(image)
    return np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or "cpu"


if __name__ == "__main__":
    main()
