"""`histoseek query`: tables, JSON, exact and approximate search, bad input, killed updates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from index_helpers import copy_tiles, error_line, index_args, run_cli, start_run, stop

from histoseek.index.manifest import read_manifest
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import save_checkpoint


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


def _rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if "│" in line and ".tif" in line]


def test_query_prints_a_table_and_a_majority_hint(shared):
    tiles, index_dir = shared
    image = sorted((tiles / "02_STROMA").iterdir())[0]
    result = run_cli("query", image, "--index", index_dir, "-k", "4", "--include-self")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("rank" in line and "similarity" in line and "label" in line for line in lines)
    rows = _rows(result.stdout)
    assert len(rows) == 4
    assert "1.0000" in rows[0] and "02_STROMA" in rows[0] and image.name in rows[0]
    hint = [line for line in lines if line.startswith("hint:")]
    assert len(hint) == 1 and "majority label among the 4 results:" in hint[0]
    assert hint[0].endswith("/4)")


def test_the_header_says_what_was_searched_and_how(shared, checkpoint):
    tiles, index_dir = shared
    image = sorted((tiles / "02_STROMA").iterdir())[0]
    result = run_cli("query", image, "--index", index_dir, "-k", "2", "--backend", "torch")
    assert result.exit_code == 0, result.output
    header = result.stderr.splitlines()[0]
    assert header.startswith(f"searched {index_dir} (8 images) with model {checkpoint} on torch")
    assert header.endswith("search: annoy (search_k 10000); k 2")
    exact = run_cli("query", image, "--index", index_dir, "--exact", "--backend", "torch")
    assert "search: exact; k 10" in exact.stderr.splitlines()[0]
    assert "searched" not in exact.stdout

    document = _query_json(image, "--index", index_dir, "-k", "2", "--search-k", "500")
    search = document["search"]
    assert search["backend"].startswith("torch") and search["mode"] == "annoy"
    assert (search["search_k"], search["k"], search["include_self"]) == (500, 2, False)
    assert search["embedding_seconds"] > 0 and search["search_seconds"] > 0
    assert document["model"]["reference"] == str(checkpoint)
    exact = _query_json(image, "--index", index_dir, "--exact")["search"]
    assert (exact["mode"], exact["search_k"]) == ("exact", None)
    both = run_cli("query", image, "--index", index_dir, "--exact", "--search-k", "500")
    assert error_line(both).endswith(
        "--exact searches every stored embedding instead: give one or the other"
    )


@pytest.mark.parametrize("search", [[], ["--exact"]])
def test_the_query_image_is_left_out_of_its_own_results(shared, search):
    tiles, index_dir = shared
    image = sorted((tiles / "02_STROMA").iterdir())[0]
    result = run_cli("query", image, "--index", index_dir, "-k", "3", *search)
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert len(rows) == 3 and not any(image.name in row for row in rows)
    assert not any("1.0000" in row for row in rows)
    notes = [line for line in result.stderr.splitlines() if "left out of their own" in line]
    assert notes == [
        "note: 1 of 1 query image(s) are themselves in the index and were left out of their "
        "own results; --include-self keeps them"
    ]
    document = _query_json(image, "--index", index_dir, "-k", "3", *search)
    (query,) = document["queries"]
    assert query["left_out_self"] == [str(image)]
    labels = [r["label"] for r in query["results"]]
    assert [r["rank"] for r in query["results"]] == [1, 2, 3]
    assert query["majority_share"] == pytest.approx(labels.count(query["majority_label"]) / 3)


def test_a_copy_of_an_indexed_file_is_recognised_by_its_bytes(shared, tmp_path):
    tiles, index_dir = shared
    original = sorted((tiles / "05_DEBRIS").iterdir())[1]
    copy = tmp_path / "elsewhere.tif"
    shutil.copyfile(original, copy)
    document = _query_json(copy, "--index", index_dir, "-k", "8")
    (query,) = document["queries"]
    assert query["left_out_self"] == [str(original)]
    assert len(query["results"]) == 7
    assert not any(r["path"] == str(original) for r in query["results"])
    kept = _query_json(copy, "--index", index_dir, "-k", "2", "--include-self")["queries"][0]
    assert kept["results"][0]["path"] == str(original) and kept["left_out_self"] == []


def test_every_copy_is_left_out_and_k_results_still_come_back(tiles, checkpoint, tmp_path):
    original = sorted((tiles / "01_TUMOR").iterdir())[0]
    for name in ("07_ADIPOSE", "02_STROMA"):
        shutil.copyfile(original, tiles / name / f"copy-{original.name}")
    index_dir = _build(tiles, checkpoint, tmp_path / "idx")
    for search in ([], ["--exact"]):
        document = _query_json(original, "--index", index_dir, "-k", "4", *search)
        (query,) = document["queries"]
        assert len(query["left_out_self"]) == 3
        assert len(query["results"]) == 4
        assert not {r["path"] for r in query["results"]} & set(query["left_out_self"])


def test_json_document_has_ranked_results_and_majority(shared):
    tiles, index_dir = shared
    image = sorted((tiles / "07_ADIPOSE").iterdir())[0]
    document = _query_json(image, "--index", index_dir, "-k", "3", "--include-self")
    assert document["index"]["items"] == 8
    assert document["model"]["fingerprint"] == read_manifest(index_dir).model_fingerprint
    (query,) = document["queries"]
    assert query["query"].endswith(image.name)
    results = query["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert set(results[0]) == {"rank", "similarity", "label", "path"}
    assert set(query) == {
        "query",
        "kind",
        "results",
        "majority_label",
        "majority_share",
        "left_out_self",
        "origin",
        "excluded_items",
        "by",
    }
    assert (query["kind"], query["by"], query["excluded_items"]) == ("image", "tile", 0)
    assert query["origin"] == {"slide": None, "group": None, "in_index": True}
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
    assert approximate["queries"][0]["left_out_self"] == [str(images[0])]
    exact = _query_json(*images, "--index", index_dir, "-k", "5", "--exact")
    for a, e in zip(approximate["queries"], exact["queries"], strict=True):
        assert [r["path"] for r in a["results"]] == [r["path"] for r in e["results"]]
        for ra, re in zip(a["results"], e["results"], strict=True):
            assert ra["similarity"] == pytest.approx(re["similarity"], abs=1e-4)


def test_a_folder_argument_queries_every_image_in_it(shared):
    tiles, index_dir = shared
    document = _query_json(tiles / "01_TUMOR", "--index", index_dir, "-k", "2", "--include-self")
    assert len(document["queries"]) == 2
    for query in document["queries"]:
        assert query["results"][0]["path"].endswith(Path(query["query"]).name)


@pytest.mark.parametrize("k", ["50", "10000000000"])
def test_k_larger_than_the_index_returns_everything_with_a_note(shared, k):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    result = run_cli("query", image, "--index", index_dir, "-k", k, "--json")
    assert result.exit_code == 0, result.output
    assert (
        f"note: -k {k} is more than the index can return: it holds only 8 images; showing all "
        "of them (less the query's own entry)"
    ) in result.stderr
    assert len(json.loads(result.stdout)["queries"][0]["results"]) == 7
    kept = run_cli("query", image, "--index", index_dir, "-k", k, "--json", "--include-self")
    assert kept.exit_code == 0, kept.output
    assert "holds only 8 images; showing all of them\n" in kept.stderr
    assert len(json.loads(kept.stdout)["queries"][0]["results"]) == 8


def test_search_k_beyond_annoys_range_is_one_line(shared):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    line = error_line(run_cli("query", image, "--index", index_dir, "--search-k", "10000000000"))
    assert "Invalid value for '--search-k'" in line and "2147483647" in line


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

    process = start_run(index_args(tiles, checkpoint, "-o", index_dir, "--batch-size", "1"))
    try:
        line = process.stderr.readline()
        assert "embedding 400 new or changed image(s)" in line, line
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)
    assert process.returncode == -signal.SIGKILL, "the update finished before it was killed"

    assert (index_dir / "manifest.json").read_text() == before
    document = _query_json(sources[0], "--index", index_dir, "-k", "3", "--include-self")
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
    assert f"wrote the gallery to {page}: {page.as_uri()}" in result.stderr
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
    # -k counts up to the index size (8 here), so 300 asks for no more than 8 × 50 trees.
    assert asked == [DEFAULT_SEARCH_K, DEFAULT_SEARCH_K, 77]


def test_search_k_grows_with_k_and_stays_in_annoys_range():
    from histoseek.index.defaults import DEFAULT_SEARCH_K, MAX_SEARCH_K
    from histoseek.index.search import annoy_search_k

    assert annoy_search_k(10, 1000, 50) == DEFAULT_SEARCH_K
    assert annoy_search_k(300, 1000, 50) == 300 * 50
    assert annoy_search_k(300, 100, 50) == DEFAULT_SEARCH_K  # 100 × 50 is fewer
    assert annoy_search_k(10**10, 10**9, 50) == MAX_SEARCH_K
    assert annoy_search_k(10, 1000, 50, search_k=77) == 77


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if the command gets as far as loading the model."""
    import histoseek.index.search

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(histoseek.index.search, "load_index_model", refuse)


