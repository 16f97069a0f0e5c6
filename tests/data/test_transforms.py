import numpy as np
import pytest
from PIL import Image

from histoseek.data.transforms import EvalTransform, TrainTransform, hsv_jitter, stain_jitter

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (150, 120, 3), dtype=np.uint8))


def test_eval_transform_resizes_the_whole_patch_and_normalises(image):
    array = EvalTransform(64, MEAN, STD)(image)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32
    expected = (np.asarray(image.resize((64, 64), Image.BILINEAR)) / 255.0 - 0.5) / 0.25
    assert np.allclose(array, expected.transpose(2, 0, 1), atol=1e-5)


def test_eval_transform_writes_into_a_given_row_of_a_batch(image):
    transform = EvalTransform(64, MEAN, STD)
    batch = np.full((2, 3, 64, 64), np.nan, np.float32)
    returned = transform(image, out=batch[1])
    assert np.shares_memory(returned, batch[1])
    assert np.array_equal(batch[1], transform(image))
    assert np.isnan(batch[0]).all()  # the other row is left alone


def test_train_transform_output_shape_and_seeded_randomness(image):
    first = TrainTransform(48, MEAN, STD, seed=1)
    second = TrainTransform(48, MEAN, STD, seed=1)
    a, b = first(image), second(image)
    assert a.shape == (3, 48, 48) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(first(image), a)  # the stream moves on


def _texture(array: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels along both axes: unchanged by
    flips and 90° rotations, lowered by blur."""
    pixels = array.astype(np.float64)
    return float(np.abs(np.diff(pixels, axis=-1)).mean() + np.abs(np.diff(pixels, axis=-2)).mean())


def test_train_transform_without_blur_or_hsv_jitter_draws_the_same_stream_as_before(image):
    plain = TrainTransform(48, MEAN, STD, seed=5)
    unblurred = TrainTransform(48, MEAN, STD, blur=0.0, hsv_strength=0.0, seed=5)
    for _ in range(3):
        assert np.array_equal(plain(image), unblurred(image))


def test_train_transform_blur_softens_texture_by_a_drawn_amount(image):
    # No stain or brightness jitter, so the only difference left is the blur (the crop is
    # drawn first, so both see the same crop; flips and rotations leave _texture unchanged).
    kwargs = {"stain_strength": 0.0, "brightness": 0.0}
    ratios = []
    for seed in range(8):
        sharp = TrainTransform(48, MEAN, STD, seed=seed, **kwargs)(image)
        blurred = TrainTransform(48, MEAN, STD, blur=2.0, seed=seed, **kwargs)(image)
        assert abs(blurred.mean() - sharp.mean()) < 0.05  # blur moves detail, not colour
        ratios.append(_texture(blurred) / _texture(sharp))
    assert max(ratios) <= 1.0
    assert min(ratios) < 0.5  # a strong blur was drawn at least once
    assert len({round(ratio, 3) for ratio in ratios}) == len(ratios)  # each its own sigma
    assert np.array_equal(
        TrainTransform(48, MEAN, STD, blur=2.0, seed=3, **kwargs)(image),
        TrainTransform(48, MEAN, STD, blur=2.0, seed=3, **kwargs)(image),
    )


def _hue_and_saturation(rgb: np.ndarray) -> tuple[float, float]:
    """Hue (in turns) and saturation (0..1) of one RGB pixel, worked out by hand."""
    red, green, blue = (float(channel) / 255 for channel in rgb)
    high, low = max(red, green, blue), min(red, green, blue)
    if high == red:
        hue = ((green - blue) / (high - low)) % 6
    elif high == green:
        hue = (blue - red) / (high - low) + 2
    else:
        hue = (red - green) / (high - low) + 4
    return hue / 6, (high - low) / high


def test_hsv_jitter_moves_hue_and_saturation_within_their_bounds_and_keeps_grey():
    tissue = np.full((4, 4, 3), (180, 90, 160), dtype=np.uint8)  # eosin-pink, hue ~0.87
    tissue[0] = (255, 255, 255)
    tissue[1] = (120, 120, 120)
    hue, saturation = _hue_and_saturation(tissue[2, 0])
    shifts, ratios = [], []
    for seed in range(20):
        jittered = hsv_jitter(tissue, 0.5, np.random.default_rng(seed))
        assert jittered.dtype == np.uint8 and jittered.shape == tissue.shape
        assert np.array_equal(jittered[:2], tissue[:2])  # no saturation, nothing to shift
        new_hue, new_saturation = _hue_and_saturation(jittered[2, 0])
        shifts.append((new_hue - hue + 0.5) % 1 - 0.5)
        ratios.append(new_saturation / saturation)
    # Up to ±0.05 of a turn and ×(1 ± 0.5), with a little slack for uint8 rounding.
    assert max(abs(shift) for shift in shifts) <= 0.05 + 0.01
    assert min(ratios) >= 0.5 - 0.02 and max(ratios) <= 1.5 + 0.02
    assert min(shifts) < -0.02 and max(shifts) > 0.02  # both ways, not a fixed shift
    assert min(ratios) < 0.8 and max(ratios) > 1.2


def test_train_transform_hsv_jitter_changes_colour_not_layout(image):
    # Only hsv jitter differs, and it is drawn after the crop, flip and rotation, so both
    # see the same pixels in the same places.
    kwargs = {"stain_strength": 0.0, "brightness": 0.0}
    plain = TrainTransform(48, MEAN, STD, seed=2, **kwargs)(image)
    jittered = TrainTransform(48, MEAN, STD, hsv_strength=1.0, seed=2, **kwargs)(image)
    assert not np.array_equal(plain, jittered)
    grey_plain, grey_jittered = plain.mean(axis=0), jittered.mean(axis=0)
    assert np.corrcoef(grey_plain.ravel(), grey_jittered.ravel())[0, 1] > 0.5


def test_stain_jitter_keeps_white_and_changes_stained_pixels():
    rng = np.random.default_rng(3)
    tissue = np.full((8, 8, 3), (180, 90, 160), dtype=np.uint8)
    tissue[0, 0] = (255, 255, 255)
    jittered = stain_jitter(tissue, 0.3, rng)
    assert jittered.dtype == np.uint8 and jittered.shape == tissue.shape
    assert not np.array_equal(jittered[1:, 1:], tissue[1:, 1:])
    # Glass (no stain) stays nearly white: stain scaling cannot colour empty pixels much.
    assert jittered[0, 0].min() >= 235


def test_stain_jitter_of_zero_strength_is_identity():
    tissue = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = stain_jitter(tissue, 0.0, np.random.default_rng(0))
    assert np.abs(out.astype(int) - tissue.astype(int)).max() <= 1
