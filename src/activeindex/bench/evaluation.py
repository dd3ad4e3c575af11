"""The passive-vs-active experiment of METHOD.md section 5, over several index types, on a corpus.

For each factory string: train the codec on the corpus's training split (plus documented
augmentations), index the distractors and the ORIGINAL descriptors of the images to activate, activate
them (files cached under the output folder, keyed by codec fingerprint and settings), then query edited
copies of the originals (passive) and of the activated files (active). Results: R@1 / R@10 and IVF cell
agreement per edit, robustness curves per sweep, copy-detection uAP with non-matching queries, quality.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..activation import ActivationConfig, Activator, get_preset
from ..codec import MIN_POINTS_PER_CENTROID, Codec, search, set_nprobe
from ..errors import InvalidInputError
from ..extractor import Extractor
from ..imageio import load_image, save_png
from ..perceptual import quality
from ..progress import progress_bar
from .corpus import Corpus
from .edits import FIXED_EDITS, PAPER_EDITS, SWEEPS, apply_edit, sweep
from .metrics import cell_agreement, micro_ap, recall_at_k
from .report import write_report

__all__ = ["BenchmarkConfig", "run_benchmark", "choose_nlist", "simulated_distractors"]

logger = logging.getLogger(__name__)

DISTRACTOR_IDS, SIMULATED_IDS = 1_000_000, 10_000_000  # id ranges; activated images are 0..n-1


@dataclass
class BenchmarkConfig:
    """What `run_benchmark` measures. ``{nlist}`` in a factory string is replaced by `choose_nlist`."""

    corpus: str = "data/corpus"
    out: str = "bench-output"
    factories: list[str] = field(default_factory=lambda: ["IVF{nlist},PQ8x8", "IVF{nlist},Flat",
                                                          "OPQ8,PQ8x8", "PCA64,LSH"])
    nlist: int | None = None  # None: the largest power of two with >= 39 training vectors per cell
    nprobe: int = 1
    k: int = 100
    edits: list[str] = field(default_factory=lambda: list(FIXED_EDITS))
    sweeps: list[str] = field(default_factory=lambda: ["rotation", "center_crop", "jpeg"])
    preset: str = "default"
    iterations: int | None = None  # override the preset's
    n_activate: int | None = None  # None: the whole activate split
    simulated_distractors: int = 0  # synthetic descriptors added to every index (labelled SIMULATED)
    simulated_train: int = 0  # synthetic training vectors, for nlist beyond what real data trains (e.g. 4096)
    seed: int = 0
    device: str | None = None

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

    def activation(self) -> ActivationConfig:
        config = get_preset(self.preset)
        return dataclasses.replace(config, iterations=self.iterations) if self.iterations else config


def choose_nlist(n_train: int) -> int:
    """The largest power of two with at least 39 training vectors per cell (METHOD.md section 5)."""
    return max(1, 2 ** math.floor(math.log2(max(1, n_train // MIN_POINTS_PER_CENTROID))))


def simulated_distractors(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n synthetic descriptors ~ N(mean, covariance) of real descriptors, L2-normalised.

    A Gaussian with the real second-order statistics fills the descriptor space with the same density
    profile along every principal direction, which is what cell assignment and PQ codes see; it has none
    of the real distribution's clusters, so it makes the index more crowded, not more confusing.
    """
    if n == 0:
        return np.zeros((0, real.shape[1]), np.float32)
    rng = np.random.default_rng(seed)
    mean, cov = real.mean(0), np.cov(real, rowvar=False)
    x = rng.multivariate_normal(mean, cov, size=n, method="eigh").astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _Cache:
    """Arrays cached as .npy under the output folder, keyed by a readable name and a content hash."""

    def __init__(self, root: Path):
        self.root = root / "cache"
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, key: str, compute) -> np.ndarray:
        path = self.root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
        if path.exists():
            return np.load(path)
        value = compute()
        np.save(path, value)
        return value


def _queries(name: str) -> list[tuple[str, str, float | None]]:
    """(label, edit name or sweep family, sweep value) for a fixed edit or a sweep family."""
    if name in SWEEPS:
        return [(f"{name}@{v:g}", name, v) for v, _ in sweep(name)]
    return [(name, name, None)]


