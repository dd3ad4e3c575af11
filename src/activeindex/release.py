"""The released file: the format an activated image is published in, and the source's metadata carried over.

A photo desk releases the activated file as it is, so it must look like the original in everything but
the imperceptible change: the source's format (``auto``: a JPEG stays a JPEG at about the source's quality,
a PNG a PNG, anything else becomes a PNG), its pixels stored the way the decoder found them (the activation
works on the displayed image; the orientation decoding applied is undone before encoding and written as the
file's own ``Orientation`` tag, never copied: pillow-heif hands over a HEIC upright whatever its EXIF says),
and its EXIF, IPTC, XMP and ICC profile, copied with exiftool (each format keeps what it can hold: WebP has
no place for IPTC-IIM). A source's C2PA manifest is NOT copied: its hashes bind the original's bytes; the
activated file gets a new manifest naming the original as its ingredient (credentials.py).

Colour: a grey source is released grey (one channel: the activation's change averaged over the channels)
with its grey profile; a CMYK source as RGB in sRGB (imageio.to_srgb) with an sRGB profile, never its CMYK
one; a source with transparency keeps its alpha in a PNG or WebP (the change on the colour channels), and
loses it, with a warning, in a JPEG.

Why exiftool (Debian's ``libimage-exiftool-perl``): it copies every metadata block between JPEG, PNG and
WebP with the standard mappings, IPTC and vendor maker notes included, and it is the reference reader that
the tests check the released files with; Pillow writes EXIF, ICC and XMP but not IPTC, nor maker notes
across formats.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .config import OUTPUT_FORMATS
from .errors import InvalidInputError, StorageFullError
from .imageio import PNG_COMPRESS_LEVEL, SourceInfo, composite_on_white, srgb_profile, to_rgb

if TYPE_CHECKING:
    from .credentials import SigningMaterial

__all__ = ["Release", "resolve_release", "release_warnings", "copy_metadata", "require_exiftool",
           "check_release_tools", "DEFAULT_QUALITY"]

DEFAULT_QUALITY = 95  # a lossy release's quality when neither the user nor the source says
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that undoes what decoding applied (decoding: ImageOps.exif_transpose)
_UNDO_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                     4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
                     7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
_APPLY_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                      4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                      7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Release:
    """How one activated image is written: its format, quality, stored orientation, chroma subsampling and
    colour (grey, a profile of its own, the source's alpha)."""

    format: str = "png"  # "png", "jpeg" or "webp"
    quality: int | None = None  # lossy formats
    orientation: int = 1  # what decoding applied (`SourceInfo.orientation`): undone, and written as the tag
    subsampling: int | None = None  # JPEG: the source's (None: the encoder's default)
    grey: bool = False  # one channel (a grey source's): the change averaged over the channels
    profile: bytes | None = field(default=None, repr=False)  # an ICC profile written instead of the source's
    # the source's colour and alpha (H, W, 4) uint8, as displayed: kept in a PNG or WebP release
    rgba: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def lossy(self) -> bool:
        return self.format != "png"

    @property
    def exact(self) -> bool:
        """Whether a viewer sees exactly the activated (H, W, 3) pixels: a colour PNG without alpha."""
        return not self.lossy and not self.grey and self.rgba is None

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.format]

    def encode(self, image: np.ndarray) -> bytes:
        """The file's bytes (metadata: its orientation and own profile only) for DISPLAYED pixels (H, W, 3) uint8
        (over white, for a source with alpha)."""
        stored = self._stored(image)
        if self.orientation in _UNDO_ORIENTATION:
            stored = stored.transpose(_UNDO_ORIENTATION[self.orientation])
        options: dict = {} if self.profile is None else {"icc_profile": self.profile}
        if self.orientation in _UNDO_ORIENTATION:
            exif = Image.Exif()
            exif[_ORIENTATION_TAG] = self.orientation
            options["exif"] = exif.tobytes()
        buffer = io.BytesIO()
        if self.format == "png":
            stored.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **options)
        elif self.format == "jpeg":
            extra = {} if self.subsampling is None else {"subsampling": self.subsampling}
            stored.save(buffer, format="JPEG", quality=self.quality, **extra, **options)
        else:  # WebP has no grey mode
            stored = stored.convert("RGB") if stored.mode == "L" else stored
            stored.save(buffer, format="WEBP", quality=self.quality, method=4, **options)
        return buffer.getvalue()

    def _stored(self, image: np.ndarray) -> Image.Image:
        """The pixels as the file holds them: grey, colour and alpha, or RGB."""
        if self.rgba is not None:
            colour, alpha = _with_change(self.rgba, image), self.rgba[..., 3]
            if self.grey:
                return Image.fromarray(np.dstack([_grey(colour), alpha]), "LA")
            return Image.fromarray(np.dstack([colour, alpha]), "RGBA")
        return Image.fromarray(_grey(image), "L") if self.grey else Image.fromarray(image)

    def decode(self, data: bytes) -> np.ndarray:
        """The displayed pixels (H, W, 3) uint8 of bytes this release encoded (over white, with alpha)."""
        image = Image.open(io.BytesIO(data))
        image.load()
        if self.orientation in _APPLY_ORIENTATION:
            image = image.transpose(_APPLY_ORIENTATION[self.orientation])
        return to_rgb(image)

    def roundtrip(self, image: np.ndarray) -> tuple[np.ndarray, bytes]:
        """(the displayed pixels a viewer of the released file sees, the file's bytes)."""
        data = self.encode(image)
        return (image if self.exact else self.decode(data)), data