@pytest.mark.parametrize("option", ["--html", "--sheet"])
def test_existing_outputs_are_refused_before_any_work(shared, tmp_path, option, no_model_loading):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    target = tmp_path / "exists.out"
    target.write_text("keep me")
    line = error_line(run_cli("query", image, "--index", index_dir, option, target))
    assert line == f"Error: {target} already exists; pass --overwrite to replace it"
    assert target.read_text() == "keep me"
    line = error_line(run_cli("query", image, "--index", index_dir, option, tmp_path))
    assert "is a folder" in line


def test_overwrite_replaces_existing_outputs(shared, tmp_path):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    page, sheet = tmp_path / "g.html", tmp_path / "s.png"
    page.write_text("old")
    sheet.write_text("old")
    args = ["query", image, "--index", index_dir, "-k", "2", "--html", page, "--sheet", sheet]
    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert sheet.read_bytes().startswith(b"\x89PNG")


def test_query_paths_and_options_are_checked_before_the_model_loads(
    shared, tmp_path, no_model_loading
):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    assert "query image not found" in error_line(
        run_cli("query", image, tmp_path / "gone.png", "--index", index_dir)
    )
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    assert "cannot read query image" in error_line(
        run_cli("query", image, garbage, "--index", index_dir)
    )
    assert "both name" in error_line(
        run_cli(
            "query",
            image,
            "--index",
            index_dir,
            "--html",
            tmp_path / "x",
            "--sheet",
            tmp_path / "x",
        )
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "not a writable folder" in error_line(
        run_cli("query", image, "--index", index_dir, "--html", blocker / "g.html")
    )


def test_a_query_image_above_the_pixel_limit_is_refused_before_the_model_loads(
    shared, tmp_path, no_model_loading
):
    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))  # 150 × 150
    line = error_line(run_cli("query", image, "--index", index_dir, "--max-pixels", "20000"))
    assert "cannot read query image" in line
    assert "150×150 = 22,500 pixels is above the limit of 20,000 (--max-pixels)" in line


