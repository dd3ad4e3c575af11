"""The released file, on real photos: its format, the source's metadata read back with exiftool (an
independent reader), its colour profile, its orientation, figures recomputed from the written file, the PSNR
floor on a JPEG, phone formats in, and Content Credentials naming the original as ingredient; grey, CMYK and
transparent originals, oriented HEIC and AVIF, and one unsignable file among many under signing."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
import skimage.color
from PIL import Image, ImageCms

from activeindex import ActivationConfig, Collection
from activeindex.credentials import validation
from activeindex.errors import InvalidInputError
from activeindex.imageio import load_image, source_info
from activeindex.perceptual import psnr
from activeindex.release import check_release_tools

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


# ---------------------------------------------------------------- colour, orientation, one bad file

GRAY = Path("/usr/share/color/icc/Gray.icc")  # Debian's icc-profiles-free
SWOP = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")  # Debian's libgs-common: a CMYK profile
SRGB = ImageCms.createProfile("sRGB")


def cmyk_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """A printer's CMYK JPEG (q 95) with its SWOP profile, separated from ``rgb`` by LittleCMS."""
    cmyk = ImageCms.profileToProfile(Image.fromarray(rgb), SRGB, ImageCms.ImageCmsProfile(str(SWOP)),
                                     outputMode="CMYK")
    cmyk.save(path, quality=95, icc_profile=SWOP.read_bytes())
    return path


def mean_delta_e(a: np.ndarray, b: np.ndarray) -> float:
    """Mean CIEDE2000 between two sRGB (H, W, 3) uint8 images."""
    return float(skimage.color.deltaE_ciede2000(skimage.color.rgb2lab(a), skimage.color.rgb2lab(b)).mean())


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_grey_original_is_released_grey_with_its_grey_profile(collection, small_photos, tmp_path, fmt):
    source = tmp_path / "grey.jpg"
    Image.fromarray(small_photos[0]).convert("L").save(source, quality=90, icc_profile=GRAY.read_bytes())
    [record] = collection.activate([source], tmp_path / "out", ActivationConfig(iterations=2, output=fmt)).records
    released = Path(record.activated_path)
    assert exiftool(released, "ColorSpaceData", "ColorComponents", "ProfileDescription") == {
        "ColorSpaceData": "GRAY", "ProfileDescription": "Gray", **({"ColorComponents": 1} if fmt == "jpeg" else {})}
    assert Image.open(released).mode == "L"  # one channel: the profile matches the pixels
    shown, original = load_image(released), load_image(source)
    assert record.psnr == pytest.approx(psnr(shown, original), abs=1e-9) and record.psnr < 60  # changed, measured
    collection.remove([record.id])


def test_a_cmyk_original_is_colour_managed_to_srgb_and_released_with_an_srgb_profile(collection, small_photos,
                                                                                      tmp_path):
    source = cmyk_jpeg(tmp_path / "print.jpg", small_photos[1])
    report = collection.activate([source], tmp_path / "out", FAST)
    [record], released = report.records, Path(report.records[0].activated_path)
    assert not report.warnings
    info = exiftool(released, "ColorSpaceData", "ColorComponents", "YCbCrSubSampling")
    assert info == {"ColorSpaceData": "RGB ", "ColorComponents": 3, "YCbCrSubSampling": "1 1"}  # 4:4:4, as CMYK
    littlecms = np.asarray(ImageCms.profileToProfile(Image.open(source), ImageCms.ImageCmsProfile(str(SWOP)), SRGB,
                                                     outputMode="RGB"))
    shown, naive = load_image(released), np.asarray(Image.open(source).convert("RGB"))
    # 1.46 measured: the JPEG 95 re-encoding's share (1.37 without the activation); Pillow's formula: 6.5
    assert mean_delta_e(shown, littlecms) < 2.0 and mean_delta_e(naive, littlecms) > 4.0
    assert record.psnr == pytest.approx(psnr(shown, load_image(source)), abs=1e-9)  # against the conversion:
    assert record.psnr == pytest.approx(psnr(shown, littlecms), abs=0.01)  # LittleCMS's, to its sRGB profile
    collection.remove([record.id])


def transparent_png(path: Path, rgb: np.ndarray) -> np.ndarray:
    """An RGBA PNG: ``rgb`` fading from transparent (left) to opaque (right); returns its (H, W, 4) pixels."""
    alpha = np.broadcast_to(np.linspace(0, 255, rgb.shape[1]).round().astype(np.uint8), rgb.shape[:2])
    rgba = np.dstack([rgb, alpha])
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def over(rgba: np.ndarray, background: int) -> np.ndarray:
    """The image over a uniform grey ``background`` (0: black), as a viewer composites it."""
    a = rgba[..., 3:].astype(np.float64) / 255
    return np.round(rgba[..., :3] * a + background * (1 - a)).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparency_is_kept_in_png_and_webp_and_the_change_is_the_same_over_any_background(
        collection, small_photos, tmp_path, fmt):
    source = tmp_path / "cutout.png"
    rgba = transparent_png(source, small_photos[2])
    report = collection.activate([source], tmp_path / "out", ActivationConfig(iterations=2, output=fmt))
    [record], released = report.records, Image.open(report.records[0].activated_path)
    assert not report.warnings and released.mode == "RGBA"
    out = np.asarray(released)
    if fmt == "png":  # lossless: the alpha untouched
        np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    assert record.psnr == pytest.approx(psnr(load_image(record.activated_path), load_image(source)), abs=1e-9)
    for background in (0, 128):  # what a page of another colour shows: no worse than the record says
        assert psnr(over(out, background), over(rgba, background)) > record.psnr - 1.0
    collection.remove([record.id])


