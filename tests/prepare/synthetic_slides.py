"""Synthetic H&E-like images (Beer–Lambert, known stain vectors) and files for layout tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Unit optical-density vectors of haematoxylin (purple) and eosin (pink), rows R, G, B.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])
PATCH = 64


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def smooth_noise(height: int, width: int, rng: np.random.Generator, blob: int = 16) -> np.ndarray:
    """Noise in 0..1 whose blobs are about `blob` pixels across."""
    coarse = rng.uniform(0, 1, (height // blob + 2, width // blob + 2)).astype(np.float32)
    image = Image.fromarray(coarse).resize(
        ((width // blob + 2) * blob, (height // blob + 2) * blob), Image.Resampling.BILINEAR
    )
    return np.asarray(image)[:height, :width]


def he_image(
    width: int,
    height: int,
    seed: int = 0,
    tissue_width: int | None = None,
    stains: tuple[np.ndarray, np.ndarray] = (HEMATOXYLIN, EOSIN),
    strength: float = 1.0,
) -> np.ndarray:
    """A Beer–Lambert H&E-like image: textured tissue in the left `tissue_width` columns (all
    of them by default), near-white glass with faint noise to the right."""
    rng = np.random.default_rng(seed)
    # Dense haematoxylin "nuclei" where eosin is thin, eosin-rich "stroma" elsewhere: real
    # H&E holds nearly pure pixels of each stain, which Macenko's angle extremes rely on.
    nuclei = np.clip(smooth_noise(height, width, rng, 8) * 2.5 - 1.4, 0, 1)
    e_amount = (0.3 + 0.7 * smooth_noise(height, width, rng, 24)) * (1.0 - 0.8 * nuclei)
    h_amount = 0.15 + 1.2 * nuclei
    od = strength * (h_amount[..., None] * unit(stains[0]) + e_amount[..., None] * unit(stains[1]))
    rgb = np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)
    if tissue_width is not None:
        glass = 244 + rng.integers(-3, 4, (height, width - tissue_width, 3))
        rgb[:, tissue_width:] = glass.astype(np.uint8)
    return rgb


def save(path: Path, rgb: np.ndarray) -> Path:
    """Write an image (format from the extension, whatever its case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG"}[path.suffix.lower()]
    Image.fromarray(rgb).save(path, format=fmt)
    return path


def truncated_png(path: Path) -> Path:
    """A PNG cut off halfway: its header reads, its pixels do not."""
    save(path, he_image(256, 192, seed=99))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def stray_files(folder: Path) -> None:
    """The clutter real downloads carry."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    (folder / "annotations.xml").write_text("<xml/>")
    (folder / "notes.csv").write_text("a,b\n")


def crc_tree(root: Path, folders: tuple[str, str, str]) -> Path:
    """Three grade folders of 3 images each (320×256, all tissue)."""
    for c, folder in enumerate(folders):
        for i in range(3):
            save(root / folder / f"H{c}_{i}.png", he_image(320, 256, seed=100 + 10 * c + i))
    stray_files(root)
    return root
