"""`histoseek index` over slides: tissue tiles as items, shards per slide, resume, bad slides.

The slides are written by the tests: synthetic ones drawn by histoseek (not real tissue), and
pseudo-slides assembled from real kather2016 tiles (not scanned); see assembled_slides.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from assembled_slides import (
    assemble_kather_slide,
    corrupt_levels,
    sparse_slide,
    synthetic_slide,
)
from index_helpers import error_line, index_args, kather_tiles, run_cli, start_run, stop
from PIL import Image

from histoseek.embedder import load_image_embedder
from histoseek.index.items import read_item_image
from histoseek.index.manifest import read_manifest
from histoseek.index.shards import read_shard, shard_name
from histoseek.index.store import load_index
from histoseek.slide.pyramid import write_pyramidal_tiff
from histoseek.slide.sources import close_slides
from histoseek.slide.synth import render_slide

# Tiles of 64 px at 1 µm/px: 128 level-0 px of a 0.5 µm/px slide, read from its level 1.
TILING = ("--patch-size", "64", "--mpp", "1.0")
SIZE = (1024, 768)


def _index(root: Path, checkpoint: Path, index_dir: Path, *extra: str | Path):
    result = run_cli(*index_args(root, checkpoint, "-o", index_dir, *TILING, *extra))
    assert result.exit_code == 0, result.output
    return result


def _items(index_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (index_dir / "items.jsonl").read_text().splitlines()]


@pytest.fixture
def slides(tmp_path: Path) -> Path:
    """Two synthetic slides (not real tissue) in class folders."""
    root = tmp_path / "slides"
    for number, tissue in enumerate(("mucosa", "stroma")):
        (root / tissue).mkdir(parents=True)
        synthetic_slide(root / tissue / f"case{number}.tif", tissue, SIZE, seed=number)
    return root


def test_tiles_read_back_are_what_was_embedded(slides, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    result = _index(slides, checkpoint, index_dir)
    assert "slides: 2 embedded, 0 reused" in result.stderr
    index = load_index(index_dir)
    manifest = index.manifest
    assert (manifest.slides, manifest.mpp, manifest.patch_size) == (2, 1.0, 64)
    assert (manifest.min_tissue, manifest.slide_mpp) == (0.5, None)
    tiles = index.items
    assert len(tiles) > 20 and all(item.is_tile for item in tiles)
    first = tiles[0]
    assert (first.path, first.label, first.slide_id, first.group) == (
        "mucosa/case0.tif", "mucosa", "case0", "case0",
    )  # fmt: skip
    assert (first.width, first.height, first.tile_size, first.mpp) == (64, 64, 128, 1.0)
    stat = (slides / first.path).stat()
    assert (first.size, first.mtime_ns) == (stat.st_size, stat.st_mtime_ns)

    # Read back, the tiles are the slide's pixels at (x, y), and embed to the stored vectors.
    level0 = {
        f"case{number}": render_slide(tissue, *SIZE, np.random.default_rng(number))
        for number, tissue in enumerate(("mucosa", "stroma"))
    }
    chosen = tiles[:: max(1, len(tiles) // 12)]
    read_back = tmp_path / "read_back"
    read_back.mkdir()
    files = []
    for number, item in enumerate(chosen):
        image = read_item_image(slides, item)
        assert image.size == (64, 64)
        region = level0[item.slide_id][
            item.y : item.y + item.tile_size, item.x : item.x + item.tile_size
        ]
        reference = Image.fromarray(region).resize((64, 64), Image.Resampling.LANCZOS)
        assert np.abs(np.asarray(image, int) - np.asarray(reference, int)).mean() < 3
        files.append(read_back / f"{number}.png")
        image.save(files[-1])
    close_slides()
    embedder = load_image_embedder(checkpoint, "torch", "cpu", None, 8, 0, notify=lambda _: None)
    again = embedder.embed_files(files)
    rows = [tiles.index(item) for item in chosen]
    np.testing.assert_allclose(again.embeddings, index.vectors.embeddings[rows], atol=1e-5)


def test_a_folder_of_slides_and_patches_indexes_both(slides, checkpoint, tmp_path):
    root = slides
    kather = assemble_kather_slide(root / "tumour", "01_TUMOR", aperio=True)  # an .svs
    for path in kather_tiles(1):
        (root / "patches" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / "patches" / path.parent.name / path.name)
    index_dir = tmp_path / "idx"
    result = _index(root, checkpoint, index_dir, "--workers", "2", "--batch-size", "8")
    assert "of 3 slide(s) and 4 image(s)" in result.stderr
    items = _items(index_dir)
    assert [item["path"] for item in items] == sorted(
        (item["path"] for item in items), key=os.fsencode
    )
    patches = [item for item in items if "x" not in item]
    assert [(item["label"], item["width"]) for item in patches] == [
        (path.parent.name, 150) for path in kather_tiles(1)
    ]
    assert all(set(item) == {"path", "label", "width", "height", "size", "mtime_ns"}
               for item in patches)  # fmt: skip
    svs = [item for item in items if item["path"].endswith(".svs")]
    assert svs and {item["label"] for item in svs} == {"tumour"}
    assert {item["tile_size"] for item in svs} == {round(64 * 1.0 / kather.mpp)}
    shards = sorted(path.name for path in (index_dir / "shards").iterdir())
    assert len(shards) == 4 and "images" in shards
    assert shard_name("tumour/" + kather.path.name) in shards
    serial = tmp_path / "serial"
    _index(root, checkpoint, serial, "--batch-size", "8")
    np.testing.assert_allclose(
        np.load(serial / "embeddings.npy"), np.load(index_dir / "embeddings.npy"), atol=1e-5
    )
    assert (serial / "items.jsonl").read_text() == (index_dir / "items.jsonl").read_text()


def test_an_unchanged_slide_is_reused_and_a_changed_one_embedded_alone(
    slides, checkpoint, tmp_path
):
    index_dir = tmp_path / "idx"
    _index(slides, checkpoint, index_dir)
    before = np.load(index_dir / "embeddings.npy")
    stable = index_dir / "shards" / shard_name("stroma/case1.tif")
    created = json.loads((stable / "shard.json").read_text())["created"]

    again = _index(slides, checkpoint, index_dir)
    assert "0 embedded" in again.stderr and "slides: 0 embedded, 2 reused" in again.stderr
    assert "backend none (all embeddings reused)" in again.stderr
    np.testing.assert_array_equal(np.load(index_dir / "embeddings.npy"), before)

    changed = slides / "mucosa" / "case0.tif"
    synthetic_slide(changed, "mucosa", SIZE, seed=7)
    result = _index(slides, checkpoint, index_dir)
    assert "slides: 1 embedded, 1 reused" in result.stderr
    assert "stored shard(s) were made" not in result.stderr  # a changed slide is no surprise
    assert json.loads((stable / "shard.json").read_text())["created"] == created
    items = _items(index_dir)
    mucosa = [i for i, item in enumerate(items) if item["path"] == "mucosa/case0.tif"]
    assert mucosa and not np.allclose(np.load(index_dir / "embeddings.npy")[mucosa[0]], before[0])

    # Other tiling options embed every slide again; a deleted slide leaves with its shard.
    changed.unlink()
    result = _index(slides, checkpoint, index_dir, "--min-tissue", "0.25")
    assert "slides: 1 embedded, 0 reused" in result.stderr
    assert (
        "1 stored shard(s) were made at other tiling options (--mpp, --patch-size, "
        "--min-tissue), so they are embedded again"
    ) in result.stderr.splitlines()
    assert read_manifest(index_dir).min_tissue == 0.25
    assert sorted(path.name for path in (index_dir / "shards").iterdir()) == [stable.name]


def test_an_indexed_slide_that_cannot_be_read_now_counts_as_dropped(slides, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    _index(slides, checkpoint, index_dir)
    damaged = slides / "stroma" / "case1.tif"
    tiles = sum(1 for item in _items(index_dir) if item["path"] == "stroma/case1.tif")
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])

    result = _index(slides, checkpoint, index_dir)
    assert f"0 embedded, {len(_items(index_dir))} reused, {tiles} dropped" in result.stderr
    assert tiles and all(item["path"] != "stroma/case1.tif" for item in _items(index_dir))


KILL_AFTER_THE_FIRST_SLIDE = """
import os, signal
import histoseek.index.build as build
_write_shard = build.write_shard
def write_shard(shards_dir, name, *args, **kwargs):
    written = _write_shard(shards_dir, name, *args, **kwargs)
    if name != "images":
        os.kill(os.getpid(), signal.SIGKILL)
    return written
