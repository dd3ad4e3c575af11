"""The released file: the format an activated image is published in, and the source's metadata carried over.

A photo desk releases the activated file as it is, so it must look like the original in everything but
the imperceptible change: the source's format (``auto``: a JPEG stays a JPEG at about the source's quality,
a PNG a PNG, anything else becomes a PNG), its pixels stored the way the source stored them (the
activation works on the displayed image; the EXIF orientation is undone before encoding, so the source's
orientation tag stays true), and its EXIF, IPTC, XMP and ICC profile, copied with exiftool (each format
keeps what it can hold: WebP has no place for IPTC-IIM). A source's C2PA manifest is NOT copied: its
hashes bind the original's bytes; the activated file gets a new manifest naming the original as its
ingredient (credentials.py).

Why exiftool (Debian's ``libimage-exiftool-perl``): it copies every metadata block between JPEG, PNG and
WebP with the standard mappings, IPTC and vendor maker notes included, and it is the reference reader that
the tests check the released files with; Pillow writes EXIF, ICC and XMP but not IPTC, nor maker notes
across formats.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .config import OUTPUT_FORMATS
from .errors import InvalidInputError, StorageFullError
from .imageio import PNG_COMPRESS_LEVEL, SourceInfo

__all__ = ["Release", "resolve_release", "copy_metadata", "DEFAULT_QUALITY"]

DEFAULT_QUALITY = 95  # a lossy release's quality when neither the user nor the source says
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
# EXIF orientation -> the transposition that undoes what decoding applied (decoding: ImageOps.exif_transpose)
_UNDO_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                     4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
                     7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}
_APPLY_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                      4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                      7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Release:
    """How one activated image is written: its format, quality, stored orientation and chroma subsampling."""

    format: str = "png"  # "png", "jpeg" or "webp"
    quality: int | None = None  # lossy formats
    orientation: int = 1  # the source's EXIF orientation, kept in the released file's metadata
    subsampling: int | None = None  # JPEG: the source's (None: the encoder's default)

    @property
    def lossy(self) -> bool:
        return self.format != "png"

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.format]

    def encode(self, image: np.ndarray) -> bytes:
        """The file's bytes (no metadata yet) for DISPLAYED pixels (H, W, 3) uint8."""
        stored = Image.fromarray(image)
        if self.orientation in _UNDO_ORIENTATION:
            stored = stored.transpose(_UNDO_ORIENTATION[self.orientation])
        buffer = io.BytesIO()
        if self.format == "png":
            stored.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        elif self.format == "jpeg":
            extra = {} if self.subsampling is None else {"subsampling": self.subsampling}
            stored.save(buffer, format="JPEG", quality=self.quality, **extra)
        else:
            stored.save(buffer, format="WEBP", quality=self.quality, method=4)
        return buffer.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        """The displayed pixels of bytes this release encoded."""
        image = Image.open(io.BytesIO(data)).convert("RGB")
        if self.orientation in _APPLY_ORIENTATION:
            image = image.transpose(_APPLY_ORIENTATION[self.orientation])
        return np.asarray(image)

    def roundtrip(self, image: np.ndarray) -> tuple[np.ndarray, bytes]:
        """(the displayed pixels a viewer of the released file sees, the file's bytes)."""
        data = self.encode(image)
        return (self.decode(data) if self.lossy else image), data


def resolve_release(output: str, quality: int | None, source: SourceInfo | None) -> Release:
    """The release of one image: ``output`` ("auto" follows the source's format) at ``quality`` (lossy
    formats; default: a JPEG source's estimated quality, else `DEFAULT_QUALITY`)."""
    if output not in OUTPUT_FORMATS:
        raise InvalidInputError(f"output format must be one of {list(OUTPUT_FORMATS)}, got {output!r}")
    source = source or SourceInfo("PNG")
    fmt = output if output != "auto" else {"JPEG": "jpeg", "PNG": "png"}.get(source.format, "png")
    if fmt == "png":
        return Release("png", None, source.orientation)
    estimated = source.jpeg_quality if source.format == "JPEG" else None
    return Release(fmt, quality or estimated or DEFAULT_QUALITY, source.orientation,
                   source.subsampling if fmt == "jpeg" else None)


def copy_metadata(source: Path, target: Path) -> None:
    """Copy EXIF, IPTC, XMP and the ICC profile of ``source`` into ``target`` (in place), not its C2PA
    manifest.

    Raises:
        InvalidInputError: exiftool is missing or fails (the message says which file and why).
        StorageFullError: the disk is full.
    """
    exiftool = shutil.which("exiftool")
    if exiftool is None:
        raise InvalidInputError("exiftool is needed to keep the source's metadata in the released file: install "
                                "it (Debian: apt-get install libimage-exiftool-perl)")
    command = [exiftool, "-q", "-q", "-m", "-overwrite_original", "-tagsFromFile", str(source), "-all:all",
               "-icc_profile", "--jumbf:all", str(target)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "exiftool failed"
        full = shutil.disk_usage(target.parent).free < 1 << 20  # exiftool says "Error writing" on a full disk
        if "No space left" in done.stderr or ("Error writing" in reason and full):
            raise StorageFullError(f"{target}: no space left on the device; free some space and run again "
                                   "(nothing registered is lost)")
        raise InvalidInputError(f"{target}: cannot copy the metadata of {source.name} ({reason})")
