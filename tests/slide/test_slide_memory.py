"""Reading tiles from a large slide never decodes it whole: peak memory stays small.

The slide is a sparse 20,000 × 20,000 px pyramidal TIFF written tile by tile by the test
(1.2 GB as decoded RGB); see assembled_slides.sparse_slide.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from assembled_slides import sparse_slide

# Tissue detection, 300 tiles read, a thumbnail and a region query, in a fresh process whose
# peak resident memory is measured after its imports and again at the end.
_WORK = textwrap.dedent(
    """
    import json, resource, sys
    from histoseek.slide.reader import open_slide
    from histoseek.slide.tiling import read_region_at_mpp, read_tile, spread_sample, tissue_tiles

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open_slide(sys.argv[1]) as slide:
        tiles = tissue_tiles(slide)
        for tile in tiles[:300]:
            read_tile(slide, tile)
        spread = spread_sample(tiles, 64)
        slide.thumbnail(1024)
        read_region_at_mpp(slide, 8000, 7000, 6000, 6000, 2.0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tiles": len(tiles), "spread": len(spread), "growth_kib": after - before}))
    """
)


def test_tiling_a_20k_slide_keeps_peak_memory_small(tmp_path):
    path = tmp_path / "sparse.tif"
    patches = sparse_slide(path, side=20000)
    done = subprocess.run(
        [sys.executable, "-c", _WORK, str(path)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    # The grid's 224-px tiles (the slide is at 0.5 µm/px) that are at least half tissue.
    starts = np.arange(0, 20000 - 223, 224)
    expected = 0
    for x, y, size in patches:
        overlap_x = np.clip(np.minimum(starts + 224, x + size) - np.maximum(starts, x), 0, None)
        overlap_y = np.clip(np.minimum(starts + 224, y + size) - np.maximum(starts, y), 0, None)
        expected += int((np.outer(overlap_y, overlap_x) >= 0.5 * 224**2).sum())
    assert abs(result["tiles"] - expected) <= 0.05 * expected
    assert result["spread"] == 64
    # Decoding level 0 would take 1.2 GB (1.6 GB as RGBA); the whole run stays far below.
    assert result["growth_kib"] < 250 * 1024, result
