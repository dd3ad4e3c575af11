"""The passive-vs-active experiment of METHOD.md section 5, over index types and numbers of cells.

Setup, all seeded: a random subset of the images to activate and of the non-matching images (never a
file-order prefix); training vectors = the training photos plus random crops of them (`train_vectors` in
all); references = the distractor photos plus random crops of them (`distractor_crops`), each crop a
distinct reference. For each factory string and each nlist it can train: train the codec, index the
references and the ORIGINAL descriptors of the images to activate, activate them (files cached by codec
fingerprint and settings), then query edited copies of the originals (passive) and of the activated files
(active). Results: R@1 / R@10 and IVF cell agreement per edit, robustness curves per sweep, copy-detection
uAP (plain and normalised) with non-matching queries, quality, and a 95 % bootstrap interval (queries
resampled) for every figure and every active-minus-passive difference. Once per run, on the same passive
queries and references, two baselines (`baselines`): PDQ hashes and exact search over the uncompressed
descriptors. Optionally: other presets activated beside the main one (``compare``, e.g. the edit-aware
"robust"; each its own rows and its paired difference with "active"), every preset to one PSNR floor
(``psnr``, so they are compared at equal quality), and R@1 under edits against PSNR at several scalings.

Above ~400 lines: the runner is one experiment whose steps (sample, train, index, activate, query,
score) share the run's caches and seeds; each step is a short function, in the order it runs.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from ..activation import ActivationConfig, Activator, get_preset
from ..codec import MIN_POINTS_PER_CENTROID, TARGET_KINDS, Codec, search, set_nprobe
from ..edits import AUTO_DEVIATIONS, FIXED_EDITS, PAPER_EDITS, SWEEPS, apply_edit, random_resized_crop, sweep
from ..errors import InvalidInputError
from ..extractor import Extractor
from ..imageio import load_image, save_png, write_atomically
from ..perceptual import quality
from ..progress import progress_bar
from ..release import Release
from ..views import NO_VIEWS, ViewSet, get_view_set
from .baselines import BASELINES, PDQ_VERSION, exact_index, pdq_hashes, pdq_nearest
from .corpus import open_corpus, save_atomic
from .metrics import (
    OperatingPoint,
    cell_agreement,
    hits_at_k,
    list_lengths,
    mean_interval,
    micro_ap,
    operating_point,
    paired_difference_interval,
    proportion_interval,
    recall_at_k,
    uap_difference_interval,
    uap_interval,
)
from .operating import RATES, Stored, decisions
from .report import write_report
from .views import SUFFIX as VIEWS_SUFFIX
from .views import query_times, search_images, view_index, view_vectors

__all__ = ["BenchmarkConfig", "BenchmarkData", "run_benchmark", "prepare", "build_index", "seeds", "sample",
           "STREAMS", "MODES"]

logger = logging.getLogger(__name__)

DISTRACTOR_IDS = 1_000_000  # id range of the references; activated images are 0..n-1
# independent random streams (numpy SeedSequence spawn keys): no two uses share a draw
STREAMS = {"activate": 0, "nonmatching": 1, "train_crops": 2, "distractor_crops": 3, "matching_edits": 4,
           "nonmatching_edits": 5, "decision_edits": 6}
MODES = ("passive", "active")


@dataclass
class BenchmarkConfig:
    """What `run_benchmark` measures (``benchmarks/default.toml`` documents each choice)."""

    corpus: str = "data/corpus"  # ours (`activeindex data fetch`), or a DISC21 / Copydays folder
    out: str = "bench-output"
    cache: str | None = None  # descriptors and activated files, reusable across configs (default OUT/cache)
    # "FACTORY" or "FACTORY:TARGET" (TARGET one of codec.TARGET_KINDS); "{nlist}" runs at each of `nlists`
    factories: list[str] = field(default_factory=lambda: ["IVF{nlist},PQ8x8", "IVF{nlist},Flat"])
    nlists: list[int] = field(default_factory=lambda: [64, 256, 1024])  # skipped below 39 vectors per cell
    nprobe: int = 1
    k: int = 100
    edits: list[str] = field(default_factory=lambda: list(FIXED_EDITS))
    sweeps: list[str] = field(default_factory=lambda: ["rotation", "center_crop", "jpeg"])
    preset: str = "default"
    compare: list[str] = field(default_factory=list)  # presets activated beside `preset`, rows named after them
    # the main preset's activated files released in these formats ("jpeg:90", "webp:90"): the files a desk
    # publishes; each is queried like the PNG and gets its own rows ("JPEG 90") and its difference with it
    publish: list[str] = field(default_factory=list)
    psnr: float | None = None  # every preset activated to this PSNR floor (equal quality) instead of its scaling
    iterations: int | None = None  # override the presets'
    scalings: list[float] = field(default_factory=list)  # extra scalings for the R@1-vs-PSNR curve
    # named overrides of the main preset's settings ({"lr 0.3" = {lr = 0.3}}), on the same curve, each with its
    # paired difference from the main preset: the sweep that chooses a default by gain per dB
    variants: dict[str, dict] = field(default_factory=dict)
    n_activate: int = 64  # a seeded random subset of the activate split
    n_nonmatching: int | None = None  # None: the whole non-matching split
    train_vectors: int = 10_000  # training photos + random crops of them, in all
    distractor_crops: int = 10_000  # random crops of the distractor photos, each indexed as a reference
    bootstrap: int = 1000  # resamples for the 95 % intervals
    seed: int = 0
    device: str | None = None
    # a view set (views.py) indexed beside each original and distractor photo: rows "MODE, views", paired per
    # image with "MODE" in the same run (bench/views.py); "none": no such rows
    views: str = "none"
    # the copy decisions' non-matching queries (bench/operating.py): the photos of these splits, never indexed,
    # each under each of these edits (a DISC21 corpus: its non-matching queries as they are)
    decision_splits: list[str] = field(default_factory=lambda: ["nonmatching", "train"])
    decision_edits: list[str] = field(default_factory=lambda: list(PAPER_EDITS))

    def __post_init__(self) -> None:
        for spec in self.factories:
            _, _, target = spec.partition(":")
            if target and target not in TARGET_KINDS:
                raise InvalidInputError(f"factory {spec!r}: unknown target {target!r}; choose one of {TARGET_KINDS}")
        if self.n_activate < 1 or self.train_vectors < 0 or self.distractor_crops < 0 or self.bootstrap < 1:
            raise InvalidInputError("n_activate and bootstrap must be >= 1, train_vectors and distractor_crops >= 0")
        clashes = {self.preset, *MODES} & set(self.compare)
        if clashes or len(set(self.compare)) < len(self.compare):
            raise InvalidInputError(f"compare: {self.compare} must name distinct presets other than {self.preset!r}")
        if self.psnr is not None and self.scalings:
            raise InvalidInputError("psnr sets every image's scaling: it cannot be combined with scalings")
        get_view_set(self.views)  # an unknown view set fails here
        if set(self.decision_splits) - {"nonmatching", "train"} or not self.decision_splits:
            raise InvalidInputError(f"decision_splits: {self.decision_splits} must name 'nonmatching' and/or 'train' "
                                    "(photos never indexed)")
        self.releases()  # a bad FORMAT:QUALITY fails here
        self.activation()  # an unknown preset or an invalid psnr fails here, before any work
        for preset in self.compare:
            self.activation(preset=preset)
        for name in self.variants:
            self.variant(name)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> BenchmarkConfig:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidInputError(f"{path}: unreadable benchmark config ({e})") from e
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InvalidInputError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)

    def activation(self, scaling: float | None = None, target: str = "index",
                   preset: str | None = None) -> ActivationConfig:
        """``preset`` (default: the main one) with this run's target, iterations, PSNR floor or scaling."""
        config = dataclasses.replace(get_preset(preset or self.preset), target=target, psnr=self.psnr)
        if self.iterations:
            config = dataclasses.replace(config, iterations=self.iterations)
        return dataclasses.replace(config, scaling=scaling) if scaling else config

    def variant(self, name: str, target: str = "index") -> ActivationConfig:
        """The main preset's settings with the overrides of ``variants[name]``."""
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.variants[name].items()}
        unknown = set(overrides) - {f.name for f in dataclasses.fields(ActivationConfig)}
        if unknown:
            raise InvalidInputError(f"variants.{name}: unknown settings {sorted(unknown)}")
        return dataclasses.replace(self.activation(target=target), **overrides)

    def releases(self) -> dict[str, Release]:
        """Mode ("JPEG 90") -> the release of each `publish` entry ("jpeg:90")."""
        releases = {}
        for spec in self.publish:
            fmt, _, quality = spec.partition(":")
            lossy_ok = quality.isdigit() and 1 <= int(quality) <= 100
            if fmt not in ("jpeg", "webp", "png") or not (fmt == "png" or lossy_ok):
                raise InvalidInputError(f"publish: {spec!r} is not FORMAT:QUALITY (jpeg:90, webp:90, png)")
            releases[f"{fmt.upper()} {quality}".strip()] = Release(fmt, int(quality) if quality else None)
        return releases

    def activations(self, target: str = "index") -> dict[str, ActivationConfig]:
        """Mode -> settings: "active" (the main preset), then each compared preset under its own name."""
        return {"active": self.activation(target=target)} | {p: self.activation(target=target, preset=p)
                                                             for p in self.compare}


