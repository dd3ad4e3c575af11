"""End-to-end demo on real photos: train, register distractors, activate 10 photos, query edited copies.

Run by `make demo`. Photos come from Debian packages (STACK.md): 10 of MATE's 12 nature wallpapers, a seeded
random draw, are the images to publish; Stellarium's telescope photos, Tux Paint's photographic stamps and
KDE's wallpapers are the training set and the distractors (disjoint). The training set is the benchmark's
recipe (the photos plus seeded random crops of them), so the index can have enough cells for its quantisation
to lose queries: that is what activation repairs. Everything goes to demo-output/.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from activeindex import Collection, get_preset
from activeindex.bench.metrics import mean_interval
from activeindex.edits import apply_edit, random_resized_crop
from activeindex.imageio import load_image

NATURE = sorted(glob.glob("/usr/share/backgrounds/mate/nature/*.jpg"))
PUBLISH = [NATURE[i] for i in sorted(np.random.default_rng(0).choice(len(NATURE), 10, replace=False))]
NEBULAE = sorted(glob.glob("/usr/share/stellarium/nebulae/default/*.png"))
STAMPS = sorted(glob.glob("/usr/share/tuxpaint/stamps/**/*.png", recursive=True))
WALLPAPERS = sorted(glob.glob("/usr/share/wallpapers/*/contents/images/*.*"))
EDITS = ["brightness_0.5", "brightness_2.0", "contrast_0.5", "contrast_2.0", "hue_0.2", "blur_11", "jpeg_50"]
FACTORY = "IVF128,PQ8x8"  # 8-byte codes as in the paper; 128 cells of ~6 references: coarse, like the paper's
# the training photos + random crops of them: the PQ codebooks (256 centroids per sub-quantizer) want 39 x 256
TRAIN_VECTORS = 10_000


def split_corpus(seed: int = 0) -> tuple[list[str], list[str]]:
    """Training images and distractors: disjoint halves of the telescope photos and the stamps."""
    rng = np.random.default_rng(seed)
    train, distractors = [], []
    for group in (NEBULAE, STAMPS):
        order = rng.permutation(len(group))
        half = len(group) // 2
        train += [group[i] for i in order[:half]]
        distractors += [group[i] for i in order[half:]]
    return train, distractors + WALLPAPERS


def augmented(paths: list[str], total: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Each training image and random crops of it (`random_resized_crop`, seeded), ``total`` in all (streamed)."""
    crop, rng = random_resized_crop(), np.random.default_rng(seed)
    per_photo = -(-total // len(paths)) - 1
    for path in paths:
        try:
            image = load_image(path)
        except ValueError:
            continue
        yield image
        yield from (crop(image, rng) for _ in range(per_photo))


def hits_at_1(collection: Collection, sources: list[Path], ids: list[int], cells: np.ndarray,
              edit: str) -> tuple[np.ndarray, np.ndarray]:
    """Per query: true id ranked first by the index (the paper's R@1: k 1, before any re-ranking), and descriptor
    in its original's IVF cell, for one edit of each source."""
    queries = [apply_edit(edit, load_image(p), seed=i) for i, p in enumerate(sources)]
    results = collection.search(queries, k=1)
    hits = np.array([bool(r) and r[0].id == i for r, i in zip(results, ids)])
    return hits, collection.codec.cells(collection.extractor.encode_arrays(queries)) == cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-output", help="output folder (replaced)")
    parser.add_argument("--preset", default="default", help="activation preset: default or paper")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.monotonic()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)

    train, distractors = split_corpus()
    print(f"corpus: {len(PUBLISH)} photos to publish (a seeded draw of {len(NATURE)}), {len(train)} training photos "
          f"(+ random crops, {TRAIN_VECTORS} vectors), {len(distractors)} distractors")
    collection = Collection.create(out / "collection", FACTORY)
    n_train = collection.train(augmented(train, TRAIN_VECTORS))
    report = collection.add(distractors)
    print(f"trained {FACTORY} on {n_train} vectors; {len(report.records)} distractors indexed "
          f"({len(report.skipped)} duplicate files skipped, {len(report.failed)} unreadable or too small)")

    config = get_preset(args.preset)
    active = collection.activate(PUBLISH, out / "activated", config=config).records
    originals = [Path(r.original_path) for r in active]
    activated = [Path(r.activated_path) for r in active]
    ids = [r.id for r in active]
    cells = collection.codec.cells(collection.extractor.encode(originals))  # the cells the index stores

    hits = {"passive": [], "active": []}
    in_cell = {"passive": [], "active": []}
    for edit in EDITS:
        for mode, sources in (("passive", originals), ("active", activated)):
            h, c = hits_at_1(collection, sources, ids, cells, edit)
            hits[mode].append(h)
            in_cell[mode].append(c)
    hits = {m: np.stack(v, 1).astype(float) for m, v in hits.items()}  # (photos, edits)
    in_cell = {m: np.stack(v, 1).astype(float) for m, v in in_cell.items()}
    quality = {k: float(np.mean([getattr(r, k) for r in active])) for k in ("psnr", "ssim", "linf")}
    formats = sorted({r.format.upper() for r in active})
    print_table(hits, in_cell, quality, config.scaling, collection, formats)
    summary = {m: {"r1": float(hits[m].mean()), "r1_ci": mean_interval(hits[m]), "cell": float(in_cell[m].mean())}
               for m in hits}
    (out / "results.json").write_text(json.dumps({
        "factory": FACTORY, "preset": args.preset, "edits": EDITS, "images": len(active), "average": summary,
        "hits": {m: h.tolist() for m, h in hits.items()}, "quality": quality}, indent=2))
    print(f"\nactivated files in {out / 'activated'}; results in {out / 'results.json'} "
          f"({time.monotonic() - started:.0f} s)")


