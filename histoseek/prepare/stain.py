"""Stain normalisation to a reference image: Macenko (stain vectors) and Reinhard (LAB statistics).

Both fit the reference once, then fit each source image on its own and map it onto the
reference. Images are processed in row blocks so that large images need little extra memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.data.folder import display_path
from histoseek.data.images import UnreadableImageError, load_rgb
from histoseek.errors import HistoseekError
from histoseek.prepare.defaults import STAIN_METHODS
from histoseek.prepare.tissue import tissue_mask

# Fitting on about a million pixels gives the same statistics as the whole image, much faster.
FIT_PIXELS = 1_000_000
# Fewer stained pixels than this make any fit meaningless.
MIN_FIT_PIXELS = 100
ROW_BLOCK = 256

# Macenko: pixels with optical density below this in any channel are glass, not stain.
OD_THRESHOLD = 0.15
ANGLE_PERCENTILE = 1.0
CONCENTRATION_PERCENTILE = 99.0


#: An (H, W, 3) uint8 image recoloured as a whole image was fitted: its pixels one by one.
Recolour = Callable[[np.ndarray], np.ndarray]


def _sample(rgb: np.ndarray, limit: int = FIT_PIXELS) -> np.ndarray:
    """An evenly thinned-out view of an (H, W, 3) image with at most about `limit` pixels."""
    step = max(1, int(np.ceil(np.sqrt(rgb.shape[0] * rgb.shape[1] / limit))))
    return rgb[::step, ::step]


def _blocks(rgb: np.ndarray, transform) -> np.ndarray:
    """Apply `transform` ((N, 3) uint8 → (N, 3) uint8) to the image block by block of rows."""
    out = np.empty_like(rgb)
    for top in range(0, rgb.shape[0], ROW_BLOCK):
        block = rgb[top : top + ROW_BLOCK]
        out[top : top + ROW_BLOCK] = transform(block.reshape(-1, 3)).reshape(block.shape)
    return out


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Beer–Lambert optical density of uint8 intensities (the +1 keeps black pixels finite)."""
    return -np.log((rgb.astype(np.float64) + 1.0) / 256.0)


def density_to_rgb(od: np.ndarray) -> np.ndarray:
    """The inverse of `optical_density`, rounded and clipped to uint8."""
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class MacenkoStains:
    """A Macenko fit: unit stain vectors in OD space (rows: haematoxylin, eosin) and the
    99th-percentile concentration of each stain."""

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray

    @classmethod
    def fit(cls, rgb: np.ndarray) -> MacenkoStains | None:
        """Fit the stain vectors of an (H, W, 3) image; None when it holds too little stain."""
        od = optical_density(_sample(rgb)).reshape(-1, 3)
        stained = od[(od > OD_THRESHOLD).all(axis=1)]
        if len(stained) < MIN_FIT_PIXELS:
            return None
        _, vectors = np.linalg.eigh(np.cov(stained.T))
        plane = vectors[:, [2, 1]]
        # The main axis must point into positive OD for the angles below to be meaningful.
        if plane[:, 0].sum() < 0:
            plane[:, 0] *= -1
        projected = stained @ plane
        angles = np.arctan2(projected[:, 1], projected[:, 0])
        low, high = np.percentile(angles, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
        first = plane @ np.array([np.cos(low), np.sin(low)])
        second = plane @ np.array([np.cos(high), np.sin(high)])
        # Haematoxylin absorbs red more strongly than eosin does.
        pair = (first, second) if first[0] > second[0] else (second, first)
        matrix = np.stack([v / np.linalg.norm(v) for v in pair])
        concentrations = od @ np.linalg.pinv(matrix)
        max_concentrations = np.percentile(concentrations, CONCENTRATION_PERCENTILE, axis=0)
        if np.any(max_concentrations <= 0):
            return None
        return cls(stain_matrix=matrix, max_concentrations=max_concentrations)

    def parameters(self) -> dict:
        """The fit as plain JSON-ready numbers."""
        return {
            "stain_matrix": {
                "hematoxylin": [round(float(v), 6) for v in self.stain_matrix[0]],
                "eosin": [round(float(v), 6) for v in self.stain_matrix[1]],
            },
            "max_concentrations": [round(float(v), 6) for v in self.max_concentrations],
        }


@dataclass(frozen=True)
class MacenkoNormalizer:
    """Maps each image's stains onto the reference's stain vectors and concentration range."""

    reference: MacenkoStains
    method: str = "macenko"

    @classmethod
    def fit(cls, rgb: np.ndarray) -> MacenkoNormalizer:
        """Fit to a reference image; HistoseekError when it holds too little stain."""
        stains = MacenkoStains.fit(rgb)
        if stains is None:
            raise HistoseekError("the --reference image holds too little stained tissue to fit")
        return cls(reference=stains)

    def parameters(self) -> dict:
        """The reference fit, for the record."""
        return self.reference.parameters()

    def fitted_to(self, rgb: np.ndarray) -> Recolour | None:
        """The recolouring of an image with `rgb`'s stains (fitted to it, applied to it or to
        any part of it) to the reference's; None if `rgb` holds too little stain to fit."""
        source = MacenkoStains.fit(rgb)
        if source is None:
            return None
        unmix = np.linalg.pinv(source.stain_matrix)
        scale = self.reference.max_concentrations / source.max_concentrations

        def transform(pixels: np.ndarray) -> np.ndarray:
            concentrations = (optical_density(pixels) @ unmix) * scale
            return density_to_rgb(concentrations @ self.reference.stain_matrix)

        return lambda part: _blocks(part, transform)

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """The image with the reference's stains; unchanged if it holds too little stain."""
        recolour = self.fitted_to(rgb)
        return rgb if recolour is None else recolour(rgb)


# sRGB (D65) ↔ CIE XYZ ↔ CIE L*a*b*, the standard formulas.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


def rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 sRGB → (N, 3) float L*a*b*."""
    c = pixels.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    t = (linear @ _RGB_TO_XYZ.T) / _WHITE
    f = np.where(t > _DELTA**3, np.cbrt(t), t / (3 * _DELTA**2) + 4.0 / 29.0)
    return np.stack(
        [116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], axis=1
    )


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(N, 3) float L*a*b* → (N, 3) uint8 sRGB, clipped to the gamut."""
    fy = (lab[:, 0] + 16.0) / 116.0
    f = np.stack([fy + lab[:, 1] / 500.0, fy, fy - lab[:, 2] / 200.0], axis=1)
    t = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    linear = np.clip((t * _WHITE) @ _XYZ_TO_RGB.T, 0.0, 1.0)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)