def seeds(seed: int, stream: str, n: int) -> list[np.random.SeedSequence]:
    """n independent seeds of one named stream (`STREAMS`): item i of stream s is spawn key (s, i)."""
    return [np.random.SeedSequence(seed, spawn_key=(STREAMS[stream], i)) for i in range(n)]


def sample(n_items: int, n: int | None, seed: int, stream: str) -> np.ndarray:
    """Sorted indices of a seeded random subset of n of n_items (all of them when n is None or larger)."""
    if n is None or n >= n_items:
        return np.arange(n_items)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAMS[stream],)))
    return np.sort(rng.choice(n_items, n, replace=False))


class _Cache:
    """Arrays cached as .npy, keyed by a readable name and a content hash."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
        if path.exists():
            return np.load(path)
        value = compute()
        save_atomic(path, value)  # an interrupted run leaves no half-written array
        return value


@dataclass
class BenchmarkData:
    """The fixed inputs every index run shares (`prepare`)."""

    originals: list[Path]
    x_orig: np.ndarray
    x_train: np.ndarray
    x_refs: np.ndarray  # the distractor photos' descriptors, then their crops'
    distractors: list[Path]  # the distractor photos (their crops are drawn again for PDQ, `_crops`)
    labels: list[tuple[str, str, float | None]]
    passive: dict[str, np.ndarray]  # label -> (n, d) descriptors of the edited originals
    negatives: np.ndarray  # (m, d) non-matching queries
    decision_negatives: np.ndarray  # (m', d) the copy decisions' non-matching queries (`_decision_negatives`)
    nonmatching: list[Path]  # their images: edited by `_edited` ("auto"), or already edited (DISC21)
    nonmatching_edited: bool
    views: ViewSet = NO_VIEWS
    orig_views: np.ndarray | None = None  # (n, V, d): the originals' views, when ``views`` has any
    dist_views: np.ndarray | None = None  # (m, V, d): the distractor photos' (the first m of ``x_refs``)
    view_seconds: dict | None = None  # encoding an image alone and with its views, seconds per image


def run_benchmark(config: BenchmarkConfig, progress: bool | None = None) -> dict:
    """Run the experiment; write results.json, results.csv and report.html under ``config.out``.

    Returns:
        the results dictionary (also in results.json).
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data, setup, extractor = prepare(config, progress)
    cache_root = _cache_root(config)
    cache = _Cache(cache_root / "arrays")  # the same folder as prepare's
    results = {"setup": setup, "baselines": _baselines(config, data, cache, progress), "indexes": []}
    runs, setup["skipped"] = _runs(config, len(data.x_train))
    for spec, factory, target in runs:
        index = _run_index(spec, factory, target, config, extractor, cache, cache_root, data, progress)
        index["edits"] = _with_baselines(index["edits"], results["baselines"])
        results["indexes"].append(index)
        _write_results(out, results)
    if (config.scalings or config.variants) and runs:
        results["scaling_curve"] = _scaling_curve(runs, config, extractor, cache, cache_root, data, progress)
    _write_results(out, results)
    write_report(results, out)
    return results


