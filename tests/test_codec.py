"""The codec: targets per index type, cells, codes, nprobe through wrappers, fingerprints, refusals."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from activeindex import Codec
from activeindex.codec import load_index, save_index, search, set_nprobe
from activeindex.errors import CodecMismatchError, CorruptCollectionError, InvalidInputError

# factory strings small enough to train on ~400 real descriptors
DECODED = ["PQ8x4", "IVF8,PQ8x4", "OPQ8,PQ8x4", "OPQ8,IVF8,PQ8x4", "LSH", "PCA64,LSH"]


@pytest.fixture(scope="module")
def split(training_vectors):
    assert len(training_vectors) > 600
    return training_vectors[:-80], training_vectors[-80:]


@pytest.fixture(scope="module")
def trained(split):
    """Codecs trained once per module (OPQ training takes ~20 s on 2 cores)."""
    cache: dict[str, Codec] = {}

    def get(factory: str) -> Codec:
        if factory not in cache:
            cache[factory] = Codec.create(factory, 512)
            cache[factory].train(split[0])
        return cache[factory]

    return get


@pytest.mark.parametrize("factory", DECODED)
def test_decoded_targets_reproduce_the_code(split, trained, factory):
    """For code-based indexes the target IS the decoded code: encoding it gives the same code back."""
    x = split[1]
    codec = trained(factory)
    targets = codec.targets(x)
    assert targets.shape == x.shape
    np.testing.assert_array_equal(codec.codes(targets), codec.codes(x))
    cos = (targets * x).sum(1) / np.linalg.norm(targets, axis=1)
    assert 0.2 < cos.mean() < 0.999  # a real approximation: close to x, not x


@pytest.mark.parametrize("factory", DECODED)
def test_targets_equal_what_the_index_reconstructs(split, trained, factory):
    """The target of a descriptor is exactly the index's own stored representation of it."""
    x, codec = split[1], trained(factory)
    index = codec.empty_index()
    if codec.nlist:  # IVF lists store codes by cell: a hash table maps ids back to them
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
    index.add_with_ids(x, np.arange(100, 100 + len(x), dtype=np.int64))
    stored = np.stack([index.reconstruct(100 + i) for i in range(len(x))])
    np.testing.assert_allclose(codec.targets(x), stored, atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF8,SQ8", "IVF8,SQ4"])
def test_ivf_flat_target_is_the_assigned_centroid(split, factory):
    """IVF-Flat and IVF-SQ codes reproduce the descriptor (SQ8 to cosine > 0.999): the cell's centroid is the target."""
    train, x = split
    codec = Codec.create(factory, 512)
    codec.train(train)
    ivf = faiss.extract_index_ivf(codec.trained)
    _, assigned = ivf.quantizer.search(x, 1)
    np.testing.assert_allclose(codec.targets(x), ivf.quantizer.reconstruct_batch(assigned[:, 0]), atol=1e-6)
    np.testing.assert_array_equal(codec.cells(codec.targets(x)), assigned[:, 0])


def test_ivf_flat_target_through_a_pretransform(split):
    train, x = split
    codec = Codec.create("PCA64,IVF8,Flat", 512)
    codec.train(train)
    np.testing.assert_array_equal(codec.cells(codec.targets(x)), codec.cells(x))


def test_cluster_half_target_is_the_midpoint_and_keeps_the_cell(split):
    train, x = split
    codec = Codec.create("IVF8,Flat", 512)
    codec.train(train)
    half = codec.targets(x, "ivf_cluster_half")
    np.testing.assert_allclose(half, (x + codec.targets(x)) / 2, atol=1e-6)
    np.testing.assert_array_equal(codec.cells(half), codec.cells(x))  # the cell is convex: its midpoint stays
    with pytest.raises(InvalidInputError, match="needs an IVF index"):
        Codec.create("PQ8x4", 512).targets(x, "ivf_cluster_half")
    with pytest.raises(InvalidInputError, match="unknown target kind"):
        codec.targets(x, "centroid")


def test_cells_are_minus_one_without_ivf(split, trained):
    x = split[1]
    codec = trained("PQ8x4")
    assert codec.nlist == 0 and (codec.cells(x) == -1).all()


@pytest.mark.parametrize("factory", ["Flat", "IDMap,Flat"])
def test_flat_index_is_refused(factory):
    with pytest.raises(InvalidInputError, match="nothing to activate"):
        Codec.create(factory, 512)


def test_index_without_standalone_codes_is_refused(split):
    codec = Codec.create("HNSW16,Flat", 512)
    with pytest.raises(InvalidInputError, match="no standalone codec"):
        codec.train(split[0])


def test_bad_factory_string():
    with pytest.raises(InvalidInputError, match="invalid faiss factory string 'IVF,,PQ'"):
        Codec.create("IVF,,PQ", 512)


@pytest.mark.parametrize("factory", ["IVF8,PQ8x4", "OPQ8,IVF8,PQ8x4", "PCA64,IVF8,Flat"])
def test_nprobe_is_set_through_wrappers(split, trained, factory):
    x = split[1]
    codec = trained(factory)
    index = codec.empty_index()
    index.add_with_ids(x, np.arange(len(x)) + 1000)
    set_nprobe(index, 3)
    assert faiss.extract_index_ivf(index).nprobe == 3
    _, ids = search(index, x[:5], 1)
    assert (ids[:, 0] >= 1000).all()


def test_fingerprint_ignores_content_and_detects_another_codec(split, tmp_path):
    train, x = split
    codec = Codec.create("IVF8,PQ8x4", 512)
    codec.train(train)
    index = codec.empty_index()
    index.add_with_ids(x, np.arange(len(x)))
    save_index(index, tmp_path / "index.faiss")
    assert Codec.from_index(load_index(tmp_path / "index.faiss", codec.fingerprint())).fingerprint() == \
        codec.fingerprint()
    other = Codec.create("IVF8,PQ8x4", 512)
    other.train(train[::-1].copy())  # same string, other training order: other centroids
    with pytest.raises(CodecMismatchError, match="another codec"):
        load_index(tmp_path / "index.faiss", other.fingerprint())


@pytest.fixture()
def saved_index(split, trained, tmp_path) -> Path:
    """A searchable IVF-PQ index of real descriptors, saved as tmp_path / "index.faiss"."""
    index = trained("IVF8,PQ8x4").empty_index()
    index.add_with_ids(split[1], np.arange(len(split[1])))
    save_index(index, tmp_path / "index.faiss")
    return tmp_path / "index.faiss"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_index_is_a_corrupt_collection_in_one_line(saved_index, trained, damage):
    data = saved_index.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a faiss index " * 50}[damage]
    saved_index.write_bytes(damaged)
    with pytest.raises(CorruptCollectionError, match=rf"index\.faiss: truncated or corrupt faiss index "
                                                     rf"\({len(damaged)} bytes\); restore it from a backup") as e:
        load_index(saved_index, trained("IVF8,PQ8x4").fingerprint())
    assert "\n" not in str(e.value) and "faiss::" not in str(e.value) and "No such file" not in str(e.value)


def test_missing_index_is_a_corrupt_collection(tmp_path):
    with pytest.raises(CorruptCollectionError, match=r"index\.faiss: missing; restore it from a backup"):
        load_index(tmp_path / "index.faiss")


def test_unreadable_index_path(tmp_path):
    (tmp_path / "index.faiss").mkdir()
    with pytest.raises(CorruptCollectionError, match=r"index\.faiss: cannot read \(Is a directory\)"):
        load_index(tmp_path / "index.faiss")


def test_too_few_training_vectors_is_a_clear_error(split):
    codec = Codec.create("OPQ8,PQ8x4", 512)
    assert codec.min_training_size() == 512  # OPQ needs n >= d (faiss corrupts memory below)
    with pytest.raises(InvalidInputError, match="400 training vectors are too few for this index: it needs at "
                                                "least 512"):
        codec.train(split[0][:400])


def test_wrong_descriptor_shape(split):
    codec = Codec.create("PQ8x4", 512)
    with pytest.raises(InvalidInputError, match=r"shape \(n, 512\)"):
        codec.train(split[0][:, :100])
