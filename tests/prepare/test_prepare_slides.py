"""prepare reads through the slide reader: tiled TIFFs piece by piece, big images from an overview.

The TIFF pyramids here are written by the tests from synthetic H&E-like images (not scanned).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from assembled_slides import sparse_slide
from PIL import Image
from synthetic_slides import he_image, save
from test_prepare_pipeline import fails, ok

from histoseek.prepare import prepare_dataset
from histoseek.slide.pyramid import write_pyramidal_tiff


@pytest.fixture
def slide_tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Two classes, each a pyramidal tiled TIFF (640×384, left 384 px tissue) and a PNG."""
    root = tmp_path / "slides"
    pixels = {}
    for c, name in enumerate(("stroma", "tumour")):
        rgb = he_image(640, 384, seed=c, tissue_width=384)
        (root / name).mkdir(parents=True)
        write_pyramidal_tiff(root / name / f"slide{c}.tif", rgb, "test pyramid, not scanned", None)
        pixels[f"{name}/slide{c}.tif"] = rgb
        save(root / name / f"small{c}.png", he_image(128, 128, seed=10 + c))
    return root, pixels


def test_a_tiled_tiff_is_cut_from_its_regions_and_not_held_to_max_pixels(slide_tree, tmp_path):
    root, pixels = slide_tree
    out = tmp_path / "out"
    rows = ok("folder", root, "-o", out, "--patch-size", 64, "--split", "1", "--workers", 0,
              "--max-pixels", 20_000)  # fmt: skip
    from_slides = [row for row in rows if row["source"].endswith(".tif")]
    # The tissue half holds 6 × 6 whole patches; the glass half none.
    assert len(from_slides) == 2 * 36
    for row in from_slides:
        x, y = int(row["x"]), int(row["y"])
        assert x + 64 <= 384
        with Image.open(out / row["path"]) as patch:
            expected = pixels[row["source"]][y : y + 64, x : x + 64]
            assert np.array_equal(np.asarray(patch), expected)
    # A plain image above --max-pixels is still refused before any work.
    save(root / "tumour" / "big.png", he_image(200, 150, seed=5))
    assert "exceed --max-pixels 20,000" in fails(
        "folder", root, "-o", tmp_path / "again", "--patch-size", 64, "--max-pixels", 20_000
    )


def test_resampled_patches_match_resampling_the_whole_image(slide_tree, tmp_path):
    root, pixels = slide_tree
    rows = ok("folder", root, "-o", tmp_path / "out", "--patch-size", 48, "--scale", 0.5,
              "--split", "1", "--workers", 0)  # fmt: skip
    source = "stroma/slide0.tif"
    whole = np.asarray(Image.fromarray(pixels[source]).resize((320, 192), Image.Resampling.LANCZOS))
    inside = [row for row in rows if row["source"] == source and int(row["y"]) in (48, 96)]
    assert inside
    for row in inside:
        x, y = int(row["x"]), int(row["y"])
        with Image.open(tmp_path / "out" / row["path"]) as patch:
            difference = np.abs(np.asarray(patch, int) - whole[y : y + 48, x : x + 48]).mean()
        assert difference < 1.0


def test_a_large_image_is_measured_on_a_smaller_overview(slide_tree, tmp_path, monkeypatch):
    root, _ = slide_tree
    full = ok("folder", root, "-o", tmp_path / "full", "--patch-size", 32, "--split", "1",
              "--workers", 0)  # fmt: skip
    monkeypatch.setattr(prepare_dataset, "MAX_OVERVIEW_PIXELS", 160 * 96)
    small = ok("folder", root, "-o", tmp_path / "small", "--patch-size", 32, "--split", "1",
               "--workers", 0)  # fmt: skip
    kept = {row["path"] for row in full}
    again = {row["path"] for row in small}
    assert len(kept ^ again) <= 0.05 * len(kept)


# prepare of a sparse 20,000 × 20,000 px pyramid (1.2 GB as decoded RGB) in a fresh process,
# its peak resident memory measured after the imports and at the end.
_PREPARE = textwrap.dedent(
    """
    import json, resource, sys
    from histoseek.prepare.prepare_dataset import PrepareOptions, prepare_dataset

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    options = PrepareOptions(layout="folder", patch_size=448, split="1", min_tissue=0.5)
    summary = prepare_dataset(sys.argv[1], sys.argv[2], options, workers=0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"patches": summary.patches, "growth_kib": after - before}))
    """
)


def test_preparing_a_large_slide_keeps_peak_memory_small(tmp_path):
    (tmp_path / "src" / "sparse").mkdir(parents=True)
    sparse_slide(tmp_path / "src" / "sparse" / "big.tif", side=20000)
    done = subprocess.run(
        [sys.executable, "-c", _PREPARE, str(tmp_path / "src"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert 90 < result["patches"] < 140  # 448-px patches at least half in its 4 tissue squares
    assert result["growth_kib"] < 400 * 1024, result