def _cache_root(config: BenchmarkConfig) -> Path:
    return Path(config.cache) if config.cache else Path(config.out) / "cache"


def prepare(config: BenchmarkConfig, progress: bool | None = None) -> tuple[BenchmarkData, dict, Extractor]:
    """Draw the subsets, build the training vectors and references, encode the passive queries (all cached).

    Returns:
        the shared inputs, the setup description (counts per split and source) and the extractor.
    """
    cache_root = _cache_root(config)
    cache = _Cache(cache_root / "arrays")
    extractor = Extractor(device=config.device)
    corpus = open_corpus(config.corpus, cache_root / "corpus", extractor, progress)
    activate_paths, x_activate = corpus.split("activate")
    chosen = sample(len(activate_paths), config.n_activate, config.seed, "activate")
    originals, x_orig = [activate_paths[i] for i in chosen], x_activate[chosen]
    nonmatching_paths = corpus.paths("nonmatching")
    kept = sample(len(nonmatching_paths), config.n_nonmatching, config.seed, "nonmatching")
    nonmatching = [nonmatching_paths[i] for i in kept]
    train_paths, x_train_photos = corpus.split("train")
    n_train_crops = max(0, config.train_vectors - len(train_paths))
    x_train = np.concatenate([x_train_photos, _crop_vectors(cache, extractor, train_paths, n_train_crops,
                                                            config.seed, "train_crops", progress)])
    dist_paths, x_dist = corpus.split("distractors")
    x_refs = np.concatenate([x_dist, _crop_vectors(cache, extractor, dist_paths, config.distractor_crops,
                                                   config.seed, "distractor_crops", progress)])
    sources = {"activate": _count(corpus.packages("activate"), chosen),
               "nonmatching": _count(corpus.packages("nonmatching"), kept),
               "train": _count(corpus.packages("train")), "distractors": _count(corpus.packages("distractors"))}
    setup = {"corpus": corpus.describe(), "sources": sources,
             "train": {"photos": len(train_paths), "crops": n_train_crops, "total": len(x_train)},
             "references": {"photos": len(dist_paths), "crops": config.distractor_crops, "total": len(x_refs)},
             "activated": len(originals), "nonmatching": len(nonmatching),
             "nonmatching_edited": corpus.nonmatching_edited, "nprobe": config.nprobe, "k": config.k,
             "preset": config.preset, "activation": config.activation().to_dict(), "compare": config.compare,
             "compared_activation": {p: config.activation(preset=p).to_dict() for p in config.compare},
             "bootstrap": config.bootstrap,
             "auto_deviations": AUTO_DEVIATIONS, "config": dataclasses.asdict(config)}
    for split, counts in sources.items():
        logger.info("%s: %d images, %s", split, sum(counts.values()), counts)
    logger.info("training vectors %s; references %s", setup["train"], setup["references"])
    labels = [q for name in config.edits + config.sweeps for q in _queries(name)]
    passive = {label: _encode_edits(cache, extractor, originals, "passive", label, edit, value, config.seed)
               for label, edit, value in _bar(labels, "passive queries", progress)}
    if corpus.nonmatching_edited:  # already edited queries (DISC21): their descriptors are the negatives
        negatives = corpus.split("nonmatching")[1][kept]
    else:
        negatives = _encode_edits(cache, extractor, nonmatching, "nonmatching", "auto", "auto", None, config.seed,
                                  stream="nonmatching_edits")
    decision, setup["decision"] = _decision_negatives(config, corpus, nonmatching, negatives, sources, cache,
                                                      extractor, progress)
    data = BenchmarkData(originals=originals, x_orig=x_orig, x_train=x_train, x_refs=x_refs, distractors=dist_paths,
                         labels=labels, passive=passive, negatives=negatives, decision_negatives=decision,
                         nonmatching=nonmatching, nonmatching_edited=corpus.nonmatching_edited)
    if get_view_set(config.views).views:
        _add_views(data, config, cache, extractor, progress)
        setup["views"] = data.views.to_dict() | {"seconds_per_image": data.view_seconds}
    return data, setup, extractor


def _decision_negatives(config: BenchmarkConfig, corpus, nonmatching: list[Path], negatives: np.ndarray,
                        sources: dict[str, dict[str, int]], cache: _Cache, extractor: Extractor,
                        progress: bool | None) -> tuple[np.ndarray, dict]:
    """The copy decisions' non-matching queries (cached) and where they come from: each photo of
    ``decision_splits`` (the non-matching split's drawn subset) under each of ``decision_edits``; ``sources``:
    the photos per split and package."""
    if corpus.nonmatching_edited:
        return negatives, {"queries": len(negatives), "photos": {"nonmatching": len(negatives)}, "edits": []}
    photos = {split: nonmatching if split == "nonmatching" else corpus.paths(split) for split in config.decision_splits}
    vectors = [_encode_edits(cache, extractor, paths, f"decision-{split}", edit, edit, None, config.seed,
                             stream="decision_edits")
               for split, paths in photos.items() for edit in _bar(config.decision_edits, f"non-matching {split}",
                                                                   progress)]
    packages = sum((Counter(sources[split]) for split in photos), Counter())
    return np.concatenate(vectors), {"queries": sum(map(len, vectors)), "edits": list(config.decision_edits),
                                     "photos": {split: len(paths) for split, paths in photos.items()},
                                     "sources": dict(sorted(packages.items()))}


