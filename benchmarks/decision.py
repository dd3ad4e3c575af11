"""The copy verdict's rule (decision.py) measured on real photos: the uncalibrated default threshold, the
shortlist a verdict re-ranks, the released file's descriptor as an extra candidate, and the alignment as a
second signal just under the threshold.

Photos: every readable photo of the Debian packages (stellarium-data's nebulae, tuxpaint-stamps-default's
stamps, plasma-workspace-wallpapers, mate-backgrounds) and scikit-image, stored at <= 512 px, exact and near
duplicates (cosine > 0.9) dropped (`bench.corpus.fetch_corpus`); then a seeded random split: images to
activate (short side >= 256 px: photos people publish), non-matching photos (short side >= 64 px, never
registered), passive references and training photos (the rest, half each).

Collection: ``IVF64,PQ8x8`` with the default views (crops+turns), trained on the training photos and random
crops of them, the references added, the images to activate activated (default preset).

Queries: each non-matching photo as every kind of query `calibrate` uses (unedited, photometric, geometric,
auto; one edit drawn per kind, seeded); each released file under the paper's 14 edits. Every query is
searched once for 100 candidates; each rule below is read from those lists (index order = distance order).

Each candidate's exact similarity is read from the catalog's stored vectors (the original's and its views'),
and, for an activated image, from its released file's descriptor: the shipped rule (decision.py) takes the
best of the index's first 10 candidates over both.

Printed (95 % Wilson intervals; paired differences by Newcombe's method):
  1. The default threshold: split conformal per kind on 3/4 of the non-matching photos at 1 % (the rule of
     `calibrate`), the highest over the kinds, rounded up to 0.01; the held-out quarter's false-copy rate
     per kind at it (and at 0.4, the former default), the true-copy rate of the copies.
  2. True copies at 1 % and 0.1 % false copies (threshold on all non-matching queries) for: shortlists of 1,
     10 (shipped) and 100 index results; the shortlist of 10 without the released file's descriptor.
  3. The alignment (`evidence.align`) as a second signal: a candidate within MARGIN under the 0.1 % threshold
     is called a copy when it aligns; false and true copies added.

    python benchmarks/decision.py [--out decision-output] [--activate 100] [--nonmatching 1000] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activeindex import ActivationConfig, Collection
from activeindex.bench.corpus import Corpus, fetch_corpus
from activeindex.bench.metrics import paired_difference_interval, proportion_interval
from activeindex.calibrate import DEFAULT_KINDS, conformal_threshold, held_out, threshold_for_fpr
from activeindex.decision import best_of
from activeindex.edits import PAPER_EDITS, apply_edit, random_resized_crop
from activeindex.evidence import align
from activeindex.extractor import Extractor
from activeindex.imageio import load_image

FACTORY = "IVF64,PQ8x8"
K = 100  # candidates fetched per query; each rule reads its own prefix
SHORTLISTS = (1, 10, 100)
MARGINS = (0.05, 0.1)  # the alignment's band under the 0.1 % threshold
FORMER_DEFAULT = 0.4


@dataclass
class Lists:
    """Every query's candidates in the index's order: ids (n, K) (-1: none) and exact similarities (n, K): to
    the stored original's and views' descriptors (``stored``), and with the released file's too (``sims``,
    the shipped rule's)."""

    ids: np.ndarray
    stored: np.ndarray
    sims: np.ndarray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="decision-output")
    parser.add_argument("--activate", type=int, default=100)
    parser.add_argument("--nonmatching", type=int, default=1000)
    parser.add_argument("--train-crops", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = Extractor(device="cpu")
    corpus = _corpus(out / "corpus", extractor, args.seed)
    splits = _split(corpus, args.activate, args.nonmatching, args.seed)
    collection = _collection(out / "collection", corpus, splits, extractor, args.train_crops, args.seed)
    records = collection.catalog.get([int(i) for i in collection.catalog.ids()])
    active = {r.id: Path(r.activated_path) for r in records.values() if r.activated_path}
    ids = sorted(active)
    negatives, draws = _nonmatching_queries(out / "negatives.npz", corpus, splits["nonmatching"], extractor, args.seed)
    positives = _cached(out / "positives.npy", lambda: _matching_queries([active[i] for i in ids], extractor,
                                                                         args.seed))
    released = _cached(out / "released.npy", lambda: extractor.encode([active[i] for i in ids], progress=True))
    neg = _lists(collection, negatives.reshape(-1, negatives.shape[-1]), dict(zip(ids, released)))
    pos = _lists(collection, positives.reshape(-1, positives.shape[-1]), dict(zip(ids, released)))
    truth = np.repeat(np.array(ids), len(PAPER_EDITS))
    print(_setup(corpus, splits, collection, negatives, positives))
    default = _default_threshold(neg, pos, truth, len(splits["nonmatching"]), args.seed)
    points = _operating_points(neg, pos, truth)
    second = _second_signal(collection, neg, pos, truth, corpus, splits["nonmatching"], draws, active, args.seed)
    (out / "results.json").write_text(json.dumps({"default": default, "points": points, "alignment": second},
                                                 indent=1, default=float))


# ---------------------------------------------------------------- setup


def _corpus(folder: Path, extractor: Extractor, seed: int) -> Corpus:
    """Every readable photo, deduplicated (splits are drawn by `_split`)."""
    if (folder / "manifest.json").exists():
        return Corpus(folder)
    return fetch_corpus(folder, max_side=512, n_activate=0, n_nonmatching=0, seed=seed, extractor=extractor,
                        min_query_side=0, progress=True)


def _split(corpus: Corpus, n_activate: int, n_nonmatching: int, seed: int) -> dict[str, list[int]]:
    """Seeded random: to activate (short side >= 256), non-matching (>= 64), then references and training."""
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(len(corpus.images))
    sides = np.array([im.short_side for im in corpus.images])
    activate = [int(i) for i in order if sides[i] >= 256][:n_activate]
    rest = [int(i) for i in order if i not in set(activate)]
    nonmatching = [i for i in rest if sides[i] >= 64][:n_nonmatching]
    rest = [i for i in rest if i not in set(nonmatching)]
    if len(activate) < n_activate or len(nonmatching) < n_nonmatching or len(rest) < 40:
        raise SystemExit(f"too few photos: {len(activate)} to activate, {len(nonmatching)} non-matching, "
                         f"{len(rest)} left; install the photo packages (make photos) or ask for fewer")
    return {"activate": activate, "nonmatching": nonmatching, "references": rest[:len(rest) // 2],
            "train": rest[len(rest) // 2:]}


def _collection(root: Path, corpus: Corpus, splits: dict, extractor: Extractor, train_crops: int,
                seed: int) -> Collection:
    """The realistic collection, made once (reopened when it exists)."""
    if (root / "manifest.json").exists():
        return Collection.open(root, device="cpu")
    files = [corpus.root / im.file for im in corpus.images]
    train = [files[i] for i in splits["train"]]
    crop, rng = random_resized_crop(), np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    crops = (crop(load_image(train[int(rng.integers(len(train)))]), rng) for _ in range(train_crops))
    vectors = np.concatenate([corpus.descriptors[splits["train"]], _encode(extractor, crops, "training crops")])
    collection = Collection.create(root, FACTORY, device="cpu")
    collection.train(vectors)
    collection.add([files[i] for i in splits["references"]], progress=True)
    collection.activate([files[i] for i in splits["activate"]], root.parent / "released", ActivationConfig(),
                        progress=True)
    return collection


def _cached(path: Path, compute) -> np.ndarray:
    if not path.exists():
        np.save(path, compute())
    return np.load(path)


def _draw_seed(seed: int, stream: int, i: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(stream, i))


def _nonmatching_queries(path: Path, corpus: Corpus, chosen: list[int], extractor: Extractor,
                         seed: int) -> tuple[np.ndarray, list[list[tuple[str, int]]]]:
    """(n, kinds, d) descriptors of each non-matching photo as every kind, and the (edit, seed) drawn."""
    draws = []
    for i in range(len(chosen)):
        rng = np.random.default_rng(_draw_seed(seed, 3, i))
        draws.append([(edits[int(rng.integers(len(edits)))], int(rng.integers(2**31)))
                      for edits in DEFAULT_KINDS.values()])
    if not path.exists():
        def edited():
            for i, draw in zip(chosen, draws):
                image = load_image(corpus.root / corpus.images[i].file)
                yield from (apply_edit(edit, image, edit_seed) for edit, edit_seed in draw)
        vectors = _encode(extractor, edited(), "non-matching queries")
        np.savez(path, vectors=vectors.reshape(len(chosen), len(DEFAULT_KINDS), -1))
    return np.load(path)["vectors"], draws


def _matching_queries(files: list[Path], extractor: Extractor, seed: int) -> np.ndarray:
    """(n, 14, d): each released file under each of the paper's edits."""
    def edited():
        for j, path in enumerate(files):
            image = load_image(path)
            yield from (_copy(image, j, e, seed) for e in range(len(PAPER_EDITS)))
    return _encode(extractor, edited(), "matching queries").reshape(len(files), len(PAPER_EDITS), -1)


def _copy(image: np.ndarray, j: int, e: int, seed: int) -> np.ndarray:
    """Released file j under paper edit e (its own seed)."""
    return apply_edit(PAPER_EDITS[e], image, _draw_seed(seed, 4, j * 100 + e))


def _encode(extractor: Extractor, images, what: str, batch: int = 64) -> np.ndarray:
    """Descriptors of a stream of (H, W, 3) arrays, ``batch`` network inputs held at a time."""
    out, chunk = [], []
    for image in images:
        chunk.append(image)
        if len(chunk) == batch:
            out.append(extractor.encode_arrays(chunk))
            chunk = []
            print(f"  {what}: {batch * len(out)}", end="\r", flush=True)
    out.append(extractor.encode_arrays(chunk) if chunk else np.zeros((0, extractor.dim), np.float32))
    print()
    return np.concatenate(out)


def _lists(collection: Collection, queries: np.ndarray, released: dict[int, np.ndarray]) -> Lists:
    """Each query's K candidates in the index's order (by distance; the search returns them by similarity), their
    exact similarities read from the catalog's stored vectors, and with ``released`` (a collection made before
    the catalog kept released files' descriptors has none of its own)."""
    ids = np.full((len(queries), K), -1, np.int64)
    stored, sims = np.full((len(queries), K), np.nan), np.full((len(queries), K), np.nan)
    for start in range(0, len(queries), 256):
        found = collection.search_descriptors(queries[start:start + 256], K)
        rows = collection.catalog.paths_and_descriptors(sorted({m.id for matches in found for m in matches}))
        for row, matches in enumerate(found, start):
            ordered = sorted(matches, key=lambda m: m.distance)
            ids[row, :len(ordered)] = [m.id for m in ordered]
            stored[row, :len(ordered)] = [float(np.max(rows[m.id][2] @ queries[row])) for m in ordered]
            sims[row, :len(ordered)] = [max(stored[row, col], float(released[m.id] @ queries[row]))
                                        if m.id in released else stored[row, col] for col, m in enumerate(ordered)]
    return Lists(ids, stored, sims)


def _setup(corpus: Corpus, splits: dict, collection: Collection, negatives: np.ndarray, positives: np.ndarray) -> str:
    packages = {name: _count([corpus.images[i].package for i in idx]) for name, idx in splits.items()}
    info = collection.info()
    return (f"photos: {len(corpus.images)} distinct; " + "; ".join(f"{k} {len(v)} {packages[k]}" for k, v in
                                                                   splits.items())
            + f"\ncollection: {FACTORY}, views {info['views']['name']}, {info['images']} images "
              f"({info['active']} activated, {info['passive']} passive), {info['ntotal']} vectors"
            + f"\nqueries: {negatives.shape[0]} non-matching photos x {negatives.shape[1]} kinds = "
              f"{negatives.shape[0] * negatives.shape[1]}; {positives.shape[0]} released files x "
              f"{positives.shape[1]} edits = {positives.shape[0] * positives.shape[1]} copies")


def _count(items: list[str]) -> dict[str, int]:
    return {k: items.count(k) for k in sorted(set(items))}


# ---------------------------------------------------------------- 1. the default threshold


def _default_threshold(neg: Lists, pos: Lists, truth: np.ndarray, n_photos: int, seed: int) -> dict:
    """Split conformal at 1 % per kind (calibrate's rule) on 3/4 of the photos; measured on the other 1/4."""
    scores = best_of(neg.sims[:, :10], neg.ids[:, :10])[0].reshape(n_photos, len(DEFAULT_KINDS))
    held = held_out(n_photos, seed)
    per_kind = {kind: conformal_threshold(scores[~held, k], 0.01) for k, kind in enumerate(DEFAULT_KINDS)}
    chosen = math.ceil(max(per_kind.values()) * 100) / 100
    print(f"\n1. default threshold: split conformal at 1 % per kind on {int((~held).sum())} photos, "
          f"measured on {int(held.sum())} held out (the shipped rule)")
    print("   per kind, chosen: " + ", ".join(f"{k} {t:.4f}" for k, t in per_kind.items())
          + f"; the highest, rounded up: {chosen:.2f}")
    result = {"per_kind": per_kind, "threshold": chosen, "held_out": int(held.sum()), "at": {}}
    best, found = best_of(pos.sims[:, :10], pos.ids[:, :10])
    for threshold in (chosen, FORMER_DEFAULT):
        rows = {}
        for k, kind in enumerate(DEFAULT_KINDS):
            false = scores[held, k] >= threshold
            rows[kind] = (float(false.mean()), proportion_interval(false))
        pooled = (scores[held] >= threshold).ravel()
        hits = (found == truth) & (best >= threshold)
        print(f"   at {threshold:.2f}: held-out false copies " + ", ".join(
            f"{kind} {r:.4f} [{lo:.4f}, {hi:.4f}]" for kind, (r, (lo, hi)) in rows.items())
              + f"; all kinds {pooled.mean():.4f} {_ci(pooled)} of {pooled.size}; true copies {hits.mean():.3f} "
                f"{_ci(hits)} of {hits.size}")
        result["at"][f"{threshold:.2f}"] = {"kinds": rows, "pooled": float(pooled.mean()), "tpr": float(hits.mean())}
    return result


def _ci(hits: np.ndarray) -> str:
    lo, hi = proportion_interval(hits)
    return f"[{lo:.3f}, {hi:.3f}]"


# ---------------------------------------------------------------- 2. operating points of each rule


def _operating_points(neg: Lists, pos: Lists, truth: np.ndarray) -> dict:
    """True copies at 1 % and 0.1 % false copies per rule, paired against the shipped one."""
    shipped = "shortlist 10 (shipped)"
    rules = {f"shortlist {n}" + (" (shipped)" if n == 10 else ""): (neg.sims[:, :n], pos.sims[:, :n], n)
             for n in SHORTLISTS}
    rules["shortlist 10, no released file"] = (neg.stored[:, :10], pos.stored[:, :10], 10)
    hits, result = {}, {}
    print(f"\n2. true copies at a false-copy rate (threshold on all {len(neg.ids)} non-matching queries)")
    for rate in (0.01, 0.001):
        lines = {}
        for name, (neg_sims, pos_sims, n) in rules.items():
            neg_best = best_of(neg_sims, neg.ids[:, :n])[0]
            threshold = threshold_for_fpr(neg_best, rate)
            best, found = best_of(pos_sims, pos.ids[:, :n])
            hits[name] = (found == truth) & (best >= threshold)
            sourced = (pos.ids[:, :n] == truth[:, None]).any(axis=1)
            false = int((neg_best >= threshold).sum())
            result[f"{name} @ {rate}"] = {"threshold": threshold, "tpr": float(hits[name].mean()), "false": false}
            lines[name] = (f"   {rate:>6.1%} {name:30} threshold {threshold:.4f} ({false} false) true copies "
                           f"{hits[name].mean():.3f} {_ci(hits[name])}; source in the shortlist {sourced.mean():.3f}")
        for name, line in lines.items():
            print(line + ("" if name == shipped else _paired(hits[name], hits[shipped], "shipped")))
        per_edit = hits[shipped].reshape(-1, len(PAPER_EDITS))
        print("     per edit (shipped): " + ", ".join(f"{e} {per_edit[:, j].mean():.2f}"
                                                      for j, e in enumerate(PAPER_EDITS)))
    return result


def _paired(a: np.ndarray, b: np.ndarray, name: str) -> str:
    lo, hi = paired_difference_interval(a, b)
    return f"; minus {name}: {a.mean() - b.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"


# ---------------------------------------------------------------- 3. the alignment as a second signal


def _second_signal(collection: Collection, neg: Lists, pos: Lists, truth: np.ndarray, corpus: Corpus,
                   nonmatching: list[int], draws: list, active: dict[int, Path], seed: int) -> dict:
    """At the shipped rule's 0.1 % threshold: candidates within a margin under it, called copies when they align
    with their original; what that adds in false and in true copies."""
    neg_best, neg_id = best_of(neg.sims[:, :10], neg.ids[:, :10])
    pos_best, pos_id = best_of(pos.sims[:, :10], pos.ids[:, :10])
    threshold = threshold_for_fpr(neg_best, 0.001)
    widest = max(MARGINS)
    originals: dict[int, np.ndarray] = {}
    ids = sorted(active)

    def aligned(query: np.ndarray, image_id: int) -> bool:
        if image_id not in originals:
            originals[image_id] = collection.original_image(collection.catalog.get([image_id])[image_id])
        return align(query, originals[image_id]).evidence is not None

    kinds = len(DEFAULT_KINDS)
    neg_band = np.flatnonzero((neg_best >= threshold - widest) & (neg_best < threshold))
    neg_ok = {}
    for row in neg_band:
        photo, kind = divmod(int(row), kinds)
        edit, edit_seed = draws[photo][kind]
        image = load_image(corpus.root / corpus.images[nonmatching[photo]].file)
        neg_ok[int(row)] = aligned(apply_edit(edit, image, edit_seed), int(neg_id[row]))
    pos_band = np.flatnonzero((pos_best >= threshold - widest) & (pos_best < threshold) & (pos_id == truth))
    pos_ok = {}
    for row in pos_band:
        j, e = divmod(int(row), len(PAPER_EDITS))
        pos_ok[int(row)] = aligned(_copy(load_image(active[ids[j]]), j, e, seed), int(pos_id[row]))
    base = (pos_id == truth) & (pos_best >= threshold)
    print(f"\n3. alignment as a second signal under the 0.1 % threshold {threshold:.4f}: "
          f"{int((neg_best >= threshold).sum())} false copies, true copies {base.mean():.3f} {_ci(base)}")
    result = {"threshold": threshold, "margins": {}}
    for margin in MARGINS:
        false_added = sum(ok for row, ok in neg_ok.items() if neg_best[row] >= threshold - margin)
        in_band = sum(1 for row in neg_ok if neg_best[row] >= threshold - margin)
        extra = np.zeros(len(truth), bool)
        extra[[row for row, ok in pos_ok.items() if ok and pos_best[row] >= threshold - margin]] = True
        hits = base | extra
        print(f"   margin {margin:.2f}: non-matching in the band {in_band}, aligned (false copies added) "
              f"{false_added}; copies in the band {sum(1 for r in pos_ok if pos_best[r] >= threshold - margin)}, "
              f"aligned {int(extra.sum())}; true copies {hits.mean():.3f} {_ci(hits)}{_paired(hits, base, 'without')}")
        result["margins"][str(margin)] = {"false_added": int(false_added), "true_added": int(extra.sum()),
                                          "tpr": float(hits.mean())}
    return result


if __name__ == "__main__":
    main()
