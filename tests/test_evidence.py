"""evidence.py on real photos: known crops, rotations and JPEG copies give back their box, angle and scale;
unrelated photos give no evidence, with a reason; the overlay shows the outline."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from activeindex.errors import InvalidInputError
from activeindex.evidence import OUTLINE_RGB, AlignConfig, Alignment, Evidence, align, overlay, write_overlay
from activeindex.imageio import load_image

WALLPAPER = "/usr/share/wallpapers/Path/contents/images/1920x1080.jpg"


def warp(original: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A query of ``size`` (w, h) whose pixel (x, y) shows the original at ``matrix @ (x, y, 1)``, and the
    query's true corners in the original (clockwise from its top-left)."""
    w, h = size
    query = Image.fromarray(original).transform(size, Image.AFFINE, tuple(matrix[:2].ravel()), Image.BICUBIC)
    outline = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float)
    return np.asarray(query), outline @ matrix[:2].T


def rotated_crop(original: np.ndarray, box: tuple[int, int, int, int], degrees: float,
                 zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The box (x0, y0, x1, y1) turned ``degrees`` counter-clockwise as seen (as PIL's rotate) about its
    centre and scaled by ``zoom``; the query is the box's size times zoom."""
    x0, y0, x1, y1 = box
    w, h = round((x1 - x0) * zoom), round((y1 - y0) * zoom)
    t = math.radians(degrees)
    # query -> original: centre the query, undo the zoom, turn by +t in y-down coordinates, move to the box
    rotate = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    matrix = (np.array([[1, 0, (x0 + x1) / 2], [0, 1, (y0 + y1) / 2], [0, 0, 1]]) @ rotate
              @ np.diag([1 / zoom, 1 / zoom, 1]) @ np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]]))
    return warp(original, matrix, (w, h))


def jpeg(image: np.ndarray, quality: int = 70) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def corner_error(evidence: Evidence, truth: np.ndarray, original: np.ndarray) -> float:
    """The largest corner distance, as a share of the original's long side."""
    return float(np.linalg.norm(np.array(evidence.corners) - truth, axis=1).max() / max(original.shape[:2]))


@pytest.fixture(scope="module")
def photos(photo_paths) -> list[np.ndarray]:
    return [load_image(p) for p in photo_paths]


@pytest.fixture(scope="module")
def wallpaper() -> np.ndarray:
    return load_image(WALLPAPER)


def test_a_known_crop_gives_its_box(photos):
    for original in photos:
        h, w = original.shape[:2]
        box = (round(0.2 * w), round(0.15 * h), round(0.75 * w), round(0.8 * h))
        alignment = align(original[box[1]:box[3], box[0]:box[2]].copy(), original)
        truth = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]])
        assert alignment.reason is None, alignment.reason
        assert corner_error(alignment.evidence, truth, original) < 0.03
        assert alignment.evidence.scale == pytest.approx(1.0, abs=0.03)
        assert abs(alignment.evidence.rotation_deg) < 2
        share = (box[2] - box[0]) * (box[3] - box[1]) / (w * h)
        assert alignment.evidence.share_of_original == pytest.approx(share, abs=0.03)


def test_a_full_size_original_maps_back_to_its_own_pixels(wallpaper):
    """Both images are matched downscaled (1920 px > max_side); the corners come back in full-size pixels."""
    box = (700, 200, 1500, 900)
    query, truth = rotated_crop(wallpaper, box, 0, zoom=0.5)
    evidence = align(query, wallpaper).evidence
    assert corner_error(evidence, truth, wallpaper) < 0.01
    assert evidence.scale == pytest.approx(0.5, rel=0.03)


@pytest.mark.parametrize("degrees", [20, -35])
def test_a_known_rotation_gives_its_angle_and_scale(photos, degrees):
    original = photos[0]
    query, truth = rotated_crop(original, (100, 80, 420, 400), degrees, zoom=0.8)
    evidence = align(query, original).evidence
    assert evidence.rotation_deg == pytest.approx(degrees, abs=2)
    assert evidence.scale == pytest.approx(0.8, rel=0.03)
    assert corner_error(evidence, truth, original) < 0.03