def _add_views(data: BenchmarkData, config: BenchmarkConfig, cache: _Cache, extractor: Extractor,
               progress: bool | None) -> None:
    """The originals' and the distractor photos' view descriptors (cached) and their encoding time."""
    data.views = get_view_set(config.views)
    version = (data.views.to_dict(), extractor.model_id)
    data.orig_views, orig_seconds = view_vectors(cache.get, _key(data.originals, *version), extractor,
                                                 data.originals, data.views, "originals", progress)
    data.dist_views, dist_seconds = view_vectors(cache.get, _key(data.distractors, *version), extractor,
                                                 data.distractors, data.views, "distractors", progress)
    seconds = (orig_seconds * len(data.originals) + dist_seconds * len(data.distractors)) / (
        len(data.originals) + len(data.distractors))
    data.view_seconds = {"whole": float(seconds[0]), "with_views": float(seconds[1]),
                         "ratio": float(seconds[1] / seconds[0])}


def _count(packages: list[str], chosen: Iterable[int] | None = None) -> dict[str, int]:
    chosen = range(len(packages)) if chosen is None else chosen
    return dict(sorted(Counter(packages[i] for i in chosen).items()))


def _key(paths: list[Path], *extra: object) -> str:
    return "|".join([str(p) for p in paths] + [str(e) for e in extra])


