"""Named, parameterised, deterministic image edits: the queries of the evaluation (METHOD.md section 5) and
of calibration (calibrate.py); the benchmark (bench/) imports them from here.

Above ~400 lines because it is one registry: the paper's fixed edits, the DISC21 "auto" composition and the
AugLy shims they share belong together, and splitting them would split the registry.

An edit maps an (H, W, 3) uint8 RGB array and a seeded ``numpy.random.Generator`` to a new array. Look
edits up by name (`get_edit`, `apply_edit`); an unknown name raises `UnknownNameError`, and an edit that
fails raises `EditError`: nothing ever silently becomes "none".

AugLy 1.0 (Meta, MIT) provides the DISC21 overlays (meme, screenshot, emoji, text, pixelisation, pixel
shuffling, aspect ratio, padding); `_augly()` restores the one Pillow API it still calls
(``getsize_multiline``). The rest is plain PIL / numpy / torch. "auto" draws its filters and their
parameters from the seed alone (an int or a ``numpy.random.SeedSequence``); where its draws come from, and
where they may differ from the DISC21 generator, is listed in `AUTO_DEVIATIONS`.
"""
from __future__ import annotations

import io
import json
import math
import pickle
import unicodedata
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from .errors import ActiveIndexError, UnknownNameError

__all__ = ["Edit", "EditError", "register_edit", "list_edits", "get_edit", "apply_edit", "PAPER_EDITS",
           "FIXED_EDITS", "SWEEPS", "sweep", "brightness", "contrast", "hue", "gaussian_blur", "jpeg", "rotation",
           "center_crop", "resize_area", "random_resized_crop", "random_crop", "GEOMETRIC_EDITS",
           "meme", "screenshot", "auto", "auto_plan",
           "AUTO_FAMILIES", "AUTO_DEVIATIONS", "draw_emoji", "draw_text", "draw_screenshot", "Seed"]

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]
Seed = int | np.random.SeedSequence  # what np.random.default_rng accepts to start a generator
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


def apply_edit(name: str, image: np.ndarray, seed: Seed = 0) -> np.ndarray:
    """Apply a named edit with a seed (int or ``numpy.random.SeedSequence``): (H, W, 3) uint8 -> (H', W', 3) uint8.

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


def random_resized_crop(area: tuple[float, float] = (0.25, 1.0), aspect: tuple[float, float] = (3 / 4, 4 / 3),
                        flip: float = 0.5) -> Edit:
    """A random window of ``area`` of the pixels with an aspect-ratio change in ``aspect`` (log-uniform),
    mirrored with probability ``flip``: the usual training augmentation, which turns one photo into many
    realistic descriptors (nearby, not equal), for k-means and as crowded real-like references."""

    def _crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        kept = _uniform(rng, *area) * h * w
        ratio = math.exp(_uniform(rng, math.log(aspect[0]), math.log(aspect[1])))
        cw = min(w, max(1, round(math.sqrt(kept * ratio))))
        ch = min(h, max(1, round(math.sqrt(kept / ratio))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out = image[top:top + ch, left:left + cw]
        return out[:, ::-1] if rng.random() < flip else out

    return _crop


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
    """AugLy's meme format with its defaults: a white 250-pixel caption band with black "LOL" above the image."""
    return _pil(lambda im: _augly().meme_format(im))  # AugLy meme_format defaults: caption_height=250, text "LOL"


def screenshot() -> Edit:
    """AugLy's overlay onto the MOBILE screenshot template (the paper's choice)."""
    template = _augly_assets() / "screenshot_templates" / "mobile.png"
    return _pil(lambda im: _augly().overlay_onto_screenshot(im, template_filepath=str(template)))


