import numpy as np
import pytest
from PIL import Image

from histoseek.data.images import UnreadableImageError, is_image_name, load_rgb


@pytest.mark.parametrize("name", ["a.png", "b.JPG", "c.Jpeg", "d.TIF", "e.tiff", "f.BMP"])
def test_supported_extensions_in_any_case(name):
    assert is_image_name(name)


@pytest.mark.parametrize("name", ["notes.csv", "a.xml", ".DS_Store", "img.png.txt"])
def test_other_files_are_not_images(name):
    assert not is_image_name(name)


@pytest.mark.parametrize(
    "mode, suffix",
    [
        ("L", ".png"),
        ("P", ".png"),
        ("RGBA", ".png"),
        ("CMYK", ".jpg"),
        ("CMYK", ".tif"),
        ("LA", ".png"),
    ],
)
def test_modes_are_converted_to_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"image{suffix}"
    Image.new(mode, (8, 6)).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (8, 6)


def test_sixteen_bit_greyscale_keeps_its_range(tmp_path):
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 16 * 4, dtype=np.uint16).reshape(4, 16)
    Image.fromarray(ramp).save(path)
    pixels = np.asarray(load_rgb(path))
    assert pixels.dtype == np.uint8
    assert pixels[..., 0].min() == 0 and pixels[..., 0].max() == 255
    assert len(np.unique(pixels[..., 0])) > 32  # not clipped to black and white


def test_transparency_becomes_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    assert np.asarray(load_rgb(path)).tolist()[0][0] == [255, 255, 255]


def test_truncated_and_garbage_files_raise(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    for path in (truncated, garbage, tmp_path / "missing.png"):
        with pytest.raises(UnreadableImageError):
            load_rgb(path)
