"""The benchmark's baselines on real photos: PDQ hashes and exact search over SSCD descriptors."""
from __future__ import annotations

import numpy as np
import pytest

from activeindex.bench.baselines import (
    PDQ_MATCH_THRESHOLD,
    exact_index,
    pdq_distance,
    pdq_hash,
    pdq_hashes,
    pdq_nearest,
)
from activeindex.codec import search
from activeindex.edits import apply_edit, random_resized_crop


@pytest.fixture(scope="module")
def photo_hashes(small_photos) -> np.ndarray:
    return pdq_hashes(small_photos)


def test_pdq_hash_is_256_packed_bits(small_photos, photo_hashes):
    assert photo_hashes.shape == (len(small_photos), 32) and photo_hashes.dtype == np.uint8
    np.testing.assert_array_equal(pdq_hash(small_photos[0]), photo_hashes[0])  # deterministic
    mirrored = small_photos[0][:, ::-1]  # a strided view is hashed as its contiguous copy
    np.testing.assert_array_equal(pdq_hash(mirrored), pdq_hash(np.ascontiguousarray(mirrored)))


@pytest.mark.parametrize("edit", ["brightness_0.5", "jpeg_50", "blur_11", "resize_0.5"])
def test_pdq_matches_edited_copies_and_not_other_photos(small_photos, photo_hashes, edit):
    queries = pdq_hashes([apply_edit(edit, image, seed=i) for i, image in enumerate(small_photos)])
    assert (pdq_distance(queries, photo_hashes) <= PDQ_MATCH_THRESHOLD).all()
    ids = np.arange(len(small_photos)) + 100
    np.testing.assert_array_equal(pdq_nearest(queries, photo_hashes, ids), ids[:, None])
    between = pdq_distance(photo_hashes[:, None], photo_hashes[None])
    assert between[~np.eye(len(small_photos), dtype=bool)].min() > PDQ_MATCH_THRESHOLD  # distinct photos


def test_pdq_does_not_survive_rotation(small_photos, photo_hashes):
    """PDQ is built for recompression and resizing, not geometry: a 90-degree turn matches nothing."""
    queries = pdq_hashes([apply_edit("rotation_90", image) for image in small_photos])
    assert (pdq_nearest(queries, photo_hashes, np.arange(len(small_photos))) == -1).all()


def test_pdq_nearest_applies_the_threshold_and_refuses_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 256, dtype=np.uint8), rng.integers(0, 2, 256, dtype=np.uint8)

    def flipped(bits, n):
        out = bits.copy()
        out[:n] ^= 1
        return np.packbits(out)

    references = np.stack([np.packbits(a), np.packbits(b)])
    queries = np.stack([flipped(a, PDQ_MATCH_THRESHOLD), flipped(a, PDQ_MATCH_THRESHOLD + 1)])
    assert pdq_nearest(queries, references, np.array([7, 8])).ravel().tolist() == [7, -1]
    twins = np.stack([np.packbits(a), np.packbits(a), np.packbits(b)])  # equally near: no answer
    assert pdq_nearest(np.packbits(a)[None], twins, np.array([7, 8, 9])).ravel().tolist() == [-1]


def test_exact_sscd_finds_every_unedited_photo(extractor, small_photos):
    crop = random_resized_crop()
    rng = np.random.default_rng(0)
    distractors = extractor.encode_arrays([crop(image, rng) for image in small_photos for _ in range(2)])
    originals = extractor.encode_arrays(small_photos)
    ids = np.concatenate([1000 + np.arange(len(distractors)), np.arange(len(originals))])
    index = exact_index(np.concatenate([distractors, originals]), ids)
    assert index.ntotal == len(ids)
    D, I = search(index, originals, 3)
    np.testing.assert_array_equal(I[:, 0], np.arange(len(originals)))
    assert np.allclose(D[:, 0], 0, atol=1e-5)  # no quantisation: the stored vector itself
