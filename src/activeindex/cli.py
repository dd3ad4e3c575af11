"""The ``activeindex`` command line: parses arguments, calls the library, formats the answer.

Data goes to stdout (a table, or JSON with ``--json``); progress bars, warnings and errors to stderr.
Exit codes: 0 success, 1 an error or any failed file, 2 usage.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .activation import PRESETS, ActivationConfig, get_preset
from .collection import BatchReport, Collection
from .errors import ActiveIndexError, InvalidInputError
from .extractor import Extractor

__all__ = ["main", "build_parser"]

logger = logging.getLogger("activeindex")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one subcommand per verb of the Python API)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    common.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    common.add_argument("--model", default=None, help="descriptor model: 'sscd' (default) or a TorchScript file")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")

    parser = argparse.ArgumentParser(prog="activeindex", description="Image copy detection with active indexing.")
    parser.add_argument("--version", action="version", version=f"activeindex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="create a collection and train its index")
    p.add_argument("collection", help="new collection folder")
    p.add_argument("--factory", required=True, help="faiss factory string, e.g. 'IVF1024,PQ8x8'")
    p.add_argument("--train", required=True, nargs="+", metavar="SRC",
                   help="training images or folders, or one .npy of descriptors (disjoint from what you index)")
    p.add_argument("--nprobe", type=int, default=1, help="IVF cells visited per query (default 1)")

    p = sub.add_parser("add", parents=[common], help="register images as passive references")
    p.add_argument("collection")
    p.add_argument("images", nargs="+", help="image files or folders")

    p = sub.add_parser("activate", parents=[common], help="register and activate images, writing PNGs")
    p.add_argument("collection")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the activated PNGs")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="'default' (PSNR >= 40 dB on real photos) or 'paper' (Fernandez et al.: scaling 3)")
    for f in dataclasses.fields(ActivationConfig):
        if f.type in ("float", "int"):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=float if f.type == "float" else int, default=None,
                           help=f"override the preset's {f.name}")

    p = sub.add_parser("search", parents=[common], help="find the registered images nearest to queries")
    p.add_argument("collection")
    p.add_argument("queries", nargs="+", help="query image files")
    p.add_argument("-k", type=int, default=5, help="results per query (default 5)")

    p = sub.add_parser("info", parents=[common], help="describe a collection")
    p.add_argument("collection")

    p = sub.add_parser("serve", parents=[common], help="serve a collection over HTTP, with a web page")
    p.add_argument("collection")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None,
                   help="bearer token for writes (default: $ACTIVEINDEX_TOKEN); without one, writes are "
                        "enabled only on a loopback address")
    p.add_argument("--threshold", type=float, default=0.4,
                   help="cosine similarity from which the best match is called a copy (default 0.4)")

    p = sub.add_parser("data", parents=[common], help="assemble the real-photo benchmark corpus")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--out", default="data/corpus", help="corpus folder (default data/corpus)")
    p.add_argument("--max-side", type=int, default=512, help="longest side of the stored copies (default 512)")
    p.add_argument("--activate", type=int, default=100, help="images to activate (default 100)")
    p.add_argument("--nonmatching", type=int, default=100, help="non-matching query images (default 100)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("benchmark", parents=[common], help="passive vs active over several indexes, with a report")
    p.add_argument("config", help="TOML file of BenchmarkConfig fields (see benchmarks/default.toml)")
    return parser


def _activation_config(args: argparse.Namespace) -> ActivationConfig:
    """The preset, with any explicitly given field overridden (unset flags keep the preset's value)."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(ActivationConfig)
                 if getattr(args, f.name, None) is not None}
    return dataclasses.replace(get_preset(args.preset), **overrides)


def _open(args: argparse.Namespace) -> Collection:
    return Collection.open(args.collection, model=args.model, device=args.device)


def cmd_init(args: argparse.Namespace) -> dict:
    existed = Path(args.collection).exists()
    collection = Collection.create(args.collection, args.factory, model=args.model or "sscd",
                                   device=args.device, nprobe=args.nprobe)
    source = args.train[0] if len(args.train) == 1 and args.train[0].endswith(".npy") else args.train
    try:
        collection.train(source)
    except BaseException:  # leave nothing half-made behind: the user re-runs the same command
        collection.close()
        if not existed:
            shutil.rmtree(args.collection, ignore_errors=True)
        raise
    return collection.info()


def cmd_add(args: argparse.Namespace) -> BatchReport:
    return _open(args).add(args.images)


def cmd_activate(args: argparse.Namespace) -> BatchReport:
    return _open(args).activate(args.images, args.out, config=_activation_config(args))


def cmd_search(args: argparse.Namespace) -> list[dict]:
    results = _open(args).search(args.queries, k=args.k)
    return [{"query": q, "matches": [m.to_dict() for m in matches]} for q, matches in zip(args.queries, results)]


def cmd_info(args: argparse.Namespace) -> dict:
    return _open(args).info()