def _runs(config: BenchmarkConfig, n_train: int) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(spec, factory, target) of every index to run, and why any nlist was skipped."""
    runs, skipped = [], []
    for spec in config.factories:
        template, _, target = spec.partition(":")
        if "{nlist}" not in template:
            runs.append((spec, template, target or "index"))
            continue
        for nlist in config.nlists:
            if n_train < MIN_POINTS_PER_CENTROID * nlist:
                skipped.append(f"{template.format(nlist=nlist)}: needs {MIN_POINTS_PER_CENTROID * nlist} training "
                               f"vectors, has {n_train} (raise train_vectors)")
                continue
            runs.append((spec, template.format(nlist=nlist), target or "index"))
    return runs, list(dict.fromkeys(skipped))


def _bar(items: list, desc: str, progress: bool | None):
    """Iterate over edit labels with a progress bar (one step per label)."""
    bar = progress_bar(len(items), desc, progress, unit="edit")
    for item in items:
        yield item
        bar.update(1)
    bar.close()


def _crops(paths: list[Path], n: int, seed: int, stream: str, desc: str,
           progress: bool | None) -> Iterator[list[np.ndarray]]:
    """n random crops (`edits.random_resized_crop`) spread evenly over the photos, seeded, one photo's crops at
    a time (they need not fit in memory): the one draw that the descriptors and the PDQ hashes both use."""
    if n == 0 or not paths:
        return
    per_photo = np.full(len(paths), n // len(paths))
    per_photo[sample(len(paths), n % len(paths), seed, stream)] += 1
    crop = random_resized_crop()
    bar = progress_bar(n, desc, progress)
    for path, count, photo_seed in zip(paths, per_photo, seeds(seed, stream, len(paths))):
        if count:
            image, rng = load_image(path), np.random.default_rng(photo_seed)
            yield [crop(image, rng) for _ in range(count)]
            bar.update(int(count))
    bar.close()


def _crop_vectors(cache: _Cache, extractor: Extractor, paths: list[Path], n: int, seed: int, stream: str,
                  progress: bool | None) -> np.ndarray:
    """Descriptors of the n seeded random crops of the photos (`_crops`)."""

    def compute() -> np.ndarray:
        empty = np.zeros((0, extractor.dim), np.float32)
        crops = _crops(paths, n, seed, stream, stream.replace("_", " "), progress)
        return np.concatenate([empty, *map(extractor.encode_arrays, crops)])

    return cache.get(stream, _key(paths, n, seed, extractor.model_id), compute)


def _queries(name: str) -> list[tuple[str, str, float | None]]:
    """(label, edit name or sweep family, sweep value) for a fixed edit or a sweep family."""
    if name in SWEEPS:
        return [(f"{name}@{v:g}", name, v) for v, _ in sweep(name)]
    return [(name, name, None)]


def _encode_edits(cache: _Cache, extractor: Extractor, paths: list[Path], kind: str, label: str, edit: str,
                  value: float | None, seed: int, stream: str = "matching_edits") -> np.ndarray:
    """Descriptors of one edit of each file (`_edited`)."""

    def compute() -> np.ndarray:
        return extractor.encode_arrays(_edited(paths, edit, value, seed, stream))

    return cache.get(f"{kind}-{label}", _key(paths, label, seed, stream, extractor.model_id), compute)


def _edited(paths: list[Path], edit: str, value: float | None, seed: int,
            stream: str = "matching_edits") -> Iterator[np.ndarray]:
    """One edit of each file; file i draws from seed i of ``stream`` (so the passive and the active copy of an
    image get the same edit, PDQ hashes the copies SSCD encodes, and matching and non-matching queries never
    share draws)."""
    for path, item_seed in zip(paths, seeds(seed, stream, len(paths))):
        image = load_image(path)
        yield (apply_edit(edit, image, item_seed) if value is None
               else dict(sweep(edit))[value](image, np.random.default_rng(item_seed)))


def _run_index(spec: str, factory: str, target: str, config: BenchmarkConfig, extractor: Extractor, cache: _Cache,
               cache_root: Path, data: BenchmarkData, progress: bool | None) -> dict:
    """One index type: train, activate (cached files), query passive and active copies, measure."""
    logger.info("index %s (target %s)", factory, target)
    codec, index = build_index(factory, data, config)
    activated, results = _activate_and_query(codec, index, config.activations(target), config, extractor,
                                             cache, cache_root, data, data.labels, progress)
    gt = np.arange(len(data.originals))
    view_cost, views = None, None
    if data.orig_views is not None:
        view_cost, views = _search_with_views(index, results, data, config)
    stored = Stored(data.x_refs, data.x_orig, DISTRACTOR_IDS, data.dist_views, data.orig_views)
    released = {mode: _encode_edits(cache, extractor, files, "released", "none", "none", None, config.seed)
                for mode, files in activated.items()}  # each activated file's own descriptor, as the catalog keeps it
    decision = decisions(index, views, 1 + len(data.views.views), results, stored, released,
                         data.decision_negatives, gt, [label for label in PAPER_EDITS if label in results])
    rows = _edit_rows(results, gt, codec, data.x_orig, config)
    hits = _paper_hits(results, gt)
    return {"factory": factory, "target": target, "spec": spec, "nlist": codec.nlist, "ntotal": int(index.ntotal),
            "views": view_cost,
            "vectors_per_cell": index.ntotal / codec.nlist if codec.nlist else None,
            "fingerprint": codec.fingerprint()[:12], "r1_paper_average": _paired(hits, config),
            "edits": rows, "icd": _copy_detection(index, results, data, config) if "auto" in results else None,
            "decision": decision,
            "activated_dir": str(activated["active"][0].parent), "originals": [str(p) for p in data.originals],
            "quality": _qualities(data.originals, activated["active"]),
            "bytes": [p.stat().st_size for p in activated["active"]],
            "compared": {mode: {"activated_dir": str(files[0].parent), "quality": _qualities(data.originals, files),
                                "bytes": [p.stat().st_size for p in files]}
                         for mode, files in activated.items() if mode != "active"}}


def _qualities(originals: list[Path], activated: list[Path]) -> dict[str, list[float]]:
    """PSNR, SSIM and L-inf of each activated file against its original."""
    qualities = [quality(load_image(o), load_image(a)) for o, a in zip(originals, activated)]
    return {k: [q[k] for q in qualities] for k in ("psnr", "ssim", "linf")}


def build_index(factory: str, data: BenchmarkData, config: BenchmarkConfig) -> tuple[Codec, faiss.Index]:
    """The trained codec and its index holding the references and the ORIGINAL descriptors (ids 0..n-1)."""
    codec = Codec.create(factory, data.x_orig.shape[1])
    codec.train(data.x_train)
    index = codec.empty_index()
    set_nprobe(index, config.nprobe)
    index.add_with_ids(data.x_refs, DISTRACTOR_IDS + np.arange(len(data.x_refs)))
    index.add_with_ids(data.x_orig, np.arange(len(data.x_orig)))
    return codec, index


def _reference_ids(data: BenchmarkData) -> np.ndarray:
    """The ids `build_index` gives the references and then the originals, in that order."""
    return np.concatenate([DISTRACTOR_IDS + np.arange(len(data.x_refs)), np.arange(len(data.x_orig))])


# ---------------------------------------------------------------- baselines (independent of the index)


def _baselines(config: BenchmarkConfig, data: BenchmarkData, cache: _Cache, progress: bool | None) -> dict:
    """PDQ and exact SSCD search of the passive queries among the same references and originals: nearest-
    neighbour R@1 per edit and over the paper's edits, and the true-copy rate at 1 % false copies, with 95 %
    intervals."""
    gt, ids = np.arange(len(data.originals)), _reference_ids(data)
    references = _pdq_references(config, data, cache, progress)
    pdq = {label: pdq_nearest(_pdq_queries(config, data, cache, label, edit, value), references, ids)
           for label, edit, value in _bar(data.labels, "pdq queries", progress)}
    exact = exact_index(np.concatenate([data.x_refs, data.x_orig]), ids)
    found = {"pdq": pdq, "exact_sscd": {label: search(exact, q, 10) for label, q in data.passive.items()}}
    negatives = {"pdq": pdq_nearest(_pdq_negatives(config, data, cache), references, ids),
                 "exact_sscd": search(exact, data.negatives, 1)}
    baselines = {name: _baseline(found[name], negatives[name], gt, config) | {"references": len(ids)}
                 for name in BASELINES}
    for name in BASELINES:
        logger.info("%s: R@1 over the paper's edits %s", name, baselines[name]["r1_paper_average"])
    return baselines


def _pdq_references(config: BenchmarkConfig, data: BenchmarkData, cache: _Cache,
                    progress: bool | None) -> np.ndarray:
    """PDQ hashes in `_reference_ids` order: the distractor photos, their crops (drawn again), the originals."""
    photos = cache.get("pdq-distractors", _key(data.distractors, PDQ_VERSION),
                       lambda: pdq_hashes(map(load_image, data.distractors)))
    crops = cache.get("pdq-distractor_crops", _key(data.distractors, config.distractor_crops, config.seed,
                                                   PDQ_VERSION), lambda: _pdq_crops(config, data, progress))
    originals = cache.get("pdq-originals", _key(data.originals, PDQ_VERSION),
                          lambda: pdq_hashes(map(load_image, data.originals)))
    return np.concatenate([photos, crops, originals])


def _pdq_crops(config: BenchmarkConfig, data: BenchmarkData, progress: bool | None) -> np.ndarray:
    """PDQ hashes of the distractor crops: the very crops `_crop_vectors` encodes (same stream and seeds)."""
    crops = _crops(data.distractors, config.distractor_crops, config.seed, "distractor_crops", "pdq distractor crops",
                   progress)
    return np.concatenate([pdq_hashes([]), *map(pdq_hashes, crops)])


def _pdq_queries(config: BenchmarkConfig, data: BenchmarkData, cache: _Cache, label: str, edit: str,
                 value: float | None) -> np.ndarray:
    """PDQ hashes of one label's passive queries: the copies `_encode_edits` encodes."""
    return cache.get(f"pdq-passive-{label}", _key(data.originals, label, config.seed, "matching_edits", PDQ_VERSION),
                     lambda: pdq_hashes(_edited(data.originals, edit, value, config.seed)))


