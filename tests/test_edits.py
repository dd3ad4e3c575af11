"""Each edit's parameters checked on a real photo; "auto" is seeded and follows its distributions."""
from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from activeindex.edits import (
    AUTO_DEVIATIONS,
    AUTO_FAMILIES,
    PAPER_EDITS,
    EditError,
    apply_edit,
    auto,
    auto_plan,
    draw_emoji,
    draw_screenshot,
    draw_text,
    sweep,
)
from activeindex.errors import UnknownNameError
from activeindex.imageio import load_image


@pytest.fixture(scope="module")
def photo(photo_paths) -> np.ndarray:
    return load_image(photo_paths[1])  # coffee, 400 x 600


@pytest.fixture(scope="module")
def thumb(photo) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).resize((72, 48), Image.BILINEAR))  # keeps the auto tests fast


def test_the_paper_averages_fourteen_edits():
    assert len(PAPER_EDITS) == 14 and "screenshot" not in PAPER_EDITS and "auto" in PAPER_EDITS


def test_center_crop_keeps_half_the_area(photo):
    out = apply_edit("center_crop_0.5", photo)
    assert out.shape[0] * out.shape[1] / (400 * 600) == pytest.approx(0.5, abs=0.005)
    top, left = (400 - out.shape[0]) // 2, (600 - out.shape[1]) // 2
    np.testing.assert_array_equal(out, photo[top:top + out.shape[0], left:left + out.shape[1]])


def test_resize_halves_the_area(photo):
    out = apply_edit("resize_0.5", photo)
    assert out.shape[:2] == (283, 424)


def test_jpeg_50_really_reencodes(photo):
    out = apply_edit("jpeg_50", photo)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=50)
    np.testing.assert_array_equal(out, np.asarray(Image.open(buffer)))
    assert np.abs(out.astype(int) - photo).mean() > 1.0


def test_rotation_expands_with_black_corners(photo):
    out = apply_edit("rotation_25", photo)
    c, s = math.cos(math.radians(25)), math.sin(math.radians(25))
    assert abs(out.shape[1] - (600 * c + 400 * s)) <= 2 and abs(out.shape[0] - (600 * s + 400 * c)) <= 2
    assert (out[0, 0] == 0).all() and (out[-1, -1] == 0).all()
    assert apply_edit("rotation_90", photo).shape[:2] == (600, 400)


def test_brightness_and_contrast_factors(photo):
    dark = photo.astype(int) < 100
    bright = apply_edit("brightness_2.0", photo).astype(int)
    assert np.abs(bright[dark] - 2 * photo.astype(int)[dark]).max() <= 1
    low = apply_edit("contrast_0.5", photo).astype(float)
    assert low.std() == pytest.approx(photo.std() / 2, rel=0.05)


def test_hue_shift_rotates_the_hue_channel(photo):
    out = apply_edit("hue_0.2", photo)
    h_in = np.asarray(Image.fromarray(photo).convert("HSV"))[..., 0].astype(int)
    h_out = np.asarray(Image.fromarray(out).convert("HSV"))[..., 0].astype(int)
    saturated = np.asarray(Image.fromarray(photo).convert("HSV"))[..., 1] > 100
    shift = (h_out - h_in)[saturated] % 256
    assert np.median(shift) == pytest.approx(51, abs=2)  # 0.2 x 255


def test_blur_kernel_11(photo):
    flat = np.full((64, 64, 3), 77, np.uint8)
    assert (apply_edit("blur_11", flat) == 77).all()  # the kernel sums to one
    out = apply_edit("blur_11", photo).astype(float)
    assert np.abs(np.diff(out, axis=1)).mean() < 0.5 * np.abs(np.diff(photo.astype(float), axis=1)).mean()


def test_meme_adds_a_caption_band_on_top(photo):
    out = apply_edit("meme", photo)
    band = out.shape[0] - 400
    assert band == 250 and out.shape[1] == 600  # AugLy's default caption height
    np.testing.assert_array_equal(out[band:], photo)
    assert (out[:band] == 255).mean() > 0.6 and (out[:band] < 100).any()  # white with black text


def test_screenshot_uses_the_mobile_template(photo):
    assert apply_edit("screenshot", photo).shape[:2] == (736, 414)


def test_auto_is_seeded(photo):
    np.testing.assert_array_equal(apply_edit("auto", photo, seed=3), apply_edit("auto", photo, seed=3))
    different = [not np.array_equal(apply_edit("auto", photo, seed=3), apply_edit("auto", photo, seed=s))
                 for s in range(4, 8)]
    assert all(different)


def test_auto_takes_an_int_or_a_seed_sequence(thumb):
    child = np.random.SeedSequence(11).spawn(3)[2]
    by_sequence = apply_edit("auto", thumb, seed=child)
    np.testing.assert_array_equal(by_sequence, apply_edit("auto", thumb, seed=np.random.SeedSequence(11).spawn(3)[2]))
    np.testing.assert_array_equal(by_sequence, auto()(thumb, np.random.SeedSequence(11).spawn(3)[2]))
    np.testing.assert_array_equal(auto()(thumb, 5), apply_edit("auto", thumb, seed=5))
    np.testing.assert_array_equal(auto()(thumb, 5), auto()(thumb, np.random.default_rng(5)))
    assert auto_plan(child) == auto_plan(np.random.default_rng(np.random.SeedSequence(11).spawn(3)[2]))


