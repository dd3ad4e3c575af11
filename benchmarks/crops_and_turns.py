"""Cropped and turned copies through the product, as a new user meets them: with and without views.

The setting: a new collection's defaults (`Collection.create`, IVF32,PQ8x8, nprobe 1) trained on the 555
telescope photos, 380 Tux Paint stamps (seeded draw) added as passive references, then 24 photos registered
among them, either added as they are (passive) or activated with the default settings (active). A query is
a copy of the registered file (the original, or the released file), searched with `Collection.search(k=1)`:
the verdict's match, after the exact re-rank of the shortlist (decision.py). Found = that match is the photo.

Each arm is run with the default view set (`crops+turns`) and without views (`none`), on the same photos,
stamps and copies, so the difference is paired per copy. Printed: R@1 per edit with a 95 % Wilson interval;
registration seconds per photo and query seconds per copy, side by side.

The edits: the issue's corner crop keeping 35 % of the area, centre crop of 45 %, turns of +30 and -20 degrees;
random crops of 30-70 % and turns of 5-45 degrees either way (drawn per copy); brightness x2 and JPEG 30 (a view
must cost photometric copies nothing). None is the robustness benchmark's fixed rotation 25 or centre crop 50 %.

The photos:
- ``--photos tuning``: the 24 wallpapers the view set was chosen on (`benchmarks/views.py --seed 0`);
- ``--photos held-out``: the 10 wallpapers outside that draw, and 14 photos of the benchmark corpus's activate
  split (seeded draw, `make data`) whose source is not one of the 24: photos no choice was made on.

    python benchmarks/crops_and_turns.py --photos held-out [--arms passive active]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from activeindex import Collection
from activeindex.calibrate import wilson_interval
from activeindex.edits import brightness, jpeg, random_crop, rotation
from activeindex.imageio import load_image
from speed import WALLPAPERS, wallpapers

NEBULAE = "/usr/share/stellarium/nebulae/default/*.png"
STAMPS = "/usr/share/tuxpaint/stamps/**/*.png"
CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"  # `make data`
TUNING_SEED = 0  # the wallpapers benchmarks/views.py chose the view set on


def corner_crop(area: float):
    """A corner window of ``area`` of the pixels, the corner drawn per copy."""
    def _crop(image, rng):
        h, w = image.shape[:2]
        ch, cw = round(h * math.sqrt(area)), round(w * math.sqrt(area))
        top, left = (h - ch) * int(rng.integers(2)), (w - cw) * int(rng.integers(2))
        return image[top:top + ch, left:left + cw]
    return _crop


def centre_crop(area: float):
    def _crop(image, rng):
        h, w = image.shape[:2]
        ch, cw = round(h * math.sqrt(area)), round(w * math.sqrt(area))
        return image[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    return _crop


def random_turn(low: float, high: float):
    return lambda image, rng: rotation(float(rng.uniform(low, high) * rng.choice([-1, 1])))(image, rng)


EDITS = {"corner crop 0.35": corner_crop(0.35), "centre crop 0.45": centre_crop(0.45),
         "turn +30": rotation(30), "turn -20": rotation(-20), "random crop 0.3-0.7": random_crop((0.3, 0.7)),
         "turn 5-45": random_turn(5, 45), "brightness 2": brightness(2.0), "jpeg 30": jpeg(30)}


def photo_set(name: str, seed: int) -> list[str]:
    """The photos of ``--photos`` (see the module's docstring)."""
    tuning = wallpapers(24, TUNING_SEED, WALLPAPERS)
    if name == "tuning":
        return tuning
    everything = wallpapers(len(_all_wallpapers()), TUNING_SEED, WALLPAPERS)
    others = sorted(set(everything) - set(tuning))
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    tuned_sources = {Path(p).parent.parent.parent if "/contents/" in p else Path(p) for p in tuning}
    corpus = sorted(str(CORPUS / i["file"]) for i in manifest["images"] if i["split"] == "activate"
                    and not any(str(i["original_path"]).startswith(str(s)) for s in tuned_sources))
    drawn = np.random.default_rng(seed).choice(len(corpus), 24 - len(others), replace=False)
    return others + [corpus[i] for i in sorted(drawn)]


def _all_wallpapers() -> set[str]:
    return {p.split("/contents/")[0] if "/contents/" in p else p
            for pattern in WALLPAPERS for p in glob.glob(pattern, recursive=True)}


def base_collection(root: Path, views: str, stamps: list[str]) -> Path:
    """A trained collection holding the stamps (built once per view set, copied for each arm)."""
    collection = Collection.create(root, "IVF32,PQ8x8", device="cpu", views=views)
    collection.train(sorted(glob.glob(NEBULAE)), progress=False)
    collection.add(stamps, progress=False)
    collection.close()
    return root


def register(root: Path, photos: list[str], arm: str, out: Path) -> tuple[Collection, dict[str, int], float]:
    """Open the collection at ``root`` and register the photos (add or activate): (collection, the file each
    copy is made from -> its id, seconds per photo)."""
    collection = Collection.open(root, device="cpu")
    start = time.perf_counter()
    report = (collection.add(photos, progress=False) if arm == "passive"
              else collection.activate(photos, out, progress=False))
    seconds = (time.perf_counter() - start) / len(photos)
    assert not report.failed, report.failed
    files = {}
    for record in report.records:
        path = Path(record.activated_path or record.original_path)
        files[str(path if path.is_absolute() else collection.root / path)] = record.id
    return collection, files, seconds


def copies(files: dict[str, int], seed: int) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Each edit's copies of the registered files, drawn per file and edit from ``seed``, and their ids."""
    images = {path: load_image(path) for path in files}
    return {name: ([edit(image, np.random.default_rng([seed, i, e])) for i, image in enumerate(images.values())],
                   np.array(list(files.values())))
            for e, (name, edit) in enumerate(EDITS.items())}


def found(collection: Collection, queries: dict) -> tuple[dict[str, np.ndarray], float]:
    """Per edit, whether each copy's verdict match is its photo; seconds per query (descriptor and search)."""
    out, start, count = {}, time.perf_counter(), 0
    for name, (images, ids) in queries.items():
        matches = collection.search(images, k=1)
        out[name] = np.array([bool(m) and m[0].id == i for m, i in zip(matches, ids)])
        count += len(images)
    return out, (time.perf_counter() - start) / count


def cell(hits: np.ndarray) -> str:
    low, high = wilson_interval(int(hits.sum()), len(hits))
    return f"{hits.mean():.2f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", choices=["tuning", "held-out"], default="held-out")
    parser.add_argument("--arms", nargs="+", choices=["passive", "active"], default=["passive", "active"])
    parser.add_argument("--stamps", type=int, default=380)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    photos = photo_set(args.photos, args.seed)
    rng = np.random.default_rng(args.seed)
    stamps = sorted(p for p in glob.glob(STAMPS, recursive=True) if min(Image.open(p).size) >= 64)
    stamps = [stamps[i] for i in sorted(rng.choice(len(stamps), args.stamps, replace=False))]
    print(f"{len(photos)} photos ({args.photos}) among {len(stamps)} stamps; IVF32,PQ8x8 trained on the telescope "
          "photos, nprobe 1; `Collection.search(k=1)`; R@1 [95 % Wilson interval]", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        bases = {views: base_collection(scratch / f"base-{views}", views, stamps) for views in ("none", "crops+turns")}
        for arm in args.arms:
            results = {}
            for views, base in bases.items():
                root = scratch / f"{arm}-{views}"
                shutil.copytree(base, root)
                collection, files, seconds = register(root, photos, arm, scratch / f"released-{views}")
                hits, query_seconds = found(collection, copies(files, args.seed))
                results[views] = (hits, seconds, query_seconds)
                collection.close()
            print(f"\n{arm}: {'edit':20} {'no views':>18} {'views (default)':>18} {'paired difference':>18}")
            for name in EDITS:
                without, with_views = results["none"][0][name], results["crops+turns"][0][name]
                diff = with_views.astype(float) - without
                print(f"{'':9}{name:20} {cell(without):>18} {cell(with_views):>18} "
                      f"{diff.mean():+18.2f}  ({int((diff > 0).sum())} more, {int((diff < 0).sum())} fewer)")
            (_, reg0, q0), (_, reg1, q1) = results["none"], results["crops+turns"]
            print(f"{'':9}registration s / photo {reg0:.2f} -> {reg1:.2f} ({reg1 / reg0:.2f}x); "
                  f"query s / copy {q0:.3f} -> {q1:.3f} ({q1 / q0:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
