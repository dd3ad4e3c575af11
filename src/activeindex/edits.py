"""Named, parameterised, deterministic image edits used to make query copies (METHOD.md section 5).

Each edit maps an (H, W, 3) uint8 RGB array to a new one. Look them up by name (`get_edit`); an
unknown name raises `UnknownNameError`, and an edit that fails raises: nothing silently becomes "none".
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance

from .errors import UnknownNameError

__all__ = ["Edit", "register_edit", "list_edits", "get_edit"]

Edit = Callable[[np.ndarray], np.ndarray]
_EDITS: dict[str, Edit] = {}


def register_edit(name: str, edit: Edit) -> None:
    """Make an edit available by name."""
    _EDITS[name] = edit


def list_edits() -> list[str]:
    """Names of the registered edits, in registration order."""
    return list(_EDITS)


def get_edit(name: str) -> Edit:
    """The edit registered under ``name``."""
    if name not in _EDITS:
        raise UnknownNameError(f"unknown edit {name!r}; choose one of {list_edits()}")
    return _EDITS[name]


def _pil(edit: Callable[[Image.Image], Image.Image]) -> Edit:
    """An array edit from a PIL edit."""
    return lambda image: np.asarray(edit(Image.fromarray(image)).convert("RGB"))


def brightness(factor: float) -> Edit:
    """Multiply intensities by ``factor`` (clipped)."""
    return _pil(lambda im: ImageEnhance.Brightness(im).enhance(factor))


def contrast(factor: float) -> Edit:
    """Blend with the mean gray level: ``factor`` > 1 raises contrast."""
    return _pil(lambda im: ImageEnhance.Contrast(im).enhance(factor))


def jpeg(quality: int) -> Edit:
    """Re-encode as JPEG at ``quality``."""

    def _jpeg(im: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return _pil(_jpeg)


register_edit("none", lambda image: image.copy())
register_edit("brightness_0.5", brightness(0.5))
register_edit("brightness_2.0", brightness(2.0))
register_edit("contrast_0.5", contrast(0.5))
register_edit("contrast_2.0", contrast(2.0))
register_edit("jpeg_50", jpeg(50))
