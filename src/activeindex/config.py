"""The settings of an activation as data (the paper's defaults), and the names each setting may take.

Light on purpose (no torch, no faiss): the command line builds its options and checks its arguments from
here, before any model or library loads. The modules that implement a setting import its names from here.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from .errors import InvalidInputError, UnknownNameError

__all__ = ["ActivationConfig", "PRESETS", "get_preset", "TORCH_MODES", "PRECISIONS", "JND_PADDINGS",
           "TARGET_KINDS", "EDIT_FAMILIES", "VIEW_SET_NAMES", "DEFAULT_VIEWS", "OUTPUT_FORMATS", "MAX_K",
           "DEFAULT_THRESHOLD"]

TORCH_MODES = ("ste", "relu")  # how the gradient graph is built (onnx_torch.py)
PRECISIONS = ("auto", "float32", "bfloat16")  # of the gradient pass
JND_PADDINGS = ("replicate", "zeros")  # the padding modes of perceptual.jnd_heatmap
TARGET_KINDS = ("index", "ivf_cluster_half")  # see Codec.targets
EDIT_FAMILIES = ("crop", "rotate", "flip", "color", "blur", "jpeg")  # edit-aware activation (transforms.py)
VIEW_SET_NAMES = ("none", "crops", "crops+turns")  # the indexed view sets (views.py)
DEFAULT_VIEWS = "crops+turns"  # a new collection's (chosen by benchmarks/views.py, docs/views.md)
OUTPUT_FORMATS = ("auto", "png", "jpeg", "webp")  # the released file's format (release.py)
MAX_K = 1000  # results per query
# the copy threshold until `activeindex calibrate` stores one, said "uncalibrated" wherever it is used: split
# conformal at 1 % per kind of query on 750 of 1,000 real non-matching photos against a 247-image collection with
# views, rounded up; 0.5 % [0.2, 1.2] of the 250 held-out photos' queries called copies (benchmarks/decision.py,
# docs/decision.md, "The uncalibrated default")
DEFAULT_THRESHOLD = 0.81


def _is_finite(value: object) -> bool:
    """A real number (Python or numpy, not a bool) that is neither NaN nor infinite."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    """An integer (Python or numpy) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class ActivationConfig:
    """Activation settings. The paper's values but for ``scaling``, ``lr`` (both chosen by R@1 of edited copies
    against PSNR, docs/benchmark.md) and the gradient pass's speed-ups (``iterations``, ``gradient``,
    ``precision``: same gain and PSNR at 4x the speed on CPU, docs/performance.md); `PRESETS["paper"]` is the
    paper's optimisation itself."""

    scaling: float = 2.0  # s; the paper's 3.0 gives ~38.5 dB on textured photos (docs/method.md, "Default scaling")
    alpha_c: tuple[float, float, float] = (0.072 / 0.299, 0.072 / 0.587, 0.072 / 0.114)  # R, G, B weights
    lambda_mse: float = 0.01  # weight of the MSE term (normalised space)
    # Adam learning rate; the paper's 1.0 saturates the tanh within a few steps and spends the whole budget:
    # 0.3 gains more R@1 under edits at 2 dB more PSNR for the same work (docs/benchmark.md)
    lr: float = 0.3
    iterations: int = 8  # the paper's 10 at the paper's gradient; these gradients gain as much in 8
    batch_size: int = 16  # images of the same size optimised together
    seed: int = 0  # delta initialisation
    jnd_padding: str = "replicate"  # see perceptual.jnd_heatmap
    target: str = "index"  # see Codec.targets: "index" (the paper's) or "ivf_cluster_half"
    # how gradients are computed (the written image's descriptor is always the exact function's); the
    # paper differentiates its float model exactly: here "ste" is the exact int8 forward, "relu" 2x faster
    gradient: str = "relu"
    precision: str = "auto"  # of the gradient pass: "auto" is bfloat16 where it is faster (`compute_dtype`)
    # a quality floor in dB instead of one scaling for all: each image gets the scaling whose full budget
    # costs exactly this PSNR (the tanh saturates, so the result lands just above), checked on the 8-bit result
    psnr: float | None = None
    # edit-aware activation: the loss also averages the cosine of `edit_draws` edited copies per iteration,
    # each of a family drawn from `edits` (transforms.EDIT_FAMILIES); () is the paper's unedited-only loss
    edits: tuple[str, ...] = ()
    edit_draws: int = 2
    # activated views: in a collection with views (views.py), the loss also averages the cosine of `view_draws`
    # of its indexed views per iteration, drawn at random, each to its own target (the original view's code);
    # 0: the views are indexed as passive references (docs/views.md, "Activated views")
    view_draws: int = 0
    # delta's resolution as a multiple of the network's input: a larger photo is optimised at it, its change
    # upsampled and shaped by the full-resolution JND map, with the same loss computed exactly (coarse.py);
    # 0: one delta per full-resolution pixel, the paper's
    resolution: int = 2
    # Adam's steps for such a photo: its gradients are summed over the full-resolution pixels each value moves,
    # so Adam's epsilon does not shorten its steps as it does a per-pixel delta's (benchmarks/gradients.py); it
    # reaches the per-pixel change's gain and PSNR in fewer (docs/method.md, "Large photos")
    coarse_iterations: int = 6
    # the released file (release.py): "auto" keeps the source's format (JPEG stays JPEG, PNG stays PNG, others
    # become PNG); every recorded figure and the PSNR floor are about the file as written
    output: str = "auto"
    quality: int | None = None  # JPEG / WebP quality; default: a JPEG source's estimated quality, else 95

    def __post_init__(self) -> None:
        """Refuse values the optimiser cannot use (a NaN scaling would silently destroy the images).

        Raises:
            InvalidInputError: the first invalid field, named with its value and the allowed range.
        """
        rules = {
            "scaling": (_is_finite(self.scaling) and self.scaling > 0, "a finite number > 0"),
            "alpha_c": (isinstance(self.alpha_c, (tuple, list)) and len(self.alpha_c) == 3
                        and all(_is_finite(a) and a >= 0 for a in self.alpha_c), "three finite weights >= 0 (R, G, B)"),
            "lambda_mse": (_is_finite(self.lambda_mse) and self.lambda_mse >= 0, "a finite number >= 0"),
            "lr": (_is_finite(self.lr) and self.lr > 0, "a finite number > 0"),
            "iterations": (_is_int(self.iterations) and self.iterations >= 1, "an integer >= 1"),
            "batch_size": (_is_int(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            "jnd_padding": (self.jnd_padding in JND_PADDINGS, f"one of {list(JND_PADDINGS)}"),
            "target": (self.target in TARGET_KINDS, f"one of {list(TARGET_KINDS)}"),
            "gradient": (self.gradient in TORCH_MODES, f"one of {list(TORCH_MODES)}"),
            "precision": (self.precision in PRECISIONS, f"one of {list(PRECISIONS)}"),
            "edits": (isinstance(self.edits, (tuple, list)) and set(self.edits) <= set(EDIT_FAMILIES),
                      f"a list of edit families from {list(EDIT_FAMILIES)}"),
            "edit_draws": (_is_int(self.edit_draws) and self.edit_draws >= 1, "an integer >= 1"),
            "view_draws": (_is_int(self.view_draws) and self.view_draws >= 0, "an integer >= 0"),
            "resolution": (_is_int(self.resolution) and self.resolution >= 0, "an integer >= 0"),
            "coarse_iterations": (_is_int(self.coarse_iterations) and self.coarse_iterations >= 1, "an integer >= 1"),
            "psnr": (self.psnr is None or (_is_finite(self.psnr) and 20 <= self.psnr <= 80),
                     "None or a number of dB from 20 to 80"),
            "output": (self.output in OUTPUT_FORMATS, f"one of {list(OUTPUT_FORMATS)}"),
            "quality": (self.quality is None or (_is_int(self.quality) and 1 <= self.quality <= 100),
                        "None or an integer from 1 to 100"),
        }
        for name, (valid, rule) in rules.items():
            if not valid:
                raise InvalidInputError(f"ActivationConfig.{name} must be {rule}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ActivationConfig:
        tuples = {"alpha_c": tuple(data.get("alpha_c", cls.alpha_c)), "edits": tuple(data.get("edits", ()))}
        return cls(**(data | tuples))


PRESETS: dict[str, ActivationConfig] = {
    "default": ActivationConfig(),
    # Fernandez et al. 2023 (correct Gy, replicate padding): exact float32 gradients, 10 iterations
    "paper": ActivationConfig(scaling=3.0, lr=1.0, iterations=10, gradient="ste", precision="float32", resolution=0),
    # beyond the paper: also for the crops and rotations copies go through, where the unedited-only loss barely
    # helps (photometric edits it already covers; drawing them too dilutes the geometric draws:
    # docs/benchmark.md). More of the default's small steps: the direction averages many drawn edits before
    # the tanh saturates. 4.5x the work; large photos take as many steps (fewer are not measured with edits)
    "robust": ActivationConfig(edits=("crop", "rotate"), iterations=12, coarse_iterations=12),
}


def get_preset(name: str) -> ActivationConfig:
    """A named configuration: ``"default"``, ``"paper"`` or ``"robust"``."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown activation preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
