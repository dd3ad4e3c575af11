"""Ray Data plans for add / activate at scale (``--ray``): the Ray executor of ingest.py's prepare step.

The driver plans the batches as in-process runs do (`ingest.plan_batches`: list the files, hash them, drop
those already registered); Ray Data streams the batches through two stages: reading + decoding in CPU tasks,
then embedding or activating in actors that each load the descriptor model and the frozen codec once (one GPU
per actor where the cluster has GPUs; on a CPU-only cluster Ray fuses decoding into the actors, as there is no
accelerator to overlap it with). The actors write activated PNGs under staging names into the output folder,
which every node must see at the same path, and stream per-image results back; the driver commits them batch
by batch, so a driver killed at any point leaves a consistent collection and re-running resumes. Ray restarts
an actor that dies and retries its batch (Ray Data's default for actor pools).
"""
from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import ray

from .activation import ActivationConfig
from .codec import Codec
from .credentials import SigningMaterial
from .extractor import Extractor, PreprocessConfig
from .faults import ENVIRONMENT
from .imageio import ImageLimits
from .ingest import PlannedFile, Prepared, Preparer, read_planned, run_tag
from .views import NO_VIEWS, ViewSet, get_view_set

__all__ = ["connect", "prepare_on_ray", "WorkerSpec", "THREADS_PER_CPU_ACTOR"]

logger = logging.getLogger(__name__)

THREADS_PER_CPU_ACTOR = 4  # CPUs (torch threads) per CPU actor unless --workers says otherwise
# torch allocates large CPU tensors on transparent huge pages: in a Ray actor, activating 768x512 photos
# took 6.3 M page faults and 22 s of system time without it, 1.2 M and 15 s with it (6 photos, 2 cores)
_HUGE_PAGES = {"env_vars": {"THP_MEM_ALLOC_ENABLE": "1"}}


def connect(address: str) -> None:
    """Join Ray: ``"local"`` starts one on this machine's cores (or reuses the one this process started);
    ``"auto"`` or ``"ray://host:10001"`` joins a running cluster."""
    if ray.is_initialized():
        return
    options = {"log_to_driver": False, "logging_level": logging.WARNING, "runtime_env": _HUGE_PAGES}
    if address == "local":
        ray.init(include_dashboard=False, **options)
    else:
        ray.init(address=address, **options)


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs to rebuild the collection's heavy parts, shipped once per actor."""

    model: str  # Extractor.model_source
    preprocessing: dict
    codec: bytes  # the trained, empty index, serialised (~8 MB for IVF4096 at 512-d)
    config: dict | None  # ActivationConfig.to_dict(), or None to embed passive references
    out_dir: str | None
    threads: int  # torch threads on a CPU actor
    stored_dtype: str  # how the catalog stores descriptors
    run: str  # the driver's run tag (ingest.run_tag), in the staged files' names
    signing: SigningMaterial | None  # Content Credentials (every node sees the files at the same paths)
    memory: float | None  # bytes an activation batch may use
    views: str  # the collection's view set (views.py)

    @classmethod
    def of(cls, extractor: Extractor, codec: Codec, config: ActivationConfig | None, out_dir: Path | None,
           threads: int, stored_dtype: str, run: str, signing: SigningMaterial | None,
           memory: float | None = None, views: ViewSet = NO_VIEWS) -> WorkerSpec:
        trained = faiss.serialize_index(codec.trained).tobytes()
        return cls(extractor.model_source, extractor.preprocessing.to_dict(), trained,
                   config.to_dict() if config else None, str(out_dir) if out_dir else None, threads, stored_dtype,
                   run, signing, memory, views.name)


class _Worker:
    """A Ray actor: the descriptor model and the codec, loaded once; prepares one batch per call."""

    def __init__(self, spec: WorkerSpec):
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(spec.threads)
        extractor = Extractor(spec.model, preprocessing=PreprocessConfig.from_dict(spec.preprocessing))
        codec = Codec(faiss.deserialize_index(np.frombuffer(spec.codec, np.uint8)))
        config = ActivationConfig.from_dict(spec.config) if spec.config else None
        self.preparer = Preparer(extractor, codec, config, spec.out_dir, stored_dtype=spec.stored_dtype, run=spec.run,
                                 signing=spec.signing, memory=spec.memory, views=get_view_set(spec.views))

    def __call__(self, batch: dict) -> dict:
        prepared = self.preparer(pickle.loads(batch["prepared"][0]))
        return {"prepared": np.array([pickle.dumps(prepared)], dtype=object)}


