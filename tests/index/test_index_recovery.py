"""A run killed during the folder swap: the next `index` or `query` puts the index back.

Each test starts a real update in another process that kills itself (SIGKILL) at one of the
swap's renames (.tmp → .new, the index → .old, .new → the index), then runs the next command.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from index_helpers import (
    index_args,
    kill_at_rename,
    leftovers_beside,
    run_cli,
    start_run,
    stop,
)
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.index.manifest import read_manifest
from histoseek.index.store import load_index

# Shards are swapped into INDEX/shards the same way before that; these are the index's renames.
KILL_BEFORE = {
    "tmp→new": "dst.endswith('.new') and '/shards/' not in dst",
    "index→old": "dst.endswith('.old') and '/shards/' not in dst",
    "new→index": "src.endswith('.new') and '/shards/' not in src",  # it left no index at the path
}


@pytest.fixture
def update(tiles, checkpoint, tmp_path) -> tuple[Path, Path]:
    """(an index of the 8 tiles, a 9th tile added since that the next run will embed)."""
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    added = tiles / "03_COMPLEX" / "added.tif"
    added.parent.mkdir()
    with Image.open(sorted((tiles / "01_TUMOR").iterdir())[0]) as image:
        image.transpose(Image.Transpose.ROTATE_90).save(added)  # like no other tile
    return index_dir, added


def _killed_update(tiles: Path, checkpoint: Path, index_dir: Path, when: str) -> int:
    """Run the update and kill it just before the rename `when`; its pid."""
    process = start_run(index_args(tiles, checkpoint, "-o", index_dir), kill_at_rename(when))
    try:
        assert process.wait(timeout=300) == -signal.SIGKILL, process.stderr.read()
    finally:
        stop(process)
    return process.pid


def _swap_folders(index_dir: Path) -> list[str]:
    return [name for name in leftovers_beside(index_dir) if name != ".idx.lock"]


def _top_hit(image: Path, index_dir: Path) -> dict:
    result = run_cli(
        "query", image, "--index", index_dir, "--exact", "--json", "-k", "1", "--include-self"
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["queries"][0]["results"][0]


def test_a_kill_between_the_renames_leaves_a_whole_copy_that_query_restores(
    update, tiles, checkpoint
):
    index_dir, added = update
    pid = _killed_update(tiles, checkpoint, index_dir, KILL_BEFORE["new→index"])
    assert not index_dir.exists()
    swap = _swap_folders(index_dir)
    assert sorted(name[-4:] for name in swap) == [".new", ".old"]  # the update, the index
    assert all(name.startswith(f".idx.{pid}-") for name in swap)

    top = _top_hit(added, index_dir)  # the update had finished writing: it is the one restored
    assert top["path"].endswith("added.tif")
    assert top["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert read_manifest(index_dir).items == 9
    assert leftovers_beside(index_dir) == []


def test_index_restores_the_update_and_reuses_it(update, tiles, checkpoint):
    index_dir, _ = update
    pid = _killed_update(tiles, checkpoint, index_dir, KILL_BEFORE["new→index"])
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert f"restored {index_dir} from its update, which a killed run (pid {pid})" in result.stderr
    assert "0 embedded, 9 reused" in result.stderr
    assert leftovers_beside(index_dir) == []


def test_a_damaged_update_is_not_restored_but_the_previous_index_is(update, tiles, checkpoint):
    index_dir, _ = update
    _killed_update(tiles, checkpoint, index_dir, KILL_BEFORE["new→index"])
    (new,) = index_dir.parent.glob(".idx.*.new")
    (new / "embeddings.npy").write_bytes(b"")
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert f"restored {index_dir} from the previous copy" in result.stderr
    # The killed run had written the shard with the added tile into the previous copy.
    assert "0 embedded, 9 reused" in result.stderr
    assert leftovers_beside(index_dir) == []


@pytest.mark.parametrize("when", ["tmp→new", "index→old"])
def test_a_kill_before_the_swap_keeps_the_index_and_the_next_run_tidies_up(
    when, update, tiles, checkpoint
):
    index_dir, added = update
    manifest = (index_dir / "manifest.json").read_text()
    pid = _killed_update(tiles, checkpoint, index_dir, KILL_BEFORE[when])
    assert (index_dir / "manifest.json").read_text() == manifest
    (left,) = _swap_folders(index_dir)
    assert left.startswith(f".idx.{pid}-") and left.endswith(
        ".tmp" if when == "tmp→new" else ".new"
    )

    assert _top_hit(added, index_dir)["similarity"] < 0.9999  # the old index, still usable
    assert leftovers_beside(index_dir) == []  # query tidied up
    assert len(load_index(index_dir).items) == 8


def _swap_on_read(monkeypatch, index_dir: Path, other: Path, every_time: bool) -> list[Path]:
    """Make each read of embeddings.npy (or only the first) swap `other` into `index_dir`'s
    place just before it, as a concurrent `index` run's renames would; the paths read."""
    from histoseek.index import store

    original, reads = store.read_matrix, []

    def swapping(path, *args, **kwargs):
        if every_time or not reads:
            aside = index_dir.with_name("aside")
            index_dir.rename(aside)
            other.rename(index_dir)
            aside.rename(other)
        reads.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(store, "read_matrix", swapping)
    return reads


@pytest.fixture
def update_built_beside(update, tiles, checkpoint, tmp_path) -> tuple[Path, Path]:
    """(the index of 8 tiles, an index of all 9 built beside it, ready to be swapped in)."""
    newer = tmp_path / "newer"
    assert run_cli(*index_args(tiles, checkpoint, "-o", newer)).exit_code == 0
    return update[0], newer


def test_a_read_that_spans_a_swap_is_done_again_on_the_new_index(update_built_beside, monkeypatch):
    index_dir, newer = update_built_beside
    reads = _swap_on_read(monkeypatch, index_dir, newer, every_time=False)
    opened = load_index(index_dir)
    # The first read saw the old manifest and items, then the new embeddings: it is redone.
    assert len(reads) == 2
    assert opened.manifest.items == len(opened.items) == 9
    assert "03_COMPLEX/added.tif" in {item.path for item in opened.items}


def test_an_index_swapped_on_every_read_is_one_line(update_built_beside, monkeypatch):
    index_dir, newer = update_built_beside
    reads = _swap_on_read(monkeypatch, index_dir, newer, every_time=True)
    with pytest.raises(HistoseekError, match="was replaced 3 times while it was being read") as e:
        load_index(index_dir)
    assert len(reads) == 3 and "\n" not in str(e.value)
