"""The ``activeindex`` command line: parses arguments, calls the library, formats the answer.

Data goes to stdout (a table, or JSON with ``--json``); progress bars, warnings and errors to stderr.
Exit codes: 0 success, 1 an error or any failed file, 2 usage.

Above ~400 lines: one parser and one short function per verb; side by side they show
the whole command line, and every verb only parses, calls the library and formats.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import math
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ._version import __version__
from .config import (
    DEFAULT_THRESHOLD,
    DEFAULT_VIEWS,
    EDIT_FAMILIES,
    MAX_K,
    OUTPUT_FORMATS,
    PRECISIONS,
    PRESETS,
    TORCH_MODES,
    VIEW_SET_NAMES,
    ActivationConfig,
    get_preset,
)
from .errors import ActiveIndexError, InvalidInputError
from .imageio import ImageLimits, list_images

if TYPE_CHECKING:  # the library (torch, faiss, the model) loads only once the arguments are checked
    from .collection import Collection
    from .ingest import BatchReport
    from .removal import RemovalReport

__all__ = ["main", "build_parser", "int_in", "positive_int", "finite_float"]

logger = logging.getLogger("activeindex")

_QUERIES_PER_BATCH = 64  # query images decoded and searched together (bounds the memory of a long query list)


# ---------------------------------------------------------------- argument types


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (no upper bound when ``hi`` is None).

    Example:
        >>> int_in(1, 1000)("5"), int_in(1, 65535).__name__
        (5, 'integer in 1..65535')
    """
    rule = f"in {lo}..{hi}" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer {rule}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {rule}, got {value}")
        return value

    parse.__name__ = f"integer {rule}"
    return parse


positive_int = int_in(1)
_seed = int_in(0, 2**32 - 1)