@pytest.mark.parametrize("family, name", [(f, n) for f, filters in AUTO_FAMILIES.items() for n in filters])
def test_every_auto_filter_runs_on_a_small_image(thumb, family, name):
    for seed in range(3):
        out = AUTO_FAMILIES[family][name](Image.fromarray(thumb), np.random.default_rng(seed)).convert("RGB")
        assert out.width > 0 and out.height > 0
        again = AUTO_FAMILIES[family][name](Image.fromarray(thumb), np.random.default_rng(seed)).convert("RGB")
        np.testing.assert_array_equal(np.asarray(out), np.asarray(again))  # deterministic given the seed


def test_auto_rotation_crops_away_the_black_corners():
    grey = Image.new("RGB", (90, 60), (200, 200, 200))
    for seed in range(40):
        out = np.asarray(AUTO_FAMILIES["spatial"]["rotate"](grey, np.random.default_rng(seed)))
        assert out.size and out.min() == 200, seed  # no black, nor black blended in at the edges


def test_emoji_draws_vary_and_stay_inside():
    draws = [draw_emoji(np.random.default_rng(s), 120, 80) for s in range(20)]
    assert len({d["emoji_path"] for d in draws}) > 10
    sides = [d["emoji_size"] * 80 for d in draws]  # AugLy: the emoji's height is emoji_size x image height
    assert all(0.1 * 80 <= side <= 0.5 * 80 for side in sides) and max(sides) - min(sides) > 10
    for d, side in zip(draws, sides):
        assert d["x_pos"] * 120 + side <= 120 + 1e-9 and d["y_pos"] * 80 + side <= 80 + 1e-9
        assert 0.7 <= d["opacity"] <= 1.0


def test_text_draws_pick_fonts_and_lengths_at_random():
    draws = [draw_text(np.random.default_rng(s), 120, 80) for s in range(20)]
    assert len({d["font_file"] for d in draws}) > 10  # a random AugLy font per edit
    lengths = {len(d["text"]) for d in draws}
    assert lengths <= set(range(5, 16)) and len(lengths) > 3
    assert len({d["color"] for d in draws}) == 20 and all(0.1 <= d["font_size"] <= 0.3 for d in draws)


def test_text_skips_characters_the_layout_cannot_draw(thumb):
    # these fonts' charsets hold NUL or U+2029, which made Pillow's raqm layout fail
    import activeindex.edits as edits

    fonts = [f for f in edits._font_paths() if f.name in ("OstrichSans-Light.ttf", "PlayfairDisplay-Regular.ttf",
                                                           "NotoSerif-Regular.ttf")]
    assert len(fonts) == 3
    for font in fonts:
        edits._augly().overlay_text(Image.fromarray(thumb), text=list(edits._drawable(font)), font_file=str(font))


def test_screenshot_draws_use_every_augly_template(thumb):
    templates = {draw_screenshot(np.random.default_rng(s))["template_filepath"] for s in range(20)}
    assert {t.rsplit("/", 1)[-1] for t in templates} == {"mobile.png", "web.png"}
    sizes = {AUTO_FAMILIES["spatial"]["screenshot"](Image.fromarray(thumb), np.random.default_rng(s)).size
             for s in range(20)}
    assert sizes == {(414, 736), (1200, 736)}


def test_auto_deviations_are_plain_sentences():
    assert len(AUTO_DEVIATIONS) >= 5
    assert all(isinstance(line, str) and line.endswith(".") and "\n" not in line for line in AUTO_DEVIATIONS)


def test_auto_draws_its_families_with_the_stated_distribution():
    plans = [auto_plan(np.random.default_rng(s)) for s in range(4000)]
    counts = Counter(len(p) for p in plans)
    for k, p in zip([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]):
        assert counts[k] / 4000 == pytest.approx(p, abs=0.03)
    for plan in plans:
        families = [f for f, _ in plan]
        assert len(set(families)) == len(families)  # one filter per family
        names = [n for _, n in plan]
        assert "crop" not in names[1:] and "palette" not in names[:-1]


def test_failures_raise_never_become_none(photo):
    with pytest.raises(EditError, match="edit 'jpeg_50' failed"):
        apply_edit("jpeg_50", photo.astype(np.float32))
    with pytest.raises(UnknownNameError, match="unknown edit 'sepia'"):
        apply_edit("sepia", photo)


def test_sweeps_are_parameterised(photo):
    sizes = [edit(photo, np.random.default_rng(0)).shape[:2] for _, edit in sweep("center_crop")]
    areas = [h * w / (400 * 600) for h, w in sizes]
    assert areas == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], abs=0.01)
    with pytest.raises(UnknownNameError):
        sweep("zoom")