def _decode(batch: dict, limits: ImageLimits, preprocessing: dict | None) -> dict:
    """A CPU task: read and decode one batch of files (bad ones become per-file errors); a passive reference's
    block holds its network input, not the full image."""
    files, config = pickle.loads(batch["files"][0]), preprocessing and PreprocessConfig.from_dict(preprocessing)
    return {"prepared": np.array([pickle.dumps([read_planned(file, limits, config) for file in files])], dtype=object)}


def _actor_options(workers: int | None) -> tuple[dict, int]:
    """(map_batches options, torch threads per actor): one actor per GPU where the cluster has GPUs, else one
    per `THREADS_PER_CPU_ACTOR` CPUs, the CPUs shared out among them. Each reserves one CPU for Ray's
    scheduler. On a CPU-only cluster the decoding stage asks for the same resources, so Ray fuses it into
    the actors: with as many actors as CPUs, separate decoding tasks would never get a CPU."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1, "compute": ray.data.ActorPoolStrategy(size=workers or gpus)}, 1
    workers = workers or max(1, cpus // THREADS_PER_CPU_ACTOR)
    return {"num_cpus": 1, "compute": ray.data.ActorPoolStrategy(size=workers)}, max(1, cpus // workers)


def prepare_on_ray(address: str, extractor: Extractor, codec: Codec, batches: list[list[PlannedFile]],
                   config: ActivationConfig | None, out_dir: Path | None, workers: int | None = None,
                   stored_dtype: str = "float16", run: str | None = None,
                   signing: SigningMaterial | None = None, memory: float | None = None,
                   views: ViewSet = NO_VIEWS) -> Iterator[list[Prepared]]:
    """Prepare the planned batches on Ray; yields each batch's results in their planned order.

    Args:
        address: see `connect`.
        extractor, codec: the collection's model and frozen codec (shipped to the actors).
        batches: (path, sha256, None) per file, as `ingest.plan_batches` plans them.
        config: activation settings, or ``None`` to embed passive references.
        out_dir: the activated PNGs' folder (activation only).
        workers: actors (default: one per GPU, or one per `THREADS_PER_CPU_ACTOR` CPUs).
        stored_dtype: how the catalog stores descriptors.
        run: the driver's run tag (`ingest.run_tag`).
        signing: Content Credentials signing material (its files at the same paths on every node).
        memory: bytes an activation batch may use on an actor.
        views: the collection's view set (their descriptors computed on the actors).
    """
    if not batches:
        return
    connect(address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the collection shows its own
    context.execution_options.preserve_order = True  # batches commit in file order: the same ids as in-process
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-run INFO lines would drown the CLI's output
    options, threads = _actor_options(workers)
    spec = WorkerSpec.of(extractor, codec, config, out_dir, threads, stored_dtype, run or run_tag(), signing, memory,
                         views)
    logger.info("Ray: %d batches on %s actors (%d torch threads each on CPU)", len(batches),
                options["compute"].min_size, threads)
    faults = {"runtime_env": {"env_vars": {ENVIRONMENT: os.environ[ENVIRONMENT]}}} if ENVIRONMENT in os.environ else {}
    dataset = ray.data.from_items([{"files": pickle.dumps(batch)} for batch in batches],
                                  override_num_blocks=len(batches))
    passive = extractor.preprocessing.to_dict() if config is None else None  # network inputs, not images
    decoded = dataset.map_batches(_decode, batch_size=1,
                                  fn_kwargs={"limits": extractor.limits, "preprocessing": passive},
                                  num_cpus=1, **faults)  # a crash test's fault point reaches the workers
    prepared = decoded.map_batches(_Worker, batch_size=1, fn_constructor_kwargs={"spec": spec}, **options, **faults)
    for row in prepared.iter_rows():
        yield pickle.loads(row["prepared"])

