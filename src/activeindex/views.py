"""The views of a registered image that its collection indexes beside the whole image: crops and turns.

One vector per image loses the copies a copier makes first: a crop keeps part of the picture and a turn
adds black corners, and the descriptor of either lies far from the whole image's, in another index cell. A
collection with views also indexes the descriptors of a few fixed views of each image (`ViewSet`), each its
own vector pointing to its image (`faiss_ids`): a crop or a turned copy then meets the view it resembles.

Views are cut from the network's input (shorter side 288) and preprocessed again, as a copy's file would be;
a crop of 55 % of the area is thus seen at 0.74x the detail a copy cut from the full image has (the descriptor
barely notices, docs/views.md). Which views, and why, is measured by ``benchmarks/views.py``.

A set is part of the collection's manifest (``{"views": {"name", "version", "slots", "views"}}``): the
faiss id of view ``v`` of image ``i`` is ``i * slots + v`` (view 0 is the whole image), so a collection made
without views (slots 1) keeps its ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import DEFAULT_VIEWS, VIEW_SET_NAMES
from .errors import CorruptCollectionError, UnknownNameError
from .extractor import Extractor, PreprocessConfig, preprocess
from .transforms import rotate

__all__ = ["Crop", "Turn", "View", "ViewSet", "VIEW_SETS", "DEFAULT_VIEWS", "NO_VIEWS", "get_view_set", "from_manifest",
           "view_inputs", "encode_views", "faiss_ids", "image_ids"]

SLOTS = 16  # faiss ids per image in a collection with views: room for 15 views


@dataclass(frozen=True)
class Crop:
    """A window of ``area`` of the pixels, the image's aspect ratio kept; ``x`` and ``y`` place it (0: left or top
    edge, 0.5: centred, 1: right or bottom edge)."""

    area: float
    x: float = 0.5
    y: float = 0.5

    @property
    def name(self) -> str:
        return f"crop {self.area:g} at ({self.x:g}, {self.y:g})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * math.sqrt(self.area))), max(1, round(w * math.sqrt(self.area)))
        top, left = round((h - ch) * self.y), round((w - cw) * self.x)
        return x[..., top:top + ch, left:left + cw]


@dataclass(frozen=True)
class Turn:
    """A rotation by ``degrees`` counter-clockwise, the canvas expanded with black corners (the copy a turned
    upload is)."""

    degrees: float

    @property
    def name(self) -> str:
        return f"turn {self.degrees:+g}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return rotate(x, self.degrees)


View = Crop | Turn


@dataclass(frozen=True)
class ViewSet:
    """A named, versioned set of views; ``slots`` faiss ids per image (1: the whole image alone)."""

    name: str
    version: int
    views: tuple[View, ...]

    @property
    def slots(self) -> int:
        return SLOTS if self.views else 1

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "slots": self.slots,
                "views": [view.name for view in self.views]}

    def label(self, slot: int) -> str:
        """What vector ``slot`` of an image is: ``"whole"`` (0) or its view's name."""
        return "whole" if slot == 0 else self.views[slot - 1].name


NO_VIEWS = ViewSet("none", 1, ())
_CORNERS_AND_CENTRE = tuple(Crop(0.55, x, y) for x, y in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)))
VIEW_SETS = {s.name: s for s in (
    NO_VIEWS,
    ViewSet("crops", 1, _CORNERS_AND_CENTRE),
    ViewSet("crops+turns", 1, (*_CORNERS_AND_CENTRE, Turn(-15), Turn(15), Turn(-40), Turn(40))),
)}
assert tuple(VIEW_SETS) == VIEW_SET_NAMES and DEFAULT_VIEWS in VIEW_SETS, "config.py names the sets defined here"


def get_view_set(name: str) -> ViewSet:
    """The view set registered under ``name``."""
    if name not in VIEW_SETS:
        raise UnknownNameError(f"unknown view set {name!r}; choose from {', '.join(VIEW_SETS)}")
    return VIEW_SETS[name]


def from_manifest(manifest: dict) -> ViewSet:
    """A collection's view set: its manifest's ``views``, or none for a collection made without them.

    Raises:
        CorruptCollectionError: a set or version this activeindex does not know (made by a newer one).
    """
    stored = manifest.get("views")
    if stored is None:
        return NO_VIEWS
    known = VIEW_SETS.get(stored.get("name"))
    if known is None or known.to_dict() != stored:
        raise CorruptCollectionError(f"the collection's view set {stored.get('name')!r} version "
                                     f"{stored.get('version')} is not one this activeindex knows "
                                     f"({', '.join(VIEW_SETS)}): open it with the version that made it")
    return known


@torch.no_grad()
def view_inputs(network_input: torch.Tensor, views: ViewSet, config: PreprocessConfig) -> list[torch.Tensor]:
    """The network inputs (uint8 levels, (1, 3, h, w)) of each view of an image, from the image's own network
    input (float in [0, 1] or uint8 levels)."""
    x = network_input.float().div(255.0) if network_input.dtype == torch.uint8 else network_input
    return [preprocess(view(x).clamp(0.0, 1.0), config).mul_(255.0).round_().to(torch.uint8) for view in views.views]


def encode_views(extractor: Extractor, inputs: list[torch.Tensor], views: ViewSet) -> np.ndarray:
    """(n, V, d): the descriptors of each image's views, from the images' network inputs, in one encode."""
    cut = [view for x in inputs for view in view_inputs(x, views, extractor.preprocessing)]
    return extractor.encode_network_inputs(cut).reshape(len(inputs), len(views.views), extractor.dim)


def faiss_ids(image_ids: np.ndarray, slots: int, count: int) -> np.ndarray:
    """The faiss ids of the first ``count`` slots of each image: (n * count,), image by image."""
    return (np.asarray(image_ids, np.int64)[:, None] * slots + np.arange(count, dtype=np.int64)).ravel()


def image_ids(ids: np.ndarray, slots: int) -> np.ndarray:
    """The image each faiss id points to (-1, faiss's "no result", stays -1)."""
    ids = np.asarray(ids, np.int64)
    return np.where(ids >= 0, ids // slots, -1)
