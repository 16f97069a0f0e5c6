"""Training augmentation suited to H&E patches, and the matching test-time preprocessing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from histoseek.errors import HistoseekError

if TYPE_CHECKING:
    import torch

# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density.
_HED_FROM_RGB = np.linalg.inv(
    np.array(
        [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
        dtype=np.float64,
    )
)
_RGB_FROM_HED = np.linalg.inv(_HED_FROM_RGB)


def normalize_array(array: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Per-channel (x - mean) / std on a CHW (or NCHW) float array."""
    shape = (3, 1, 1)
    mean_a = np.asarray(mean, dtype=np.float32).reshape(shape)
    std_a = np.asarray(std, dtype=np.float32).reshape(shape)
    return (array - mean_a) / std_a


class EvalTransform:
    """Test-time preprocessing: the whole patch resized to the model's size, normalised."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        # (x / 255 - mean) / std as one multiply-add per pixel: x * scale + offset.
        std_a = np.asarray(std, dtype=np.float64).reshape(3, 1, 1)
        self._scale = (1.0 / (255.0 * std_a)).astype(np.float32)
        self._offset = (-np.asarray(mean, dtype=np.float64).reshape(3, 1, 1) / std_a).astype(
            np.float32
        )

    def __call__(self, image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """An RGB image → float32 CHW (size × size), normalised, written into `out` (a
        contiguous float32 array of that shape) when given, else into a single new array."""
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        pixels = np.asarray(image)  # HWC uint8
        # The transposed view is read once, converted and scaled straight into the output,
        # instead of a float copy, a transposed copy and two more for the normalisation.
        if out is None:
            out = np.empty((3, self.size, self.size), dtype=np.float32)
        np.multiply(pixels.transpose(2, 0, 1), self._scale, out=out)
        out += self._offset
        return out


def stain_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Perturb haematoxylin and eosin amounts in optical-density space (HWC uint8 in, out).

    Scanners and staining protocols shift H&E colour multiplicatively in optical density,
    which plain RGB jitter does not model.
    """
    od = -np.log((image.astype(np.float64) + 1.0) / 256.0)
    stains = od.reshape(-1, 3) @ _HED_FROM_RGB
    scale = 1.0 + rng.uniform(-strength, strength, size=3)
    shift = rng.uniform(-strength, strength, size=3) * 0.1
    stains = stains * scale + shift
    rgb = 256.0 * np.exp(-(stains @ _RGB_FROM_HED)) - 1.0
    return np.clip(rgb, 0, 255).reshape(image.shape).astype(np.uint8)


def hsv_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Shift hue by up to ±strength/10 of a turn and scale saturation by 1 ± strength (HWC
    uint8 in, out).

    Dyes differ in shade between laboratories, beyond the amounts of the two stains that
    stain jitter varies. Grey and white pixels have no saturation, so they stay as they are.
    """
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    # PIL's hue runs 0..255 for a whole turn; uint8 arithmetic wraps it round.
    hsv[..., 0] += np.uint8(round(rng.uniform(-strength, strength) * 0.1 * 256) % 256)
    saturation = hsv[..., 1] * (1.0 + rng.uniform(-strength, strength))
    hsv[..., 1] = np.clip(np.rint(saturation), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


class TrainTransform:
    """Random resized crop, blur, flips, 90° rotations, stain, hue/saturation and brightness
    jitter; then normalise.

    Tissue has no canonical orientation, so all eight dihedral transforms are equally valid.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: tuple[float, float] = (0.5, 1.0),
        stain_strength: float = 0.05,
        brightness: float = 0.1,
        blur: float = 0.0,
        hsv_strength: float = 0.0,
        seed: int | None = None,
    ):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.crop_scale = crop_scale
        self.stain_strength = stain_strength
        self.brightness = brightness
        self.blur = blur
        self.hsv_strength = hsv_strength
        self.rng = np.random.default_rng(seed)

    def _random_crop(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        area = width * height * self.rng.uniform(*self.crop_scale)
        aspect = np.exp(self.rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_w = int(round(min(width, np.sqrt(area * aspect))))
        crop_h = int(round(min(height, np.sqrt(area / aspect))))
        left = int(self.rng.integers(0, width - crop_w + 1))
        top = int(self.rng.integers(0, height - crop_h + 1))
        box = (left, top, left + crop_w, top + crop_h)
        return image.resize((self.size, self.size), Image.BILINEAR, box=box)

    def __call__(self, image: Image.Image) -> np.ndarray:
        image = self._random_crop(image)
        # Blur and hue/saturation jitter are drawn only when asked for, so that without them
        # the random stream, and a seeded run, stay as they were.
        if self.blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(self.rng.uniform(0, self.blur)))
        array = np.asarray(image)
        if self.rng.random() < 0.5:
            array = array[:, ::-1]
        array = np.rot90(array, k=int(self.rng.integers(0, 4)))
        if self.stain_strength > 0:
            array = stain_jitter(array, self.stain_strength, self.rng)
        if self.hsv_strength > 0:
            array = hsv_jitter(array, self.hsv_strength, self.rng)
        chw = np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / 255.0
        if self.brightness > 0:
            chw = np.clip(chw * (1.0 + self.rng.uniform(-self.brightness, self.brightness)), 0, 1)
        return normalize_array(chw, self.mean, self.std)


class MultiScaleResize:
    """Multi-scale training: each batch is resized to a side drawn at random from `sizes`.

    The networks pool globally, so one model learns from several apparent magnifications of
    the same tissue. The size is drawn per batch, since a batch must share one size.
    """

    def __init__(self, sizes: Sequence[int], seed: int | None = None):
        if not sizes or min(sizes) < 32:
            raise HistoseekError(f"multi-scale sizes must be 32 px or more: {list(sizes)}")
        self.sizes = tuple(int(size) for size in sizes)
        self.rng = np.random.default_rng(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        size = self.sizes[int(self.rng.integers(len(self.sizes)))]
        if images.shape[-2:] == (size, size):
            return images
        return F.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )


def seed_worker_transform(transform: Callable, worker_seed: int) -> None:
    """Give each DataLoader worker its own random stream (forked copies would repeat)."""
    if isinstance(transform, TrainTransform):
        transform.rng = np.random.default_rng(worker_seed)