def finite_float(above: float | None = None, at_least: float | None = None,
                 at_most: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite float (never NaN or infinite), ``> above``, ``>= at_least``, ``<= at_most``.

    Example:
        >>> finite_float(above=0)("2.5")
        2.5
    """
    limits = [f"{sign} {bound:g}" for sign, bound in ((">", above), (">=", at_least), ("<=", at_most))
              if bound is not None]
    rule = " ".join(["a finite number", " and ".join(limits)]).rstrip()

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if not (math.isfinite(value) and (above is None or value > above)
                and (at_least is None or value >= at_least) and (at_most is None or value <= at_most)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    parse.__name__ = rule
    return parse


_ACTIVATION_TYPES: dict[str, Callable[[str], int | float]] = {  # one per numeric ActivationConfig field
    "scaling": finite_float(above=0), "lambda_mse": finite_float(at_least=0), "lr": finite_float(above=0),
    "iterations": positive_int, "batch_size": positive_int, "seed": _seed, "edit_draws": positive_int,
    "resolution": int_in(0), "coarse_iterations": positive_int, "view_draws": int_in(0),
}


def _edit_families(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated edit families, or 'none'."""
    families = () if text == "none" else tuple(f.strip() for f in text.split(","))
    unknown = set(families) - set(EDIT_FAMILIES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown edit families {sorted(unknown)}; choose from {list(EDIT_FAMILIES)}")
    return families


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one subcommand per verb of the Python API)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    common.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="auto (default), cpu or cuda")
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
    p.add_argument("--nprobe", type=positive_int, default=1, help="IVF cells visited per query (default 1)")
    p.add_argument("--views", choices=VIEW_SET_NAMES, default=DEFAULT_VIEWS,
                   help=f"views of each image indexed beside it, so crops and turns are found (default "
                        f"{DEFAULT_VIEWS}; 'none': the whole image alone; docs/views.md)")

    ray = argparse.ArgumentParser(add_help=False)
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run on Ray: alone, a local Ray on this machine's cores; 'auto' or ray://HOST:10001 for "
                          "a running cluster (every node must see the image and output folders at the same paths)")
    ray.add_argument("--workers", type=positive_int, default=None,
                     help="Ray actors (default: one per GPU, or one per 4 CPUs of the cluster)")

    p = sub.add_parser("add", parents=[common, ray], help="register images as passive references")
    p.add_argument("collection")
    p.add_argument("images", nargs="+", help="image files or folders")

    p = sub.add_parser("activate", parents=[common, ray],
                       help="register and activate images, writing the files to release")
    p.add_argument("collection")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="folder for the released (activated) files")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="'default' (scaling 2: about 41-45 dB PSNR on large photos, lower on small or textured "
                        "ones), 'paper' (Fernandez et al.: scaling 3, about 3 dB lower; exact float32 gradients "
                        "and 10 iterations, about 4x slower on CPU) or 'robust' (edit-aware: also optimised for "
                        "crops and rotations of the image, in 12 smaller steps; 4.5x slower)")
    p.add_argument("--edits", type=_edit_families, default=None, metavar="FAMILY,...",
                   help=f"override the preset's edit families ({','.join(EDIT_FAMILIES)}; 'none': unedited only)")
    p.add_argument("--gradient", choices=TORCH_MODES, default=None,
                   help="override the preset's gradient graph: relu (fast) or ste (exact)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="override the preset's precision of the gradient pass (auto: bfloat16 where faster)")
    p.add_argument("--psnr", type=finite_float(at_least=20, at_most=80), default=None, metavar="DB",
                   help="a quality floor: each image gets the scaling that spends exactly this PSNR, and every "
                        "released file meets it (replaces --scaling)")
    p.add_argument("--format", dest="output", choices=OUTPUT_FORMATS, default=None,
                   help="the released file's format: auto (default: the source's; JPEG stays JPEG at about its "
                        "quality, PNG stays PNG, others become PNG), png, jpeg or webp; the source's EXIF, IPTC, "
                        "XMP and colour profile are kept")
    p.add_argument("--quality", type=int_in(1, 100), default=None, metavar="Q",
                   help="JPEG / WebP quality (default: a JPEG source's estimated quality, else 95)")
    p.add_argument("--c2pa-sign", nargs=2, default=None, metavar=("CERT", "KEY"),
                   help="sign each released file's Content Credentials (C2PA) with this PEM certificate chain "
                        "(leaf first) and PEM private key, the original (and its own credentials) as ingredient")
    _add_c2pa_trust(p, "when the originals' Content Credentials are read for signing (with --c2pa-sign)")
    p.add_argument("--activation-memory", type=finite_float(above=0), default=None, metavar="GB",
                   help="memory an activation batch may use, in GB (default: half the memory available); batches "
                        "are cut to fit, from the images' headers")
    for f in dataclasses.fields(ActivationConfig):
        if f.type in ("float", "int"):
            parse = _ACTIVATION_TYPES[f.name]
            p.add_argument(f"--{f.name.replace('_', '-')}", type=parse, default=None,
                           help=f"override the preset's {f.name} ({parse.__name__})")

    p = sub.add_parser("search", parents=[common],
                       help="is each query a copy of a registered image, and which? (the verdict and the candidates)")
    p.add_argument("collection")
    p.add_argument("queries", nargs="+", help="query image files")
    p.add_argument("-k", type=int_in(1, MAX_K), default=5, help=f"candidates shown per query, 1..{MAX_K} (default 5)")
    p.add_argument("--evidence", nargs="?", const="", default=None, metavar="DIR",
                   help="also show where each copy sits in its source's original (outline, rotation, scale); with "
                        "DIR, write there an overlay PNG per copy (the original outlined, beside the query)")

    p = sub.add_parser("fingerprint", parents=[common],
                       help="print each image's fingerprint as a C2PA soft binding value (base64; no collection)")
    p.add_argument("images", nargs="+", help="image files")

    p = sub.add_parser("remove", parents=[common], help="remove registered images (takedown)")
    p.add_argument("collection")
    p.add_argument("items", nargs="+", metavar="ID_OR_FILE_OR_SHA256",
                   help="image ids, sha256s of original or activated files, or files (matched by content, or by "
                        "the path they were registered from or activated to)")
    p.add_argument("--delete-files", action="store_true",
                   help="also delete their activated files (the originals are never touched)")

    p = sub.add_parser("info", parents=[common], help="describe a collection")
    p.add_argument("collection")

    p = sub.add_parser("views", parents=[common],
                       help="index another view set for every registered image (a collection made without views)")
    p.add_argument("collection")
    p.add_argument("views", choices=VIEW_SET_NAMES, help=f"the view set ({DEFAULT_VIEWS}: the default of new ones)")

    p = sub.add_parser("calibrate", parents=[common],
                       help="choose the copy threshold for a target false-copy rate and store it")
    p.add_argument("collection")
    p.add_argument("nonmatching", nargs="+",
                   help="real photos (files or folders) that are NOT registered: at least 10 / FPR of them")
    p.add_argument("--fpr", type=finite_float(above=0, at_most=0.2), default=0.01,
                   help="the false-copy rate allowed for each kind of query, at most 0.2 (default 0.01)")
    p.add_argument("--matching", type=positive_int, default=100,
                   help="registered images turned into matching queries (default 100)")
    p.add_argument("--edit", action="append", default=None, metavar="NAME",
                   help="query with these edits only, one drawn per query (repeatable; default: unedited, "
                        "photometric, geometric and 'auto' queries, each kind bounded)")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0)

    p = sub.add_parser("serve", parents=[common], help="serve a collection over HTTP, with a web page")
    p.add_argument("collection")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run activation jobs on Ray (as for activate)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int_in(1, 65535), default=8000, help="TCP port (default 8000)")
    p.add_argument("--token", default=None,
                   help="bearer token for writes (default: $ACTIVEINDEX_TOKEN); without one, writes are "
                        "enabled only on a loopback address")
    p.add_argument("--threshold", type=finite_float(at_least=-1, at_most=1), default=None,
                   help="similarity from which the best match is called a copy (default: the collection's "
                        f"calibrated threshold, else the uncalibrated default {DEFAULT_THRESHOLD}); the verdicts then "
                        "say calibrated: false")
    p.add_argument("--public-reads", action="store_true",
                   help="let anyone read records, activated files and jobs (default: the token is needed; the "
                        "thumbnail of a passive reference, never published, always needs it)")
    p.add_argument("--public-metrics", action="store_true", help="let anyone read /metrics (default: the token)")
    p.add_argument("--activation-memory", type=finite_float(above=0), default=4.0, metavar="GB",
                   help="memory an activation batch may use, in GB (default 4: a 64-megapixel photo); images that "
                        "need more are refused (413), batches are cut to fit")
    p.add_argument("--c2pa-sign", nargs=2, default=None, metavar=("CERT", "KEY"),
                   help="sign every released file's Content Credentials (as for activate)")
    _add_c2pa_trust(p, "wherever the server reads Content Credentials: the originals' when it signs")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="a host name clients use to reach the server (repeatable; the Host header is checked "
                        "against them, a guard against DNS rebinding). Default: the loopback names, plus --host")

    p = sub.add_parser("data", parents=[common], help="assemble the real-photo benchmark corpus")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--out", default="data/corpus", help="corpus folder (default data/corpus)")
    p.add_argument("--max-side", type=int_in(ImageLimits().min_side), default=512,
                   help="longest side of the stored copies (default 512)")
    p.add_argument("--activate", type=positive_int, default=100, help="images to activate (default 100)")
    p.add_argument("--nonmatching", type=positive_int, default=100, help="non-matching query images (default 100)")
    p.add_argument("--min-query-side", type=positive_int, default=256,
                   help="images to activate and non-matching ones have a shorter side of at least this (default 256)")
    p.add_argument("--seed", type=_seed, default=0)

    p = sub.add_parser("benchmark", parents=[common], help="passive vs active over several indexes, with a report")
    p.add_argument("config", help="TOML file of BenchmarkConfig fields (see benchmarks/default.toml)")
    return parser


