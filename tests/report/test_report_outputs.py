"""Query result tables, the HTML gallery (also rendered in headless Chromium) and contact sheet."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from assembled_slides import synthetic_slide
from PIL import Image
from rich.console import Console

from histoseek.index.items import IndexItem
from histoseek.index.manifest import Manifest
from histoseek.index.search import Hit, QueryResult, SearchReport
from histoseek.report.gallery import THUMBNAIL_SIZE, gallery_html, write_gallery
from histoseek.report.results import (
    majority_hint,
    print_results,
    results_document,
    search_header,
    search_notes,
)
from histoseek.report.sheet import CAPTION_HEIGHT, GAP, TILE, caption_text, write_sheet
from histoseek.report.thumbnails import MISSING_COLOUR, data_uri
from histoseek.slide.sources import close_slides

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


def _report(results: list[QueryResult], tmp_path: Path, **changes) -> SearchReport:
    manifest = Manifest(
        source_dir=str(KATHER),
        model_reference="builtin",
        model_fingerprint="f" * 64,
        model_config={},
        backend="onnxruntime (CPUExecutionProvider)",
        dim=1536,
        trees=50,
        seed=0,
        items=5000,
        skipped=0,
    )
    fields = dict(
        index_path=tmp_path / "<idx>",
        manifest=manifest,
        results=results,
        k=K,
        exact=False,
        search_k=10_000,
        include_self=False,
        backend="onnxruntime (CPUExecutionProvider)",
        model="builtin",
        embedding_seconds=0.25,
        search_seconds=0.002,
        created=datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc),
    )
    return SearchReport(**{**fields, **changes})


@pytest.fixture
def report(results, tmp_path) -> SearchReport:
    """The two queries as one search's report."""
    return _report(results, tmp_path)


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


def test_gallery_is_self_contained_and_escaped(report, results, tmp_path):
    page = gallery_html(report)
    images = re.findall(r'<img src="([^"]*)"', page)
    assert len(images) == len(results) * (1 + K)
    assert all(src.startswith("data:image/jpeg;base64,") for src in images)
    assert "http" not in page and "<script" not in page
    assert "&lt;b&gt;stroma&lt;/b&gt;" in page and "<b>stroma" not in page
    assert "&lt;odd&gt; &amp; name.tif" in page
    assert "similarity 0.9100" in page and "#2" in page
    assert page.count("hint: majority label among the 4 results") == 2
    path = tmp_path / "out" / "gallery.html"
    write_gallery(path, report)
    assert path.read_text(encoding="utf-8") == page


def test_gallery_links_each_thumbnail_to_its_original(report, results):
    page = gallery_html(report)
    links = re.findall(r'<a href="([^"]*)"[^>]*><img ', page)
    existing = [hit.path for hit in results[0].hits if hit.path.is_file()]
    assert len(links) == len(results) * (1 + len(existing))  # the deleted file has no link
    assert results[0].query.resolve().as_uri() in links
    odd = next(hit.path for hit in results[0].hits if "odd" in hit.path.name)
    assert html.escape(odd.resolve().as_uri(), quote=True) in links
    assert "%3Codd%3E%20%26%20name.tif" in odd.resolve().as_uri()
    # file: appears only in those links: everything the page shows is inside it.
    assert page.count("file:") == len(links)


def test_gallery_header_and_agreement_with_the_majority(report):
    page = gallery_html(report)
    header = re.search(r'<dl class="about">(.*?)</dl>', page).group(1)
    about = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", header))
    assert about["model"] == "builtin"
    assert about["index"].endswith("&lt;idx&gt; (5000 images)")
    assert about["k"] == "4"
    assert about["backend"] == "onnxruntime (CPUExecutionProvider)"
    assert about["search"] == "annoy (search_k 10000)"
    assert about["date"].startswith("2025-03-0")
    # Majority of the first query: 01_TUMOR (hits 1 and 3).
    first = page.split("<section>")[1]
    agreement = re.findall(r'<figure class="hit (agrees|differs)">', first)
    assert agreement == ["agrees", "differs", "agrees", "differs"]
    assert first.count("agrees with the majority") == 2
    assert first.count("differs from the majority") == 2