# ---------------------------------------------------------------- "auto": the DISC21-style composition
#
# DISC21's queries were made with AugLy (AugLy README, "Uses of AugLy in the wild"), but the generator script is not
# public and the DISC21 paper's appendix could not be read from the sources at hand. So each draw below names where it
# comes from: METHOD.md section 5 (families, filters and most ranges), AugLy 1.0's own code and defaults
# (augly/image/functional.py, transforms.py, assets/), or, where AugLy only has a fixed default and a random range is
# needed, SSCD's "advanced" augmentations (facebookresearch/sscd-copy-detection, sscd/transforms/settings.py; Pizzi et
# al. 2022, by DISC21 co-authors), whose ranges contain AugLy's defaults. `AUTO_DEVIATIONS` lists what stays unverified.

AUTO_DEVIATIONS: list[str] = [
    "The DISC21 generator script is not public and the DISC21 paper's appendix could not be read from the sources "
    "available here, so no parameter of 'auto' was checked against DISC21 itself; the draws follow AugLy 1.0 (the "
    "library DISC21 was made with) and, where AugLy has only a fixed default, SSCD's augmentation ranges.",
    "The number of filters (1-4 with p = .1/.2/.3/.4, one per family, crop first, palette last), the four families "
    "and the ranges of brightness, saturation, blur, palette, JPEG, pixelisation, pixel shuffling, crop and rotation "
    "come from our METHOD.md, not from a DISC21 source.",
    "Emoji overlay: one of AugLy 1.0's 872 Twemojis, side U(0.1, 0.5) of the shorter image side, opacity U(0.7, 1), "
    "placed fully inside the image (SSCD's ranges; AugLy's RandomEmojiOverlay defaults are size 0.15 of the height, "
    "opacity 1, position (0.4, 0.8), smileys only); no source found here supports an emoji size of 0.4-0.8 of the "
    "image side.",
    "Text overlay: one line of 5 to 15 characters in one of AugLy 1.0's 364 bundled fonts drawn at random; 5 is "
    "AugLy's default text length, while the upper bound of 15, the single line and the uniform choice of font are "
    "our own unverified choices.",
    "Text characters are drawn uniformly from the chosen font's AugLy charset, leaving out control characters and "
    "line or paragraph separators (NUL, CR, U+2029), which Pillow's text layout cannot draw in some fonts; size "
    "U(0.1, 0.3) of the shorter side, opacity U(0.1, 1), a random RGB colour and a position inside the image follow "
    "SSCD, where AugLy's defaults are 0.15, 1, red and (0, 0.5).",
    "Screenshot overlay: one of the two templates AugLy ships (mobile, web) drawn with equal odds; which templates "
    "and odds DISC21 used could not be verified (the fixed 'screenshot' edit always uses the mobile one).",
    "Perspective: corners move by N(0, sigma) with sigma 5% of the longer side (AugLy's default is an absolute 50 px, "
    "i.e. 5% at 1000 px) and the black borders are kept, as AugLy's default (crop_out_black_border=False) does.",
    "Rotation: the angle is U(-90, 90) (METHOD.md; AugLy's RandomRotation default is U(0, 180)) and the result is "
    "cropped to the largest axis-aligned rectangle inside, like AugLy's rotate, but rounded inward with a 1-pixel "
    "margin so that no black corner is left (AugLy's crop can keep a few black pixels).",
    "Pad to square uses AugLy's default black border and the aspect-ratio change sets the width/height ratio to "
    "U(0.5, 2) at constant area as AugLy's RandomAspectRatio does; palette reduction and edge enhancement are Pillow "
    "filters with no AugLy counterpart, kept from METHOD.md without a DISC21 source.",
]

_EMOJI_SIDE = (0.1, 0.5)  # SSCD OverlayEmoji emoji_size U(0.1, 0.5) of the largest emoji that fits
_TEXT_LENGTH = (5, 15)  # AugLy DEFAULT_TEXT_INDICES has 5 characters; 15 is our (unverified) upper bound


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


@cache
def _emoji_paths() -> list[Path]:
    """Every Twemoji AugLy ships (SSCD draws from all of them; AugLy's RandomEmojiOverlay only from smileys)."""
    return sorted((_augly_assets() / "twemojis").rglob("*.png"))


