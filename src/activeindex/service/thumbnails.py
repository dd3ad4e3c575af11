"""Thumbnails of registered images: small JPEGs made from a reduced decode, kept in a small cache.

A camera JPEG is decoded at 1/2 to 1/8 of its size (libjpeg's DCT scaling, PIL's ``draft``), so a 64-megapixel
file costs about one megapixel of memory; other formats are decoded whole once, then served from the cache
until the file changes. The service runs `Thumbnails.get` in its bounded search pool.
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError
from ..imageio import ImageLimits

__all__ = ["Thumbnails", "thumbnail"]

SIDE = 256  # a thumbnail's longest side, pixels
ENTRIES = 1024  # thumbnails cached (10-20 kB each)


class Thumbnails:
    """JPEG thumbnails of image files, cached by (path, size, modification time): a file replaced on disk gets
    a new one; the least recently used go first. Safe to call from several threads.

    Args:
        side: the longest side of a thumbnail, pixels.
        entries: how many thumbnails the cache holds.
    """

    def __init__(self, side: int = SIDE, entries: int = ENTRIES):
        self.side, self.entries = side, entries
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike) -> bytes:
        """The JPEG thumbnail of ``path`` (made now, or cached).

        Raises:
            ImageDecodeError: the file is missing, unreadable or not an image.
        """
        try:
            stat = os.stat(path)
        except OSError as e:
            raise ImageDecodeError(f"{path}: cannot read ({e.strerror or e})") from e
        key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = thumbnail(path, self.side)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        return data


def thumbnail(path: str | os.PathLike, side: int = SIDE) -> bytes:
    """A JPEG of at most ``side`` x ``side`` pixels of an image file, its EXIF orientation applied, transparency
    over white.

    Raises:
        ImageDecodeError: the file is unreadable, not an image, or beyond the library's pixel limit.
    """
    try:
        with Image.open(path) as image:
            if image.width * image.height > ImageLimits().max_pixels:
                raise ImageDecodeError(f"{path}: more than {ImageLimits().max_pixels} pixels")
            image.thumbnail((side, side))  # reads a JPEG at a reduced scale (draft) before it resizes
            small = _rgb(ImageOps.exif_transpose(image))
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{path}: unreadable image ({e})") from e
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _rgb(image: Image.Image) -> Image.Image:
    """Grey or RGB as JPEG holds them; transparency composed over white."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, "white")
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return image.convert("RGB")