def _grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8, the mean of the channels, rounded: a grey original's value plus its
    change averaged over the channels."""
    return ((image.sum(axis=2, dtype=np.uint16) + 1) // 3).astype(np.uint8)


def _with_change(rgba: np.ndarray, activated: np.ndarray) -> np.ndarray:
    """The source's colour (H, W, 3) plus the change the activation made to its composite on white: over any
    background the released file then differs from the original by alpha x the change."""
    change = activated.astype(np.int16) - composite_on_white(rgba)
    change += rgba[..., :3]
    return np.clip(change, 0, 255).astype(np.uint8)


def resolve_release(output: str, quality: int | None, source: SourceInfo | None,
                    rgba: np.ndarray | None = None) -> Release:
    """The release of one image: ``output`` ("auto" follows the source's format) at ``quality`` (lossy
    formats; default: a JPEG source's estimated quality, else `DEFAULT_QUALITY`), grey for a grey source, in
    sRGB for a CMYK one, with the source's colour and alpha ``rgba`` (`imageio.decode_layers`) in a PNG or WebP."""
    if output not in OUTPUT_FORMATS:
        raise InvalidInputError(f"output format must be one of {list(OUTPUT_FORMATS)}, got {output!r}")
    source = source or SourceInfo("PNG")
    fmt = output if output != "auto" else {"JPEG": "jpeg", "PNG": "png"}.get(source.format, "png")
    grey = source.colour == "L"
    # a converted CMYK source is in sRGB; a grey WebP holds RGB, which a grey profile cannot describe
    profile = srgb_profile() if source.colour == "CMYK" or (grey and fmt == "webp") else None
    colour = {"grey": grey, "profile": profile, "rgba": rgba if fmt != "jpeg" else None}
    if fmt == "png":
        return Release("png", None, source.orientation, **colour)
    estimated = source.jpeg_quality if source.format == "JPEG" else None
    subsampling = (0 if source.colour == "CMYK" else source.subsampling) if fmt == "jpeg" else None  # CMYK: none
    return Release(fmt, quality or estimated or DEFAULT_QUALITY, source.orientation, subsampling, **colour)


def release_warnings(source: SourceInfo | None, release: Release) -> list[str]:
    """What the owner of a released file must know about its colour: a CMYK source converted without a
    profile, transparency lost in a JPEG, a high-bit-depth source released in 8 bits."""
    if source is None:
        return []
    warnings = []
    if source.colour == "CMYK" and not source.profile:
        warnings.append("a CMYK original without a colour profile: converted to RGB with Pillow's uncalibrated "
                        "formula, so its colours may shift; embed its CMYK profile to convert it with LittleCMS")
    if source.alpha and release.rgba is None:
        warnings.append("the original's transparency is lost in a JPEG release: the file is the image on white and "
                        "its PSNR is measured over white (over another background it differs from the original "
                        "wherever that is transparent); release as PNG or WebP to keep the alpha")
    if source.bits > 8:
        warnings.append(f"a {source.bits}-bit original, released with 8 bits per channel")
    return warnings


def require_exiftool(purpose: str = "keep the source's metadata in the released file") -> str:
    """exiftool's path: call it before a run that needs it (``purpose``, for the message): one whose released
    files keep their sources' metadata, or one that reads files' credit (credit.py).

    Raises:
        InvalidInputError: exiftool is not installed (the message says how to install it).
    """
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        raise InvalidInputError(f"exiftool is needed to {purpose}: install it (Debian: apt-get install "
                                "libimage-exiftool-perl)")
    return exiftool


def check_release_tools(signing: SigningMaterial | None = None) -> None:
    """What releasing files needs, checked before a run loads the model: exiftool, and the signing material's
    files (read and checked, `SigningMaterial.read`).

    Raises:
        InvalidInputError: exiftool is missing, or the signing material is bad (the message names the file).
    """
    require_exiftool()
    if signing is not None:
        signing.read()


def copy_metadata(source: Path, target: Path, profile: bool = True) -> None:
    """Copy EXIF, IPTC, XMP and (``profile``) the ICC profile of ``source`` into ``target`` (in place), not its
    C2PA manifest, nor its ``Orientation`` (the one `Release.encode` wrote matches the stored pixels).

    Raises:
        InvalidInputError: exiftool is missing or fails (the message says which file and why).
        StorageFullError: the disk is full.
    """
    command = [require_exiftool(), "-q", "-q", "-m", "-overwrite_original", "-tagsFromFile", str(source),
               "-all:all", "-icc_profile" if profile else "--icc_profile:all", "--Orientation", "--jumbf:all",
               str(target)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "exiftool failed"
        full = shutil.disk_usage(target.parent).free < 1 << 20  # exiftool says "Error writing" on a full disk
        if "No space left" in done.stderr or ("Error writing" in reason and full):
            raise StorageFullError(f"{target}: no space left on the device; free some space and run again "
                                   "(nothing registered is lost)")
        raise InvalidInputError(f"{target}: cannot copy the metadata of {source.name} ({reason})")