def test_results_above_the_pixel_limit_show_as_grey_thumbnails(shared, tmp_path):
    from PIL import Image

    from histoseek.report.sheet import GAP, TILE
    from histoseek.report.thumbnails import MISSING_COLOUR

    tiles, index_dir = shared
    small = tmp_path / "small.png"
    Image.open(next(tiles.rglob("*.tif"))).resize((100, 100)).save(small)
    sheet = tmp_path / "s.png"
    args = ["query", small, "--index", index_dir, "-k", "1", "--sheet", sheet]
    result = run_cli(*args, "--max-pixels", "20000")
    assert result.exit_code == 0, result.output
    result_cell = (2 * GAP + TILE, GAP, 2 * GAP + 2 * TILE, GAP + TILE)
    # The 150 × 150 result is above the limit: not decoded, shown as a grey square.
    colours = Image.open(sheet).convert("RGB").crop(result_cell).getcolors()
    assert colours == [(TILE * TILE, MISSING_COLOUR)]


@pytest.mark.parametrize("what", ["gallery", "sheet"])
def test_a_full_disk_is_one_line_and_leaves_nothing_behind(shared, tmp_path, monkeypatch, what):
    import errno

    from PIL import Image

    tiles, index_dir = shared
    image = next(tiles.rglob("*.tif"))
    target = tmp_path / "out" / ("g.html" if what == "gallery" else "s.png")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if what == "gallery":
        monkeypatch.setattr(Path, "write_text", no_space)
    else:
        monkeypatch.setattr(Image.Image, "save", no_space)
    option = "--html" if what == "gallery" else "--sheet"
    line = error_line(run_cli("query", image, "--index", index_dir, "-k", "2", option, target))
    assert line == f"Error: no space left on device while writing {target}"
    assert list(target.parent.iterdir()) == []


