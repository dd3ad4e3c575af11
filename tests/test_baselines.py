"""The benchmark's baselines on real photos: PDQ hashes and exact search over SSCD descriptors."""
from __future__ import annotations

import numpy as np
import pytest

from activeindex.bench.baselines import (
    exact_index,
    pdq_distance,
    pdq_hash,
    pdq_hashes,
    pdq_nearest,
)
from activeindex.codec import search
from activeindex.edits import apply_edit, random_resized_crop

# Meta's recommended matching threshold, "<= 31" bits (facebook/ThreatExchange pdq/README.md, "Matching")
META_THRESHOLD = 31


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
    assert (pdq_distance(queries, photo_hashes) <= META_THRESHOLD).all()
    ids = np.arange(len(small_photos)) + 100
    D, I = pdq_nearest(queries, photo_hashes, ids)
    np.testing.assert_array_equal(I, ids[:, None])
    np.testing.assert_array_equal(D[:, 0], pdq_distance(queries, photo_hashes).astype(np.float32))
    between = pdq_distance(photo_hashes[:, None], photo_hashes[None])
    assert between[~np.eye(len(small_photos), dtype=bool)].min() > META_THRESHOLD  # distinct photos


def test_pdq_does_not_survive_rotation(small_photos, photo_hashes):
    """PDQ is built for recompression and resizing, not geometry: after a 90-degree turn the nearest hash is
    about as far as a stranger's."""
    queries = pdq_hashes([apply_edit("rotation_90", image) for image in small_photos])
    D, _ = pdq_nearest(queries, photo_hashes, np.arange(len(small_photos)))
    assert (D > 2 * META_THRESHOLD).all()


def test_pdq_nearest_is_plain_nearest_neighbour_and_refuses_ties():
    """A nearest hash 40 bits away (beyond Meta's 31) is still the answer: R@1 has no threshold, as for every
    index in the benchmark."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 256, dtype=np.uint8), rng.integers(0, 2, 256, dtype=np.uint8)

    def flipped(bits, n):
        out = bits.copy()
        out[:n] ^= 1
        return np.packbits(out)

    references = np.stack([np.packbits(a), np.packbits(b)])
    queries = np.stack([flipped(a, META_THRESHOLD), flipped(a, 40), flipped(b, 40)])
    D, I = pdq_nearest(queries, references, np.array([7, 8]))
    assert I.ravel().tolist() == [7, 7, 8] and D.ravel().tolist() == [META_THRESHOLD, 40, 40]
    twins = np.stack([np.packbits(a), np.packbits(a), np.packbits(b)])  # equally near: no answer
    assert pdq_nearest(np.packbits(a)[None], twins, np.array([7, 8, 9]))[1].ravel().tolist() == [-1]


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