build.write_shard = write_shard
"""


def test_a_killed_run_resumes_with_the_slides_it_finished(slides, checkpoint, tmp_path):
    synthetic_slide(slides / "stroma" / "case2.tif", "stroma", SIZE, seed=2)
    index_dir = tmp_path / "idx"
    args = index_args(slides, checkpoint, "-o", index_dir, *TILING)
    process = start_run(args, KILL_AFTER_THE_FIRST_SLIDE)
    try:
        assert process.wait(timeout=600) == -signal.SIGKILL, process.stderr.read()
    finally:
        stop(process)
    assert not (index_dir / "manifest.json").exists()  # no index yet; one shard kept
    (kept,) = (index_dir / "shards").iterdir()
    assert kept.name == shard_name("mucosa/case0.tif")
    assert read_shard(kept).items

    result = _index(slides, checkpoint, index_dir)
    assert "slides: 2 embedded, 1 reused" in result.stderr
    assert read_manifest(index_dir).slides == 3
    assert len(load_index(index_dir).items) == sum(
        len(read_shard(shard).items) for shard in (index_dir / "shards").iterdir()
    )


def test_corrupt_truncated_and_unknown_mpp_slides_are_skipped_and_listed(
    slides, checkpoint, tmp_path
):
    good = slides / "mucosa" / "case0.tif"
    data = good.read_bytes()
    (slides / "bad").mkdir()
    (slides / "bad" / "truncated.tif").write_bytes(data[: len(data) // 3])
    # Three levels: tissue is found on level 2; the tiles, read from level 1, are zeros.
    bigger = synthetic_slide(tmp_path / "bigger.tif", "mucosa", (2048, 1536), seed=3).path
    corrupt_levels(bigger, slides / "bad" / "zeroed.tif", levels=(0, 1))
    # OpenSlide refuses it, but Pillow decodes its level 0: never one plain image.
    cut = bigger.read_bytes()
    (slides / "bad" / "cut.tif").write_bytes(cut[: len(cut) * 9 // 10])
    (slides / "bad" / "junk.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    rgb = synthetic_slide(tmp_path / "x.tif", "stroma", SIZE, seed=5).rgb
    write_pyramidal_tiff(slides / "bad" / "no_mpp.tif", rgb, "no resolution recorded", None)
    index_dir = tmp_path / "idx"
    result = _index(slides, checkpoint, index_dir)
    assert "skipped 5 unreadable file(s)" in result.stderr
    assert (
        "1 slide(s) record no microns per pixel, so they are skipped; pass --slide-mpp to give it"
        in result.stderr
    )
    listed = dict(
        line.split("\t") for line in (index_dir / "skipped.txt").read_text().splitlines()[1:]
    )
    assert sorted(listed) == [
        "bad/cut.tif", "bad/junk.svs", "bad/no_mpp.tif", "bad/truncated.tif", "bad/zeroed.tif",
    ]  # fmt: skip
    assert "OpenSlide cannot open it" in listed["bad/junk.svs"]
    assert "OpenSlide cannot open it" in listed["bad/cut.tif"]
    assert listed["bad/zeroed.tif"].startswith("cannot read ")
    assert listed["bad/no_mpp.tif"] == (
        "microns per pixel unknown (the file records none); pass --slide-mpp to give it"
    )
    assert read_manifest(index_dir).slides == 2

    with_mpp = _index(slides, checkpoint, index_dir, "--slide-mpp", "0.5")
    assert "slides: 1 embedded, 2 reused" in with_mpp.stderr
    assert "skipped 4 unreadable file(s)" in with_mpp.stderr
    other = _index(slides, checkpoint, index_dir, "--slide-mpp", "0.25")
    assert "slides: 1 embedded, 2 reused" in other.stderr  # only the slide that used it

    strict = run_cli(
        *index_args(slides, checkpoint, "-o", tmp_path / "strict", *TILING, "--strict")
    )
    assert error_line(strict).startswith("Error: --strict: bad/")


def test_slides_smaller_than_a_tile_or_tiled_off_their_mpp_are_skipped_with_why(
    slides, checkpoint, tmp_path
):
    rgb = render_slide("stroma", 120, 90, np.random.default_rng(7))
    write_pyramidal_tiff(slides / "stroma" / "small.tif", rgb, "smaller than a tile", 0.5)
    write_pyramidal_tiff(slides / "stroma" / "no_mpp.tif", rgb, "no resolution recorded", None)
    index_dir = tmp_path / "idx"
    result = _index(slides, checkpoint, index_dir, "--slide-mpp", "20")
    assert "skipped 2 unreadable file(s)" in result.stderr
    assert "have no tile of" not in result.stderr
    listed = dict(
        line.split("\t") for line in (index_dir / "skipped.txt").read_text().splitlines()[1:]
    )
    assert listed == {
        "stroma/no_mpp.tif": (
            "a 64-px tile at --mpp 1 is 3.2 px of this slide at 20 µm/px (--slide-mpp, as the "
            "file records none); rounded to 3 px it would be at 0.938 µm/px, 6% off (an --mpp "
            "of 15.6 or more keeps within 1%)"
        ),
        "stroma/small.tif": (
            "smaller than one 64-px tile at --mpp 1: it is 120×90 px at 0.5 µm/px (the file's "
            "metadata), a tile 128 px a side"
        ),
    }
    assert read_manifest(index_dir).slides == 2


def test_a_damaged_slide_shard_is_embedded_again_alone(slides, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    _index(slides, checkpoint, index_dir)
    shard = index_dir / "shards" / shard_name("stroma/case1.tif")
    vectors = np.load(shard / "embeddings.npy")
    vectors[0, 0] = np.nan
    np.save(shard / "embeddings.npy", vectors)
    result = _index(slides, checkpoint, index_dir)
    assert (
        "the stored shard of stroma/case1.tif cannot be used (embeddings.npy: row 0 holds a "
        "value that is not a finite number); embedding it again" in result.stderr
    )
    assert "slides: 1 embedded, 1 reused" in result.stderr
    assert np.isfinite(np.load(shard / "embeddings.npy")).all()


def test_labels_csv_and_group_regex_name_slides_without_embedding_again(
    slides, checkpoint, tmp_path
):
    index_dir = tmp_path / "idx"
    _index(slides, checkpoint, index_dir, "--group-regex", r"case(\d)")
    assert {(item["slide_id"], item["group"]) for item in _items(index_dir)} == {
        ("case0", "0"), ("case1", "1"),
    }  # fmt: skip
    labels = tmp_path / "labels.csv"
    labels.write_text("slide,label,group\ncase0,benign,patient7\nstroma/case1.tif,malignant,\n")
    result = _index(slides, checkpoint, index_dir, "--labels", labels)
    assert "0 embedded" in result.stderr
    found = {(i["slide_id"], i["label"], i["group"]) for i in _items(index_dir)}
    assert found == {
        ("case0", "benign", "patient7"),
        ("stroma/case1.tif", "malignant", "stroma/case1.tif"),
    }
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\ncase0,x\n")
    line = error_line(run_cli(*index_args(slides, checkpoint, "-o", index_dir, "--labels", bad)))
    assert "must name the columns slide,label,group" in line


# Indexing a sparse 20,000 × 20,000 px slide (1.2 GB as decoded RGB) in a fresh process, with
# decoding in that process; its peak resident memory is measured after the model is loaded.
_INDEX = textwrap.dedent(
    """
    import json, resource, sys
    from histoseek.embedder import load_image_embedder
    from histoseek.index.build import build_index

    embedder = load_image_embedder(sys.argv[1], "torch", "cpu", None, 32, 0, notify=print)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = build_index(sys.argv[2], sys.argv[3], embedder)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tiles": report.tiles, "growth_kib": after - before}))
    """
)


def test_indexing_a_large_slide_keeps_peak_memory_small(checkpoint, tmp_path):
    (tmp_path / "slides").mkdir()
    sparse_slide(tmp_path / "slides" / "big.tif", side=20000)
    done = subprocess.run(
        [sys.executable, "-c", _INDEX, checkpoint, tmp_path / "slides", tmp_path / "idx"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert 400 < result["tiles"] < 500  # 224-px tiles at least half in its 4 tissue squares
    assert result["growth_kib"] < 400 * 1024, result