def _activation_config(args: argparse.Namespace) -> ActivationConfig:
    """The preset, with any explicitly given field overridden (unset flags keep the preset's value);
    ``--iterations`` alone sets the steps of large photos (the coarse path) too."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(ActivationConfig)
                 if getattr(args, f.name, None) is not None}
    if "iterations" in overrides:
        overrides.setdefault("coarse_iterations", overrides["iterations"])
    return dataclasses.replace(get_preset(args.preset), **overrides)


def _open(args: argparse.Namespace) -> Collection:
    """Open the collection named on the command line (this loads the descriptor model)."""
    from .collection import Collection

    return Collection.open(args.collection, model=args.model, device=args.device)


def _extractor(device: str | None):
    from .extractor import Extractor

    return Extractor(device=device)


def _require_images(inputs: list[str]) -> None:
    """Refuse inputs that hold no image at all (folders without image files), before the model loads."""
    if not list_images(inputs):
        raise InvalidInputError(f"no image files found in {', '.join(inputs)}")


def _require_out_folder(out: str) -> None:
    """Refuse an ``--out`` that exists and is not a folder, before any activation is computed."""
    if Path(out).exists() and not Path(out).is_dir():
        raise InvalidInputError(f"--out {out}: exists and is not a folder; choose a folder for the activated PNGs")


def cmd_init(args: argparse.Namespace) -> dict:
    """Create a collection and train its index; a failed training leaves no new folder behind."""
    from .collection import Collection

    existed = Path(args.collection).exists()
    collection = Collection.create(args.collection, args.factory, model=args.model or "sscd",
                                   device=args.device, nprobe=args.nprobe, views=args.views)
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
    """Register images as passive references."""
    _require_images(args.images)
    return _open(args).add(args.images, ray=args.ray, workers=args.workers)


def cmd_activate(args: argparse.Namespace) -> BatchReport:
    """Register and activate images; every argument is checked before the model loads."""
    config = _activation_config(args)
    _require_out_folder(args.out)
    _require_images(args.images)
    signing = _signing(args)
    _check_release_tools(signing)
    memory = None if args.activation_memory is None else args.activation_memory * 1e9
    return _open(args).activate(args.images, args.out, config=config, ray=args.ray, workers=args.workers,
                                signing=signing, memory=memory)


def _check_release_tools(signing) -> None:
    """exiftool and the signing material, checked before the model loads (release.check_release_tools)."""
    from .release import check_release_tools

    check_release_tools(signing)


def _add_c2pa_trust(parser: argparse.ArgumentParser, where: str) -> None:
    """--c2pa-trust ANCHORS.pem, on the commands that read or sign Content Credentials (`_trust_anchors`)."""
    parser.add_argument("--c2pa-trust", default=None, metavar="ANCHORS.pem",
                        help="PEM root certificates whose manifests read as trusted (C2PA trust anchors), "
                             f"{where}; without it no signer is trusted")


def _trust_anchors(args: argparse.Namespace) -> Path | None:
    """The file of --c2pa-trust, checked now (PEM certificates), or None."""
    if args.c2pa_trust is None:
        return None
    from .credentials import check_trust_anchors

    return check_trust_anchors(args.c2pa_trust)


def _signing(args: argparse.Namespace):
    """The Content Credentials signing material of --c2pa-sign CERT KEY and --c2pa-trust (files checked now), or
    None; --c2pa-trust alone is refused where only signing reads credentials (``activate``)."""
    if not args.c2pa_sign:
        if args.c2pa_trust is not None and args.command == "activate":
            raise InvalidInputError("--c2pa-trust names the roots trusted when signing reads the originals' "
                                    "Content Credentials: give --c2pa-sign CERT KEY with it")
        return None
    from .credentials import SigningMaterial

    return SigningMaterial.load(*args.c2pa_sign, trust_anchors=_trust_anchors(args))


def cmd_search(args: argparse.Namespace) -> list[dict]:
    """One entry per query, in order: its verdict ``{"query", "is_copy", "threshold", "calibrated", "matches"}``
    (`decision.Verdict.to_dict`; with --evidence, the first match's ``evidence``, ``evidence_reason`` and, with
    DIR, ``overlay``), or ``{"query", "error"}`` for a bad file."""
    overlays = None if not args.evidence else Path(args.evidence)
    if overlays is not None and overlays.exists() and not overlays.is_dir():
        raise InvalidInputError(f"--evidence {overlays}: exists and is not a folder; choose a folder for the overlays")
    collection = _open(args)
    entries: list[dict] = []
    for start in range(0, len(args.queries), _QUERIES_PER_BATCH):
        entries += _search_batch(collection, args.queries[start:start + _QUERIES_PER_BATCH], args.k,
                                 args.evidence is not None, overlays)
    return entries


def _search_batch(collection: Collection, queries: list[str], k: int, evidence: bool,
                  overlays: Path | None) -> list[dict]:
    """Decode each query on its own (a bad file fails alone), then decide on the good ones together."""
    entries, images = [], []
    for query in queries:
        try:
            images.append(collection.extractor.load(query))
            entries.append({"query": query})
        except ActiveIndexError as e:
            entries.append({"query": query, "error": str(e)})
    found = iter(zip(collection.verdicts(images, k=k, evidence=evidence), images) if images else [])
    for entry in entries:
        if "error" not in entry:
            verdict, image = next(found)
            entry |= verdict.to_dict()
            if overlays is not None and verdict.evidence and verdict.evidence.evidence:
                entry["matches"][0]["overlay"] = str(_write_overlay(collection, overlays, entry["query"], verdict,
                                                                    image))
    return entries


def _write_overlay(collection: Collection, folder: Path, query: str, verdict, image) -> Path:
    """``FOLDER/<query's stem>-evidence.png`` (``-2``, ``-3``... when taken): the source's original outlined,
    beside the query."""
    from .evidence import write_overlay

    stem, n = Path(query).stem, 1
    while (path := folder / f"{stem}-evidence{f'-{n}' if n > 1 else ''}.png").exists():
        n += 1
    folder.mkdir(parents=True, exist_ok=True)
    return write_overlay(path, collection.original_image(verdict.match), image, verdict.evidence.evidence)


def cmd_fingerprint(args: argparse.Namespace) -> list[dict]:
    """One entry per image, in order: ``{"image", "alg", "value"}`` (binding.py), or ``{"image", "error"}`` for a
    bad file. No collection: the default model (or --model), on the CPU unless --device says otherwise (the
    alg's reference is onnxruntime on CPU); ``alg`` is null for a model the alg is not defined on."""
    from .binding import ALG, defines, encode_binding
    from .extractor import Extractor

    extractor = Extractor(args.model or "sscd", device=args.device or "cpu")
    alg = ALG if defines(extractor.model_id, extractor.preprocessing.to_dict()) else None
    if alg is None:
        logger.warning("%s is not the model %s is defined on: these values match only a collection built with it",
                       extractor.model.name, ALG)
    entries: list[dict] = []
    for image in args.images:  # one at a time: a bad file fails alone, memory holds one image
        try:
            entries.append({"image": image, "alg": alg,
                            "value": encode_binding(extractor.encode(extractor.load(image), progress=False))})
        except ActiveIndexError as e:
            entries.append({"image": image, "error": str(e)})
    return entries


def cmd_remove(args: argparse.Namespace) -> RemovalReport:
    """Remove registered images: no search returns them from now on, in any process sharing the collection."""
    return _open(args).remove(args.items, delete_files=args.delete_files)


def cmd_info(args: argparse.Namespace) -> dict:
    """The collection's manifest and counts."""
    return _open(args).info()


def cmd_views(args: argparse.Namespace) -> dict:
    """Index a view set for every registered image, from the originals."""
    return _open(args).index_views(args.views)


def _print_views(result: dict) -> None:
    print(f"{result['images']} images indexed with view set {result['views']}")
    for item in result["without_views"]:
        print(f"  without views (original unreadable): {item['error']}")


def cmd_calibrate(args: argparse.Namespace) -> dict:
    """Calibrate the copy threshold on the given non-matching photos and store it; the photos are checked
    (paths, count, image headers) before the model loads."""
    from .calibrate import calibrate, check_nonmatching

    readable = check_nonmatching(args.nonmatching, args.fpr)
    kinds = {"custom": tuple(args.edit)} if args.edit else None
    return calibrate(_open(args), readable, target_fpr=args.fpr, n_matching=args.matching, kinds=kinds,
                     seed=args.seed).to_dict()


def cmd_serve(args: argparse.Namespace) -> dict:
    """Serve the collection over HTTP; the host, the port and the token are checked before the model loads."""
    import os

    import uvicorn

    from .service import ServiceConfig, create_app

    signing, trust_anchors = _signing(args), _trust_anchors(args)
    _check_release_tools(signing)
    addresses = _resolve(args.host, args.port)
    token = args.token or os.environ.get("ACTIVEINDEX_TOKEN")
    if token is None and not all(ipaddress.ip_address(address[0]).is_loopback for _, address in addresses):
        raise InvalidInputError(f"refusing to serve writes on {args.host} without a token: pass --token or set "
                                "ACTIVEINDEX_TOKEN (or bind to 127.0.0.1)")
    sockets = _bind(addresses)
    if token is None:
        token = secrets.token_urlsafe(16)
        logger.warning("no token given: writes need this one-time token: %s", token)
    config = ServiceConfig(token=token, threshold=args.threshold, allowed_hosts=_allowed_hosts(args, addresses),
                           ray=args.ray, public_reads=args.public_reads, public_metrics=args.public_metrics,
                           signing=signing, trust_anchors=trust_anchors, activation_memory=args.activation_memory * 1e9)
    collection = _open(args)
    _warn_if_uncalibrated(collection, args.threshold)
    app = create_app(collection, config)
    logger.info("serving on http://%s:%d", args.host, args.port)
    # SIGTERM: requests still waiting (a synchronous activation) get 3 s, then the server stops; their jobs
    # are durable and finish in the collection's next runner
    uvicorn.Server(uvicorn.Config(app, log_level="warning" if args.quiet else "info",
                                  timeout_graceful_shutdown=3)).run(sockets=sockets)
    return {}


def _warn_if_uncalibrated(collection: Collection, threshold: float | None) -> None:
    """A server's verdicts without a measured false-copy rate are said so at start (and in every answer)."""
    if threshold is not None:
        logger.warning("copies are called from a similarity of %.3f (--threshold): an uncalibrated threshold, "
                       "said so in every verdict", threshold)
    elif not collection.calibrated:
        logger.warning("%s is not calibrated: copies are called from a similarity of %.3f, the uncalibrated "
                       "default, said so in every verdict; run activeindex calibrate %s NONMATCHING_PHOTOS...",
                       collection.root, collection.threshold, collection.root)


def _allowed_hosts(args: argparse.Namespace, addresses: list[tuple[socket.AddressFamily, tuple]]) -> tuple[str, ...]:
    """Host names the server answers to: --allowed-host, else loopback names and --host ("*" for a wildcard bind)."""
    from .service import LOOPBACK_HOSTS

    if args.allowed_host:
        return tuple(args.allowed_host)
    if any(ipaddress.ip_address(address[0]).is_unspecified for _, address in addresses):
        logger.warning("bound to every interface: any Host header is accepted; name the server's host names "
                       "with --allowed-host to guard against DNS rebinding")
        return ("*",)
    return (*LOOPBACK_HOSTS, args.host)


def _resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple]]:
    """The distinct (family, socket address) pairs ``host`` resolves to, or one line saying why it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:  # socket.gaierror is an OSError; IDNA encoding fails with UnicodeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InvalidInputError(f"--host {host}: cannot resolve ({reason}); give an address such as 127.0.0.1 "
                                "or 0.0.0.0") from e
    return list(dict.fromkeys((family, address) for family, _, _, _, address in infos))


def _bind(addresses: list[tuple[socket.AddressFamily, tuple]]) -> list[socket.socket]:
    """Bind one listening-ready socket per address (a port in use fails here, in one line, not in uvicorn)."""
    sockets: list[socket.socket] = []
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio does: IPv4 and IPv6 on the same port are separate sockets
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as e:
            for opened in sockets:
                opened.close()
            raise InvalidInputError(f"cannot listen on {address[0]} port {address[1]} ({e.strerror or e}); "
                                    "choose another --port or --host") from e
    return sockets


def cmd_data(args: argparse.Namespace) -> dict:
    """Assemble the real-photo benchmark corpus; its path, seed and split counts."""
    from .bench.corpus import fetch_corpus

    corpus = fetch_corpus(args.out, max_side=args.max_side, n_activate=args.activate,
                          n_nonmatching=args.nonmatching, seed=args.seed, min_query_side=args.min_query_side,
                          extractor=_extractor(args.device))
    return {"path": str(corpus.root), "seed": args.seed, **corpus.manifest["counts"]}


def cmd_benchmark(args: argparse.Namespace) -> dict:
    """Run a benchmark from its TOML config; a summary per index."""
    from .bench.evaluation import BenchmarkConfig, run_benchmark

    config = BenchmarkConfig.from_toml(args.config)
    if args.device:
        config.device = args.device
    results = run_benchmark(config)
    from .bench.report import summary_rows

    setup = results["setup"]
    return {"out": config.out, "corpus": setup["corpus"], "train": setup["train"],
            "references": setup["references"], "skipped": setup["skipped"], "indexes": summary_rows(results)}


def _print_benchmark(summary: dict) -> None:
    """The setup's counts, one block per index (figures with 95 % intervals), then the report path."""
    train, refs = summary["train"], summary["references"]
    print(summary["corpus"])
    print(f"training vectors {train['photos']} photos + {train['crops']} crops; references {refs['photos']} "
          f"photos + {refs['crops']} crops")
    for line in summary["skipped"]:
        print(f"skipped {line}")
    for row in summary["indexes"]:
        print(row["index"])
        for key, value in list(row.items())[1:]:
            print(f"  {key:34} {value}")
    print(f"report: {summary['out']}/report.html")