@cache
def _font_paths() -> list[Path]:
    """AugLy's bundled fonts that come with the charset (.pkl) its overlay_text needs."""
    return sorted(p for p in (_augly_assets() / "fonts").glob("*.ttf") if p.with_suffix(".pkl").exists())


@cache
def _charset(font: Path) -> tuple[int, ...]:
    """The code points AugLy's overlay_text draws with ``font`` (its bundled .pkl, indexed modulo its length)."""
    with open(font.with_suffix(".pkl"), "rb") as f:  # AugLy's own asset
        return tuple(int(c) for c in pickle.load(f))


@cache
def _drawable(font: Path) -> tuple[int, ...]:
    """Indices into `_charset` of the characters that can be drawn on one line: no control characters and no line or
    paragraph separators (NUL, CR, U+2029 make Pillow's raqm layout fail in some of AugLy's fonts)."""
    return tuple(i for i, c in enumerate(_charset(font)) if unicodedata.category(chr(c)) not in ("Cc", "Zl", "Zp"))


@cache
def _screenshot_templates() -> list[Path]:
    """AugLy's screenshot templates, those with a bounding box in its bboxes.json (mobile.png, web.png)."""
    folder = _augly_assets() / "screenshot_templates"
    return sorted(folder / name for name in json.loads((folder / "bboxes.json").read_text()))


def draw_emoji(rng: np.random.Generator, width: int, height: int) -> dict[str, Any]:
    """Keywords of AugLy's ``overlay_emoji`` for one random emoji on a ``width`` x ``height`` image."""
    emojis = _emoji_paths()
    path = emojis[int(rng.integers(len(emojis)))]
    side = _uniform(rng, *_EMOJI_SIDE) * min(width, height)  # Twemojis are square
    return {"emoji_path": str(path),
            "emoji_size": side / height,  # AugLy: the emoji's height is emoji_size x the image height
            "x_pos": _uniform(rng, 0, 1) * (1 - side / width),  # SSCD: anywhere, fully inside
            "y_pos": _uniform(rng, 0, 1) * (1 - side / height),
            "opacity": _uniform(rng, 0.7, 1.0)}  # SSCD OverlayEmoji opacity U(0.7, 1)


def draw_text(rng: np.random.Generator, width: int, height: int) -> dict[str, Any]:
    """Keywords of AugLy's ``overlay_text`` for one random line of text on a ``width`` x ``height`` image."""
    fonts = _font_paths()
    font = fonts[int(rng.integers(len(fonts)))]  # one of AugLy's fonts at random per edit (SSCD FontRepository)
    length = int(rng.integers(_TEXT_LENGTH[0], _TEXT_LENGTH[1] + 1))
    # AugLy's text is indices into the font's charset: drawn uniformly among the characters that can be laid out
    chars, drawable = _charset(font), _drawable(font)
    text = [drawable[int(i)] for i in rng.integers(len(drawable), size=length)]
    font_size = _uniform(rng, 0.1, 0.3)  # SSCD OverlayText font_size U(0.1, 0.3) of the shorter side
    opacity = _uniform(rng, 0.1, 1.0)  # SSCD OverlayText opacity U(0.1, 1)
    color = tuple(int(c) for c in rng.integers(0, 256, 3))  # SSCD: uniform RGB
    # SSCD places the text inside the image: measure it with the font and size AugLy's overlay_text will use
    pil_font = ImageFont.truetype(str(font), max(1, int(min(width, height) * font_size)))
    right, bottom = pil_font.getbbox("".join(chr(chars[i]) for i in text))[2:]
    return {"text": text, "font_file": str(font), "font_size": font_size, "opacity": opacity, "color": color,
            "x_pos": _uniform(rng, 0, 1) * max(0.0, 1 - right / width),
            "y_pos": _uniform(rng, 0, 1) * max(0.0, 1 - bottom / height)}


