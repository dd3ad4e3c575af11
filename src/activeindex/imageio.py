"""Safe image decoding and encoding: the only module that reads or writes image files.

Every image enters the library as an (H, W, 3) uint8 RGB array: EXIF orientation applied, any PIL mode
(CMYK, RGBA, palette, grayscale, 16-bit) converted, and size limits enforced before decoding pixels.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError

__all__ = ["ImageLimits", "load_image", "decode_image", "save_png", "sha256_file", "sha256_bytes",
           "list_images", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class ImageLimits:
    """What the library agrees to decode."""

    max_pixels: int = 64_000_000  # decompression-bomb guard, checked from the header before decoding
    min_side: int = 32  # smaller images carry too little signal for a descriptor


def load_image(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: the file.
        limits: pixel-count and side limits.

    Returns:
        (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Raises:
        ImageDecodeError: missing, unreadable, not an image, corrupt, too large or too small.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read ({e.strerror or e})") from e
    return decode_image(data, name=str(path), limits=limits)


def decode_image(data: bytes, name: str = "<bytes>", limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode image bytes (content sniffed, never trusted from a name) to an (H, W, 3) uint8 RGB array."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image.size, name, limits)
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{name}: pixel count exceeds the limit of {limits.max_pixels} "
                               "(decompression-bomb guard)") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{name}: not an image file PIL can identify") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({e})") from e
    return _to_rgb(image)


def _check_size(size: tuple[int, int], name: str, limits: ImageLimits) -> None:
    """Refuse images by their header size, before any pixel is decoded."""
    w, h = size
    if w * h > limits.max_pixels:
        raise ImageDecodeError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_pixels} "
                              "(decompression-bomb guard)")
    if min(w, h) < limits.min_side:
        raise ImageDecodeError(f"{name}: {w}x{h} is smaller than the minimum side of {limits.min_side} px")


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB; transparency is composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        a = np.asarray(image, dtype=np.float64)
        a = a / (65535.0 if a.max() > 255 else 255.0)
        image = Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(array)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as a lossless PNG, atomically (temp file + rename).

    Returns:
        the written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image).save(f, format="PNG", compress_level=6)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def list_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, image suffixes only, sorted) into a list of paths.

    Files named explicitly are kept whatever their suffix, so a bad one is reported, not skipped.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    return paths
