"""Where a copy sits in its original: the evidence a rights team shows beside a verdict.

`align` matches SIFT features of a query and a candidate's original (OpenCV, no weights to download),
keeps the matches that pass Lowe's ratio test, fits a homography with RANSAC and reads from it the
query's outline in the original's pixels, its rotation and its scale. `overlay` draws that outline on the
original, beside the query, as one image; `write_overlay` saves it as a PNG.

Inliers are evidence, not a verdict: two different photos of one planar scene (a wall, a facade) align
like copies, so the copy decision stays with the descriptor's similarity (docs/evidence.md measures how
often unrelated photos align).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import InvalidInputError
from .imageio import save_png

__all__ = ["AlignConfig", "Evidence", "Alignment", "align", "overlay", "write_overlay"]

logger = logging.getLogger(__name__)

OUTLINE_RGB = (255, 0, 200)  # magenta: rare in photos, readable on light and dark originals
MIN_SIDE = 16  # px: below this, SIFT finds nothing worth fitting


@dataclass(frozen=True)
class AlignConfig:
    """How `align` matches and fits; the defaults are measured in docs/evidence.md."""

    max_side: int = 768  # px: both images are downscaled to at most this long side before matching
    max_features: int = 4000  # the strongest SIFT keypoints kept per image (bounds the matching time)
    # SIFT's keypoint contrast floor; half OpenCV's 0.04, so dark or smooth photos (a fundus photo, a night
    # sky) still yield features: at 0.04 a 55 % crop of scikit-image's retina.jpg kept 12 inliers, at 0.02 237
    contrast_threshold: float = 0.02
    ratio: float = 0.75  # Lowe's ratio test: best match distance < ratio * second best
    ransac_px: float = 4.0  # RANSAC reprojection threshold, in working-size pixels
    min_inliers: int = 15  # fewer inliers than this: no evidence (unrelated pairs rarely reach it)
    scale_range: tuple[float, float] = (0.05, 20.0)  # plausible copy / original linear scales
    max_anisotropy: float = 4.0  # largest ratio of the homography's local stretch along two directions

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Evidence:
    """Where a copy sits in its original.

    Attributes:
        corners: the query's outline in the ORIGINAL's pixels, ((x, y) x 4), clockwise from the query's
            top-left corner (top-left, top-right, bottom-right, bottom-left); pixel edges at integers, so a
            crop of columns x0..x1-1 spans x0..x1. Corners may lie outside the original (a rotated copy's
            padding).
        rotation_deg: how far the copy is turned, counter-clockwise as seen, in degrees (-180, 180]
            (PIL's ``Image.rotate(20)`` gives about 20).
        scale: the copy's linear size relative to the original's (0.5: shown at half size; 1.0: pixels kept).
        share_of_original: the part of the original's area the outline covers, 0..1.
        inliers: matched features consistent with the homography (at the working size).
    """

    corners: tuple[tuple[float, float], ...]
    rotation_deg: float
    scale: float
    share_of_original: float
    inliers: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"corners": [[x, y] x 4], "rotation_deg", "scale", "share_of_original", "inliers"}``."""
        return {"corners": [[round(x, 1), round(y, 1)] for x, y in self.corners],
                "rotation_deg": round(self.rotation_deg, 2), "scale": round(self.scale, 4),
                "share_of_original": round(self.share_of_original, 4), "inliers": self.inliers}


@dataclass(frozen=True)
class Alignment:
    """The outcome of `align`: `evidence`, or None with the `reason` it could not be found."""

    evidence: Evidence | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"evidence": {...} | None, "reason": str | None}``."""
        return {"evidence": self.evidence.to_dict() if self.evidence else None, "reason": self.reason}


# ---------------------------------------------------------------- align


def align(query: np.ndarray, original: np.ndarray, config: AlignConfig = AlignConfig()) -> Alignment:
    """Find where ``query`` sits in ``original``.

    Args:
        query: (H, W, 3) uint8 RGB, the suspected copy (as `activeindex.imageio.load_image` gives it).
        original: (H, W, 3) uint8 RGB, the registered original.
        config: matching and fitting settings.

    Returns:
        An `Alignment`: ``evidence`` set, or ``evidence=None`` with ``reason`` one of "too few features
        (n in the query, m in the original)", "too few matches (n)", "too few inliers (n)" or
        "degenerate homography (why; n inliers)".

    Raises:
        InvalidInputError: an input is not an (H, W, 3) uint8 array of at least 16 x 16 pixels.

    Example:
        >>> align(photo[100:400, 50:450], photo).evidence.corners
        ((50.0, 100.0), (450.0, 100.0), (450.0, 400.0), (50.0, 400.0))   # about
    """
    _check_image(query, "query")
    _check_image(original, "original")
    (q_gray, q_scale), (o_gray, o_scale) = _working(query, config), _working(original, config)
    q_points, q_desc = _features(q_gray, config)
    o_points, o_desc = _features(o_gray, config)
    if min(len(q_points), len(o_points)) < 4:
        return Alignment(None, f"too few features ({len(q_points)} in the query, {len(o_points)} in the original)")
    pairs = _ratio_matches(q_desc, o_desc, config.ratio)
    if len(pairs) < 4:
        return Alignment(None, f"too few matches ({len(pairs)})")
    H, inliers = _fit(q_points[pairs[:, 0]], o_points[pairs[:, 1]], config.ransac_px)
    if H is None or inliers < config.min_inliers:
        return Alignment(None, f"too few inliers ({inliers})")
    # query pixels -> working query -> working original -> original pixels
    H = np.diag([1 / o_scale, 1 / o_scale, 1.0]) @ H @ np.diag([q_scale, q_scale, 1.0])
    return _evidence(H, query.shape, original.shape, inliers, config)


def _check_image(image: np.ndarray, name: str) -> None:
    """Raise `InvalidInputError` unless ``image`` is an (H, W, 3) uint8 array of at least MIN_SIDE px."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InvalidInputError(f"{name}: expected an (H, W, 3) uint8 RGB array, got {type(image).__name__} "
                                f"{getattr(image, 'dtype', '')} of shape {shape}; read images with load_image")
    if min(image.shape[:2]) < MIN_SIDE:
        raise InvalidInputError(f"{name}: {image.shape[1]} x {image.shape[0]} px is too small to align "
                                f"(at least {MIN_SIDE} px a side)")


