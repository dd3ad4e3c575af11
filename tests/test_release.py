"""The released file, on real photos: its format, the source's metadata read back with exiftool (an
independent reader), its colour profile, its orientation, figures recomputed from the written file, the PSNR
floor on a JPEG, phone formats in, and Content Credentials naming the original as ingredient."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from activeindex import ActivationConfig, Collection
from activeindex.credentials import validation
from activeindex.imageio import load_image, source_info
from activeindex.perceptual import psnr

from .conftest import TEST_FACTORY
from .test_credentials import actions, make_pki, sign_original

FAST = ActivationConfig(iterations=2)
ADOBE_RGB = Path("/usr/share/color/icc/compatibleWithAdobeRGB1998.icc")  # Debian's icc-profiles-free
TAGS = ["Copyright", "Artist", "DateTimeOriginal", "Orientation", "Caption-Abstract", "Credit", "Description",
        "UsageTerms", "ProfileDescription"]


def exiftool(path: Path, *tags: str) -> dict:
    """Tags as exiftool reads them (numeric values: -n)."""
    out = subprocess.run(["exiftool", "-j", "-n", *(f"-{t}" for t in tags), str(path)], capture_output=True,
                         text=True, check=True).stdout
    return {k: v for k, v in json.loads(out)[0].items() if k != "SourceFile"}


@pytest.fixture(scope="module")
def source(small_photos, tmp_path_factory) -> Path:
    """A publisher's JPEG (q 92): Adobe RGB profile, EXIF copyright, artist, date and orientation 6 (stored
    sideways, displayed upright), IPTC caption and credit, XMP description and usage terms."""
    path = tmp_path_factory.mktemp("release") / "cat.jpg"
    stored = np.ascontiguousarray(np.rot90(small_photos[2], 1))  # what a camera held sideways stores
    Image.fromarray(stored).save(path, quality=92, icc_profile=ADOBE_RGB.read_bytes())
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-Copyright=(c) Test Agency", "-Artist=Jane Doe",
                    "-DateTimeOriginal=2026:01:02 03:04:05", "-Orientation#=6", "-IPTC:Caption-Abstract=A cat",
                    "-IPTC:Credit=Test Agency", "-XMP-dc:Description=A cat, described in XMP",
                    "-XMP-xmpRights:UsageTerms=Editorial use only", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def collection(tmp_path_factory, training_npy) -> Collection:
    col = Collection.create(tmp_path_factory.mktemp("release-col") / "col", TEST_FACTORY, device="cpu")
    col.train(training_npy)
    return col


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_the_released_file_keeps_the_sources_metadata_profile_and_orientation(collection, source, tmp_path, fmt):
    [record] = collection.activate([source], tmp_path, ActivationConfig(iterations=2, output=fmt)).records
    released = Path(record.activated_path)
    assert released.suffix == {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}[fmt] and record.format == fmt
    expected = exiftool(source, *TAGS)
    if fmt == "webp":  # WebP has no place for IPTC-IIM
        expected = {k: v for k, v in expected.items() if k not in ("Caption-Abstract", "Credit")}
    assert exiftool(released, *TAGS) == expected and expected["Orientation"] == 6
    assert Image.open(released).info["icc_profile"] == ADOBE_RGB.read_bytes()  # the colours mean what they meant
    shown, original = load_image(released), load_image(source)  # both as displayed (orientation applied)
    assert shown.shape == original.shape and shown.shape[0] < shown.shape[1]  # upright, as the original shows
    assert np.abs(shown.astype(int) - original).mean() < 2  # the same picture, imperceptibly changed
    assert record.psnr == pytest.approx(psnr(shown, original), abs=1e-9)  # measured on the written file
    descriptor = collection.extractor.encode(shown)
    target = collection.codec.targets(collection.catalog.descriptors_of([record.id])[record.id][None], "index")[0]
    cosine = float(descriptor @ target / np.linalg.norm(target))
    assert record.cos_after == pytest.approx(cosine, abs=1e-5)
    collection.remove([record.id])


def test_auto_keeps_a_jpeg_a_jpeg_at_its_quality_and_the_floor_holds_on_it(collection, small_photos, tmp_path):
    original = tmp_path / "q80.jpg"
    Image.fromarray(small_photos[1]).save(original, quality=80)
    [record] = collection.activate([original], tmp_path / "out", ActivationConfig(iterations=2, psnr=42)).records
    released = Path(record.activated_path)
    assert released.suffix == ".jpg" and source_info(released.read_bytes()).jpeg_quality == 80
    assert psnr(load_image(released), load_image(original)) >= 42 and record.psnr >= 42
    assert record.lost_in_encoding in (True, False)  # measured for a lossy release
    collection.remove([record.id])


def test_phone_formats_are_read_and_released_as_png_with_their_metadata(collection, small_photos, tmp_path):
    heic, avif = tmp_path / "phone.heic", tmp_path / "phone.avif"
    exif = Image.Exif()
    exif[0x8298] = "(c) Phone Owner"  # Copyright
    pillow_heif.from_pillow(Image.fromarray(small_photos[3])).save(heic, quality=90, exif=exif.tobytes())
    Image.fromarray(np.ascontiguousarray(small_photos[3][::-1])).save(avif, quality=90)
    report = collection.activate([heic, avif], tmp_path / "out", FAST)
    assert not report.failed and [Path(r.activated_path).suffix for r in report.records] == [".png", ".png"]
    assert exiftool(Path(report.records[0].activated_path), "Copyright")["Copyright"] == "(c) Phone Owner"
    collection.remove([r.id for r in report.records])


def test_a_signed_original_is_released_with_credentials_naming_it_as_ingredient(collection, small_photos,
                                                                                 tmp_path):
    material = make_pki(tmp_path / "pki")
    plain, signed = tmp_path / "plain.jpg", tmp_path / "signed.jpg"
    Image.fromarray(small_photos[4]).save(plain, quality=90)
    sign_original(plain, signed, material)
    unsigned = collection.activate([signed], tmp_path / "unsigned", FAST)
    assert [w for _, w in unsigned.warnings] == ["the original's Content Credentials are not carried over: "
                                                 "activate with --c2pa-sign CERT KEY to sign the released file "
                                                 "with the original as its ingredient"]
    collection.remove([r.id for r in unsigned.records])
    [record] = collection.activate([signed], tmp_path / "out", FAST, signing=material).records
    report = validation(record.activated_path, trust_anchors=material.trust_anchors)
    assert report["validation_state"] == "Trusted" and report["active_manifest"] == record.manifest_id
    manifest = report["manifests"][record.manifest_id]
    [ingredient] = manifest["ingredients"]
    assert ingredient["title"] == "signed.jpg" and ingredient["relationship"] == "parentOf"
    assert ingredient.get("active_manifest") in report["manifests"]  # the original's own credentials, carried
    assert "c2pa.edited" in [a["action"] for a in actions(manifest)]
    collection.remove([record.id])
