"""`histoseek query` with slides: region and whole-slide queries, answers by slide and group,
--exclude, the JSON fields of tiles, the gallery's boxes and full-resolution tiles.

The slides are pseudo-slides assembled from real kather2016 tiles (not scanned): one per class
and source image (CRC-Prim-HE-NN), the source image standing for the patient (the group).
Patients HE-01 and HE-02 each have a tumour and a lymphocyte slide. See assembled_slides.py.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from assembled_slides import assemble_kather_slide, synthetic_slide
from index_helpers import error_line, index_args, run_cli
from PIL import Image

from histoseek.index.items import read_item_image
from histoseek.index.store import load_index
from histoseek.report.gallery import OVERVIEW_SIZE
from histoseek.report.slide_views import HIT_COLOUR, SlideOverviews
from histoseek.slide.reader import open_slide

SLIDES = {
    "01_TUMOR": ("CRC-Prim-HE-02", "CRC-Prim-HE-01"),
    "04_LYMPHO": ("CRC-Prim-HE-01", "CRC-Prim-HE-02"),
    "02_STROMA": ("CRC-Prim-HE-03",),
}
GROUP_REGEX = r"CRC-Prim-HE-\d+"
TILING = ("--patch-size", "64", "--mpp", "0.5")
QUERY = "01_TUMOR/assembled_01_TUMOR_CRC-Prim-HE-02.tif"
QUERY_SLIDE = "assembled_01_TUMOR_CRC-Prim-HE-02"


@pytest.fixture(scope="module")
def archive(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """(slides folder, its index): 5 assembled slides of 3 patients, 64-px tiles at 0.5 µm/px."""
    root = tmp_path_factory.mktemp("archive")
    slides = root / "slides"
    for class_name, sources in SLIDES.items():
        (slides / class_name).mkdir(parents=True)
        for source in sources:
            assemble_kather_slide(slides / class_name, class_name, source=source)
    index_dir = root / "idx"
    args = index_args(slides, checkpoint, "-o", index_dir, *TILING, "--group-regex", GROUP_REGEX)
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return slides, index_dir


def _query(*args) -> dict:
    result = run_cli("query", *args, "--json", "--backend", "torch", "--workers", "0")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _items(index_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (index_dir / "items.jsonl").read_text().splitlines()]


def test_a_region_at_an_indexed_tile_finds_that_tile(archive):
    slides, index_dir = archive
    tile = next(item for item in _items(index_dir) if item["path"] == QUERY)
    region = f"{tile['x']},{tile['y']},{tile['tile_size']},{tile['tile_size']}"
    document = _query(slides / QUERY, "--region", region, "--index", index_dir, "--exact", "-k", 2)
    (query,) = document["queries"]
    assert (query["kind"], query["by"]) == ("region", "tile")
    assert query["region"] == {
        "x": tile["x"],
        "y": tile["y"],
        "width": tile["tile_size"],
        "height": tile["tile_size"],
    }
    best = query["results"][0]
    assert best["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert {name: best[name] for name in ("x", "y", "tile_size", "mpp", "group")} == {
        name: tile[name] for name in ("x", "y", "tile_size", "mpp", "group")
    }
    assert best["slide"] == QUERY_SLIDE
    assert best["path"].endswith(QUERY)
    assert "query_tile" not in best


def test_tile_hits_carry_slide_group_place_and_mpp_in_json(archive):
    slides, index_dir = archive
    document = _query(slides / QUERY, "--index", index_dir, "-k", 6, "--max-tiles", 4)
    (query,) = document["queries"]
    assert query["kind"] == "slide" and len(query["query_tiles"]) == 4
    assert query["origin"] == {"slide": QUERY_SLIDE, "group": "CRC-Prim-HE-02", "in_index": True}
    items = {(item["path"], item["x"], item["y"]): item for item in _items(index_dir)}
    for hit in query["results"]:
        assert set(hit) == {
            "rank", "similarity", "label", "path", "slide", "group", "x", "y", "tile_size",
            "mpp", "query_tile",
        }  # fmt: skip
        relative = hit["path"][hit["path"].index("slides/") + len("slides/") :]
        item = items[(relative, hit["x"], hit["y"])]
        assert (hit["slide"], hit["group"], hit["tile_size"], hit["mpp"], hit["label"]) == (
            item["slide_id"], item["group"], item["tile_size"], item["mpp"], item["label"],
        )  # fmt: skip
        assert 0 <= hit["query_tile"] < 4
    assert document["index"]["slides"] == 5
    assert document["search"]["tile_k"] == 5


def test_a_whole_slide_finds_itself_first_unless_its_slide_or_patient_is_left_out(archive):
    slides, index_dir = archive
    result = run_cli(
        "query", slides / QUERY, "--index", index_dir, "--backend", "torch", "--max-tiles", "8"
    )
    assert result.exit_code == 0, result.output
    assert "query slide(s) are themselves in the index" in result.stderr
    assert "slides by tile evidence" in result.stdout and "hint: majority label among" in (
        result.stdout
    )

    own = _query(slides / QUERY, "--index", index_dir, "--max-tiles", 8)["queries"][0]
    assert own["by"] == "slide"
    first = own["ranking"][0]
    # Every query tile finds itself (similarity 1): the slide's score is one per query tile.
    assert (first["slide"], first["query_tiles"]) == (QUERY_SLIDE, 8)
    assert first["score"] == pytest.approx(8.0, abs=1e-3)
    assert own["ranking_majority_label"] in {entry["label"] for entry in own["ranking"]}

    tiles_of_slide = sum(item["slide_id"] == QUERY_SLIDE for item in _items(index_dir))
    apart = _query(
        slides / QUERY, "--index", index_dir, "--max-tiles", 8, "--exclude", "same-slide"
    )
    (query,) = apart["queries"]
    assert query["excluded_items"] == tiles_of_slide
    assert QUERY_SLIDE not in {entry["slide"] for entry in query["ranking"]}
    assert QUERY_SLIDE not in {hit["slide"] for hit in query["results"]}
    assert "assembled_04_LYMPHO_CRC-Prim-HE-02" in {entry["slide"] for entry in query["ranking"]}

    patient = _query(
        slides / QUERY, "--index", index_dir, "--max-tiles", 8, "--exclude", "same-group"
    )["queries"][0]
    groups = {entry["tiles"][0]["group"] for entry in patient["ranking"]}
    assert groups and "CRC-Prim-HE-02" not in groups
    assert all(hit["group"] != "CRC-Prim-HE-02" for hit in patient["results"])


def test_search_k_grows_with_the_tiles_a_query_leaves_out(archive, monkeypatch):
    slides, index_dir = archive
    from histoseek.index import search
    from histoseek.index.annoy_index import VectorIndex

    asked: list[tuple[int, int]] = []
    original = VectorIndex.search

    def recording(self, query, k, search_k):
        asked.append((k, search_k))
        return original(self, query, k, search_k)

    # A floor of 1 makes the default k × trees, so a fixed search_k for k alone would show.
    monkeypatch.setattr(search, "DEFAULT_SEARCH_K", 1)
    monkeypatch.setattr(VectorIndex, "search", recording)
    args = (slides / QUERY, "--index", index_dir, "--max-tiles", 2, "--by", "tile", "-k", 3)
    document = _query(*args, "--exclude", "same-slide")
    trees = json.loads((index_dir / "manifest.json").read_text())["trees"]
    left_out = document["queries"][0]["excluded_items"]
    assert left_out > 3 and len(asked) == 2
    assert asked == [(3 + left_out, (3 + left_out) * trees)] * 2
    assert document["search"]["search_k"] == 3 * trees and document["search"]["search_k_scaled"]
    assert len(document["queries"][0]["results"]) == 3

    asked.clear()
    given = _query(*args, "--exclude", "same-slide", "--search-k", 77)
    assert asked == [(3 + left_out, 77)] * 2 and not given["search"]["search_k_scaled"]


def test_answers_by_group_gather_a_patients_slides(archive):
    slides, index_dir = archive
    query = _query(
        slides / QUERY, "--index", index_dir, "--by", "group", "--exclude", "same-slide", "-k", 3
    )["queries"][0]
    assert query["by"] == "group"
    assert [entry["rank"] for entry in query["ranking"]] == [1, 2, 3]
    for entry in query["ranking"]:
        assert {hit["group"] for hit in entry["tiles"]} == {entry["group"]}
    patient = next(entry for entry in query["ranking"] if entry["group"] == "CRC-Prim-HE-01")
    assert {hit["slide"] for hit in patient["tiles"]} <= {
        "assembled_01_TUMOR_CRC-Prim-HE-01",
        "assembled_04_LYMPHO_CRC-Prim-HE-01",
    }


def test_an_image_query_ranks_slides_and_knows_its_group_by_regex(archive, tmp_path):
    slides, index_dir = archive
    item = next(item for item in load_index(index_dir).items if item.path == QUERY)
    patch = tmp_path / "patch_CRC-Prim-HE-02.png"
    read_item_image(slides, item).save(patch)
    query = _query(patch, "--index", index_dir, "--by", "slide", "-k", 3)["queries"][0]
    assert (query["kind"], query["by"]) == ("image", "slide")
    assert query["ranking"][0]["slide"] == QUERY_SLIDE  # its own tile, similarity 1
    assert query["origin"] == {"slide": None, "group": None, "in_index": False}

    line = error_line(
        run_cli(
            "query", patch, "--index", index_dir, "--exclude", "same-slide", "--backend", "torch"
        )
    )
    assert "is an image, not a slide" in line
    line = error_line(
        run_cli(
            "query", patch, "--index", index_dir, "--exclude", "same-group", "--backend", "torch"
        )
    )
    assert "group (patient)" in line and "--group-regex" in line
    grouped = _query(
        patch, "--index", index_dir, "--exclude", "same-group", "--group-regex", GROUP_REGEX
    )["queries"][0]
    assert grouped["origin"]["group"] == "CRC-Prim-HE-02"
    assert all(hit["group"] != "CRC-Prim-HE-02" for hit in grouped["results"])


def test_a_slide_outside_the_index_is_matched_by_slide_id_or_grouped_by_regex(archive, tmp_path):
    slides, index_dir = archive
    same_id = tmp_path / "copy" / Path(QUERY).name
    same_id.parent.mkdir()
    shutil.copy(slides / QUERY, same_id)
    query = _query(same_id, "--index", index_dir, "--max-tiles", 4, "--exclude", "same-slide")
    assert query["queries"][0]["origin"]["in_index"] is True
    assert QUERY_SLIDE not in {hit["slide"] for hit in query["queries"][0]["results"]}

    renamed = tmp_path / "new_case_CRC-Prim-HE-01.tif"
    shutil.copy(slides / QUERY, renamed)
    query = _query(
        renamed,
        *("--index", index_dir, "--max-tiles", 4, "--exclude", "same-group"),
        *("--group-regex", GROUP_REGEX),
    )["queries"][0]
    assert query["origin"] == {
        "slide": "new_case_CRC-Prim-HE-01",
        "group": "CRC-Prim-HE-01",
        "in_index": False,
    }
    assert query["excluded_items"] == sum(
        item["group"] == "CRC-Prim-HE-01" for item in _items(index_dir)
    )
    assert "CRC-Prim-HE-01" not in {entry["tiles"][0]["group"] for entry in query["ranking"]}


def test_bad_regions_and_unknown_mpp_are_one_line(archive, tmp_path):
    slides, index_dir = archive
    base = ("--index", index_dir, "--backend", "torch")
    for bad in ("1,2,3", "a,b,c,d", "-5,0,10,10", "0,0,0,10"):
        line = error_line(run_cli("query", slides / QUERY, "--region", bad, *base))
        assert "--region" in line
    line = error_line(run_cli("query", slides / QUERY, "--region", "0,0,5000,10", *base))
    assert "not inside" in line and "850×850" in line
    other = slides / "02_STROMA" / "assembled_02_STROMA_CRC-Prim-HE-03.tif"
    line = error_line(run_cli("query", slides / QUERY, other, "--region", "0,0,64,64", *base))
    assert "--region reads one slide; 2 query files" in line

    with open_slide(slides / QUERY) as slide:
        pixels = slide.read_region(0, 0, 0, 600, 600)
    no_mpp = tmp_path / "no_mpp.png"
    pixels.save(no_mpp)
    line = error_line(run_cli("query", no_mpp, "--region", "200,200,65,65", *base))
    assert "microns per pixel unknown" in line and "--slide-mpp" in line
    query = _query(no_mpp, "--region", "195,195,65,65", "--slide-mpp", "0.495", *base[:2])
    assert query["queries"][0]["slide_mpp"] == 0.495


def test_a_truncated_query_slide_is_one_line_not_a_plain_image(archive, tmp_path):
    slides, index_dir = archive
    data = synthetic_slide(tmp_path / "whole.tif", size=(2048, 1536)).path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 9 // 10])  # OpenSlide refuses it; Pillow decodes level 0
    line = error_line(run_cli("query", cut, "--index", index_dir, "--backend", "torch"))
    assert line.endswith(
        "cut.tif: OpenSlide cannot open it (unsupported format, corrupt or truncated)"
    )


def _decoded(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_the_gallery_boxes_each_tile_on_its_slide_and_embeds_it_at_full_resolution(
    archive, tmp_path
):
    slides, index_dir = archive
    page_path = tmp_path / "gallery.html"
    args = ("--index", index_dir, "--max-tiles", 6, "--exclude", "same-slide", "-k", 3)
    document = _query(slides / QUERY, *args, "--html", page_path, "--sheet", tmp_path / "s.png")
    query = document["queries"][0]
    page = page_path.read_text(encoding="utf-8")
    assert "<script" not in page and "http" not in page
    hits_html = re.search(r'<div class="hits">(.*?)</div></div>', page, re.S).group(1)
    figures = re.findall(r'<figure class="hit[^"]*">(.*?)</figure>', hits_html, re.S)
    assert len(figures) == len(query["results"]) == 3
    for figure, hit in zip(figures, query["results"], strict=True):
        anchor = re.search(r'<a href="#(tile-\d+)"', figure).group(1)
        overview = _decoded(re.search(r'class="overview" src="([^"]+)"', figure).group(1))
        slide_path = slides / hit["path"].split("slides/", 1)[1]
        plain, (width, _) = SlideOverviews(OVERVIEW_SIZE).get(slide_path)
        plain = np.asarray(plain).astype(int)
        assert overview.shape == plain.shape
        scale = overview.shape[1] / width
        left, top = round(hit["x"] * scale), round(hit["y"] * scale)
        bottom = round((hit["y"] + hit["tile_size"]) * scale)
        # The box's left edge is red where the plain overview is not; beside it, nothing moved.
        edge = overview[top:bottom, left].astype(int)
        assert (np.abs(edge - HIT_COLOUR).sum(axis=1) < 90).mean() > 0.8
        assert (np.abs(plain[top:bottom, left] - HIT_COLOUR).sum(axis=1) < 90).mean() < 0.2
        assert np.abs(overview[top:bottom, left - 4] - plain[top:bottom, left - 4]).mean() < 12
        # The full-resolution tile: what the index embedded, losslessly.
        full = re.search(rf'<div class="full" id="{anchor}">.*?<img src="([^"]+)"', page, re.S)
        assert full.group(1).startswith("data:image/png;base64,")
        item = next(
            item
            for item in load_index(index_dir).items
            if (item.slide_id, item.x, item.y) == (hit["slide"], hit["x"], hit["y"])
        )
        assert np.array_equal(_decoded(full.group(1)), np.asarray(read_item_image(slides, item)))
    answers = re.findall(r'<figure class="answer[^"]*">(.*?)</figure>', page, re.S)
    assert len(answers) == len(query["ranking"])
    first_slide = html.escape(query["ranking"][0]["slide"])
    assert first_slide in answers[0] and 'class="overview"' in answers[0]
    assert "slides ranked by tile evidence" in page
    sheet = Image.open(tmp_path / "s.png")
    assert sheet.width > 3 * 128


def test_excluding_everything_the_index_holds_is_one_line(archive, checkpoint, tmp_path):
    slides, _ = archive
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(slides / QUERY, alone / Path(QUERY).name)
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(alone, checkpoint, "-o", index_dir, *TILING)).exit_code == 0
    line = error_line(
        run_cli(
            *("query", alone / Path(QUERY).name, "--index", index_dir),
            *("--exclude", "same-slide", "--backend", "torch"),
        )
    )
    assert "leaves nothing to search" in line


def test_tile_k_sets_the_evidence_and_by_tile_gives_no_ranking(archive):
    slides, index_dir = archive
    args = (slides / QUERY, "--index", index_dir, "--max-tiles", 4, "--exclude", "same-slide")
    query = _query(*args, "--tile-k", 1, "-k", 10)["queries"][0]
    # One hit per query tile: the ranking holds exactly the four query tiles' nearest tiles.
    assert sum(len(entry["tiles"]) for entry in query["ranking"]) == 4
    assert all(len(entry["tiles"]) == entry["query_tiles"] for entry in query["ranking"])
    assert query["ranking"][0]["score"] == pytest.approx(
        sum(hit["similarity"] for hit in query["ranking"][0]["tiles"]), abs=1e-5
    )
    tiles_only = _query(*args, "--by", "tile")["queries"][0]
    assert tiles_only["by"] == "tile" and "ranking" not in tiles_only


def test_slide_options_no_query_would_use_are_refused_before_the_model_loads(archive, tmp_path):
    slides, index_dir = archive
    item = next(item for item in load_index(index_dir).items if item.path == QUERY)
    patch = tmp_path / "patch.png"
    read_item_image(slides, item).save(patch)
    # A model that cannot load: the refusal must come first.
    base = ("--index", index_dir, "--model", tmp_path / "missing.pt")
    for option, value, why in (
        ("--max-tiles", "4", "no query here is a slide"),
        ("--slide-mpp", "0.5", "none was given"),
        ("--tile-k", "3", "answered by tile"),
    ):
        line = error_line(run_cli("query", patch, *base, option, value))
        assert option in line and why in line
    region = ("--region", "0,0,64,64")
    line = error_line(run_cli("query", slides / QUERY, *base, *region, "--max-tiles", "4"))
    assert "--region reads its region whole" in line
    for answered_by_tile in ((*region,), ("--by", "tile")):
        line = error_line(
            run_cli("query", slides / QUERY, *base, *answered_by_tile, "--tile-k", "3")
        )
        assert "--tile-k" in line
    # Where they are used, the same options pass.
    assert _query(patch, "--index", index_dir, "--by", "slide", "--tile-k", 3)["queries"]
    regional = _query(slides / QUERY, "--index", index_dir, *region, "--slide-mpp", 0.5)
    assert regional["queries"][0]["kind"] == "region"