def _pdq_negatives(config: BenchmarkConfig, data: BenchmarkData, cache: _Cache) -> np.ndarray:
    """PDQ hashes of the non-matching queries: the copies `prepare` encodes as ``negatives``."""
    def compute() -> np.ndarray:
        if data.nonmatching_edited:
            return pdq_hashes(map(load_image, data.nonmatching))
        return pdq_hashes(_edited(data.nonmatching, "auto", None, config.seed, stream="nonmatching_edits"))

    return cache.get("pdq-nonmatching", _key(data.nonmatching, data.nonmatching_edited, "auto", config.seed,
                                             "nonmatching_edits", PDQ_VERSION), compute)


def _baseline(found: dict[str, tuple[np.ndarray, np.ndarray]], negatives: tuple[np.ndarray, np.ndarray],
              gt: np.ndarray, config: BenchmarkConfig) -> dict:
    """Per edit: R@1 with its interval (R@10 where 10 results were ranked); R@1 over the paper's edits, images
    resampled with all their edits (as `_paired`); the "auto" copies' true-copy rate at 1 % false copies."""
    hits = {label: hits_at_k(I, gt, 1) for label, (_, I) in found.items()}
    edits = {label: {"n": len(gt), "r1": float(h.mean()), "r1_ci": proportion_interval(h),
                     "r10": recall_at_k(found[label][1], gt, 10) if found[label][1].shape[1] >= 10 else None}
             for label, h in hits.items()}
    paper = np.stack([hits[label] for label in PAPER_EDITS if label in hits], 1).astype(float)
    average = {"r1": float(paper.mean()), "ci": mean_interval(paper, config.bootstrap, config.seed),
               "edits": paper.shape[1]}
    detection = _operating_point(*found["auto"], negatives[0], gt) if "auto" in found else None
    return {"edits": edits, "r1_paper_average": average,
            "operating_point": _point_summary(detection) if detection else None}


def _operating_point(D: np.ndarray, I: np.ndarray, nonmatching_D: np.ndarray, gt: np.ndarray) -> OperatingPoint:
    """The true-copy rate at 1 % false copies of top-1 results (``gt`` all matching)."""
    return operating_point(D[:, 0], I[:, 0] == gt, nonmatching_D[:, 0])


def _point_summary(point: OperatingPoint) -> dict:
    return {"rate": point.rate, "ci": proportion_interval(point.true_copies), "threshold": point.threshold,
            "false_copies": point.false_copies, "nonmatching": point.nonmatching}


def _with_baselines(rows: list[dict], baselines: dict) -> list[dict]:
    """An index's per-edit rows, each edit's preceded by the baselines' rows for it (`BASELINES` order)."""
    merged: list[dict] = []
    for row in rows:
        if not merged or merged[-1]["edit"] != row["edit"]:
            merged += [{"edit": row["edit"], "mode": name, **baselines[name]["edits"][row["edit"]], "cell": None}
                       for name in BASELINES]
        merged.append(row)
    return merged


class _Found(NamedTuple):
    """Queries of one edit and mode, and what the index returned for them."""

    queries: np.ndarray  # (n, d)
    D: np.ndarray  # (n, k) distances
    I: np.ndarray  # (n, k) ids


def _activate_and_query(codec, index, settings: dict[str, ActivationConfig], config: BenchmarkConfig, extractor,
                        cache, cache_root, data: BenchmarkData, labels,
                        progress) -> tuple[dict[str, list[Path]], dict[str, dict[str, _Found]]]:
    """Activate with each mode's settings (files cached), then search each label's passive queries and each
    mode's queries."""
    activated = {mode: _activate(codec, extractor, s, data.originals, cache_root, progress)
                 for mode, s in settings.items()}
    keys = {mode: _activation_key(codec, s) for mode, s in settings.items()}
    for mode, release in config.releases().items():  # the main preset's files, as released
        activated[mode] = _publish(activated["active"], release)
        keys[mode] = f"{keys['active']}-{release.format}{release.quality or ''}"
    results = {}
    for label, edit, value in _bar(labels, f"queries, {settings['active'].target} target", progress):
        queries = {"passive": data.passive[label]}
        queries |= {mode: _encode_edits(cache, extractor, files, f"active-{keys[mode]}", label, edit, value,
                                        config.seed) for mode, files in activated.items()}
        results[label] = {mode: _Found(q, *search(index, q, config.k)) for mode, q in queries.items()}
    return activated, results