def _print_dict(data: dict) -> None:
    """Indented JSON."""
    print(json.dumps(data, indent=2, default=str))


def _print_info(info: dict) -> None:
    """One ``key value`` line per collection fact."""
    keys = ["path", "factory", "nlist", "nprobe", "train_size", "images", "active", "passive", "removed",
            "removed_in_index", "indexed_images", "ntotal", "codec_fingerprint", "device"]
    for key in keys:
        print(f"{key:18} {info.get(key)}")
    views = info.get("views") or {"name": "none", "views": []}
    print(f"{'views':18} {views['name']}" + (f" ({len(views['views'])} per image: {', '.join(views['views'])})"
                                             if views["views"] else " (the whole image alone)"))
    print(f"{'model':18} {info['model']['name']} (sha256 {info['model']['sha256'][:12]}...)")
    calibration = info.get("calibration")
    print(f"{'threshold':18} " + (_calibration_line(calibration) if calibration else
                                  f"{DEFAULT_THRESHOLD} (the uncalibrated default; run activeindex calibrate)"))


def _calibration_line(c: dict) -> str:
    """A calibration in one line, with its 95 % intervals (calibrations stored by earlier versions were
    measured on the queries they were chosen from: said so)."""
    fpr, tpr = c["fpr_interval"], c["tpr_interval"]
    measured = (f"worst kind's FPR {c['fpr']:.3f} [{fpr[0]:.3f}, {fpr[1]:.3f}] on {c['n_held_out']} held-out "
                f"non-matching photos" if "n_held_out" in c else
                f"FPR {c['fpr']:.3f} [{fpr[0]:.3f}, {fpr[1]:.3f}] on its own {c['n_nonmatching']} non-matching "
                "queries (an earlier, in-sample calibration: run calibrate again)")
    kinds = ", ".join(c["kinds"]) if "kinds" in c else ", ".join(c.get("edits", ()))
    return (f"{c['threshold']:.4f} (calibrated for FPR {c['target_fpr']:g}: {measured}, TPR {c['tpr']:.3f} "
            f"[{tpr[0]:.3f}, {tpr[1]:.3f}] on {c['n_matching']} matching queries; queries: {kinds})")


