"""How well `activeindex.evidence.align` finds where a copy sits in its original, and how often unrelated
photos align anyway.

Photos: a seeded random draw of distinct wallpapers (Debian's KDE and MATE packages: photos and renders, each
at its largest size, downscaled to at most 2048 px a side so the draw fits in memory) and scikit-image's six
bundled photos. Copies, drawn per photo with the seed: crops (30-70 % of the area, random aspect within 2:1 and
position), rotations (10-45 degrees either way, about the centre, black corners, same size), and crop +
rotation + scale (0.5-1.0) + JPEG (quality 50-90). Truth is the exact affine transform the copy was cut with.

Per kind: n, how many gave evidence, the corner error (largest of the four corners, % of the original's long
side) and the rotation error (degrees), as mean with a 95 % bootstrap interval and as the share within 3 % /
2 degrees (Wilson interval), and the time per pair (`align` on full-size arrays, downscaling included).
Unrelated pairs (two different photos): how many fit a non-degenerate homography with >= N inliers.

    python benchmarks/evidence.py [--photos 40] [--copies 60] [--unrelated 300] [--seed 0]
"""
from __future__ import annotations

import argparse
import glob
import io
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

from activeindex.bench.metrics import mean_interval, proportion_interval
from activeindex.evidence import AlignConfig, align
from activeindex.imageio import load_image

# one file per picture: KDE themes ship a picture in several sizes (and a dark variant, left out); MATE's
# desktop renders are colour variants of each other, so they are left out too (they would align as copies)
WALLPAPERS = ["/usr/share/wallpapers/*/contents/images/*.*", "/usr/share/backgrounds/mate/nature/*.jpg",
              "/usr/share/backgrounds/mate/abstract/Elephants*.jpg"]
SKIMAGE = Path(skimage.__file__).parent / "data"
SKIMAGE_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg"]
LONG_SIDE = 2048  # px: the draw's originals are held at most this large
THRESHOLDS = [8, 10, 12, 15, 20, 30]  # inlier counts reported for unrelated pairs


def wallpapers(n: int, seed: int) -> list[str]:
    """n distinct pictures, seeded random; each its largest file."""
    by_picture: dict[str, list[str]] = {}
    for pattern in WALLPAPERS:
        for path in glob.glob(pattern):
            picture = path.split("/contents/")[0] if "/contents/" in path else re.sub(r"_\d+x\d+", "", path)
            by_picture.setdefault(picture, []).append(path)
    pictures = sorted(max(files, key=os.path.getsize) for files in by_picture.values())
    if len(pictures) < n:
        raise SystemExit(f"found {len(pictures)} wallpapers, need {n}: install the wallpaper packages (make photos)")
    return [pictures[i] for i in np.random.default_rng(seed).choice(len(pictures), n, replace=False)]


def photos(n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """n wallpapers (seeded) and scikit-image's photos, as (name, (H, W, 3) uint8 at <= LONG_SIDE px)."""
    paths = wallpapers(n, seed) + [str(SKIMAGE / name) for name in SKIMAGE_PHOTOS]
    return [(Path(p.split("/contents/")[0]).name if "/contents/" in p else Path(p).name,
             bounded(load_image(p))) for p in paths]


def bounded(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, LONG_SIDE / max(h, w))
    return image if scale == 1 else np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)),
                                                                            Image.LANCZOS))