def test_transparency_lost_in_a_jpeg_release_is_a_warning(collection, small_photos, tmp_path):
    source = tmp_path / "cutout.png"
    transparent_png(source, small_photos[2])
    report = collection.activate([source], tmp_path / "out", ActivationConfig(iterations=2, output="jpeg"))
    [(path, warning)] = report.warnings
    assert path == str(source) and "transparency is lost" in warning and "measured over white" in warning
    collection.remove([r.id for r in report.records])


def test_a_heic_with_an_orientation_is_released_upright_with_a_matching_tag(collection, small_photos, tmp_path):
    source, exif = tmp_path / "phone.heic", Image.Exif()
    exif[0x0112], exif[0x8298] = 6, "(c) Phone Owner"  # pillow-heif stores it as `irot` and keeps the EXIF tag
    pillow_heif.from_pillow(Image.fromarray(small_photos[3])).save(source, quality=90, exif=exif.tobytes())
    assert exiftool(source, "Orientation", "Rotation") == {"Orientation": 6, "Rotation": 270}
    original = load_image(source)  # as displayed: rotated by `irot`
    assert original.shape[:2] == (small_photos[3].shape[1], small_photos[3].shape[0])
    [record] = collection.activate([source], tmp_path / "out", FAST).records
    released = Path(record.activated_path)
    assert exiftool(released, "Orientation", "Copyright") == {"Copyright": "(c) Phone Owner"}  # no tag: upright
    shown = load_image(released)
    assert shown.shape == original.shape and np.abs(shown.astype(int) - original).mean() < 2
    collection.remove([record.id])


def test_an_avif_whose_reader_applies_an_orientation_is_released_with_that_tag(collection, small_photos, tmp_path):
    source, exif = tmp_path / "phone.avif", Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(small_photos[4]).save(source, quality=90, exif=exif.tobytes())  # written as `irot`
    original = load_image(source)
    [record] = collection.activate([source], tmp_path / "out", FAST).records
    released = Path(record.activated_path)
    assert exiftool(released, "Orientation") == {"Orientation": source_info(source.read_bytes()).orientation}
    shown = load_image(released)
    assert shown.shape == original.shape and np.abs(shown.astype(int) - original).mean() < 2
    collection.remove([record.id])


def test_under_signing_one_unsignable_original_among_jpegs_is_named_and_the_rest_registered(
        collection, small_photos, tmp_path):
    material, folder = make_pki(tmp_path / "pki"), tmp_path / "desk"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(small_photos[i]).save(folder / f"photo{i}.jpg", quality=90)
    pillow_heif.from_pillow(Image.fromarray(small_photos[2])).save(folder / "phone.heic", quality=90)
    Image.fromarray(small_photos[3]).save(folder / "scan.bmp")
    sign_original(folder / "photo0.jpg", tmp_path / "signed.jpg", material)
    broken = bytearray((tmp_path / "signed.jpg").read_bytes())
    at = broken.find(b"jumb") + 200
    broken[at:at + 400] = bytes(400)  # its own credentials damaged: the C2PA library cannot read the ingredient
    (folder / "damaged.jpg").write_bytes(bytes(broken))
    report = collection.activate([folder], tmp_path / "out", FAST, signing=material)
    registered = {Path(r.original_path).name: r for r in report.records}
    assert set(registered) == {"photo0.jpg", "photo1.jpg", "phone.heic", "scan.bmp"}
    for name in ("photo0.jpg", "photo1.jpg", "phone.heic"):  # the HEIC is the ingredient of its release
        manifest = validation(registered[name].activated_path, trust_anchors=material.trust_anchors)
        assert manifest["active_manifest"] == registered[name].manifest_id
        assert [i["title"] for i in manifest["manifests"][registered[name].manifest_id]["ingredients"]] == [name]
    assert registered["scan.bmp"].manifest_id is None
    assert [(Path(p).name, "without Content Credentials" in w) for p, w in report.warnings] == [("scan.bmp", True)]
    [(path, error)] = report.failed
    assert path == str(folder / "damaged.jpg") and "damaged.jpg" in error and "\n" not in error
    assert not list((tmp_path / "out").glob(".*"))  # its staged file removed
    collection.remove([r.id for r in report.records])


def test_a_psnr_floor_nothing_can_meet_gives_a_finite_figure(collection, small_photos, tmp_path):
    source = tmp_path / "q90.jpg"
    Image.fromarray(small_photos[4]).save(source, quality=90)
    [record] = collection.activate([source], tmp_path / "out", ActivationConfig(iterations=2, psnr=80)).records
    assert np.isfinite(record.psnr) and json.dumps(record.to_dict(), allow_nan=False)
    same = small_photos[0]
    assert psnr(same, same) == pytest.approx(10 * np.log10(255 ** 2 * same.size))
    assert psnr(same, same) > psnr(same, same ^ 1)
    collection.remove([record.id])


def test_the_release_tools_are_checked_up_front(tmp_path, monkeypatch):
    check_release_tools(make_pki(tmp_path / "pki"))
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without exiftool
    with pytest.raises(InvalidInputError, match="exiftool is needed"):
        check_release_tools()