def _search_with_views(index, results: dict[str, dict[str, _Found]], data: BenchmarkData,
                       config: BenchmarkConfig) -> tuple[dict, faiss.Index]:
    """Add each mode's results in the index with views ("MODE, views"); returns the cost, side by side, and that
    index."""
    n_photos = len(data.dist_views)
    views = view_index(index, [(DISTRACTOR_IDS + np.arange(n_photos), data.dist_views),
                               (np.arange(len(data.originals)), data.orig_views)])
    per_image = 1 + len(data.views.views)
    for by_mode in results.values():
        for mode, found in list(by_mode.items()):
            by_mode[mode + VIEWS_SUFFIX] = _Found(found.queries, *search_images(views, found.queries, config.k,
                                                                                 per_image))
    queries = np.concatenate([by_mode["active"].queries for by_mode in results.values()])
    return {"set": data.views.name, "ntotal": int(views.ntotal), "ntotal_without": int(index.ntotal),
            "encode_seconds": data.view_seconds,
            "query_ms": query_times(index, views, queries, config.k, per_image)}, views


def _differences(modes: Iterable[str]) -> list[tuple[str, str]]:
    """The paired differences reported: active - passive, each compared preset - active, and each mode with
    views - the same mode without."""
    return [("active", "passive")] + [(mode, mode.removesuffix(VIEWS_SUFFIX)) if mode.endswith(VIEWS_SUFFIX)
                                      else (mode, "active") for mode in modes if mode not in MODES]


def _edit_rows(results: dict, gt: np.ndarray, codec: Codec, x_orig: np.ndarray, config: BenchmarkConfig) -> list:
    """Per edit: R@1 (with Wilson intervals), R@10 and cell agreement, per mode and for the paired differences
    (R@1 paired per image, Newcombe's interval; a difference of means for the others)."""
    cells = codec.cells(x_orig) if codec.nlist else None
    rows = []
    for label, by_mode in results.items():
        top1 = {m: hits_at_k(found.I, gt, 1) for m, found in by_mode.items()}
        r10 = {m: recall_at_k(found.I, gt, 10) for m, found in by_mode.items()}
        cell = {m: cell_agreement(codec.cells(found.queries), cells) if codec.nlist else None
                for m, found in by_mode.items()}
        for mode in by_mode:
            rows.append({"edit": label, "mode": mode, "n": len(gt), "r1": float(top1[mode].mean()),
                         "r1_ci": proportion_interval(top1[mode]), "r10": r10[mode],
                         "cell": cell[mode]})
        for a, b in _differences(by_mode):
            diff = top1[a].astype(float) - top1[b]
            rows.append({"edit": label, "mode": f"{a}-{b}", "n": len(gt), "r1": float(diff.mean()),
                         "r1_ci": paired_difference_interval(top1[a], top1[b]), "r10": r10[a] - r10[b],
                         "cell": cell[a] - cell[b] if codec.nlist else None})
    return rows


def _paper_hits(results: dict[str, dict[str, _Found]], gt: np.ndarray) -> dict[str, np.ndarray]:
    """Per mode, the (images, edits) top-1 hits over the paper's edits that were queried."""
    edits = [label for label in PAPER_EDITS if label in results]
    return {m: np.stack([hits_at_k(results[label][m].I, gt, 1) for label in edits], 1) for m in results[edits[0]]}


def _activation_key(codec: Codec, settings: ActivationConfig) -> str:
    """Names the activated files of one codec and settings (their folder, and their queries' cache)."""
    return hashlib.sha256((codec.fingerprint() + json.dumps(settings.to_dict())).encode()).hexdigest()[:12]


def _paired(hits: dict[str, np.ndarray], config: BenchmarkConfig) -> dict:
    """Mean of per-image hit matrices per mode and their paired differences (`_differences`), each with a 95 %
    interval (images resampled, all their edits together)."""
    means = {m: h.astype(float) for m, h in hits.items()} | {f"{a}-{b}": hits[a].astype(float) - hits[b]
                                                              for a, b in _differences(hits)}
    summary: dict = {m: float(v.mean()) for m, v in means.items()}
    summary["ci"] = {m: mean_interval(v, config.bootstrap, config.seed) for m, v in means.items()}
    summary["edits"] = hits["passive"].shape[1]
    return summary


def _copy_detection(index, results: dict, data: BenchmarkData, config: BenchmarkConfig) -> dict:
    """uAP (plain and normalised) of "auto" copies pooled with the non-matching queries, the true-copy rate at
    1 % false copies (its threshold set on the non-matching queries alone), with intervals, and the result-list
    lengths (short nprobe-1 lists inflate the normalised score, METHOD.md section 5)."""
    gt = np.concatenate([np.arange(len(data.originals)), -np.ones(len(data.negatives), int)])
    D_neg, I_neg = search(index, data.negatives, config.k)
    found = {m: (np.concatenate([results["auto"][m].D, D_neg]), np.concatenate([results["auto"][m].I, I_neg]))
             for m in MODES}
    icd = {}
    for normalize in (False, True):
        name = "normalized" if normalize else "plain"
        entry = {}
        for mode in MODES:
            D, I = found[mode]
            pr = micro_ap(D, I, gt, normalize=normalize)
            step = max(1, len(pr.precision) // 200)
            entry[mode] = {"uap": pr.ap, "ci": uap_interval(D, I, gt, normalize, config.bootstrap, config.seed),
                           "precision": pr.precision[::step].tolist(), "recall": pr.recall[::step].tolist()}
        entry["active-passive"] = {
            "uap": entry["active"]["uap"] - entry["passive"]["uap"],
            "ci": uap_difference_interval(*found["active"], *found["passive"], gt, normalize, config.bootstrap,
                                          config.seed)}
        icd[name] = entry
    points = {m: _operating_point(results["auto"][m].D, results["auto"][m].I, D_neg, gt[gt >= 0]) for m in MODES}
    icd["operating_point"] = {m: _point_summary(p) for m, p in points.items()}
    icd["operating_point"]["active-passive"] = {
        "rate": points["active"].rate - points["passive"].rate,
        "ci": paired_difference_interval(points["active"].true_copies, points["passive"].true_copies)}
    lengths = {m: list_lengths(found[m][1]) for m in MODES}
    icd["list_length"] = {m: {"mean": float(v.mean()), "min": int(v.min()), "max": int(v.max())}
                          for m, v in lengths.items()}
    return icd


def _activate(codec: Codec, extractor: Extractor, settings: ActivationConfig, originals: list[Path],
              cache_root: Path, progress: bool | None) -> list[Path]:
    """Activated PNGs for this codec, reusing those already written with the same codec and settings."""
    key = _activation_key(codec, settings)
    folder = cache_root / "activated" / key
    targets = [folder / f"{p.stem}.png" for p in originals]
    todo = [i for i, t in enumerate(targets) if not t.exists()]
    activator = Activator(extractor, codec, settings)
    bar = progress_bar(len(todo), f"activate {key}", progress)
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start:start + settings.batch_size]
        for i, result in zip(chunk, activator.activate([load_image(originals[i]) for i in chunk], progress=False)):
            save_png(targets[i], result.image)
        bar.update(len(chunk))
    bar.close()
    return targets


