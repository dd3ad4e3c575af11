"""End-to-end demo on real photos: train, register distractors, activate 10 photos, query edited copies.

Run by `make demo`. Photos come from Debian packages (STACK.md): MATE's nature wallpapers are the images
to publish; Stellarium's telescope photos, Tux Paint's photographic stamps and KDE's wallpapers are the
training set and the distractors (disjoint). Everything goes to demo-output/.
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
from activeindex.bench.edits import apply_edit
from activeindex.imageio import load_image

PUBLISH = sorted(glob.glob("/usr/share/backgrounds/mate/nature/*.jpg"))[:10]
NEBULAE = sorted(glob.glob("/usr/share/stellarium/nebulae/default/*.png"))
STAMPS = sorted(glob.glob("/usr/share/tuxpaint/stamps/**/*.png", recursive=True))
WALLPAPERS = sorted(glob.glob("/usr/share/wallpapers/*/contents/images/*.*"))
EDITS = ["none", "brightness_0.5", "brightness_2.0", "contrast_0.5", "contrast_2.0", "jpeg_50"]
FACTORY = "IVF32,PQ8x8"  # 8-byte codes as in the paper; 32 cells = the most ~1.5k training vectors support


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


def augmented(paths: list[str]) -> Iterator[np.ndarray]:
    """Each training image, its mirror and a centre crop (streamed): ~3x the vectors for k-means."""
    for path in paths:
        try:
            image = load_image(path)
        except ValueError:
            continue
        h, w = image.shape[:2]
        yield from (image, np.ascontiguousarray(image[:, ::-1]), image[h // 8: h - h // 8, w // 8: w - w // 8])


def recall_at_1(collection: Collection, sources: list[Path], ids: list[int], cells: np.ndarray,
                edit: str) -> tuple[float, float]:
    """R@1, and the share of queries landing in their original's IVF cell, for one edit of each source."""
    queries = [apply_edit(edit, load_image(p)) for p in sources]
    results = collection.search(queries, k=10)
    hits = [bool(r) and r[0].id == i for r, i in zip(results, ids)]
    query_cells = collection.codec.cells(collection.extractor.encode_arrays(queries))
    return float(np.mean(hits)), float(np.mean(query_cells == cells))


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
    print(f"corpus: {len(PUBLISH)} photos to publish, {len(train)} training images (x3 augmented), "
          f"{len(distractors)} distractors")
    collection = Collection.create(out / "collection", FACTORY)
    n_train = collection.train(augmented(train))
    report = collection.add(distractors)
    print(f"trained {FACTORY} on {n_train} vectors; {len(report.records)} distractors indexed "
          f"({len(report.skipped)} duplicate files skipped, {len(report.failed)} unreadable or too small)")

    config = get_preset(args.preset)
    active = collection.activate(PUBLISH, out / "activated", config=config).records
    originals = [Path(r.original_path) for r in active]
    activated = [Path(r.activated_path) for r in active]
    ids = [r.id for r in active]
    cells = collection.codec.cells(collection.extractor.encode(originals))  # the cells the index stores

    rows = []
    for edit in EDITS:
        passive, passive_cell = recall_at_1(collection, originals, ids, cells, edit)
        act, active_cell = recall_at_1(collection, activated, ids, cells, edit)
        rows.append({"edit": edit, "passive_r1": passive, "active_r1": act,
                     "passive_cell": passive_cell, "active_cell": active_cell})
    quality = {k: float(np.mean([getattr(r, k) for r in active])) for k in ("psnr", "ssim", "linf")}
    print_table(rows, quality, config.scaling, collection)
    (out / "results.json").write_text(json.dumps({"factory": FACTORY, "preset": args.preset, "edits": rows,
                                                  "quality": quality, "images": len(active)}, indent=2))
    print(f"\nactivated files in {out / 'activated'}; results in {out / 'results.json'} "
          f"({time.monotonic() - started:.0f} s)")


def print_table(rows: list[dict], quality: dict, scaling: float, collection: Collection) -> None:
    info = collection.info()
    print(f"\n{info['factory']}, nprobe {info['nprobe']}, {info['ntotal']} vectors indexed, "
          f"{len(PUBLISH)} queries per edit")
    print(f"{'edit':16} {'passive R@1':>12} {'active R@1':>11} {'passive cell':>13} {'active cell':>12}")
    for r in rows:
        print(f"{r['edit']:16} {r['passive_r1']:12.2f} {r['active_r1']:11.2f} {r['passive_cell']:13.2f} "
              f"{r['active_cell']:12.2f}")
    mean = {k: np.mean([r[k] for r in rows]) for k in ("passive_r1", "active_r1", "passive_cell", "active_cell")}
    print(f"{'average':16} {mean['passive_r1']:12.2f} {mean['active_r1']:11.2f} {mean['passive_cell']:13.2f} "
          f"{mean['active_cell']:12.2f}")
    print(f"\nactivated PNGs (scaling {scaling}): PSNR {quality['psnr']:.2f} dB, SSIM {quality['ssim']:.4f}, "
          f"L-inf {quality['linf']:.1f} levels (means)")


if __name__ == "__main__":
    main()
