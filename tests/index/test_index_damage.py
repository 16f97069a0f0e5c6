"""Damaged indexes: `query` refuses them in one line; `index` rewrites them from their checked
shards and never reuses their served files; a damaged shard is embedded again."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from index_helpers import (
    build_stopped,
    copy_tiles,
    count_embedded,
    error_line,
    index_args,
    run_cli,
)

from histoseek.index.manifest import DamagedIndexError
from histoseek.index.store import load_index


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """(tiles, an index of them) built once; tests break copies of it."""
    root = tmp_path_factory.mktemp("damage")
    tiles = copy_tiles(root / "tiles")
    result = run_cli(*index_args(tiles, checkpoint, "-o", root / "idx"))
    assert result.exit_code == 0, result.output
    return tiles, root / "idx"


@pytest.fixture
def index_dir(built, tmp_path) -> Path:
    """A copy of the built index, this test's own to break."""
    return Path(shutil.copytree(built[1], tmp_path / "idx"))


def _edit_embeddings(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        path = index / "embeddings.npy"
        np.save(path, change(np.load(path)), allow_pickle=True)

    return edit


def _with_nan(embeddings: np.ndarray) -> np.ndarray:
    embeddings[3, 7] = np.nan
    return embeddings


def _edit_manifest(**changes) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        path = index / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return edit


def _edit_first_item(**changes) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        path = index / "items.jsonl"
        lines = path.read_text().splitlines()
        lines[0] = json.dumps({**json.loads(lines[0]), **changes})
        path.write_text("\n".join(lines) + "\n")

    return edit


def _delete_items_line(number: int) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        path = index / "items.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:number] + lines[number + 1 :]))

    return edit


QUERY_REFUSALS = {
    # issue 9, item 4: searched exactly, these gave meaningless similarities and exit 0
    "int64 embeddings": (
        _edit_embeddings(lambda e: (e * 1000).astype(np.int64)),
        "embeddings.npy: holds int64 values, but the manifest says float32",
    ),
    "NaN embeddings": (_edit_embeddings(_with_nan), "embeddings.npy: row 3 holds a value that"),
    # item 7: these gave tracebacks
    "1-D embeddings": (_edit_embeddings(lambda e: e[0]), "embeddings.npy: a 1-D array (shape (96,"),
    "trees a string": (_edit_manifest(trees="lots"), '"trees" must be an integer, not a string'),
    "version a string": (
        _edit_manifest(format_version="1"),
        '"format_version" must be an integer, not a string',
    ),
    "path a list": (_edit_first_item(path=["a"]), 'line 1: "path" must be a string, not a list'),
    # item 14: --html read images from outside the indexed folder
    "path outside": (_edit_first_item(path="../../../etc/x.tif"), '"path" is not a plain relative'),
    "path absolute": (_edit_first_item(path="/etc/x.tif"), 'line 1: "path" is absolute'),
    "object embeddings": (_edit_embeddings(lambda e: e.astype(object)), "holds object values"),
    "a line deleted": (
        _delete_items_line(4),
        "items.jsonl: lists 7 items, but the manifest says 8",
    ),
}


@pytest.mark.parametrize("damage", list(QUERY_REFUSALS))
def test_query_refuses_a_damaged_index_in_one_line(damage, built, index_dir, checkpoint, tmp_path):
    corrupt, fragment = QUERY_REFUSALS[damage]
    corrupt(index_dir)
    image = next(built[0].rglob("*.tif"))
    page = tmp_path / "gallery.html"
    result = run_cli("query", image, "--index", index_dir, "--exact", "--html", page)
    line = error_line(result)
    assert line.startswith(f"Error: the index {index_dir} is damaged: {index_dir}/")
    assert fragment in line
    if "manifest.json" in line:  # it no longer says what it indexes
        assert line.endswith(f"; rebuild it with `histoseek index DIR -o {index_dir} --overwrite`")
    else:
        assert line.endswith(
            f"; rebuild it with `histoseek index {built[0]} -o {index_dir} "
            f"--model {checkpoint.resolve()}` (with the --labels and --group-regex it was "
            "built with, if any)"
        )
    assert "reads version" not in line
    assert result.exit_code == 1
    assert not page.exists()


def test_reindexing_after_a_deleted_items_line_rebuilds_and_answers_right(
    built, index_dir, checkpoint
):
    """Issue 9, item 1: this reused embeddings shifted by one row and answered wrongly.

    Embeddings are reused from the shards, each checked on its own, never from the served
    items.jsonl and embeddings.npy, which are written anew."""
    tiles, _ = built
    _delete_items_line(2)(index_dir)
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert "0 embedded, 8 reused" in result.stderr
    for image in sorted(tiles.rglob("*.tif")):
        query = run_cli(
            "query", image, "--index", index_dir, "--exact", "--json", "-k", "2", "--include-self"
        )
        assert query.exit_code == 0, query.output
        top = json.loads(query.stdout)["queries"][0]["results"][0]
        assert top["path"].endswith(f"/{image.parent.name}/{image.name}")
        assert f"{top['similarity']:.4f}" == "1.0000"


REBUILT = {
    "truncated embeddings": (
        lambda index: (index / "embeddings.npy").write_bytes(
            (index / "embeddings.npy").read_bytes()[:-100]
        ),
        "embeddings.npy: truncated",
    ),
    "items line not JSON": (
        lambda index: (index / "items.jsonl").write_text("{\n" * 8),
        "items.jsonl: line 1: not valid JSON",
    ),
    "object embeddings": (_edit_embeddings(lambda e: e.astype(object)), "holds object values"),
    "embeddings missing": (
        lambda index: (index / "embeddings.npy").unlink(),
        "embeddings.npy: cannot be read (No such file or directory)",
    ),
    "items missing": (lambda index: (index / "items.jsonl").unlink(), "items.jsonl: cannot be"),
    "annoy missing": (lambda index: (index / "annoy.ann").unlink(), "annoy.ann: cannot be read"),
    "NaN embeddings": (_edit_embeddings(_with_nan), "row 3 holds a value that is not a finite"),
}


@pytest.mark.parametrize("damage", list(REBUILT))
def test_index_over_a_damaged_index_rewrites_it_from_its_shards(
    damage, built, index_dir, checkpoint
):
    """Issue 9, item 2: these gave tracebacks."""
    corrupt, fragment = REBUILT[damage]
    corrupt(index_dir)
    with pytest.raises(DamagedIndexError) as damaged:
        load_index(index_dir)
    assert fragment in str(damaged.value)
    result = run_cli(*index_args(built[0], checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert "0 embedded, 8 reused" in result.stderr
    assert len(load_index(index_dir).items) == 8


SHARD_DAMAGE = {
    "truncated": (
        lambda shard: (shard / "embeddings.npy").write_bytes(
            (shard / "embeddings.npy").read_bytes()[:-100]
        ),
        "embeddings.npy: truncated",
    ),
    "NaN": (
        lambda shard: _edit_embeddings(_with_nan)(shard),
        "embeddings.npy: row 3 holds a value that is not a finite number",
    ),
    "items": (lambda shard: (shard / "items.jsonl").write_text("{\n"), "line 1: not valid JSON"),
    "info": (lambda shard: (shard / "shard.json").unlink(), "it has no shard.json"),
}


@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_a_damaged_shard_is_embedded_again_with_a_note(damage, built, index_dir, checkpoint):
    corrupt, fragment = SHARD_DAMAGE[damage]
    corrupt(index_dir / "shards" / "images")
    result = run_cli(*index_args(built[0], checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "cannot be used" in line]
    assert len(notes) == 1 and fragment in notes[0], result.stderr
    assert notes[0].startswith("the stored shard of the plain images cannot be used (")
    assert notes[0].endswith("); embedding it again")
    assert "8 embedded, 0 reused" in result.stderr
    assert len(load_index(index_dir).items) == 8


@pytest.mark.parametrize("damage", ["truncated", "items", "info"])
def test_a_damaged_part_is_embedded_again_with_a_note(
    damage, built, checkpoint, tmp_path, monkeypatch
):
    from histoseek.embedder import load_image_embedder
    from histoseek.index import build

    tiles, whole = built
    monkeypatch.setattr(build, "IMAGES_CHUNK", 3)
    embedder = load_image_embedder(checkpoint, backend="torch", workers=0)
    index_dir = tmp_path / "idx"
    # Stopped as a kill would, once two parts of 3 images are kept.
    build_stopped(tiles, index_dir, embedder, calls=2)
    corrupt, fragment = SHARD_DAMAGE[damage]
    corrupt(index_dir / "shards" / "images.000001.part")

    notes: list[str] = []
    calls = count_embedded(embedder)
    report = build.build_index(tiles, index_dir, embedder, notify=notes.append)
    (note,) = [note for note in notes if "cannot be used" in note]
    assert note.startswith(
        "the stored shard of the plain images (images.000001.part) cannot be used ("
    )
    assert fragment in note and note.endswith("); embedding it again")
    assert calls == [3, 2]  # the damaged part's images and the 2 that no part held
    assert (report.embedded, report.reused, report.dropped) == (5, 3, 0)
    assert sorted(path.name for path in (index_dir / "shards").iterdir()) == ["images"]
    assert (index_dir / "items.jsonl").read_text() == (whole / "items.jsonl").read_text()
    np.testing.assert_allclose(
        np.load(index_dir / "embeddings.npy"), np.load(whole / "embeddings.npy"), atol=1e-5
    )


def test_shards_that_are_not_a_folder_are_one_line(built, index_dir, checkpoint):
    shutil.rmtree(index_dir / "shards")
    (index_dir / "shards").write_text("x")
    for extra in ((), ("--overwrite",)):
        line = error_line(run_cli(*index_args(built[0], checkpoint, "-o", index_dir, *extra)))
        assert line == (
            f"Error: {index_dir}/shards is not a folder, so no embedding can be kept in it; "
            "remove it (index then embeds everything again)"
        )


def test_a_damaged_manifest_needs_overwrite_since_it_cannot_say_what_it_indexes(
    built, index_dir, checkpoint
):
    (index_dir / "manifest.json").write_text('{"format": "histoseek-index", "format_version": 1')
    line = error_line(run_cli(*index_args(built[0], checkpoint, "-o", index_dir)))
    assert f"{index_dir}/manifest.json: not valid JSON" in line
    assert line.endswith("so pass --overwrite to rebuild it")
    result = run_cli(*index_args(built[0], checkpoint, "-o", index_dir, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert len(load_index(index_dir).items) == 8


def test_a_shard_that_fails_its_read_back_is_one_line(checkpoint, tmp_path, monkeypatch):
    from histoseek.index import build
    from histoseek.index.shards import ShardError

    def failing(path: Path):
        raise ShardError("vectors.npy cannot be read (Input/output error)")

    monkeypatch.setattr(build, "read_shard", failing)
    index_dir = tmp_path / "idx"
    result = run_cli(*index_args(copy_tiles(tmp_path / "tiles"), checkpoint, "-o", index_dir))
    line = error_line(result)
    assert "the shard of the plain images just written to" in line
    assert "cannot be read back (vectors.npy cannot be read (Input/output error))" in line
    assert not (index_dir / "manifest.json").exists()
