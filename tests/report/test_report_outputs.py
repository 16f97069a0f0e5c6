"""Query result tables, the HTML gallery (also rendered in headless Chromium) and contact sheet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from histoseek.index.search import Hit, QueryResult
from histoseek.report.gallery import gallery_html, write_gallery
from histoseek.report.results import majority_hint, print_results
from histoseek.report.sheet import CAPTION_HEIGHT, GAP, TILE, write_sheet

KATHER = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kather2016"
K = 4


@pytest.fixture
def results(tmp_path) -> list[QueryResult]:
    """Two queries with 4 real-tile hits each; one hit's file is gone, one label needs escaping."""
    if not KATHER.is_dir():
        pytest.skip(f"real tiles not available: {KATHER} is missing")
    tiles = [
        sorted((KATHER / name).iterdir())[0] for name in ("01_TUMOR", "02_STROMA", "07_ADIPOSE")
    ]
    odd = tmp_path / "<odd> & name.tif"
    shutil.copyfile(tiles[1], odd)
    hits = [
        Hit(1, 0.99, "01_TUMOR", tiles[0]),
        Hit(2, 0.91, "<b>stroma</b>", odd),
        Hit(3, 0.85, "01_TUMOR", tiles[2]),
        Hit(4, 0.80, "07_ADIPOSE", tmp_path / "deleted.tif"),
    ]
    return [QueryResult(tiles[0], hits), QueryResult(tiles[2], list(reversed(hits)))]


def test_table_lists_every_hit_and_the_hint(results):
    console = Console(record=True, width=300)
    print_results(console, results[:1])
    text = console.export_text()
    rows = [line for line in text.splitlines() if re.match(r"^│\s+\d", line)]
    assert len(rows) == K
    assert "0.9900" in rows[0] and "01_TUMOR" in rows[0]
    assert "<b>stroma</b>" in rows[1] and "<odd> & name.tif" in rows[1]
    assert majority_hint(results[0]) in text
    assert majority_hint(results[0]) == "hint: majority label among the 4 results: 01_TUMOR (2/4)"


def test_majority_ties_go_to_the_best_ranked_label(tmp_path):
    hits = [
        Hit(1, 0.9, "B", tmp_path),
        Hit(2, 0.8, "A", tmp_path),
        Hit(3, 0.7, "A", tmp_path),
        Hit(4, 0.6, "B", tmp_path),
    ]
    assert QueryResult(tmp_path, hits).majority() == ("B", 2)


def test_gallery_is_self_contained_and_escaped(results, tmp_path):
    page = gallery_html(results)
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == len(results) * (1 + K)
    assert all(src.startswith("data:image/jpeg;base64,") for src in images)
    assert "file:" not in page and "http" not in page
    assert "&lt;b&gt;stroma&lt;/b&gt;" in page and "<b>stroma" not in page
    assert "&lt;odd&gt; &amp; name.tif" in page
    assert "similarity 0.9100" in page and "#2" in page
    assert page.count("hint: majority label among the 4 results") == 2
    path = tmp_path / "out" / "gallery.html"
    write_gallery(path, results)
    assert path.read_text(encoding="utf-8") == page


def test_contact_sheet_has_a_row_per_query_and_a_cell_per_image(results, tmp_path):
    path = tmp_path / "sheet.png"
    write_sheet(path, results)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    columns = 1 + K
    assert sheet.shape == (
        GAP + len(results) * (TILE + CAPTION_HEIGHT + GAP),
        GAP + columns * (TILE + GAP),
        3,
    )
    for row in range(len(results)):
        top = GAP + row * (TILE + CAPTION_HEIGHT + GAP)
        for column in range(columns):
            left = GAP + column * (TILE + GAP)
            cell = sheet[top + 4 : top + TILE - 4, left + 4 : left + TILE - 4]
            distinct = len(np.unique(cell.reshape(-1, 3), axis=0))
            missing = (row, column) in {(0, 4), (1, 1)}  # the deleted file: a grey square
            assert (distinct == 1) if missing else (distinct > 50), (row, column)
        captions = sheet[top + TILE + 2 : top + TILE + CAPTION_HEIGHT, GAP : GAP + TILE]
        assert (captions < 128).any()  # caption text is drawn


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")


def _headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=60, check=True
    )


@pytest.mark.browser
def test_gallery_renders_in_headless_chromium(results, tmp_path):
    binary = _chromium()
    page = tmp_path / "gallery.html"
    write_gallery(page, results)
    shot = tmp_path / "shot.png"
    _headless(
        binary, tmp_path / "p1", f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # thumbnails, not a blank page
    # The first query's thumbnail sits at the top left; tissue is pink/purple, not background.
    top_left = pixels[100:400, 0:400].reshape(-1, 3).astype(int)
    assert ((top_left[:, 0] - top_left[:, 1]) > 40).mean() > 0.05

    dom = _headless(binary, tmp_path / "p2", "--dump-dom", page.as_uri()).stdout
    assert len(re.findall(r"<img\b", dom)) == len(results) * (1 + K)
    assert dom.count('src="data:image/jpeg;base64,') == len(results) * (1 + K)