def test_gallery_puts_the_query_in_a_column_of_its_own(report):
    page = gallery_html(report)
    for section in page.split("<section>")[1:]:
        query_column = re.search(r'<div class="query-column">(.*?)</div>', section).group(1)
        assert query_column.count("<img ") == 1 and 'class="query"' in query_column
        hits = re.search(r'<div class="hits">(.*)</div></div>', section).group(1)
        assert hits.count("<img ") == K and 'class="query"' not in hits


def test_header_notes_and_json_say_what_the_search_did(report, results, tmp_path):
    assert search_header(report) == (
        f"searched {tmp_path / '<idx>'} (5000 images) with model builtin on "
        "onnxruntime (CPUExecutionProvider); search: annoy (search_k 10000); k 4"
    )
    assert search_notes(report) == []
    scaled = _report(results, tmp_path, exclude="same-slide", search_k_scaled=True)
    assert search_header(scaled).endswith(
        "search: annoy (search_k 10000, more for the items left out); k 4; --exclude same-slide"
    )
    results[0].left_out_self.append(results[0].query)
    results[1].hits.pop()
    notes = search_notes(_report(results, tmp_path, k=4))
    assert notes == [
        "note: 1 of 2 query image(s) are themselves in the index and were left out of their "
        "own results; --include-self keeps them",
        "note: -k 4 is more than the index can return: it holds only 5000 images; showing all "
        "of them",
    ]
    document = results_document(_report(results, tmp_path, exact=True, search_k=None))
    assert document["search"] == {
        "backend": "onnxruntime (CPUExecutionProvider)",
        "mode": "exact",
        "search_k": None,
        "search_k_scaled": False,
        "k": 4,
        "include_self": False,
        "exclude": None,
        "tile_k": 5,
        "aggregation": "similarity",
        "embedding_seconds": 0.25,
        "search_seconds": 0.002,
        "created": "2025-03-04T05:06:07+00:00",
    }
    assert document["queries"][0]["left_out_self"] == [str(results[0].query)]
    json.dumps(document, allow_nan=False)


def test_a_query_without_results_has_no_majority(report, tmp_path):
    empty = QueryResult(tmp_path / "q.png", [])
    assert empty.majority() is None
    assert majority_hint(empty) == "hint: no results"
    document = results_document(_report([empty], tmp_path))
    assert document["queries"][0]["majority_label"] is None
    assert "no results" in gallery_html(_report([empty], tmp_path))


def test_tables_print_names_with_markup_as_they_are(tmp_path):
    hits = [Hit(1, 0.5, "[red]lab", tmp_path / "a[" / "b]c.tif")]
    console = Console(record=True, width=300)
    print_results(console, [QueryResult(tmp_path / "[bold]q.png", hits)])
    text = console.export_text()
    assert "[red]lab" in text and "a[/b]c.tif" in text and "[bold]q.png" in text


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


def test_contact_sheet_captions_show_control_characters_as_question_marks(tmp_path):
    # Pillow cannot measure text with a newline in it, and names may hold one (or bytes that
    # are not UTF-8).
    names = ["line\nbreak.png", os.fsdecode(b"not-utf8-\xff.png"), "tab\there.png"]
    paths = [tmp_path / name for name in names]
    for path in paths:
        Image.new("RGB", (32, 32), (200, 120, 160)).save(path, format="PNG")
    hits = [Hit(1, 0.9, "a\nb", paths[1]), Hit(2, 0.8, "c\td", paths[2])]
    write_sheet(tmp_path / "sheet.png", [QueryResult(paths[0], hits)])
    assert Image.open(tmp_path / "sheet.png").size == (
        GAP + 3 * (TILE + GAP),
        2 * GAP + TILE + CAPTION_HEIGHT,
    )
    assert caption_text("line\nbreak\x7f.png") == "line?break?.png"