def _print_calibration(calibration: dict) -> None:
    print(f"{'threshold':18} {_calibration_line(calibration)}")
    for kind, k in calibration["kinds"].items():
        print(f"  {kind:16} threshold {k['threshold']:.4f}  held-out FPR {k['fpr']:.3f} [{k['fpr_interval'][0]:.3f}, "
              f"{k['fpr_interval'][1]:.3f}] of {k['n_held_out']}  TPR {k['tpr']:.3f} of {k['n_matching']}  "
              f"({', '.join(k['edits'])})")


def _print_report(report: BatchReport) -> None:
    """One line per registered image (with its activation metrics when active)."""
    for r in report.records:
        if r.kind == "active":
            cell = "" if r.same_cell is None else f"  cell {'yes' if r.same_cell else 'no '}"
            print(f"{r.id:>6}  {r.activated_path}  PSNR {r.psnr:5.2f} dB  SSIM {r.ssim:.4f}  L-inf {r.linf:3d}  "
                  f"scaling {r.scaling:.2f}  cos {r.cos_before:.3f} -> {r.cos_after:.3f}{cell}  "
                  f"code {'yes' if r.same_code else 'no'}")
        else:
            print(f"{r.id:>6}  {r.original_path}")


def _print_removal(report: RemovalReport) -> None:
    """One line per removed image."""
    deleted = set(report.deleted_files)
    for r in report.removed:
        note = "  (activated file deleted)" if r.activated_path in deleted else ""
        print(f"{r.id:>6}  {r.original_path}{note}")