def lab_statistics(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of L*a*b* over the tissue (all pixels if barely any)."""
    sample = _sample(rgb)
    mask = tissue_mask(sample)
    pixels = sample[mask] if mask.sum() >= MIN_FIT_PIXELS else sample.reshape(-1, 3)
    lab = rgb_to_lab(pixels)
    return lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-6)


@dataclass(frozen=True)
class ReinhardNormalizer:
    """Shifts and scales each L*a*b* channel to the reference tissue's mean and spread."""

    mean: np.ndarray
    std: np.ndarray
    method: str = "reinhard"

    @classmethod
    def fit(cls, rgb: np.ndarray) -> ReinhardNormalizer:
        """Fit to a reference image."""
        mean, std = lab_statistics(rgb)
        return cls(mean=mean, std=std)

    def parameters(self) -> dict:
        """The reference statistics, for the record."""
        return {
            "lab_mean": [round(float(v), 6) for v in self.mean],
            "lab_std": [round(float(v), 6) for v in self.std],
        }

    def fitted_to(self, rgb: np.ndarray) -> Recolour:
        """The recolouring of an image with `rgb`'s L*a*b* statistics (applied to it or to any
        part of it) to the reference's."""
        mean, std = lab_statistics(rgb)

        def transform(pixels: np.ndarray) -> np.ndarray:
            return lab_to_rgb((rgb_to_lab(pixels) - mean) / std * self.std + self.mean)

        return lambda part: _blocks(part, transform)

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """The image with the reference's L*a*b* statistics."""
        return self.fitted_to(rgb)(rgb)


StainNormalizer = MacenkoNormalizer | ReinhardNormalizer


def fit_normalizer(method: str, reference: Path) -> StainNormalizer:
    """Read `reference` and fit the named method to it."""
    if method not in STAIN_METHODS:
        raise HistoseekError(f"unknown stain normalisation {method!r}; use one of {STAIN_METHODS}")
    if not Path(reference).is_file():  # a FIFO would block the read for ever
        raise HistoseekError(f"--reference {display_path(reference)} is not a regular file")
    try:
        rgb = np.asarray(load_rgb(reference))
    except UnreadableImageError as error:
        raise HistoseekError(f"cannot read --reference image: {error}") from None
    fitter = MacenkoNormalizer if method == "macenko" else ReinhardNormalizer
    try:
        return fitter.fit(rgb)
    except HistoseekError as error:
        raise HistoseekError(f"{error}: {display_path(reference)}") from None
