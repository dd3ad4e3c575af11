"""Safe image decoding and encoding: the only module that reads or writes image files.

Every image enters the library as an (H, W, 3) uint8 RGB array: EXIF orientation applied, any PIL mode
(CMYK, RGBA, palette, grayscale, 16/32-bit and float) converted, and size limits enforced before decoding pixels.
RGB and grey values are kept as they are (a wide-gamut photo's values stay in its own profile, which release.py
carries over); CMYK is the one colour conversion: LittleCMS (Pillow's ImageCms) from the file's embedded CMYK
profile to sRGB (`to_srgb`), or Pillow's uncalibrated formula for a CMYK file without one. Transparency is
composited on white for the network; `decode_layers` also hands over the colour and alpha, for a release
that keeps them. HEIC/HEIF (phones) and AVIF are read through Pillow plugins.
What a publisher's file says about itself (format, EXIF orientation, JPEG quality and chroma subsampling)
is read from its header: `source_info`.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pillow_avif  # noqa: F401  (registers AVIF with Pillow)
import pillow_heif
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin, UnidentifiedImageError

from .errors import ImageDecodeError, storage_errors

pillow_heif.register_heif_opener()  # HEIC/HEIF, as phones write them

Item, Result = TypeVar("Item"), TypeVar("Result")

__all__ = ["ImageLimits", "SourceInfo", "source_info", "load_image", "read_file", "decode_image", "decode_layers",
           "image_size", "to_rgb", "composite_on_white", "srgb_profile", "save_png", "encode_png", "sha256_file",
           "sha256_bytes", "list_images", "read_ahead", "write_atomically", "IMAGE_SUFFIXES", "PNG_COMPRESS_LEVEL"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")
# zlib level of written PNGs: 1 encodes 3.6-4.7x faster than PIL's default 6 for files 8-13 % bigger (activated
# photos, 512x768: 32 vs 149 ms a photo; docs/performance.md, "Speed"): at level 6 it was ~10 % of an activation
PNG_COMPRESS_LEVEL = 1


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
    return decode_image(read_file(path), name=str(path), limits=limits)


def read_file(path: str | os.PathLike) -> bytes:
    """A file's bytes; a missing or unreadable file is a one-line `ImageDecodeError`."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read ({e.strerror or e})") from e