def _summarise_removal(report: RemovalReport) -> int:
    """Items that name no registered image, one line each, then a summary on stderr; 1 if any."""
    for item, reason in report.not_found:
        print(f"error: {item}: {reason}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{len(report.removed)} removed, {len(report.deleted_files)} activated files deleted, "
          f"{len(report.not_found)} not found", file=sys.stderr)
    return 1 if report.not_found else 0


def _print_search(results: list[dict]) -> None:
    """Each good query with its verdict, its candidates most similar first, and the copy's evidence when asked
    for (failed queries are reported on stderr)."""
    for result in results:
        if "error" in result:
            continue
        print(f"{result['query']}: {_verdict_line(result)}")
        for rank, m in enumerate(result["matches"], 1):
            view = {"whole": "", "released file": "  (through its released file)"}.get(
                m["view"], f"  (through its view {m['view']})")
            print(f"  {rank:>3}. id {m['id']:<6} similarity {m['similarity']:.3f}  distance {m['distance']:.4f}  "
                  f"{m['original_path']}{view}")
        if result["matches"] and "evidence_reason" in result["matches"][0]:
            print(f"       evidence: {_evidence_line(result['matches'][0])}")


def _verdict_line(result: dict) -> str:
    """"a copy of FILE (similarity 0.912 >= 0.600, calibrated threshold)" or "not a copy (...)"."""
    how = "calibrated threshold" if result["calibrated"] else "uncalibrated threshold: run activeindex calibrate"
    if not result["matches"]:
        return f"not a copy (nothing registered; {how})"
    best, threshold = result["matches"][0], result["threshold"]
    if result["is_copy"]:
        return f"a copy of {best['original_path']} (similarity {best['similarity']:.3f} >= {threshold:.3f}, {how})"
    return f"not a copy (best similarity {best['similarity']:.3f} < {threshold:.3f}, {how})"


