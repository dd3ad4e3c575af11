"""Safe decoding: every PIL mode becomes RGB uint8, bad files raise one clear ImageDecodeError."""
from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from activeindex import imageio
from activeindex.errors import ImageDecodeError
from activeindex.imageio import ImageLimits, list_images, load_image, save_png
from activeindex.perceptual import psnr


@pytest.fixture()
def photo(photo_paths) -> Image.Image:
    return Image.open(photo_paths[1]).convert("RGB")  # coffee, 400x600


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "P", "L", "LA", "1"])
def test_every_mode_becomes_rgb(tmp_path, photo, mode):
    path = tmp_path / f"image.{'tiff' if mode == 'CMYK' else 'png'}"
    photo.convert(mode).save(path)
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (400, 600, 3)
    if mode == "L":  # gray levels survive the conversion
        np.testing.assert_allclose(image[..., 0], np.asarray(photo.convert("L")), atol=1)


def write_png16(path: Path, a: np.ndarray) -> None:
    """A 16-bit PNG (grey, grey + alpha, RGB or RGBA) encoded by hand: Pillow cannot write 16-bit colour."""
    h, w = a.shape[:2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[a.shape[2] if a.ndim == 3 else 1]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a.reshape(h, -1))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def opaque(rgb: np.ndarray, top: int) -> np.ndarray:
    """RGB plus an alpha channel at `top` (fully opaque)."""
    return np.dstack([rgb, np.full(rgb.shape[:2], top, rgb.dtype)])


# name -> writer(path, 8-bit grey, 8-bit RGB) of a real photo at a high bit depth (coffee's grey levels span
# 0..255, so the min-max cases stretch it back to the 8-bit reference too)
HIGH_DEPTH: dict[str, Callable[[Path, np.ndarray, np.ndarray], None]] = {
    "F tiff in [0, 1]": lambda p, g, _: Image.fromarray(g.astype(np.float32) / 255).save(p),
    "F tiff in [0, 255]": lambda p, g, _: Image.fromarray(g.astype(np.float32)).save(p),
    "F tiff in [-1, 1] (min-max)": lambda p, g, _: Image.fromarray(g.astype(np.float32) / 127.5 - 1).save(p),
    "I tiff, 8-bit data": lambda p, g, _: Image.fromarray(g.astype(np.int32)).save(p),
    "I tiff, 16-bit data": lambda p, g, _: Image.fromarray(g.astype(np.int32) * 257).save(p),
    "I tiff, 32-bit data (min-max)": lambda p, g, _: Image.fromarray(g.astype(np.int32) * 8_000_000).save(p),
    "I tiff, signed 16-bit (min-max)": lambda p, g, _: tifffile.imwrite(p, (g.astype(np.int16) - 128) * 100),
    "I;16 png": lambda p, g, _: Image.fromarray(g.astype(np.uint16) * 257).save(p.with_suffix(".png")),
    "I;16B tiff": lambda p, g, _: tifffile.imwrite(p, g.astype(np.uint16) * 257, byteorder=">"),
    "16-bit RGB png": lambda p, _, c: write_png16(p.with_suffix(".png"), c.astype(np.uint16) * 257),
    "16-bit RGBA png": lambda p, _, c: write_png16(p.with_suffix(".png"), opaque(c.astype(np.uint16) * 257, 65535)),
    "16-bit RGB tiff": lambda p, _, c: tifffile.imwrite(p, c.astype(np.uint16) * 257, photometric="rgb"),
}


@pytest.mark.parametrize("name", HIGH_DEPTH)
def test_high_bit_depth_photo_matches_its_8bit_version(tmp_path, photo, name):
    grey, rgb = np.asarray(photo.convert("L")), np.asarray(photo)
    HIGH_DEPTH[name](tmp_path / "image.tif", grey, rgb)
    [path] = tmp_path.iterdir()
    image = load_image(path).astype(np.float64)
    reference = rgb if "RGB" in name else np.repeat(grey[..., None], 3, axis=2)
    assert image.std() > 10  # not constant, not washed out
    assert np.abs(image - reference).mean() <= 2