def decode_image(data: bytes, name: str = "<bytes>", limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode image bytes (content sniffed, never trusted from a name) to an (H, W, 3) uint8 RGB array."""
    return to_rgb(_open_displayed(data, name, limits), name)


def decode_layers(data: bytes, name: str = "<bytes>",
                  limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, np.ndarray | None]:
    """(the `decode_image` RGB array, the colour and alpha (H, W, 4) uint8 of an image with transparency, else
    None), both as displayed."""
    image = _open_displayed(data, name, limits)
    if not _transparent(image):
        return to_rgb(image, name), None
    rgba = np.asarray(_8bit(image, name).convert("RGBA"))
    return composite_on_white(rgba), rgba


def _open_displayed(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    """The decoded image, its size checked from the header first, EXIF orientation applied."""
    with _decode_errors(name, limits):
        image = Image.open(io.BytesIO(data))
        _check_size(image.size, name, limits)
        image.load()
        return ImageOps.exif_transpose(image)


@dataclass(frozen=True)
class SourceInfo:
    """What an image file says about itself, for releasing its activated copy the same way."""

    format: str  # PIL's format name: "JPEG", "PNG", "WEBP", "HEIF", ...
    orientation: int = 1  # the orientation decoding applied to the pixels (1: none); a HEIC's is 1 (pillow-heif
    # hands over upright pixels), whatever EXIF tag the file carries
    jpeg_quality: int | None = None  # estimated from a JPEG's luminance quantization table
    subsampling: int | None = None  # a JPEG's chroma subsampling: 0 (4:4:4), 1 (4:2:2), 2 (4:2:0)
    metadata: bool = False  # EXIF, IPTC, XMP, an ICC profile or text chunks to carry over
    colour: str = "RGB"  # "RGB", "L" (grey: one channel, any bit depth) or "CMYK"
    alpha: bool = False  # has transparency (an alpha channel or a transparent palette entry)
    bits: int = 8  # bits per channel as stored (a 16-bit PNG or TIFF: 16); decoding gives 8
    profile: bool = False  # carries an ICC profile


def source_info(data: bytes, name: str = "<bytes>") -> SourceInfo:
    """The `SourceInfo` of image bytes, from the header (no pixel is decoded)."""
    with _decode_errors(name, ImageLimits()):
        image = Image.open(io.BytesIO(data))
        orientation = int(image.getexif().get(0x0112, 1) or 1)
        metadata = bool(set(image.info) - _TECHNICAL_INFO) or any(
            marker in ("APP13", "APP11") for marker, _ in getattr(image, "applist", []))
        pixels = {"colour": _colour(image.mode), "alpha": _transparent(image), "bits": _bits(image, data),
                  "profile": bool(image.info.get("icc_profile"))}
        if image.format != "JPEG":
            return SourceInfo(image.format, orientation, metadata=metadata, **pixels)
        sampling = JpegImagePlugin.get_sampling(image)  # -1: not a YCbCr JPEG (grey, CMYK)
        return SourceInfo("JPEG", orientation, _jpeg_quality(image.quantization.get(0)),
                          None if sampling < 0 else sampling, metadata, **pixels)


_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _colour(mode: str) -> str:
    """`SourceInfo.colour` of a PIL mode."""
    return "L" if mode in _GREY_MODES else "CMYK" if mode == "CMYK" else "RGB"


def _transparent(image: Image.Image) -> bool:
    """Whether the image has an alpha channel or a transparent palette entry (from its header)."""
    return image.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info


def _bits(image: Image.Image, data: bytes) -> int:
    """Bits per channel as the file stores them: a PNG's IHDR bit depth, a TIFF's BitsPerSample, a HEIF's
    bit depth, else what the PIL mode holds."""
    if image.format == "PNG" and len(data) > 24:
        return 8 if image.mode == "P" else data[24]  # a palette's depth is its index's
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, 8)
        return int(max(bits) if isinstance(bits, tuple) else bits)
    if image.format == "HEIF":
        return int(image.info.get("bit_depth") or 8)
    return 16 if image.mode.startswith("I;16") else 32 if image.mode in ("I", "F") else 8


# what PIL reports about how a file is encoded, not about the photo
_TECHNICAL_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "progressive", "progression",
                   "adobe", "adobe_transform", "gamma", "transparency", "interlace", "aspect", "compression",
                   "loop", "duration", "background", "srgb", "chromaticity", "lossless"}


# The IJG's standard luminance quantization table (quality 50), whose scaled versions libjpeg writes
_IJG_LUMINANCE_SUM = sum([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
                          69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64,
                          81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def _jpeg_quality(table: Sequence[int] | None) -> int | None:
    """The IJG quality (1-100) whose scaled standard table is closest to ``table`` (by its sum: independent of
    the order PIL gives it in); None without a table."""
    if not table:
        return None
    target = sum(table)

    def scaled_sum(quality: int) -> float:
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        return _IJG_LUMINANCE_SUM * scale / 100  # close enough: the per-entry rounding and clipping aside

    return min(range(1, 101), key=lambda q: abs(scaled_sum(q) - target))


def image_size(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) read from an image's header, without decoding its pixels.

    Raises:
        ImageDecodeError: not an image PIL can identify.
    """
    with _decode_errors(name, ImageLimits()):
        return Image.open(io.BytesIO(data)).size


@contextmanager
def _decode_errors(name: str, limits: ImageLimits) -> Iterator[None]:
    """PIL's many exceptions (and its decompression-bomb warning) as one-line `ImageDecodeError`s."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"{name}: pixel count exceeds the limit of {limits.max_pixels} "
                               "(decompression-bomb guard)") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{name}: not an image file PIL can identify") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({e})") from e


def _check_size(size: tuple[int, int], name: str, limits: ImageLimits) -> None:
    """Refuse images by their header size, before any pixel is decoded."""
    w, h = size
    if w * h > limits.max_pixels:
        raise ImageDecodeError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_pixels} "
                              "(decompression-bomb guard)")
    if min(w, h) < limits.min_side:
        raise ImageDecodeError(f"{name}: {w}x{h} is smaller than the minimum side of {limits.min_side} px")


# Candidate value ranges of high-bit-depth grayscale data, tried in order; data fitting none is min-max normalised.
_NOMINAL_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "F": ((0.0, 1.0), (0.0, 255.0)),  # float32: [0, 1] or 8-bit levels stored as floats
    "I": ((0.0, 255.0), (0.0, 65535.0)),  # 32-bit int: 8- or 16-bit data in a wider container
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), ((0.0, 65535.0),)),  # 16-bit data: always 0..65535
}
_WHITE = (255, 255, 255, 255)


def to_rgb(image: Image.Image, name: str = "<image>") -> np.ndarray:
    """Any decoded PIL image -> (H, W, 3) uint8 RGB: CMYK converted to sRGB (`to_srgb`), transparency
    composited on white.

    Raises:
        ImageDecodeError: a mode PIL cannot convert, or an unreadable CMYK profile.
    """
    image = _8bit(image, name)
    if image.mode == "CMYK":
        return np.asarray(to_srgb(image, name))
    try:
        if image.has_transparency_data:
            return composite_on_white(np.asarray(image.convert("RGBA")))
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # no needless copy of a large image
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    except ValueError as e:
        raise ImageDecodeError(f"{name}: PIL cannot convert image mode {image.mode!r} to RGB ({e})") from e


def _8bit(image: Image.Image, name: str) -> Image.Image:
    """High-bit-depth grey as 8-bit "L" (`_to_8bit`); premultiplied grey + alpha as "LA" (PIL reaches RGBA
    only through LA); any other image as it is."""
    if image.mode in _NOMINAL_RANGES:
        return _to_8bit(image, name)
    return image.convert("LA") if image.mode == "La" else image


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 colour and alpha -> (H, W, 3) uint8: the image over a white background."""
    image = Image.alpha_composite(Image.new("RGBA", rgba.shape[1::-1], _WHITE), Image.fromarray(rgba, "RGBA"))
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


@functools.cache
def srgb_profile() -> bytes:
    """LittleCMS's sRGB ICC profile: what a converted CMYK source's pixels are in, and the released file carries."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def to_srgb(image: Image.Image, name: str = "<image>") -> Image.Image:
    """A CMYK image as RGB in sRGB: colour-managed by LittleCMS (perceptual intent) from its embedded profile,
    or, without one, Pillow's uncalibrated formula (`SourceInfo.profile` False; the release warns).

    Raises:
        ImageDecodeError: the embedded profile is not a CMYK profile LittleCMS reads.
    """
    profile = image.info.get("icc_profile")
    if not profile:
        return image.convert("RGB")
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        target = ImageCms.ImageCmsProfile(io.BytesIO(srgb_profile()))
        return ImageCms.profileToProfile(image, source, target, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as e:
        raise ImageDecodeError(f"{name}: its CMYK colour profile cannot convert it to sRGB ({e}); re-save it "
                               "with a valid profile, or without one") from e


def _to_8bit(image: Image.Image, name: str) -> Image.Image:
    """A float or 16/32-bit grayscale image as 8-bit "L", scaled from its nominal range (or min-max)."""
    a = np.array(image, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ImageDecodeError(f"{name}: mode {image.mode} image has NaN or infinite pixel values; replace "
                               "them with finite values (or save it as an 8-bit image)")
    lo, hi = float(a.min()), float(a.max())
    low, high = next(((a0, a1) for a0, a1 in _NOMINAL_RANGES[image.mode] if a0 <= lo and hi <= a1), (lo, hi))
    a -= low
    a *= 255.0 / (high - low) if high > low else 0.0
    a += 0.5
    gray = np.clip(a, 0.0, 255.0, out=a).astype(np.uint8)
    if hi > lo and gray.min() == gray.max():
        raise ImageDecodeError(f"{name}: mode {image.mode} pixel values {lo:g}..{hi:g} all fall on one 8-bit "
                               f"level when read as {low:g}..{high:g} data; stretch its contrast and save it "
                               "as an 8-bit image")
    return Image.fromarray(gray)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as a lossless PNG, atomically (`write_atomically`).

    Returns:
        the written path.

    Raises:
        StorageFullError: the disk is full (the path is named; no partial file is left).
    """
    return write_atomically(path, lambda f: f.write(encode_png(image)))


def encode_png(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as lossless PNG bytes (as `save_png` writes them)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def write_atomically(path: str | os.PathLike, write: Callable[[io.BufferedWriter], object]) -> Path:
    """Write a file through ``write(file)`` into a temp file beside it, fsync, then rename: a reader never
    sees a partial file, even after a crash or a full disk. The file gets the permissions of an ordinary new
    file (0o666 less the umask), not the temp file's 0o600.

    Raises:
        StorageFullError: the disk is full (the path is named; the temp file is removed).
    """
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _new_file_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


_UMASK_LOCK = threading.Lock()  # reading the umask means setting it: two first readers must not interleave


@functools.cache
def _new_file_mode() -> int:
    """0o666 less the process umask, read once."""
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # for the instant it is replaced, files other threads create stay private
        os.umask(umask)
    return 0o666 & ~umask


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


def read_ahead(chunks: Iterable[Sequence[Item]], read: Callable[[Item], Result],
               pool: Executor | None) -> Iterator[list[Result]]:
    """``[read(x) for x in chunk]`` for each chunk, in order, while ``pool`` already reads the next chunk: decoding
    overlaps the model's work on the current one (PIL, torch and onnxruntime release the GIL). At most two
    chunks are in memory; an error is raised when its chunk is reached. ``pool=None`` reads in line."""
    if pool is None:
        yield from ([read(item) for item in chunk] for chunk in chunks)
        return
    pending: deque[list[Future]] = deque()
    try:
        for chunk in chunks:
            pending.append([pool.submit(read, item) for item in chunk])
            if len(pending) == 2:
                yield [f.result() for f in pending.popleft()]
        while pending:
            yield [f.result() for f in pending.popleft()]
    finally:
        for future in (f for chunk in pending for f in chunk):
            future.cancel()
