"""Named, parameterised, deterministic image edits: the queries of the evaluation (METHOD.md section 5).

An edit maps an (H, W, 3) uint8 RGB array and a seeded ``numpy.random.Generator`` to a new array. Look
edits up by name (`get_edit`, `apply_edit`); an unknown name raises `UnknownNameError`, and an edit that
fails raises `EditError`: nothing ever silently becomes "none".

AugLy 1.0 (Meta, MIT) provides the DISC21 overlays (meme, screenshot, emoji, text, pixelisation, pixel
shuffling); `_augly()` restores the one Pillow API it still calls (``getsize_multiline``). The rest is
plain PIL / numpy / torch.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from ..errors import ActiveIndexError, UnknownNameError

__all__ = ["Edit", "EditError", "register_edit", "list_edits", "get_edit", "apply_edit", "PAPER_EDITS",
           "FIXED_EDITS", "SWEEPS", "sweep", "brightness", "contrast", "hue", "gaussian_blur", "jpeg", "rotation",
           "center_crop", "resize_area", "meme", "screenshot", "auto"]

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]
_EDITS: dict[str, Edit] = {}


class EditError(ActiveIndexError):
    """An edit failed on an image."""


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


def apply_edit(name: str, image: np.ndarray, seed: int = 0) -> np.ndarray:
    """Apply a named edit with a seed: (H, W, 3) uint8 -> (H', W', 3) uint8.

    Raises:
        UnknownNameError: no such edit.
        EditError: the edit failed (never silently skipped).
    """
    edit = get_edit(name)
    try:
        out = edit(image, np.random.default_rng(seed))
    except Exception as e:
        raise EditError(f"edit {name!r} failed on a {image.shape[1]}x{image.shape[0]} image: {e}") from e
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------- building blocks


def _pil(edit: Callable[[Image.Image], Image.Image]) -> Edit:
    """An array edit from a deterministic PIL edit."""
    return lambda image, rng: np.asarray(edit(Image.fromarray(image)).convert("RGB"))


def brightness(factor: float) -> Edit:
    """Multiply intensities by ``factor`` (clipped): torchvision's adjust_brightness."""
    return _pil(lambda im: ImageEnhance.Brightness(im).enhance(factor))


def contrast(factor: float) -> Edit:
    """Blend with the mean gray level: torchvision's adjust_contrast."""
    return _pil(lambda im: ImageEnhance.Contrast(im).enhance(factor))