def draw_screenshot(rng: np.random.Generator) -> dict[str, Any]:
    """Keywords of AugLy's ``overlay_onto_screenshot``: one of its templates, with equal odds."""
    templates = _screenshot_templates()
    return {"template_filepath": str(templates[int(rng.integers(len(templates)))])}


def _emoji(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _augly().overlay_emoji(im, **draw_emoji(rng, im.width, im.height))


def _text(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _augly().overlay_text(im, **draw_text(rng, im.width, im.height))


def _screenshot(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _augly().overlay_onto_screenshot(im, **draw_screenshot(rng))


def _crop_sides(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random window whose sides keep 30-60% of the image's sides (METHOD.md)."""
    w, h = im.size
    cw, ch = max(1, round(w * _uniform(rng, 0.3, 0.6))), max(1, round(h * _uniform(rng, 0.3, 0.6)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return im.crop((left, top, left + cw, top + ch))


def _perspective(im: Image.Image, rng: np.random.Generator, sigma: float = 0.05) -> Image.Image:
    """AugLy's perspective_transform: each corner moves by N(0, sigma x the longer side), bicubic warp, black
    borders kept (its default crop_out_black_border=False). AugLy's default sigma is 50 px; ours is relative."""
    w, h = im.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    dst = src + rng.normal(0, sigma * max(w, h), (4, 2))
    # coefficients mapping output (dst) coordinates to input (src) ones, as PIL's PERSPECTIVE wants
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
    coeffs = np.linalg.solve(np.array(rows), src.reshape(-1))
    return im.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC)


def _rotate_crop(im: Image.Image, degrees: float) -> Image.Image:
    """Rotate counter-clockwise and keep the largest axis-aligned rectangle inside (AugLy's rotate), rounded inward
    with a 1-pixel margin so that no black (or black-blended) pixel is left."""
    from augly.image.utils import rotated_rect_with_max_area

    rotated = im.rotate(degrees, resample=Image.BILINEAR, expand=True)
    wr, hr = rotated_rect_with_max_area(im.width, im.height, degrees)
    margin = 0 if degrees % 90 == 0 else 1
    cx, cy = rotated.width / 2, rotated.height / 2
    left, top = math.ceil(cx - wr / 2) + margin, math.ceil(cy - hr / 2) + margin
    right, bottom = math.floor(cx + wr / 2) - margin, math.floor(cy + hr / 2) - margin
    if right <= left or bottom <= top:  # a tiny image: keep its centre pixel
        left, top = min(max(0, int(cx)), rotated.width - 1), min(max(0, int(cy)), rotated.height - 1)
        right, bottom = left + 1, top + 1
    return rotated.crop((left, top, right, bottom))


def _palette(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return im.quantize(colors=int(rng.integers(2, 17))).convert("RGB")


AUTO_FAMILIES: dict[str, dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]]] = {
    "colour": {
        # METHOD.md U(0.1, 1.9) (AugLy RandomBrightness default U(0, 2)); AugLy's brightness is this same enhancer
        "brightness": lambda im, rng: ImageEnhance.Brightness(im).enhance(_uniform(rng, 0.1, 1.9)),
        "grayscale": lambda im, rng: im.convert("L").convert("RGB"),  # AugLy grayscale default mode "luminosity"
        "saturation": lambda im, rng: ImageEnhance.Color(im).enhance(_uniform(rng, 2, 5)),  # METHOD.md U(2, 5)
    },
    "overlay": {"emoji": _emoji, "text": _text},
    "pixel": {
        # METHOD.md radius U(5, 10) (AugLy RandomBlur default U(0, 10)); AugLy's blur is this Gaussian filter
        "blur": lambda im, rng: im.filter(ImageFilter.GaussianBlur(_uniform(rng, 5, 10))),
        "palette": _palette,  # METHOD.md 2-16 colours
        "jpeg": lambda im, rng: Image.fromarray(jpeg(int(rng.integers(5, 26)))(np.asarray(im), rng)),  # q 5-25
        "edge_enhance": lambda im, rng: im.filter(ImageFilter.EDGE_ENHANCE_MORE),
        # METHOD.md U(0.2, 0.5) (AugLy RandomPixelization default U(0.1, 1))
        "pixelise": lambda im, rng: _augly().pixelization(im, ratio=_uniform(rng, 0.2, 0.5)),
        "shuffle": lambda im, rng: _augly().shuffle_pixels(im, factor=_uniform(rng, 0.1, 0.3),  # METHOD.md
                                                           seed=int(rng.integers(1 << 30))),
    },
    "spatial": {
        "crop": _crop_sides,
        "hflip": lambda im, rng: im.transpose(Image.FLIP_LEFT_RIGHT),
        # AugLy RandomAspectRatio default U(0.5, 2) (uniform), applied by change_aspect_ratio at constant area
        "aspect_ratio": lambda im, rng: _augly().change_aspect_ratio(im, ratio=_uniform(rng, 0.5, 2.0)),
        "screenshot": _screenshot,
        "pad_square": lambda im, rng: _augly().pad_square(im),  # AugLy default colour: black
        "perspective": _perspective,
        "rotate": lambda im, rng: _rotate_crop(im, _uniform(rng, -90, 90)),  # METHOD.md U(-90, 90)
    },
}


def auto_plan(rng: np.random.Generator | Seed) -> list[tuple[str, str]]:
    """Draw the (family, filter) steps of one "auto" edit: k in 1-4 (p .1 .2 .3 .4) distinct families,
    one filter each; a crop goes first and a palette last, the rest in drawn order (METHOD.md section 5).

    ``rng`` is a generator, or a seed (int or ``numpy.random.SeedSequence``) to make one from.
    """
    rng = np.random.default_rng(rng)
    k = int(rng.choice([1, 2, 3, 4], p=[0.1, 0.2, 0.3, 0.4]))
    families = [str(f) for f in rng.choice(list(AUTO_FAMILIES), size=k, replace=False)]
    steps = [(f, str(rng.choice(list(AUTO_FAMILIES[f])))) for f in families]
    return sorted(steps, key=lambda s: {"crop": 0, "palette": 2}.get(s[1], 1))


def auto() -> Edit:
    """The DISC21-style random composition of METHOD.md section 5 (see `AUTO_DEVIATIONS`).

    The returned edit takes ``(image, rng)`` where ``rng`` is a ``numpy.random.Generator`` or a seed (int or
    ``numpy.random.SeedSequence``); the output is a function of the image and that seed alone.
    """

    def _auto(image: np.ndarray, rng: np.random.Generator | Seed) -> np.ndarray:
        rng = np.random.default_rng(rng)
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


def random_crop(area: tuple[float, float] = (0.3, 0.7)) -> Edit:
    """A window of U(``area``) of the pixels at a random position, the aspect ratio kept."""

    def _crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        side = math.sqrt(rng.uniform(*area))
        ch, cw = max(1, round(h * side)), max(1, round(w * side))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return image[top:top + ch, left:left + cw].copy()

    return _crop


def _crop_rotate_jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 50-90 %, a turn of U(-20, 20) degrees, then JPEG 75: a re-framed, straightened re-share."""
    cropped = random_crop((0.5, 0.9))(image, rng)
    return jpeg(75)(rotation(float(rng.uniform(-20, 20)))(cropped, rng), rng)


# geometric copies the indexed views (views.py) were NOT chosen from: the benchmark's held-out geometric rows
GEOMETRIC_EDITS: dict[str, Edit] = {
    "rotation_10": rotation(10), "rotation_20": rotation(20), "rotation_35": rotation(35),
    "rotation_45": rotation(45), "random_crop_0.3-0.7": random_crop((0.3, 0.7)),
    "crop_rotate_jpeg": _crop_rotate_jpeg, "mirror": _pil(lambda im: im.transpose(Image.FLIP_LEFT_RIGHT)),
}
FIXED_EDITS |= GEOMETRIC_EDITS

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