def test_a_hit_whose_file_changed_since_indexing_is_a_grey_square(tmp_path):
    path = tmp_path / "hit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
    info = os.stat(path)
    item = IndexItem("hit.png", "a", 32, 32, info.st_size, info.st_mtime_ns - 1)
    hits = [Hit(1, 0.9, "a", path, item)]
    write_sheet(tmp_path / "sheet.png", [QueryResult(path, hits)])
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    left = GAP + TILE + GAP
    cell = sheet[GAP + 4 : GAP + TILE - 4, left + 4 : left + TILE - 4]
    assert len(np.unique(cell.reshape(-1, 3), axis=0)) == 1  # not the changed file's pixels
    page = gallery_html(_report([QueryResult(path, hits)], tmp_path))
    grey = data_uri(Image.new("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE), MISSING_COLOUR))
    assert page.count(grey) == 1  # the hit's; the query's own file is the same, unchanged


def _overview_colours(page: str) -> np.ndarray:
    """The median colour of each slide overview embedded in a gallery page."""
    uris = re.findall(r'<img class="overview" src="data:image/jpeg;base64,([^"]+)"', page)
    images = [Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB") for uri in uris]
    return np.array([np.median(np.asarray(image).reshape(-1, 3), axis=0) for image in images])


def test_the_overview_of_a_slide_changed_since_indexing_is_grey(tmp_path):
    # Its boxes mark where the hit was on the slide that was indexed, not on this one.
    slide = synthetic_slide(tmp_path / "s.tif", size=(1024, 768)).path
    info = os.stat(slide)
    item = IndexItem(
        "s.tif", "a", 64, 64, info.st_size, info.st_mtime_ns, slide_id="s", group="s",
        x=128, y=64, tile_size=128, mpp=1.0,
    )  # fmt: skip
    pages = {}
    for name, recorded in (("same", item), ("changed", replace(item, size=item.size + 1))):
        results = [QueryResult(slide, [Hit(1, 0.9, "a", slide, recorded)])]
        pages[name] = _overview_colours(gallery_html(_report(results, tmp_path)))
    close_slides()
    assert len(pages["changed"]) == len(pages["same"]) == 1
    assert (pages["changed"] == MISSING_COLOUR).all()
    assert not (pages["same"] == MISSING_COLOUR).all()


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


# Measures where each figure landed and whether its link is there, written into the DOM so
# that --dump-dom reports it; added to a copy of the page for this test only.
_MEASURE = """<script>
window.addEventListener("load", () => {
  const box = (element) => element.getBoundingClientRect();
  const sections = [...document.querySelectorAll("section")].map((section) => {
    const query = box(section.querySelector("figure.query img"));
    const hits = [...section.querySelectorAll("figure.hit img")].map(box);
    return {query: [query.left, query.right, query.top, query.bottom],
            hits: hits.map((b) => [b.left, b.right, b.top, b.bottom]),
            linked: section.querySelectorAll("a[href^='file:'] > img").length};
  });
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify(sections);
  document.body.append(out);
});
</script>"""


@pytest.mark.browser
def test_gallery_renders_in_headless_chromium(report, results, tmp_path):
    binary = _chromium()
    page = tmp_path / "gallery.html"
    write_gallery(page, report)
    shot = tmp_path / "shot.png"
    _headless(
        binary, tmp_path / "p1", f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # thumbnails, not a blank page
    # The first query's thumbnail sits on the left; tissue is pink/purple, not background.
    left = pixels[150:650, 0:300].reshape(-1, 3).astype(int)
    assert ((left[:, 0] - left[:, 1]) > 40).mean() > 0.05

    dom = _headless(binary, tmp_path / "p2", "--dump-dom", page.as_uri()).stdout
    assert len(re.findall(r"<img\b", dom)) == len(results) * (1 + K)
    assert dom.count('src="data:image/jpeg;base64,') == len(results) * (1 + K)

    # A window so narrow that the results wrap onto several rows: they stay right of the query.
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"),
        encoding="utf-8",
    )
    dom = _headless(
        binary,
        tmp_path / "p3",
        "--window-size=700,900",
        "--virtual-time-budget=5000",
        "--dump-dom",
        measured_page.as_uri(),
    ).stdout
    measured = json.loads(html.unescape(re.search(r'<pre id="measured">(.*?)</pre>', dom).group(1)))
    assert len(measured) == len(results)
    for section in measured:
        query_right = section["query"][1]
        assert len(section["hits"]) == K
        assert len({round(top) for _, _, top, _ in section["hits"]}) > 1  # the results wrap
        assert all(left > query_right for left, _, _, _ in section["hits"])  # not under the query
        assert section["linked"] == K  # the query and the K - 1 results still on disk
