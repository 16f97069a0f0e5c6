"""`histoseek query`: tables, JSON, exact and approximate search, bad input, killed updates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from index_helpers import copy_tiles, error_line, index_args, run_cli

from histoseek.index.manifest import read_manifest
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _build(tiles: Path, checkpoint: Path, path: Path) -> Path:
    result = run_cli(*index_args(tiles, checkpoint, "-o", path))
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def shared(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """(tiles, index) built once for the tests that only read them."""
    root = tmp_path_factory.mktemp("shared")
    tiles = copy_tiles(root / "tiles")
    return tiles, _build(tiles, checkpoint, root / "idx")


@pytest.fixture
def index_dir(tiles, checkpoint, tmp_path) -> Path:
    """An index of this test's own tiles, for tests that change or break it."""
    return _build(tiles, checkpoint, tmp_path / "idx")


def _query_json(*args) -> dict:
    result = run_cli("query", *args, "--json", "--backend", "torch")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_query_prints_a_table_and_a_majority_hint(shared):
    tiles, index_dir = shared
    image = sorted((tiles / "02_STROMA").iterdir())[0]
    result = run_cli("query", image, "--index", index_dir, "-k", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("rank" in line and "similarity" in line and "label" in line for line in lines)
    rows = [line for line in lines if "│" in line and ".tif" in line]
    assert len(rows) == 4
    assert "1.0000" in rows[0] and "02_STROMA" in rows[0] and image.name in rows[0]
    hint = [line for line in lines if line.startswith("hint:")]
    assert len(hint) == 1 and "majority label among the 4 results:" in hint[0]
    assert hint[0].endswith("/4)")


def test_json_document_has_ranked_results_and_majority(shared):
    tiles, index_dir = shared
    image = sorted((tiles / "07_ADIPOSE").iterdir())[0]
    document = _query_json(image, "--index", index_dir, "-k", "3")
    assert document["index"]["items"] == 8
    assert document["model"]["fingerprint"] == read_manifest(index_dir).model_fingerprint
    (query,) = document["queries"]
    assert query["query"].endswith(image.name)
    results = query["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert set(results[0]) == {"rank", "similarity", "label", "path"}
    assert results[0]["path"].endswith(image.name)
    assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    similarities = [r["similarity"] for r in results]
    assert similarities == sorted(similarities, reverse=True)
    labels = [r["label"] for r in results]
    assert query["majority_label"] in labels
    assert query["majority_share"] == pytest.approx(
        labels.count(query["majority_label"]) / 3, abs=1e-6
    )


def test_exact_search_agrees_with_annoy_on_a_small_index(shared):
    tiles, index_dir = shared
    images = sorted(tiles.rglob("*.tif"))[:3]
    approximate = _query_json(*images, "--index", index_dir, "-k", "5", "--search-k", "1000")
    exact = _query_json(*images, "--index", index_dir, "-k", "5", "--exact")
    for a, e in zip(approximate["queries"], exact["queries"], strict=True):
        assert [r["path"] for r in a["results"]] == [r["path"] for r in e["results"]]
        for ra, re in zip(a["results"], e["results"], strict=True):
            assert ra["similarity"] == pytest.approx(re["similarity"], abs=1e-4)


def test_a_folder_argument_queries_every_image_in_it(shared):
    tiles, index_dir = shared
    document = _query_json(tiles / "01_TUMOR", "--index", index_dir, "-k", "2")
    assert len(document["queries"]) == 2
    for query in document["queries"]:
        assert query["results"][0]["path"].endswith(Path(query["query"]).name)


def test_k_larger_than_the_index_returns_everything_with_a_note(shared):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    result = run_cli("query", image, "--index", index_dir, "-k", "50", "--json")
    assert result.exit_code == 0, result.output
    assert "the index holds only 8 images" in result.stderr
    assert len(json.loads(result.stdout)["queries"][0]["results"]) == 8


def test_query_finds_the_default_index_from_its_folder(tiles, checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*index_args(tiles, checkpoint)).exit_code == 0
    assert (tmp_path / "histoseek-index" / "manifest.json").is_file()
    image = next(tiles.rglob("*.tif")).relative_to(tmp_path)
    result = run_cli("query", image, "-k", "2")
    assert result.exit_code == 0, result.output
    assert str(image) in result.stdout


def test_no_index_says_what_to_run(tiles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = next(tiles.rglob("*.tif"))
    assert error_line(run_cli("query", image)) == (
        "Error: no index at ./histoseek-index; run `histoseek index DIR` first or pass --index"
    )
    missing = error_line(run_cli("query", image, "--index", tmp_path / "nowhere"))
    assert "no index at" in missing and "nowhere" in missing


@pytest.mark.parametrize("k", ["0", "-3"])
def test_k_below_one_is_refused(shared, k):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    assert f"Invalid value for '-k': {k} is not in the range x>=1" in error_line(
        run_cli("query", image, "--index", index_dir, "-k", k)
    )


def test_unreadable_or_missing_query_images_are_one_line(shared, tmp_path):
    tiles, index_dir = shared
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    line = error_line(run_cli("query", broken, "--index", index_dir))
    assert "cannot read query image" in line and "broken.png" in line
    line = error_line(run_cli("query", tmp_path / "gone.png", "--index", index_dir))
    assert "query image not found" in line
    (tmp_path / "empty").mkdir()
    assert "no images found" in error_line(
        run_cli("query", tmp_path / "empty", "--index", index_dir)
    )


def test_unknown_format_version_is_refused(index_dir, tiles):
    manifest_path = index_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    line = error_line(run_cli("query", next(tiles.rglob("*.tif")), "--index", index_dir))
    assert "format version 99" in line and "--overwrite" in line


def test_index_of_another_model_is_refused(shared, checkpoint, other_checkpoint):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    line = error_line(run_cli("query", image, "--index", index_dir, "--model", other_checkpoint))
    assert "built with another model" in line
    same = run_cli("query", image, "--index", index_dir, "--model", checkpoint, "-k", "1")
    assert same.exit_code == 0, same.output


def test_retrained_checkpoint_is_detected(index_dir, tiles, checkpoint, tmp_path):
    moved = tmp_path / "moved.pt"
    shutil.copyfile(checkpoint, moved)
    manifest_path = index_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model_reference"] = str(moved)
    manifest_path.write_text(json.dumps(manifest))
    image = next(tiles.rglob("*.tif"))
    assert run_cli("query", image, "--index", index_dir, "-k", "1").exit_code == 0

    retrained = build_model(ModelConfig(num_classes=8, image_size=64, dim=96), seed=5)
    save_checkpoint(moved, retrained, [f"class{i}" for i in range(8)])
    line = error_line(run_cli("query", image, "--index", index_dir))
    assert "has changed since the index" in line and "--overwrite" in line

    moved.unlink()
    line = error_line(run_cli("query", image, "--index", index_dir))
    assert "cannot load the model" in line and "--model" in line
    found = run_cli("query", image, "--index", index_dir, "--model", checkpoint, "-k", "1")
    assert found.exit_code == 0, found.output


def test_damaged_index_is_one_line(index_dir, tiles):
    (index_dir / "items.jsonl").write_text("")
    line = error_line(run_cli("query", next(tiles.rglob("*.tif")), "--index", index_dir))
    assert "is damaged" in line


def test_killed_update_leaves_the_previous_index_usable(index_dir, tiles, checkpoint, tmp_path):
    before = (index_dir / "manifest.json").read_text()
    extra = tiles / "03_COMPLEX"
    extra.mkdir()
    sources = sorted(tiles.rglob("*.tif"))
    for i in range(400):
        shutil.copyfile(sources[i % len(sources)], extra / f"copy{i:03d}.tif")

    command = [
        sys.executable,
        "-c",
        "from histoseek.cli import main; main()",
        *map(str, index_args(tiles, checkpoint, "-o", index_dir, "--batch-size", "1")),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stderr.readline()
        assert "embedding 400 new or changed image(s)" in line, line
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "the update finished before it was killed"

    assert (index_dir / "manifest.json").read_text() == before
    document = _query_json(sources[0], "--index", index_dir, "-k", "3")
    assert document["queries"][0]["results"][0]["path"].endswith(sources[0].name)
    assert read_manifest(index_dir).items == 8


def test_html_gallery_and_contact_sheet_from_the_command_line(shared, tmp_path):
    tiles, index_dir = shared
    images = sorted(tiles.rglob("*.tif"))[:2]
    page, sheet = tmp_path / "out" / "g.html", tmp_path / "out" / "s.png"
    result = run_cli(
        *["query", *images], "--index", index_dir, "-k", "3", "--html", page, "--sheet", sheet
    )
    assert result.exit_code == 0, result.output
    assert f"wrote the gallery to {page}" in result.stderr
    html = page.read_text(encoding="utf-8")
    assert html.count("<img ") == 2 * (1 + 3)
    assert images[0].name in html
    from PIL import Image

    from histoseek.report.sheet import CAPTION_HEIGHT, GAP, TILE

    width, height = Image.open(sheet).size
    assert (width, height) == (GAP + 4 * (TILE + GAP), GAP + 2 * (TILE + CAPTION_HEIGHT + GAP))


def test_default_search_k_inspects_enough_candidates(shared, monkeypatch):
    tiles, index_dir = shared
    from histoseek.index.annoy_index import VectorIndex
    from histoseek.index.defaults import DEFAULT_SEARCH_K

    asked: list[int] = []
    original = VectorIndex.search

    def recording(self, query, k, search_k):
        asked.append(search_k)
        return original(self, query, k, search_k)

    monkeypatch.setattr(VectorIndex, "search", recording)
    image = next(tiles.rglob("*.tif"))
    for extra in ([], ["-k", "300"], ["--search-k", "77"]):
        assert run_cli("query", image, "--index", index_dir, *extra).exit_code == 0
    assert asked == [DEFAULT_SEARCH_K, 300 * 50, 77]