def test_dark_16bit_image_is_scaled_from_the_full_16bit_range(tmp_path, photo):
    grey = np.asarray(photo.convert("L"), np.uint16)
    Image.fromarray(grey * 200 // 255).save(tmp_path / "dark.png")  # 16-bit data, max 200 of 65535: near black
    image = load_image(tmp_path / "dark.png")
    assert image.min() == 0 and image.max() == 1


def test_16bit_image_collapsing_to_one_level_is_refused(tmp_path, photo):
    Image.fromarray(np.asarray(photo.convert("L"), np.uint16) // 4).save(tmp_path / "black.png")  # 0..63
    with pytest.raises(ImageDecodeError, match=r"black\.png: mode I;16 pixel values 0\.\.63 all fall on one "
                                               r"8-bit level when read as 0\.\.65535 data"):
        load_image(tmp_path / "black.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_tiff_is_refused_in_one_line(tmp_path, photo, bad):
    a = np.asarray(photo.convert("L"), np.float32) / 255
    a[10, 20] = bad
    Image.fromarray(a).save(tmp_path / "nan.tif")
    with pytest.raises(ImageDecodeError, match=r"nan\.tif: mode F image has NaN or infinite pixel values") as e:
        load_image(tmp_path / "nan.tif")
    assert "\n" not in str(e.value)


def test_unconvertible_mode_is_refused_naming_it(monkeypatch, tmp_path, photo):
    photo.convert("L").save(tmp_path / "x.png")

    def refuse(image: Image.Image, mode: str | None = None, *args, **kwargs) -> Image.Image:
        raise ValueError(f"conversion from {image.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(ImageDecodeError, match=r"x\.png: PIL cannot convert image mode 'L' to RGB"):
        load_image(tmp_path / "x.png")


def test_transparency_is_composited_on_white(tmp_path, photo):
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 255).all()


def test_premultiplied_grey_alpha_tiff_is_composited_on_white(tmp_path, photo):
    grey = np.asarray(photo.convert("L"))
    half = np.dstack([grey // 2, np.full_like(grey, 128)])  # alpha 128/255, grey premultiplied by it
    tifffile.imwrite(tmp_path / "half.tif", half, photometric="minisblack", extrasamples=["assocalpha"])
    assert Image.open(tmp_path / "half.tif").mode == "La"  # PIL cannot convert "La" to RGB directly
    expected = grey / 2 + 255 * 127 / 255  # colour * alpha + white * (1 - alpha)
    assert np.abs(load_image(tmp_path / "half.tif")[..., 0] - expected).mean() <= 2


def test_exif_orientation_is_applied(tmp_path, photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "rotated.jpg").shape == (600, 400, 3)


def test_truncated_file(tmp_path, photo):
    photo.save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"cut\.jpg: corrupt or truncated"):
        load_image(tmp_path / "cut.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(tmp_path / "notes.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "absent.png")


def test_tiny_image(tmp_path):
    Image.new("RGB", (20, 300)).save(tmp_path / "thin.png")
    with pytest.raises(ImageDecodeError, match="smaller than the minimum side"):
        load_image(tmp_path / "thin.png")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # a 20000 x 20000 PNG compresses to a few hundred kB but would decode to 1.2 GB
    Image.new("L", (20000, 20000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 1000"):
        load_image(tmp_path / "bomb.png", ImageLimits(max_pixels=1000))


def test_png_round_trip_is_lossless_and_atomic(tmp_path, photo):
    image = np.asarray(photo)
    path = save_png(tmp_path / "out" / "x.png", image)
    np.testing.assert_array_equal(load_image(path), image)
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left behind


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)], ids=["umask 022", "umask 027"])
def test_png_gets_the_mode_of_an_ordinary_new_file(tmp_path, photo, umask, mode):
    previous = os.umask(umask)
    imageio._new_file_mode.cache_clear()  # it caches the umask of its first call
    try:
        path = save_png(tmp_path / "x.png", np.asarray(photo))
    finally:
        os.umask(previous)
        imageio._new_file_mode.cache_clear()
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_list_images_walks_folders_and_keeps_named_files(tmp_path, photo):
    (tmp_path / "a" / "b").mkdir(parents=True)
    photo.save(tmp_path / "a" / "b" / "one.jpg")
    (tmp_path / "a" / "readme.txt").write_text("x")
    named = tmp_path / "named.txt"
    named.write_text("x")
    assert list_images([tmp_path / "a", named]) == [tmp_path / "a" / "b" / "one.jpg", named]


def test_read_ahead_keeps_order_and_raises_at_the_failing_chunk():
    """Chunks come back in input order whatever thread read them; an error surfaces when its chunk is reached,
    after every chunk before it, and ``pool=None`` reads the same in line."""
    from concurrent.futures import ThreadPoolExecutor

    def read(x: int) -> int:
        if x == 7:
            raise ImageDecodeError("item 7: corrupt")
        return x * x

    chunks = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    with ThreadPoolExecutor(2) as pool:
        got = []
        with pytest.raises(ImageDecodeError, match="item 7"):
            for chunk in imageio.read_ahead(chunks, read, pool):
                got.append(chunk)
        assert got == [[0, 1, 4], [9, 16, 25]]
        assert list(imageio.read_ahead(chunks[:2], read, pool)) == list(imageio.read_ahead(chunks[:2], read, None))


def test_png_is_written_at_the_fast_zlib_level(tmp_path, photo):
    """Level 1 (docs/performance.md, "Speed"): lossless all the same, and a level-1 stream in the file."""
    pixels = np.asarray(photo)
    path = save_png(tmp_path / "out.png", pixels)
    np.testing.assert_array_equal(load_image(path), pixels)
    zlib_header = path.read_bytes().split(b"IDAT", 1)[1][:2]
    assert imageio.PNG_COMPRESS_LEVEL == 1 and zlib_header[1] >> 6 == 0  # FLEVEL 0: the fastest compressor


GRAY = Path("/usr/share/color/icc/Gray.icc")  # Debian's icc-profiles-free
SWOP = Path("/usr/share/color/icc/ghostscript/default_cmyk.icc")  # Debian's libgs-common


@pytest.mark.parametrize(("mode", "suffix", "colour", "alpha", "bits"), [
    ("L", "jpg", "L", False, 8), ("LA", "png", "L", True, 8), ("I;16", "png", "L", False, 16),
    ("CMYK", "jpg", "CMYK", False, 8), ("RGBA", "webp", "RGB", True, 8), ("P", "gif", "RGB", False, 8)])
def test_source_info_says_what_the_pixels_are(tmp_path, photo, mode, suffix, colour, alpha, bits):
    path = tmp_path / f"image.{suffix}"
    image = photo.convert("L").convert("I;16") if mode == "I;16" else photo.convert(mode)
    if alpha:  # translucent: an opaque alpha channel is not written (WebP)
        image.putalpha(128)
    image.save(path)
    info = imageio.source_info(path.read_bytes())
    assert (info.colour, info.alpha, info.bits) == (colour, alpha, bits)


def test_a_16_bit_colour_png_says_16_bits(tmp_path, photo):
    write_png16(tmp_path / "deep.png", np.asarray(photo).astype(np.uint16) * 257)
    assert imageio.source_info((tmp_path / "deep.png").read_bytes()).bits == 16


def test_decode_layers_hands_over_the_alpha_and_the_composite_on_white(tmp_path, photo):
    rgba = np.dstack([np.asarray(photo), np.full(photo.size[::-1], 64, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    data = (tmp_path / "cutout.png").read_bytes()
    rgb, layers = imageio.decode_layers(data)
    np.testing.assert_array_equal(layers, rgba)
    np.testing.assert_array_equal(rgb, imageio.decode_image(data))
    assert np.abs(rgb - (rgba[..., :3].astype(float) * 64 / 255 + 255 * 191 / 255)).max() <= 1
    assert imageio.decode_layers(imageio.read_file(tmp_path / "cutout.png"))[1] is not None
    photo.save(tmp_path / "opaque.png")
    assert imageio.decode_layers((tmp_path / "opaque.png").read_bytes())[1] is None


def test_a_cmyk_file_is_converted_by_its_profile_and_one_without_by_pillows_formula(tmp_path, photo):
    cmyk = ImageCms.profileToProfile(photo, ImageCms.createProfile("sRGB"), ImageCms.ImageCmsProfile(str(SWOP)),
                                     outputMode="CMYK")
    cmyk.save(tmp_path / "profiled.tiff", icc_profile=SWOP.read_bytes())
    cmyk.info.pop("icc_profile", None)  # LittleCMS's output carries the profile it converted to
    cmyk.save(tmp_path / "bare.tiff")
    managed = load_image(tmp_path / "profiled.tiff")
    assert psnr(managed, np.asarray(photo)) > 25  # back near the RGB it was separated from
    np.testing.assert_array_equal(load_image(tmp_path / "bare.tiff"), np.asarray(cmyk.convert("RGB")))
    assert psnr(load_image(tmp_path / "bare.tiff"), np.asarray(photo)) < psnr(managed, np.asarray(photo))


def test_an_unreadable_cmyk_profile_is_one_line_error(tmp_path, photo):
    photo.convert("CMYK").save(tmp_path / "bad.jpg", icc_profile=GRAY.read_bytes())  # a grey profile on CMYK
    with pytest.raises(ImageDecodeError, match="CMYK colour profile") as error:
        load_image(tmp_path / "bad.jpg")
    assert "bad.jpg" in str(error.value) and "\n" not in str(error.value)