def _working(image: np.ndarray, config: AlignConfig) -> tuple[np.ndarray, float]:
    """The grey image SIFT sees (long side <= max_side, never enlarged) and its scale from full size."""
    h, w = image.shape[:2]
    scale = min(1.0, config.max_side / max(h, w))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:  # INTER_AREA: averaging, so the downscale doesn't alias fine texture into false features
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    # the rounded size, not the requested one, fixes the mapping back to full-size pixels
    return gray, gray.shape[1] / w


def _features(gray: np.ndarray, config: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints ((n, 2) float32, x y in pixel-edge coordinates) and descriptors ((n, 128) float32)."""
    keypoints, desc = cv2.SIFT_create(nfeatures=config.max_features,
                                      contrastThreshold=config.contrast_threshold).detectAndCompute(gray, None)
    if desc is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    # OpenCV puts pixel centres at integers; +0.5 moves them to the edge convention of `Evidence.corners`
    points = np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2) + 0.5
    return points, desc


def _ratio_matches(q_desc: np.ndarray, o_desc: np.ndarray, ratio: float) -> np.ndarray:
    """(n, 2) int indices (query, original) of the matches passing Lowe's ratio test."""
    if len(o_desc) < 2:
        return np.zeros((0, 2), int)
    # brute force, not FLANN: exact and deterministic, and fast enough for a few thousand features
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(q_desc, o_desc, k=2)
    pairs = [(m.queryIdx, m.trainIdx) for m, n in (p for p in knn if len(p) == 2) if m.distance < ratio * n.distance]
    return np.array(pairs, int).reshape(-1, 2)


def _fit(src: np.ndarray, dst: np.ndarray, ransac_px: float) -> tuple[np.ndarray | None, int]:
    """The RANSAC homography src -> dst (3, 3) float64, or None, and its number of inliers."""
    H, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransacReprojThreshold=ransac_px, maxIters=5000,
                                 confidence=0.999)
    if H is None:
        return None, 0
    return H, int(mask.sum())


# ---------------------------------------------------------------- read the homography


def _evidence(H: np.ndarray, q_shape: tuple[int, ...], o_shape: tuple[int, ...], inliers: int,
              config: AlignConfig) -> Alignment:
    """The `Evidence` a full-size homography (query px -> original px) gives, or why it is degenerate."""
    qh, qw = q_shape[:2]
    outline = np.array([[0, 0], [qw, 0], [qw, qh], [0, qh]], np.float64)
    if np.any(_depth(H, outline) <= 0):
        return Alignment(None, f"degenerate homography (outline crosses the horizon; {inliers} inliers)")
    corners = _project(H, outline)
    if _signed_area(corners) <= 0 or not cv2.isContourConvex(corners.astype(np.float32)):
        return Alignment(None, f"degenerate homography (outline not convex or mirrored; {inliers} inliers)")
    J = _jacobian(H, np.array([qw / 2, qh / 2]))
    stretch = np.linalg.svd(J, compute_uv=False)
    scale = 1 / math.sqrt(abs(np.linalg.det(J)))
    low, high = config.scale_range
    if not low <= scale <= high or stretch[0] / stretch[1] > config.max_anisotropy:
        return Alignment(None, f"degenerate homography (scale {scale:.3g}, stretch {stretch[0] / stretch[1]:.3g}; "
                               f"{inliers} inliers)")
    rotation = math.degrees(math.atan2(J[1, 0] - J[0, 1], J[0, 0] + J[1, 1]))
    return Alignment(Evidence(corners=tuple((float(x), float(y)) for x, y in corners), rotation_deg=rotation,
                              scale=scale, share_of_original=_share(corners, o_shape), inliers=inliers))