def cut(original: np.ndarray, centre: tuple[float, float], size: tuple[int, int], degrees: float,
        zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``size`` (w, h) showing the original around ``centre`` turned ``degrees`` counter-clockwise
    and scaled by ``zoom``, and its true corners in the original."""
    w, h = size
    t = math.radians(degrees)
    rotate = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    matrix = (np.array([[1, 0, centre[0]], [0, 1, centre[1]], [0, 0, 1]]) @ rotate
              @ np.diag([1 / zoom, 1 / zoom, 1]) @ np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]]))
    copy = Image.fromarray(original).transform(size, Image.AFFINE, tuple(matrix[:2].ravel()), Image.BICUBIC)
    outline = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float)
    return np.asarray(copy), outline @ matrix[:2].T


def draw_copy(kind: str, original: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A copy of the given kind, its true corners and its true rotation (degrees)."""
    oh, ow = original.shape[:2]
    degrees = rng.uniform(10, 45) * rng.choice([-1, 1]) if kind != "crop" else 0.0
    if kind == "rotation":
        copy, truth = cut(original, (ow / 2, oh / 2), (ow, oh), degrees, 1.0)
        return copy, truth, degrees
    area, aspect = rng.uniform(0.3, 0.7), math.exp(rng.uniform(-math.log(2), math.log(2)))
    bw, bh = min(ow, math.sqrt(area * ow * oh * aspect)), min(oh, math.sqrt(area * ow * oh / aspect))
    centre = (rng.uniform(bw / 2, ow - bw / 2), rng.uniform(bh / 2, oh - bh / 2))
    zoom = rng.uniform(0.5, 1.0) if kind == "crop+rotation+jpeg" else 1.0
    copy, truth = cut(original, centre, (round(bw * zoom), round(bh * zoom)), degrees, zoom)
    if kind == "crop+rotation+jpeg":
        copy = jpeg(copy, int(rng.integers(50, 91)))
    return copy, truth, degrees


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def measure_copies(kind: str, pool: list[tuple[str, np.ndarray]], n: int, rng: np.random.Generator) -> dict:
    corner, rotation, seconds, found = [], [], [], 0
    for i in rng.choice(len(pool), n):
        original = pool[i][1]
        copy, truth, degrees = draw_copy(kind, original, rng)
        start = time.perf_counter()
        evidence = align(copy, original).evidence
        seconds.append(time.perf_counter() - start)
        if evidence is None:
            corner.append(math.inf), rotation.append(math.inf)
            continue
        found += 1
        corner.append(100 * np.linalg.norm(np.array(evidence.corners) - truth, axis=1).max() / max(original.shape[:2]))
        rotation.append(abs((evidence.rotation_deg - degrees + 180) % 360 - 180))
    return {"kind": kind, "n": n, "found": found, "corner": np.array(corner), "rotation": np.array(rotation),
            "seconds": np.array(seconds)}


def report_copies(m: dict) -> None:
    corner, rotation = m["corner"], m["rotation"]
    ok = np.isfinite(corner)
    lo, hi = proportion_interval(ok)
    print(f"\n{m['kind']}: n {m['n']}, evidence for {m['found']} ({lo:.2f}-{hi:.2f})")
    for name, values, bar, unit in [("corner error", corner, 3.0, "% of long side"),
                                    ("rotation error", rotation, 2.0, "deg")]:
        mean, (a, b) = values[ok].mean(), mean_interval(values[ok])
        within = values <= bar
        wa, wb = proportion_interval(within)
        print(f"  {name} ({unit}): mean {mean:.2f} ({a:.2f}-{b:.2f}), median {np.median(values[ok]):.2f}, "
              f"max {values[ok].max():.2f}; within {bar:g}: {within.mean():.3f} ({wa:.3f}-{wb:.3f}) of all n")
    s = m["seconds"] * 1000
    a, b = mean_interval(s)
    print(f"  time per pair: mean {s.mean():.0f} ms ({a:.0f}-{b:.0f}), median {np.median(s):.0f}, "
          f"95th percentile {np.percentile(s, 95):.0f}")


def unrelated_inliers(pool: list[tuple[str, np.ndarray]], n: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RANSAC inliers of n random pairs of two different photos (0 when nothing was fitted), and whether each
    fit is a plausible outline (convex, not mirrored, sane scale), i.e. would be evidence at that many."""
    counts, plausible = [], []
    loose = AlignConfig(min_inliers=4)  # every fit counted, whatever its inliers
    for _ in range(n):
        i, j = rng.choice(len(pool), 2, replace=False)
        alignment = align(pool[i][1], pool[j][1], loose)
        found = re.search(r"(\d+)(?: inliers)?\)$", alignment.reason or "")
        counts.append(alignment.evidence.inliers if alignment.evidence else int(found[1]) if found else 0)
        plausible.append(alignment.evidence is not None)
    return np.array(counts), np.array(plausible)


def report_unrelated(counts: np.ndarray, plausible: np.ndarray) -> None:
    print(f"\nunrelated pairs: n {len(counts)}; RANSAC inliers median {np.median(counts):.0f}, "
          f"95th percentile {np.percentile(counts, 95):.0f}, max {counts.max()}")
    for bar in THRESHOLDS:
        fitted, evidence = counts >= bar, (counts >= bar) & plausible
        (a, b), (c, d) = proportion_interval(fitted), proportion_interval(evidence)
        print(f"  >= {bar:2d} inliers: any fit {int(fitted.sum())} ({a:.4f}-{b:.4f}); a plausible outline "
              f"(would be evidence) {int(evidence.sum())} ({c:.4f}-{d:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=40, help="wallpapers drawn (plus scikit-image's six)")
    parser.add_argument("--copies", type=int, default=60, help="copies per kind")
    parser.add_argument("--unrelated", type=int, default=300, help="pairs of different photos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pool = photos(args.photos, args.seed)
    config = AlignConfig()
    print(f"{len(pool)} photos ({', '.join(name for name, _ in pool)}); working size {config.max_side} px, "
          f"min_inliers {config.min_inliers}; {os.cpu_count()} cores")
    rng = np.random.default_rng(args.seed)
    align(pool[0][1], pool[0][1])  # warm-up: OpenCV's first call allocates its buffers
    for kind in ("crop", "rotation", "crop+rotation+jpeg"):
        report_copies(measure_copies(kind, pool, args.copies, rng))
    report_unrelated(*unrelated_inliers(pool, args.unrelated, rng))


if __name__ == "__main__":
    main()
