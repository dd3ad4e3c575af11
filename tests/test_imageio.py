"""Safe decoding: every PIL mode becomes RGB uint8, bad files raise one clear ImageDecodeError."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from activeindex.errors import ImageDecodeError
from activeindex.imageio import ImageLimits, list_images, load_image, save_png


@pytest.fixture()
def photo(photo_paths) -> Image.Image:
    return Image.open(photo_paths[1]).convert("RGB")  # coffee, 400x600


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "P", "L", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb(tmp_path, photo, mode):
    path = tmp_path / f"image.{'tiff' if mode == 'CMYK' else 'png'}"
    if mode == "I;16":  # real 16-bit data: 8-bit values spread over 16 bits
        Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257).save(path)
    else:
        photo.convert(mode).save(path)
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (400, 600, 3)
    if mode in ("L", "I;16"):  # gray levels survive the conversion
        np.testing.assert_allclose(image[..., 0], np.asarray(photo.convert("L")), atol=1)


def test_transparency_is_composited_on_white(tmp_path, photo):
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png") == 255).all()


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


def test_list_images_walks_folders_and_keeps_named_files(tmp_path, photo):
    (tmp_path / "a" / "b").mkdir(parents=True)
    photo.save(tmp_path / "a" / "b" / "one.jpg")
    (tmp_path / "a" / "readme.txt").write_text("x")
    named = tmp_path / "named.txt"
    named.write_text("x")
    assert list_images([tmp_path / "a", named]) == [tmp_path / "a" / "b" / "one.jpg", named]