def test_a_whole_photo_turned_with_its_padding_reads_as_pil_rotate(photos):
    """PIL's rotate(20, expand=True) reads as 20 degrees; the padded outline reaches outside the original."""
    original = photos[2]
    query = np.asarray(Image.fromarray(original).rotate(20, resample=Image.BICUBIC, expand=True))
    evidence = align(query, original).evidence
    assert evidence.rotation_deg == pytest.approx(20, abs=2)
    assert evidence.share_of_original == pytest.approx(1.0, abs=0.01)
    assert np.array(evidence.corners).min() < 0


def test_crop_rotation_and_jpeg_together(wallpaper, photos):
    for original in (wallpaper, photos[1]):
        h, w = original.shape[:2]
        box = (round(0.3 * w), round(0.25 * h), round(0.9 * w), round(0.85 * h))
        query, truth = rotated_crop(original, box, 15, zoom=0.7)
        evidence = align(jpeg(query, quality=60), original).evidence
        assert evidence.rotation_deg == pytest.approx(15, abs=2)
        assert evidence.scale == pytest.approx(0.7, rel=0.05)
        assert corner_error(evidence, truth, original) < 0.03


def test_unrelated_photos_give_no_evidence_and_say_why(photos, wallpaper):
    others = [*photos, wallpaper]
    for i, query in enumerate(others):
        alignment = align(query, others[(i + 1) % len(others)])
        assert alignment.evidence is None
        assert alignment.reason.startswith(("too few inliers", "too few matches", "degenerate homography"))
        assert alignment.to_dict() == {"evidence": None, "reason": alignment.reason}


def test_a_featureless_query_says_so(photos):
    flat = np.full((64, 64, 3), 127, np.uint8)
    assert align(flat, photos[0]).reason.startswith("too few features (0 in the query, ")


def test_min_inliers_is_the_bar(photos):
    original = photos[0]
    query = original[100:400, 50:450].copy()
    inliers = align(query, original).evidence.inliers
    assert align(query, original, AlignConfig(min_inliers=inliers + 1)).reason == f"too few inliers ({inliers})"


def test_evidence_to_dict_is_json_ready(photos):
    original = photos[0]
    record = align(original[100:400, 50:450].copy(), original).to_dict()
    assert record["reason"] is None
    assert set(record["evidence"]) == {"corners", "rotation_deg", "scale", "share_of_original", "inliers"}
    assert np.allclose(record["evidence"]["corners"], [[50, 100], [450, 100], [450, 400], [50, 400]], atol=2)
    assert isinstance(record["evidence"]["inliers"], int)


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32),
                                 np.zeros((8, 64, 3), np.uint8), [[0, 0, 0]]])
def test_bad_arrays_raise_one_line(photos, bad):
    with pytest.raises(InvalidInputError, match=r"^query: ") as caught:
        align(bad, photos[0])
    assert "\n" not in str(caught.value)


def test_overlay_is_one_image_with_the_outline_drawn(photos, tmp_path):
    original = photos[0]  # 512 x 512
    query = original[100:400, 50:450].copy()  # 400 x 300
    evidence = align(query, original).evidence
    image = overlay(original, query, evidence, height=512)
    assert image.shape == (512, 512 + 16 + round(400 * 512 / 300), 3) and image.dtype == np.uint8
    # the middle of the outline's top edge, and the query's frame
    assert tuple(image[100, 250]) == OUTLINE_RGB
    assert tuple(image[1, 512 + 16 + 300]) == OUTLINE_RGB
    assert tuple(image[256, 512 + 5]) == (255, 255, 255)
    path = write_overlay(tmp_path / "evidence.png", original, query, evidence, height=512)
    assert np.array_equal(load_image(path), image)


def test_overlay_widens_the_original_where_the_outline_leaves_it(photos):
    original = photos[2]
    query = np.asarray(Image.fromarray(original).rotate(20, resample=Image.BICUBIC, expand=True))
    evidence = align(query, original).evidence
    image = overlay(original, query, evidence, height=400)
    left_width = image.shape[1] - 16 - round(query.shape[1] * 400 / query.shape[0])
    # the panel spans the outline's bounding box: grey where neither the photo nor the outline is
    assert tuple(image[2, 2]) == tuple(image[-3, left_width - 3]) == (128, 128, 128)
    assert tuple(image[200, left_width + 8]) == (255, 255, 255)


def test_alignment_without_evidence_has_a_reason():
    assert Alignment(None, "too few matches (2)").to_dict() == {"evidence": None, "reason": "too few matches (2)"}