def _publish(activated: list[Path], release: Release) -> list[Path]:
    """The activated PNGs released in ``release``'s format (cached beside them): what a desk publishes. Without a
    PSNR floor this is the very file `activeindex activate --format` writes (the optimisation does not depend
    on the format)."""
    folder = activated[0].parent.with_name(f"{activated[0].parent.name}-{release.format}{release.quality or ''}")
    targets = [folder / f"{p.stem}{release.extension}" for p in activated]
    for png, target in zip(activated, targets):
        if not target.exists():
            write_atomically(target, lambda f, png=png: f.write(release.encode(load_image(png))))
    return targets


def _scaling_curve(runs: list[tuple[str, str, str]], config: BenchmarkConfig, extractor, cache, cache_root,
                   data: BenchmarkData, progress) -> dict:
    """R@1 over the paper's edits against PSNR, at each scaling and each variant, for the first factory at its
    finest nlist; each point with its cost (network passes per image) and its difference from the main preset,
    paired per image over the same queries."""
    _, factory, target = [run for run in runs if run[0] == runs[0][0]][-1]
    codec, index = build_index(factory, data, config)
    labels = [q for q in data.labels if q[0] in PAPER_EDITS]
    gt = np.arange(len(data.originals))
    default = config.activation().scaling
    settings = {f"s={s:g}": config.activation(s, target) for s in sorted(set(config.scalings) | {default})}
    settings |= {name: config.variant(name, target) for name in config.variants}
    measured = {}
    for name, setting in settings.items():
        activated, results = _activate_and_query(codec, index, {"active": setting}, config, extractor, cache,
                                                 cache_root, data, labels, progress)
        measured[name] = (setting, _paper_hits(results, gt), _qualities(data.originals, activated["active"]))
    reference = measured[f"s={default:g}"][1]["active"].astype(float)
    points = []
    for name, (setting, hits, qualities) in measured.items():
        gain = hits["active"].astype(float) - reference
        points.append({"name": name, "scaling": setting.scaling, "default": name == f"s={default:g}",
                       "variant": name in config.variants, "settings": setting.to_dict(),
                       "passes": setting.iterations * (1 + (setting.edit_draws if setting.edits else 0)),
                       "psnr": float(np.mean(qualities["psnr"])), "psnr_ci": mean_interval(np.array(qualities["psnr"])),
                       "r1": _paired(hits, config),
                       "vs_default": {"r1": float(gain.mean()), "ci": mean_interval(gain, config.bootstrap,
                                                                                   config.seed)}})
    return {"factory": factory, "target": target, "points": points}


def _write_results(out: Path, results: dict) -> None:
    """results.json (everything) and results.csv (one row per index, edit and mode or baseline, with 95 %
    intervals; the baselines' rows, the same for every index, repeated in each index's table)."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    rows = []
    for index in results["indexes"]:
        head = [index["factory"], index["target"], index["nlist"]]
        for r in index["edits"]:
            rows.append([*head, r["edit"], r["mode"], r["n"], r["r1"], *r["r1_ci"], r["r10"], r["cell"]])
        n, avg = len(index["originals"]), index["r1_paper_average"]
        for name in BASELINES:
            base = results["baselines"][name]["r1_paper_average"]
            rows.append([*head, "paper_average", name, n, base["r1"], *base["ci"], None, None])
        rows += [[*head, "paper_average", mode, n, avg[mode], *avg["ci"][mode], None, None] for mode in avg["ci"]]
        n_icd = results["setup"]["activated"] + results["setup"]["nonmatching"]
        for name in ("plain", "normalized") if index["icd"] else ():
            entry = index["icd"][name]
            rows += [[*head, f"uap_{name}", mode, n_icd, entry[mode]["uap"], *entry[mode]["ci"], None, None]
                     for mode in (*MODES, "active-passive")]
        if index["icd"]:  # the paper's comparison: "auto" copies called on the top-1 distance at 1 % false copies
            points = {name: results["baselines"][name]["operating_point"] for name in BASELINES}
            points |= index["icd"]["operating_point"]
            rows += [[*head, "adc_true_copies_at_1pct_false", mode, n, point["rate"], *point["ci"], None, None]
                     for mode, point in points.items()]
        for mode, by_rate in index["decision"]["points"].items():  # the shipped rule, over the paper's edits
            for rate in RATES:
                point = by_rate[str(rate)]
                average = point if "-" in mode else point["paper_average"]
                rows.append([*head, f"true_copies_at_{100 * rate:g}pct_false", mode, n, average["rate"],
                             *average["ci"], None, None])
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["factory", "target", "nlist", "edit", "mode", "n", "r1", "r1_low", "r1_high", "r10", "cell"])
        writer.writerows([_csv_value(v) for v in row] for row in rows)


def _csv_value(value: object) -> object:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else value
