"""Helpers for the service tests: a quick deterministic stand-in for the model, and an
archive of slides and an image indexed with it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from assembled_slides import KATHER, assemble_kather_slide
from PIL import Image

from histoseek.embedder import ImageEmbedder
from histoseek.index.build import build_index
from histoseek.index.slides import TilingOptions
from histoseek.model.cgd import ModelConfig

IMAGE_SIZE = 32
DIM = 48
#: Long enough that every thread of a test has queued its query before the batch window
#: closes; a batch is sent as soon as it is full, so a passing test never waits this long.
WIDE_WINDOW_S = 5.0
#: The slide archive's pseudo-slides: a class and the source image (patient) of its tiles.
SLIDES = {"01_TUMOR": "CRC-Prim-HE-02", "04_LYMPHO": "CRC-Prim-HE-01"}
GROUP_REGEX = r"CRC-Prim-HE-\d+"
LOOSE_IMAGE = "loose/CRC-Prim-HE-01_tile.png"


class StubBackend:
    """A deterministic stand-in model: 8×8-pixel block means of the preprocessed image.

    Each image is embedded on its own, so a batch gives exactly the rows single images give;
    it records the size of every batch it is handed.
    """

    name = "stub (cpu)"
    dim = DIM
    batch_threads = 1
    precision = "fp32"

    def __init__(self):
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batch_sizes.append(len(images))
        rows = []
        for image in images:
            blocks = image.reshape(3, 4, IMAGE_SIZE // 4, 4, IMAGE_SIZE // 4).mean(axis=(2, 4))
            vector = blocks.reshape(-1) - blocks.mean()
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows).astype(np.float32)


def stub_embedder(batch_size: int = 8) -> ImageEmbedder:
    """An ImageEmbedder around a fresh StubBackend."""
    return ImageEmbedder(
        backend=StubBackend(),
        config=ModelConfig(image_size=IMAGE_SIZE, dim=DIM),
        reference="builtin",
        fingerprint="stub-fingerprint",
        class_names=[],
        batch_size=batch_size,
        workers=0,
    )


def build_slide_archive(root: Path) -> Path:
    """Index, with the stub, an archive of two pseudo-slides of two patients (assembled from
    real kather2016 tiles; 64-px tiles at 0.5 µm/px) and one loose image of the first patient;
    returns the index folder."""
    slides = root / "archive"
    for class_name, source in SLIDES.items():
        (slides / class_name).mkdir(parents=True)
        assemble_kather_slide(slides / class_name, class_name, source=source)
    (slides / "loose").mkdir()
    tile = next(KATHER.glob("*/*CRC-Prim-HE-01*"))
    Image.open(tile).convert("RGB").save(slides / LOOSE_IMAGE)
    tiling = TilingOptions(mpp=0.5, patch_size=64)
    index_dir = root / "index"
    build_index(slides, index_dir, stub_embedder(), trees=5, tiling=tiling, group_regex=GROUP_REGEX)
    return index_dir