def hue(shift: float) -> Edit:
    """Rotate hues by ``shift`` of the colour circle (-0.5..0.5): torchvision's adjust_hue."""

    def _hue(im: Image.Image) -> Image.Image:
        h, s, v = im.convert("HSV").split()
        h = h.point(lambda x: (x + round(shift * 255)) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    return _pil(_hue)


def gaussian_blur(kernel: int, sigma: float | None = None) -> Edit:
    """Gaussian blur with a ``kernel`` x ``kernel`` window (reflect padding), sigma default kernel / 5.5."""
    sigma = sigma if sigma is not None else kernel / 5.5  # kernel 11 -> sigma 2, the paper's setting

    def _blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = torch.arange(kernel, dtype=torch.float32) - (kernel - 1) / 2
        weights = torch.exp(-(x ** 2) / (2 * sigma ** 2))
        weights = (weights / weights.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        t = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1)[None]
        p = kernel // 2
        t = F.conv2d(F.pad(t, (p, p, 0, 0), mode="reflect"), weights, groups=3)
        t = F.conv2d(F.pad(t, (0, 0, p, p), mode="reflect"), weights.transpose(2, 3), groups=3)
        return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    return _blur


def jpeg(quality: int) -> Edit:
    """Re-encode as JPEG at ``quality``."""

    def _jpeg(im: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        im.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return _pil(_jpeg)


def rotation(degrees: float) -> Edit:
    """Rotate counter-clockwise, expanding the canvas (black corners)."""
    return _pil(lambda im: im.rotate(degrees, resample=Image.BILINEAR, expand=True, fillcolor=(0, 0, 0)))


def center_crop(area: float) -> Edit:
    """Keep the centre ``area`` fraction of the pixels, aspect ratio kept."""

    def _crop(im: Image.Image) -> Image.Image:
        w, h = im.size
        cw, ch = round(w * math.sqrt(area)), round(h * math.sqrt(area))
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.crop((left, top, left + cw, top + ch))

    return _pil(_crop)


def resize_area(area: float) -> Edit:
    """Resize to ``area`` of the pixels, aspect ratio kept (bilinear)."""
    return _pil(lambda im: im.resize((max(1, round(im.width * math.sqrt(area))),
                                      max(1, round(im.height * math.sqrt(area)))), Image.BILINEAR))


@cache
def _augly():
    """AugLy's image functions, with the Pillow API it still calls restored (removed in Pillow 10)."""
    if not hasattr(ImageFont.FreeTypeFont, "getsize_multiline"):

        def getsize_multiline(font, text, *args, **kwargs):
            box = ImageDraw.Draw(Image.new("L", (1, 1))).multiline_textbbox((0, 0), text, font=font)
            return box[2], box[3]

        ImageFont.FreeTypeFont.getsize_multiline = getsize_multiline
    import augly.image.functional as augly_image

    return augly_image


def _augly_assets() -> Path:
    import augly.utils

    return Path(augly.utils.__file__).parent.parent / "assets"


def meme() -> Edit:
    """AugLy's meme format: a white caption band with black text above the image."""
    return _pil(lambda im: _augly().meme_format(im, text="LOL", caption_height=max(40, im.height // 4)))


def screenshot() -> Edit:
    """AugLy's overlay onto the MOBILE screenshot template (the paper's choice)."""
    template = _augly_assets() / "screenshot_templates" / "mobile.png"
    return _pil(lambda im: _augly().overlay_onto_screenshot(im, template_filepath=str(template)))


# ---------------------------------------------------------------- "auto": the DISC21-style composition


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _emoji(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    emojis = sorted((_augly_assets() / "twemojis").rglob("*.png"))
    return _augly().overlay_emoji(im, emoji_path=str(emojis[rng.integers(len(emojis))]),
                                  emoji_size=_uniform(rng, 0.1, 0.3), x_pos=_uniform(rng, 0, 0.7),
                                  y_pos=_uniform(rng, 0, 0.7), opacity=_uniform(rng, 0.5, 1.0))


def _text(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    text = [int(i) for i in rng.integers(0, 1000, size=rng.integers(3, 10))]
    color = tuple(int(c) for c in rng.integers(0, 256, 3))
    return _augly().overlay_text(im, text=text, font_size=_uniform(rng, 0.1, 0.3), color=color,
                                 x_pos=_uniform(rng, 0, 0.5), y_pos=_uniform(rng, 0, 0.7))


def _crop_sides(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random window whose sides keep 30-60% of the image's sides."""
    w, h = im.size
    cw, ch = round(w * _uniform(rng, 0.3, 0.6)), round(h * _uniform(rng, 0.3, 0.6))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((left, top, left + cw, top + ch))


def _perspective(im: Image.Image, rng: np.random.Generator, sigma: float = 0.08) -> Image.Image:
    """Move each corner by N(0, sigma x side) and warp (black outside)."""
    w, h = im.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    dst = src + rng.normal(0, sigma, (4, 2)) * [w, h]
    # coefficients mapping output (dst) coordinates to input (src) ones, as PIL's PERSPECTIVE wants
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
    coeffs = np.linalg.solve(np.array(rows), src.reshape(-1))
    return im.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BILINEAR)


def _pad_square(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = max(im.size)
    canvas = Image.new("RGB", (side, side), tuple(int(c) for c in rng.integers(0, 256, 3)))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas


def _aspect(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    ratio = math.exp(_uniform(rng, math.log(0.5), math.log(2.0)))
    return im.resize((max(1, round(im.width * math.sqrt(ratio))), max(1, round(im.height / math.sqrt(ratio)))),
                     Image.BILINEAR)


def _palette(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return im.quantize(colors=int(rng.integers(2, 17))).convert("RGB")


AUTO_FAMILIES: dict[str, dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]]] = {
    "colour": {
        "brightness": lambda im, rng: ImageEnhance.Brightness(im).enhance(_uniform(rng, 0.1, 1.9)),
        "grayscale": lambda im, rng: im.convert("L").convert("RGB"),
        "saturation": lambda im, rng: ImageEnhance.Color(im).enhance(_uniform(rng, 2, 5)),
    },
    "overlay": {"emoji": _emoji, "text": _text},
    "pixel": {
        "blur": lambda im, rng: im.filter(ImageFilter.GaussianBlur(_uniform(rng, 5, 10))),
        "palette": _palette,
        "jpeg": lambda im, rng: Image.fromarray(jpeg(int(rng.integers(5, 26)))(np.asarray(im), rng)),
        "edge_enhance": lambda im, rng: im.filter(ImageFilter.EDGE_ENHANCE_MORE),
        "pixelise": lambda im, rng: _augly().pixelization(im, ratio=_uniform(rng, 0.2, 0.5)),
        "shuffle": lambda im, rng: _augly().shuffle_pixels(im, factor=_uniform(rng, 0.1, 0.3),
                                                           seed=int(rng.integers(1 << 30))),
    },
    "spatial": {
        "crop": _crop_sides,
        "hflip": lambda im, rng: im.transpose(Image.FLIP_LEFT_RIGHT),
        "aspect_ratio": _aspect,
        "screenshot": lambda im, rng: Image.fromarray(screenshot()(np.asarray(im), rng)),
        "pad_square": _pad_square,
        "perspective": _perspective,
        "rotate": lambda im, rng: im.rotate(_uniform(rng, -90, 90), resample=Image.BILINEAR, expand=True),
    },
}


def auto_plan(rng: np.random.Generator) -> list[tuple[str, str]]:
    """Draw the (family, filter) steps of one "auto" edit: k in 1-4 (p .1 .2 .3 .4) distinct families,
    one filter each; a crop goes first and a palette last, the rest in drawn order."""
    k = int(rng.choice([1, 2, 3, 4], p=[0.1, 0.2, 0.3, 0.4]))
    families = [str(f) for f in rng.choice(list(AUTO_FAMILIES), size=k, replace=False)]
    steps = [(f, str(rng.choice(list(AUTO_FAMILIES[f])))) for f in families]
    return sorted(steps, key=lambda s: {"crop": 0, "palette": 2}.get(s[1], 1))


def auto() -> Edit:
    """The DISC21-style random composition of METHOD.md section 5 (deterministic given the generator)."""

    def _auto(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        im = Image.fromarray(image)
        for family, name in auto_plan(rng):
            im = AUTO_FAMILIES[family][name](im, rng).convert("RGB")
        return np.asarray(im)

    return _auto


# ---------------------------------------------------------------- the registry

FIXED_EDITS: dict[str, Edit] = {
    "none": lambda image, rng: image.copy(),
    "contrast_0.5": contrast(0.5), "contrast_2.0": contrast(2.0),
    "brightness_0.5": brightness(0.5), "brightness_2.0": brightness(2.0),
    "hue_0.2": hue(0.2), "blur_11": gaussian_blur(11), "jpeg_50": jpeg(50),
    "rotation_25": rotation(25), "rotation_90": rotation(90),
    "center_crop_0.5": center_crop(0.5), "resize_0.5": resize_area(0.5),
    "meme": meme(), "screenshot": screenshot(), "auto": auto(),
}
PAPER_EDITS = [name for name in FIXED_EDITS if name != "screenshot"]  # the 14 columns the paper averages

for _name, _edit in FIXED_EDITS.items():
    register_edit(_name, _edit)

# parameter sweeps for robustness curves: family -> (parameter name, values, edit factory)
SWEEPS: dict[str, tuple[str, list[float], Callable[[float], Edit]]] = {
    "rotation": ("degrees", [0, 5, 10, 15, 20, 25, 30, 45, 60, 90], rotation),
    "center_crop": ("area kept", [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], center_crop),
    "jpeg": ("quality", [100, 90, 75, 50, 30, 20, 10, 5], lambda q: jpeg(int(q))),
    "blur": ("kernel", [1, 3, 5, 7, 11, 15, 21], lambda k: gaussian_blur(int(k))),
    "brightness": ("factor", [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5], brightness),
    "contrast": ("factor", [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5], contrast),
}


def sweep(family: str) -> list[tuple[float, Edit]]:
    """(parameter value, edit) pairs of a sweep family (see `SWEEPS`)."""
    if family not in SWEEPS:
        raise UnknownNameError(f"unknown sweep {family!r}; choose one of {sorted(SWEEPS)}")
    _, values, make = SWEEPS[family]
    return [(v, make(v)) for v in values]
