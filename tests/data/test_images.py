import numpy as np
import pytest
from PIL import Image

from histoseek.data.images import (
    UnreadableImageError,
    check_image_header,
    is_image_name,
    load_rgb,
    pixel_limit,
)


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


def test_opaque_and_partly_transparent_images_keep_their_colours():
    from histoseek.data.images import to_rgb

    pixels = np.random.default_rng(1).integers(0, 255, (5, 7, 4), np.uint8)
    pixels[..., 3] = 255
    opaque = to_rgb(Image.fromarray(pixels, "RGBA"))
    assert np.array_equal(np.asarray(opaque), pixels[..., :3])
    pixels[0, 0, 3] = 0  # one clear pixel: it alone becomes white
    mixed = np.asarray(to_rgb(Image.fromarray(pixels, "RGBA")))
    assert mixed[0, 0].tolist() == [255, 255, 255]
    assert np.array_equal(mixed[1:], pixels[1:, :, :3])


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


def _png_header_only(path, width, height):
    """A PNG whose header claims width × height pixels, with no pixel data behind it."""
    import struct
    import zlib

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )
    return path


def test_an_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    from histoseek.prepare.defaults import DEFAULT_MAX_PIXELS

    bomb = _png_header_only(tmp_path / "bomb.png", 12_000, 9_000)  # 108 megapixels
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self))
    with pixel_limit(DEFAULT_MAX_PIXELS), pytest.raises(UnreadableImageError) as refused:
        load_rgb(bomb)
    assert "12000×9000 = 108,000,000 pixels is above the limit of 89,478,485" in str(refused.value)
    with pixel_limit(DEFAULT_MAX_PIXELS), pytest.raises(UnreadableImageError, match="above"):
        check_image_header(bomb)
    assert decoded == []


def test_the_pixel_limit_is_configurable_and_replaces_pillows_own(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (50, 40)).save(path)
    with pixel_limit(1999), pytest.raises(UnreadableImageError, match="2,000 pixels"):
        load_rgb(path)
    # Pillow alone would refuse above twice its limit; a raised limit of ours still reads it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pixel_limit(2000):
        assert load_rgb(path).size == (50, 40)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after the block


def test_forked_decoding_workers_keep_the_pixel_limit(tmp_path):
    from histoseek.data.dataset import ImageDataset, make_loader

    paths = []
    for i, size in enumerate([(8, 8), (64, 64), (8, 8), (64, 64)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size).save(paths[-1])
    dataset = ImageDataset(paths, [0] * len(paths), lambda image: np.asarray(image)[:8, :8])
    with pixel_limit(100):
        failed = [
            i for batch in make_loader(dataset, workers=2, batch_size=1) for i in batch.failed
        ]
    assert sorted(failed) == [1, 3]


def _tissue_jpeg(path, size: tuple[int, int]):
    from histoseek.data.synth import render_tissue

    render_tissue("mucosa", size, np.random.default_rng(0)).save(path, quality=90)
    return path


@pytest.mark.parametrize(
    "size, decoded",
    [((960, 720), (480, 360)), ((1000, 1000), (250, 250)), ((500, 460), (250, 230))],
)
def test_large_jpegs_decode_at_the_smallest_scale_that_still_covers_min_size(
    tmp_path, size, decoded
):
    path = _tissue_jpeg(tmp_path / "big.jpg", size)
    image = load_rgb(path, min_size=224)
    assert image.mode == "RGB" and image.size == decoded
    assert min(image.size) >= 224


def test_reduced_decoding_gives_the_same_model_input_within_tolerance(tmp_path):
    from histoseek.data.transforms import EvalTransform

    path = _tissue_jpeg(tmp_path / "big.jpg", (1000, 900))
    transform = EvalTransform(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    full = transform(load_rgb(path))
    reduced = transform(load_rgb(path, min_size=224))
    assert reduced.shape == full.shape == (3, 224, 224)
    # Back to 0..255 pixel units: DCT-domain scaling differs from a bilinear reduction only
    # in fine detail.
    difference = np.abs(reduced - full) * 0.5 * 255
    assert difference.mean() < 4.0
    psnr = 20 * np.log10(255 / np.sqrt(np.mean(difference**2)))
    assert psnr > 30


def test_small_jpegs_and_other_formats_decode_in_full(tmp_path):
    small = _tissue_jpeg(tmp_path / "small.jpg", (300, 300))
    assert load_rgb(small, min_size=224).size == (300, 300)
    png = tmp_path / "big.png"
    Image.new("RGB", (1000, 1000), (200, 100, 150)).save(png)
    assert load_rgb(png, min_size=224).size == (1000, 1000)
    grey = tmp_path / "grey.jpg"
    Image.new("L", (1000, 1000), 90).save(grey)
    image = load_rgb(grey, min_size=224)
    assert image.mode == "RGB" and image.size == (250, 250)