def test_file_and_folder_names_with_markup_are_shown_as_they_are(tiles, checkpoint, tmp_path):
    source = next((tiles / "02_STROMA").iterdir())
    shutil.copyfile(source, tiles / "02_STROMA" / "[red]x.tif")
    odd_query = tmp_path / "a[/b]c.tif"  # a file b]c.tif in a folder a[
    odd_query.parent.mkdir()
    shutil.copyfile(next((tiles / "07_ADIPOSE").iterdir()), odd_query)
    index_dir = tmp_path / "o[/x]"
    built = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert built.exit_code == 0, built.output
    assert f"into {index_dir} in" in built.stderr

    result = run_cli("query", odd_query, "--index", index_dir, "-k", "9", "--include-self")
    assert result.exit_code == 0, result.output
    assert f"query: {odd_query}" in result.stdout
    assert any("02_STROMA/[red]x.tif" in row for row in _rows(result.stdout))
    assert f"searched {index_dir}" in result.stderr


def test_fifos_in_a_query_folder_are_skipped_not_read(shared, tmp_path, fifo_guard):
    tiles, index_dir = shared
    folder = tmp_path / "queries"
    folder.mkdir()
    shutil.copyfile(next(tiles.rglob("*.tif")), folder / "tile.tif")
    fifo_guard.make(folder / "pipe.png")
    result = run_cli("query", folder, "--index", index_dir, "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["queries"]) == 1
    assert (
        "skipped 1 entr(ies)" in result.stderr and "pipe.png: not a regular file" in result.stderr
    )
    line = error_line(run_cli("query", folder / "pipe.png", "--index", index_dir))
    assert line.endswith("pipe.png is not a regular file")
    assert fifo_guard.opened == []


def test_queries_embedded_in_another_precision_than_the_index_are_noted(shared):
    from histoseek.index.search import open_index, query_embedder

    opened = open_index(shared[1])
    notes: list[str] = []
    query_embedder(opened, backend="torch", device="cpu", workers=0, notify=notes.append)
    assert notes == []
    opened.manifest.precision = "int8"  # as if built with an INT8 export
    query_embedder(opened, backend="torch", device="cpu", workers=0, notify=notes.append)
    assert notes == [
        "note: the index holds INT8 embeddings and torch (cpu) embeds the queries in FP32: "
        "similarities may differ by about 0.01 from an INT8 query's; --backend chooses another"
    ]