def cmd_serve(args: argparse.Namespace) -> dict:
    import ipaddress
    import os

    import uvicorn

    from .service import ServiceConfig, create_app

    token = args.token or os.environ.get("ACTIVEINDEX_TOKEN")
    loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    if token is None and not loopback:
        raise InvalidInputError(f"refusing to serve writes on {args.host} without a token: pass --token or set "
                                "ACTIVEINDEX_TOKEN (or bind to 127.0.0.1)")
    if token is None:
        token = secrets.token_urlsafe(16)
        logger.warning("no token given: writes need this one-time token: %s", token)
    app = create_app(_open(args), ServiceConfig(token=token, threshold=args.threshold))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return {}


def cmd_data(args: argparse.Namespace) -> dict:
    from .corpus import fetch_corpus

    corpus = fetch_corpus(args.out, max_side=args.max_side, n_activate=args.activate,
                          n_nonmatching=args.nonmatching, seed=args.seed, extractor=Extractor(device=args.device))
    return {"path": str(corpus.root), "seed": args.seed, **corpus.manifest["counts"]}


def cmd_benchmark(args: argparse.Namespace) -> dict:
    from .evaluation import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig.from_toml(args.config)
    if args.device:
        config.device = args.device
    results = run_benchmark(config)
    return {"out": config.out, "setup": {k: v for k, v in results["setup"].items() if k != "config"},
            "indexes": [{"factory": i["factory"], "r1_paper_average": i["r1_paper_average"],
                         "uap_normalized": {m: i["icd"][f"{m}_normalized"]["uap"] for m in ("passive", "active")},
                         "psnr": sum(i["quality"]["psnr"]) / len(i["quality"]["psnr"])}
                        for i in results["indexes"]]}


def _print_benchmark(summary: dict) -> None:
    print(f"{'index':22} {'R@1 passive':>11} {'R@1 active':>10} {'uAP passive':>11} {'uAP active':>10} "
          f"{'PSNR dB':>8}")
    for i in summary["indexes"]:
        r1, uap = i["r1_paper_average"], i["uap_normalized"]
        print(f"{i['factory']:22} {r1['passive']:11.3f} {r1['active']:10.3f} {uap['passive']:11.3f} "
              f"{uap['active']:10.3f} {i['psnr']:8.2f}")
    setup = summary["setup"]
    if setup["simulated_distractors"] or setup["simulated_train"]:
        print(f"SIMULATED SCALE: {setup['simulated_distractors']} synthetic distractors, "
              f"{setup['simulated_train']} synthetic training vectors")
    print(f"report: {summary['out']}/report.html")


def _print_dict(data: dict) -> None:
    print(json.dumps(data, indent=2, default=str))


def _print_info(info: dict) -> None:
    keys = ["path", "factory", "nlist", "nprobe", "train_size", "images", "active", "passive", "ntotal",
            "codec_fingerprint", "device"]
    for key in keys:
        print(f"{key:18} {info.get(key)}")
    print(f"{'model':18} {info['model']['name']} (sha256 {info['model']['sha256'][:12]}...)")


def _print_report(report: BatchReport) -> None:
    for r in report.records:
        if r.kind == "active":
            cell = "" if r.same_cell is None else f"  cell {'yes' if r.same_cell else 'no '}"
            print(f"{r.id:>6}  {r.activated_path}  PSNR {r.psnr:5.2f} dB  SSIM {r.ssim:.4f}  L-inf {r.linf:3d}  "
                  f"cos {r.cos_before:.3f} -> {r.cos_after:.3f}{cell}  code {'yes' if r.same_code else 'no'}")
        else:
            print(f"{r.id:>6}  {r.original_path}")


def _print_search(results: list[dict]) -> None:
    for result in results:
        print(result["query"])
        for rank, m in enumerate(result["matches"], 1):
            print(f"  {rank:>3}. id {m['id']:<6} similarity {m['similarity']:.3f}  distance {m['distance']:.4f}  "
                  f"{m['original_path']}")


COMMANDS = {"init": (cmd_init, _print_info), "add": (cmd_add, _print_report),
            "activate": (cmd_activate, _print_report), "search": (cmd_search, _print_search),
            "info": (cmd_info, _print_info), "data": (cmd_data, _print_dict), "serve": (cmd_serve, lambda r: None),
            "benchmark": (cmd_benchmark, _print_benchmark)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    command, show = COMMANDS[args.command]
    try:
        result = command(args)
    except ActiveIndexError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        data = result.to_dict() if isinstance(result, BatchReport) else result
        print(json.dumps(data, indent=2, default=str))
    else:
        show(result)
    return _summarise(result) if isinstance(result, BatchReport) else 0


def _summarise(report: BatchReport) -> int:
    """Failures one line each, then a summary on stderr; 1 if anything failed."""
    for _, error in report.failed:  # the error names the file
        print(f"error: {error}", file=sys.stderr)
    for path, reason in report.skipped:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    print(f"{len(report.records)} registered, {len(report.skipped)} skipped, {len(report.failed)} failed",
          file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