def _edited(paths: list[Path], edit: str, value: float | None, seed: int) -> list[np.ndarray]:
    """The edited copies of each file (seeded per image): a named edit, or one value of a sweep."""
    if value is None:
        return [apply_edit(edit, load_image(path), seed=seed + i) for i, path in enumerate(paths)]
    swept = dict(sweep(edit))[value]
    return [swept(load_image(path), np.random.default_rng(seed + i)) for i, path in enumerate(paths)]


def run_benchmark(config: BenchmarkConfig, progress: bool | None = None) -> dict:
    """Run the experiment; write results.json, results.csv and report.html under ``config.out``.

    Returns:
        the results dictionary (also in results.json).
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(config.corpus)
    extractor = Extractor(device=config.device)
    cache = _Cache(out)
    originals, x_orig = corpus.split("activate")
    if config.n_activate:
        originals, x_orig = originals[:config.n_activate], x_orig[:config.n_activate]
    _, x_dist = corpus.split("distractors")
    nonmatching, _ = corpus.split("nonmatching")
    x_train = _training_vectors(corpus, extractor, cache)
    real = np.concatenate([x_train, x_dist])
    x_sim = simulated_distractors(real, config.simulated_distractors, config.seed)
    x_train = np.concatenate([x_train, simulated_distractors(real, config.simulated_train, config.seed + 1)])
    nlist = config.nlist or choose_nlist(len(x_train))
    setup = {"train": len(x_train), "references_real": len(x_dist), "activated": len(originals),
             "nonmatching": len(nonmatching), "simulated_distractors": len(x_sim),
             "simulated_train": config.simulated_train, "nlist": nlist,
             "nprobe": config.nprobe, "k": config.k, "preset": config.preset,
             "activation": config.activation().to_dict(), "config": dataclasses.asdict(config)}
    logger.info("benchmark: %s", {k: v for k, v in setup.items() if k not in ("activation", "config")})
    labels = [q for name in config.edits + config.sweeps for q in _queries(name)]
    passive = {}
    for label, edit, value in _bar(labels, "passive queries", progress):
        passive[label] = _encode_edits(cache, extractor, originals, "passive", label, edit, value, config.seed)
    negatives = _encode_edits(cache, extractor, nonmatching, "nonmatching", "auto", "auto", None, config.seed + 7)
    results = {"setup": setup, "indexes": []}
    for factory in config.factories:
        results["indexes"].append(_run_index(factory.format(nlist=nlist), config, extractor, cache, x_train,
                                             originals, x_orig, x_dist, x_sim, labels, passive, negatives, out,
                                             progress))
        _write_results(out, results)
    write_report(results, out)
    return results


def _bar(items: list, desc: str, progress: bool | None):
    """Iterate with a progress bar (one step per item)."""
    bar = progress_bar(len(items), desc, progress)
    for item in items:
        yield item
        bar.update(1)
    bar.close()


def _training_vectors(corpus: Corpus, extractor: Extractor, cache: _Cache) -> np.ndarray:
    """The training split plus two augmentations per image (mirror, centre crop keeping 64% of the area):
    ~1k real photos would train k-means with too few vectors per centroid otherwise."""
    paths, x = corpus.split("train")

    def augment() -> np.ndarray:
        vectors = []
        for path in paths:  # one image at a time: the set need not fit in memory
            image = load_image(path)
            h, w = image.shape[:2]
            vectors.append(extractor.encode_arrays([np.ascontiguousarray(image[:, ::-1]),
                                                    image[h // 10: h - h // 10, w // 10: w - w // 10]]))
        return np.concatenate(vectors)

    key = "|".join(str(p) for p in paths)
    return np.concatenate([x, cache.get("train-augmented", key, augment)])


def _encode_edits(cache: _Cache, extractor: Extractor, paths: list[Path], kind: str, label: str, edit: str,
                  value: float | None, seed: int) -> np.ndarray:
    key = "|".join(str(p) for p in paths) + f"|{label}|{seed}"
    return cache.get(f"{kind}-{label}", key, lambda: extractor.encode_arrays(_edited(paths, edit, value, seed)))


def _run_index(factory, config, extractor, cache, x_train, originals, x_orig, x_dist, x_sim, labels, passive,
               negatives, out, progress) -> dict:
    """One index type: train, activate (cached files), query passive and active copies, measure."""
    logger.info("index %s", factory)
    codec = Codec.create(factory, extractor.dim)
    codec.train(x_train)
    activated = _activate(codec, extractor, config, originals, out, progress)
    index = codec.empty_index()
    set_nprobe(index, config.nprobe)
    index.add_with_ids(x_dist, DISTRACTOR_IDS + np.arange(len(x_dist)))
    index.add_with_ids(x_orig, np.arange(len(x_orig)))
    if len(x_sim):
        index.add_with_ids(x_sim, SIMULATED_IDS + np.arange(len(x_sim)))
    gt = np.arange(len(originals))
    cells = codec.cells(x_orig)
    fingerprint = codec.fingerprint()[:12]
    rows = []
    for label, edit, value in _bar(labels, f"{factory} queries", progress):
        active = _encode_edits(cache, extractor, activated, f"active-{fingerprint}", label, edit, value, config.seed)
        for mode, queries in (("passive", passive[label]), ("active", active)):
            _, ids = search(index, queries, config.k)
            rows.append({"edit": label, "mode": mode, "r1": recall_at_k(ids, gt, 1), "r10": recall_at_k(ids, gt, 10),
                         "cell": cell_agreement(codec.cells(queries), cells) if codec.nlist else None})
    icd = {}
    copies = {"passive": _encode_edits(cache, extractor, originals, "passive", "auto", "auto", None, config.seed),
              "active": _encode_edits(cache, extractor, activated, f"active-{fingerprint}", "auto", "auto", None,
                                      config.seed)}
    qgt = np.concatenate([gt, -np.ones(len(negatives), int)])
    for mode in ("passive", "active"):
        queries = np.concatenate([copies[mode], negatives])
        D, ids = search(index, queries, config.k)
        for normalize in (False, True):
            pr = micro_ap(D, ids, qgt, normalize=normalize)
            icd[f"{mode}{'_normalized' if normalize else ''}"] = {
                "uap": pr.ap, "precision": pr.precision[::max(1, len(pr.precision) // 200)].tolist(),
                "recall": pr.recall[::max(1, len(pr.recall) // 200)].tolist()}
    qualities = [quality(load_image(o), load_image(a)) for o, a in zip(originals, activated)]
    summary = {mode: float(np.mean([r["r1"] for r in rows if r["mode"] == mode and r["edit"] in PAPER_EDITS]))
               for mode in ("passive", "active")}
    return {"factory": factory, "nlist": codec.nlist, "ntotal": int(index.ntotal),
            "vectors_per_cell": index.ntotal / codec.nlist if codec.nlist else None, "fingerprint": fingerprint,
            "r1_paper_average": summary, "edits": rows, "icd": icd, "activated_dir": str(activated[0].parent),
            "quality": {k: [q[k] for q in qualities] for k in ("psnr", "ssim", "linf")}}


def _activate(codec: Codec, extractor: Extractor, config: BenchmarkConfig, originals: list[Path], out: Path,
              progress: bool | None) -> list[Path]:
    """Activated PNGs for this codec, reusing those already written with the same codec and settings."""
    settings = config.activation()
    key = hashlib.sha256((codec.fingerprint() + json.dumps(settings.to_dict())).encode()).hexdigest()[:12]
    folder = out / "activated" / key
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


def _write_results(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1))
    simulated = results["setup"]["simulated_distractors"] + results["setup"]["simulated_train"]
    lines = ["factory,edit,mode,r1,r10,cell,simulated"]
    for index in results["indexes"]:
        for r in index["edits"]:
            cell = "" if r["cell"] is None else f"{r['cell']:.4f}"
            lines.append(f"{index['factory']},{r['edit']},{r['mode']},{r['r1']:.4f},{r['r10']:.4f},{cell},"
                         f"{'SIMULATED' if simulated else ''}")
    (out / "results.csv").write_text("\n".join(lines) + "\n")