def _project(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 2) points mapped through the homography H."""
    mapped = np.c_[points, np.ones(len(points))] @ H.T
    return mapped[:, :2] / mapped[:, 2:]


def _depth(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The homogeneous coordinate of each mapped point: <= 0 means it maps through infinity."""
    return np.c_[points, np.ones(len(points))] @ H[2]


def _jacobian(H: np.ndarray, point: np.ndarray) -> np.ndarray:
    """(2, 2) derivative of the homography at ``point``: its local rotation, scale and stretch."""
    w = H[2] @ np.r_[point, 1.0]
    mapped = H[:2] @ np.r_[point, 1.0] / w
    return (H[:2, :2] - np.outer(mapped, H[2, :2])) / w


def _signed_area(polygon: np.ndarray) -> float:
    """Shoelace area; positive for a polygon running clockwise as seen (y pointing down)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def _share(corners: np.ndarray, o_shape: tuple[int, ...]) -> float:
    """Area of the (convex) outline inside the original, over the original's area."""
    oh, ow = o_shape[:2]
    frame = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    area, _ = cv2.intersectConvexConvex(corners.astype(np.float32), frame)
    return min(1.0, max(0.0, float(area) / (ow * oh)))


# ---------------------------------------------------------------- overlay


def overlay(original: np.ndarray, query: np.ndarray, evidence: Evidence, height: int = 720) -> np.ndarray:
    """The original with the copy's outline drawn, beside the query: one image for a takedown notice.

    The original's panel is widened (grey) where the outline leaves it (a rotated copy's corners), by at
    most half the original's size a side; a dot marks the query's top-left corner on both panels.

    Args:
        original: (H, W, 3) uint8 RGB, the registered original.
        query: (H, W, 3) uint8 RGB, the copy.
        evidence: `align`'s evidence for this pair.
        height: px, the height of the result (both panels are scaled to it).

    Returns:
        (height, W, 3) uint8 RGB: the original's panel, a 16 px white gap, the query's panel.

    Raises:
        InvalidInputError: an input is not an (H, W, 3) uint8 array, or ``height`` < 64.
    """
    _check_image(original, "original")
    _check_image(query, "query")
    if height < 64:
        raise InvalidInputError(f"height: {height} px is too small for an overlay (at least 64)")
    panel, corners = _padded(original, np.array(evidence.corners))
    scale = height / panel.shape[0]
    left = _resized(panel, scale)
    thickness = max(2, height // 180)
    _outline(left, corners * scale, thickness)
    right = _resized(query, height / query.shape[0])
    qh, qw = right.shape[:2]
    inset = thickness / 2 + 0.5  # the query's own frame, drawn just inside its edges
    _outline(right, np.array([[inset, inset], [qw - inset, inset], [qw - inset, qh - inset], [inset, qh - inset]]),
             thickness)
    gap = np.full((height, 16, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def write_overlay(path: str | os.PathLike, original: np.ndarray, query: np.ndarray, evidence: Evidence,
                  height: int = 720) -> Path:
    """Write `overlay` as a PNG, atomically; returns the path.

    Raises:
        InvalidInputError: as `overlay`.
        StorageFullError: the disk is full.
    """
    path = save_png(path, overlay(original, query, evidence, height))
    logger.debug("wrote the evidence overlay %s", path)
    return path


def _padded(original: np.ndarray, corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The original on a grey canvas reaching the outline (at most half its size a side) and the shifted
    corners."""
    oh, ow = original.shape[:2]
    lo = np.clip(np.floor(corners.min(axis=0)), [-ow // 2, -oh // 2], [0, 0]).astype(int)
    hi = np.clip(np.ceil(corners.max(axis=0)), [ow, oh], [ow + ow // 2, oh + oh // 2]).astype(int)
    canvas = np.full((hi[1] - lo[1], hi[0] - lo[0], 3), 128, np.uint8)
    canvas[-lo[1]:-lo[1] + oh, -lo[0]:-lo[0] + ow] = original
    return canvas, corners - lo


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` scaled by ``scale`` (area averaging down, bilinear up), as a writable copy."""
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def _outline(image: np.ndarray, corners: np.ndarray, thickness: int) -> None:
    """Draw the closed outline and a dot on its first (top-left) corner, in place."""
    # cv2 draws at integer pixel centres; the corners use pixel edges, hence the -0.5
    points = np.round(corners - 0.5).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(image, [points], isClosed=True, color=OUTLINE_RGB, thickness=thickness, lineType=cv2.LINE_AA)
    cv2.circle(image, tuple(int(v) for v in points[0, 0]), 3 * thickness, OUTLINE_RGB, -1, cv2.LINE_AA)