def print_table(hits: dict, in_cell: dict, quality: dict, scaling: float, collection: Collection,
                formats: list[str]) -> None:
    info = collection.info()
    print(f"\n{info['factory']}, nprobe {info['nprobe']}, {info['ntotal']} vectors indexed, "
          f"{len(hits['passive'])} queries per edit")
    print(f"{'edit':16} {'passive R@1':>12} {'active R@1':>11} {'passive cell':>13} {'active cell':>12}")
    for j, edit in enumerate(EDITS):
        print(f"{edit:16} {hits['passive'][:, j].mean():12.2f} {hits['active'][:, j].mean():11.2f} "
              f"{in_cell['passive'][:, j].mean():13.2f} {in_cell['active'][:, j].mean():12.2f}")
    print(f"{'average':16} {hits['passive'].mean():12.2f} {hits['active'].mean():11.2f} "
          f"{in_cell['passive'].mean():13.2f} {in_cell['active'].mean():12.2f}")
    n = hits["passive"].size
    (plo, phi), (alo, ahi) = mean_interval(hits["passive"]), mean_interval(hits["active"])
    dlo, dhi = mean_interval(hits["active"] - hits["passive"])
    print(f"\nR@1 over {n} queries ({len(EDITS)} photometric edits x {len(hits['passive'])} photos), 95 % bootstrap "
          f"intervals (photos resampled):\n  passive {hits['passive'].mean():.2f} [{plo:.2f}, {phi:.2f}]   active "
          f"{hits['active'].mean():.2f} [{alo:.2f}, {ahi:.2f}]   active - passive "
          f"{(hits['active'] - hits['passive']).mean():+.2f} [{dlo:+.2f}, {dhi:+.2f}]")
    print(f"\nreleased files ({', '.join(formats)}, as their originals; scaling {scaling}): PSNR {quality['psnr']:.2f} "
          f"dB, SSIM {quality['ssim']:.4f}, L-inf {quality['linf']:.1f} levels (means)")


if __name__ == "__main__":
    main()