def _evidence_line(match: dict) -> str:
    """Where the copy sits in the original, in one line, or why that is not known."""
    e = match["evidence"]
    if e is None:
        return f"none ({match['evidence_reason']})"
    corners = " ".join(f"({x:g}, {y:g})" for x, y in e["corners"])
    overlay = f"; overlay {match['overlay']}" if "overlay" in match else ""
    return (f"rotation {e['rotation_deg']:.1f} deg, scale {e['scale']:.2f}, {100 * e['share_of_original']:.0f} % of "
            f"the original, {e['inliers']} inliers; outline {corners}{overlay}")


def _print_fingerprints(results: list[dict]) -> None:
    """``VALUE  IMAGE`` per good image, as sha256sum prints (failed images are reported on stderr)."""
    for result in results:
        if "error" not in result:
            print(f"{result['value']}  {result['image']}")


def _print_nothing(result: Any) -> None:
    """For commands whose output is their side effect (``serve``)."""


def _summarise_report(report: BatchReport) -> int:
    """Failures one line each, then a summary on stderr; 1 if anything failed."""
    for _, error in report.failed:  # the error names the file
        print(f"error: {error}", file=sys.stderr)
    for path, reason in report.skipped:
        print(f"skipped: {path}: {reason}", file=sys.stderr)
    for path, warning in report.warnings:
        print(f"warning: {path}: {warning}", file=sys.stderr)
    print(f"{len(report.records)} registered, {len(report.skipped)} skipped, {len(report.failed)} failed",
          file=sys.stderr)
    return 1 if report.failed else 0


