"""Do Gaussian "simulated" distractors change retrieval? (They were removed from the benchmark: they do not.)

A Gaussian with the real descriptors' mean and covariance looks like a way to reach the paper's density
(1M references) from a small corpus. This measures, on the benchmark's own setup (`make bench` caches it),
passive R@1 over the paper's edits with and without N synthetic references, and how close the synthetic
points come to the queries compared with real references.

    python benchmarks/synthetic_distractors.py [--config benchmarks/default.toml] [--n 20000] [--factory ...]
"""
from __future__ import annotations

import argparse

import numpy as np

from activeindex.bench.evaluation import BenchmarkConfig, build_index, prepare
from activeindex.bench.metrics import mean_interval
from activeindex.codec import search
from activeindex.edits import PAPER_EDITS


def gaussian(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n draws of N(mean, covariance) of the real descriptors, L2-normalised like real descriptors."""
    x = np.random.default_rng(seed).multivariate_normal(real.mean(0), np.cov(real, rowvar=False), size=n,
                                                        method="eigh").astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="benchmarks/default.toml")
    parser.add_argument("--n", type=int, default=20_000, help="synthetic references added")
    parser.add_argument("--factory", default="IVF256,PQ8x8")
    args = parser.parse_args()
    config = BenchmarkConfig.from_toml(args.config)
    data, setup, _ = prepare(config, progress=False)
    gt = np.arange(len(data.originals))
    queries = np.concatenate([data.passive[e] for e in PAPER_EDITS])
    synthetic = gaussian(np.concatenate([data.x_train, data.x_refs]), args.n, config.seed)
    print(f"{args.factory}, nprobe {config.nprobe}; {len(data.originals)} originals x {len(PAPER_EDITS)} edits; "
          f"references {setup['references']['total']} real (+{args.n} Gaussian)")
    _, index = build_index(args.factory, data, config)
    hits = {}
    for name in ("real only", f"+{args.n} Gaussian"):
        if name != "real only":
            index.add_with_ids(synthetic, 10_000_000 + np.arange(len(synthetic)))
        _, ids = search(index, queries, 1)
        hits[name] = (ids[:, 0] == np.tile(gt, len(PAPER_EDITS))).reshape(len(PAPER_EDITS), -1).T.astype(float)
        lo, hi = mean_interval(hits[name])
        print(f"  passive R@1 {name:>16}: {hits[name].mean():.3f} [{lo:.3f}, {hi:.3f}]")
    first, second = hits.values()
    print(f"  queries whose top-1 changed: {int((first != second).sum())} of {first.size}")
    nearest_real = (queries @ data.x_refs.T).max(1)
    nearest_synthetic = (queries @ synthetic.T).max(1)
    print(f"  cosine of each query to its nearest reference: real {np.median(nearest_real):.2f}, "
          f"Gaussian {np.median(nearest_synthetic):.2f} (medians)")


if __name__ == "__main__":
    main()