def _summarise_each(done: str) -> Callable[[list[dict]], int]:
    """Per-file commands (search, fingerprint): failed files one line each, then a summary on stderr
    ("3 searched, 1 failed"); 1 if any file failed."""
    def summarise(results: list[dict]) -> int:
        failed = [r["error"] for r in results if "error" in r]
        for error in failed:  # the error names the file
            print(f"error: {error}", file=sys.stderr)
        print(f"{len(results) - len(failed)} {done}, {len(failed)} failed", file=sys.stderr)
        return 1 if failed else 0
    return summarise


def _succeeded(result: Any) -> int:
    """The exit code of a command that raises on failure: 0."""
    return 0


class Command(NamedTuple):
    """A verb: what runs it, how its result is shown as text, and how it ends (its exit code)."""

    run: Callable[[argparse.Namespace], Any]
    show: Callable[[Any], None]
    summarise: Callable[[Any], int] = _succeeded


COMMANDS = {"init": Command(cmd_init, _print_info), "add": Command(cmd_add, _print_report, _summarise_report),
            "activate": Command(cmd_activate, _print_report, _summarise_report),
            "search": Command(cmd_search, _print_search, _summarise_each("searched")),
            "fingerprint": Command(cmd_fingerprint, _print_fingerprints, _summarise_each("fingerprinted")),
            "remove": Command(cmd_remove, _print_removal, _summarise_removal), "info": Command(cmd_info, _print_info),
            "views": Command(cmd_views, _print_views),
            "calibrate": Command(cmd_calibrate, _print_calibration),
            "data": Command(cmd_data, _print_dict), "serve": Command(cmd_serve, _print_nothing),
            "benchmark": Command(cmd_benchmark, _print_benchmark)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 1 error or failed file, 2 usage, 130 interrupted).

    Expected failures end as one ``error: ...`` line on stderr; a programming error still raises.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader's CPU-feature notes are not the user's
    command = COMMANDS[args.command]
    try:
        if args.device == "cuda":  # without CUDA: fails now, not after the work has started
            from .extractor import resolve_device

            resolve_device(args.device)
        result = command.run(args)
    except ActiveIndexError as e:
        return _fail(str(e))
    except OSError as e:  # e.g. permission denied on the collection folder
        return _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_dict() if hasattr(result, "to_dict") else result, indent=2, default=str))
    else:
        command.show(result)
    return command.summarise(result)


def _fail(message: str) -> int:
    """Print one ``error:`` line on stderr; the exit code 1."""
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
