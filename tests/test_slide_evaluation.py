"""Leave-one-slide/patient-out evaluation: the scoring on hand-made tile embeddings, and
`histoseek evaluate` on a folder of pseudo-slides assembled from real kather2016 tiles.

In the hand-made set, patient P1 has a tumour slide and a normal slide that share a strong
staining direction (a patient effect), so with only the query's own slide left out each of
them finds the other first; leaving the whole patient out removes that shortcut.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.slide.defaults import DEFAULT_MAX_TILES, DEFAULT_TILE_K
from histoseek.slide_evaluation import (
    SlideTiles,
    left_out_neighbours,
    score_slide_tiles,
    slide_level_scores,
    slide_protocol,
    slide_rankings,
    slide_tiles_of_index,
    tile_level_scores,
)

E = np.eye(6)
SLIDES = {  # slide: (label, group, direction)
    "s1": ("tumour", "P1", E[0] + 2 * E[2]),
    "s2": ("normal", "P1", E[1] + 2 * E[2]),
    "s3": ("tumour", "P2", E[0]),
    "s4": ("normal", "P3", E[1]),
    "s5": ("lymph", "P4", E[4]),  # the only slide of its label: never scorable
}


def slide_tiles(query_all: bool = True) -> SlideTiles:
    vectors, slide_ids, groups, labels, rows = [], [], [], [], {}
    for slide, (label, group, direction) in SLIDES.items():
        rows[slide] = []
        for sign in (1, -1):  # two near-identical tiles per slide
            vector = direction + sign * 0.01 * E[3]
            rows[slide].append(len(vectors))
            vectors.append(vector / np.linalg.norm(vector))
            slide_ids.append(slide)
            groups.append(group)
            labels.append(label)
        if not query_all:
            rows[slide] = rows[slide][:1]
    return SlideTiles(np.array(vectors, np.float32), slide_ids, groups, labels, rows)


def test_the_neighbours_each_query_tile_had_are_given_with_the_scores():
    # Leaving out patient P1's 4 tiles leaves 6 of the 10; a slide's own 2, 8.
    assert score_slide_tiles(slide_tiles(), "same-group")[2] == 6
    assert score_slide_tiles(slide_tiles(), "same-slide")[2] == 8


def test_the_protocol_says_when_the_largest_group_cuts_k():
    assert slide_protocol("same-group", 16, 20, 6, 20) == (
        "each slide queries with up to 16 of its tiles, its own group (patient) left out; "
        "slides ranked from each query tile's 6 nearest tiles (sum of best similarities); "
        "6 neighbours per query tile, as many as the largest group (patient) leaves: metrics "
        "@k above 6 are taken over those 6"
    )
    assert slide_protocol("same-slide", 16, 20, 20, 20) == (
        "each slide queries with up to 16 of its tiles, its own slide left out; slides ranked "
        "from each query tile's 20 nearest tiles (sum of best similarities)"
    )


def test_slides_of_one_label_are_refused():
    tiles = slide_tiles()
    tiles.labels[:] = ["tumour"] * len(tiles.labels)
    with pytest.raises(HistoseekError) as raised:
        score_slide_tiles(tiles)
    assert str(raised.value) == (
        "every slide has one label (tumour): every neighbour shares the query's label, so "
        "every metric would be 1.0; evaluate needs at least 2 labels"
    )


def test_same_slide_left_out_the_patient_effect_misleads():
    tiles = slide_tiles()
    found = left_out_neighbours(tiles, "same-slide", k=10)
    assert found.neighbours.indices.shape == (10, 8)  # 10 tiles, 2 of one's own slide left out
    rankings = slide_rankings(tiles, found, tile_k=8)
    assert rankings["s1"][:2] == ["normal", "tumour"]  # s2 (0.8 per tile), then s3 (0.447)
    assert rankings["s3"][0] == "tumour"
    scores = slide_level_scores(tiles, found, tile_k=8, vote_k=1)
    assert scores.metrics == {"recall@1": 0.5, "mmv@1": 0.5}
    assert (scores.scored, scores.left_out) == (4, 1)
    tile_scores = tile_level_scores(tiles, found, recall_ks=(1,), map_k=1, vote_k=1, precision_k=1)
    assert tile_scores.metrics["recall@1"] == 0.5
    assert (tile_scores.scored, tile_scores.left_out) == (8, 2)


def test_same_group_left_out_every_slide_finds_its_label():
    tiles = slide_tiles()
    found = left_out_neighbours(tiles, "same-group", k=10)
    assert found.neighbours.indices.shape == (10, 6)  # P1 has 4 tiles
    s1_neighbours = set(found.neighbours.indices[0].tolist())
    assert not s1_neighbours & {0, 1, 2, 3}  # neither of P1's slides
    scores = slide_level_scores(tiles, found, tile_k=6, vote_k=1)
    assert scores.metrics == {"recall@1": 1.0, "mmv@1": 1.0}
    tile_scores = tile_level_scores(tiles, found, recall_ks=(1,), map_k=1, vote_k=1, precision_k=1)
    assert tile_scores.metrics["recall@1"] == 1.0


def test_a_sample_of_query_tiles_and_both_rules():
    tiles = slide_tiles(query_all=False)
    found = left_out_neighbours(tiles, "same-group", k=4)
    assert list(found.rows) == [0, 2, 4, 6, 8]
    for rule in ("similarity", "votes"):
        assert (
            slide_level_scores(tiles, found, tile_k=4, vote_k=1, rule=rule).metrics["recall@1"]
            == 1.0
        )


def test_nothing_to_compare_is_refused():
    tiles = slide_tiles()
    tiles.groups = ["P"] * len(tiles.groups)
    with pytest.raises(HistoseekError, match="at least 2 groups"):
        left_out_neighbours(tiles, "same-group", k=5)
    with pytest.raises(HistoseekError, match="--exclude"):
        left_out_neighbours(tiles, "same-label", k=5)
    lonely = slide_tiles()
    lonely.labels = [f"label of {slide}" for slide in lonely.slide_ids]
    found = left_out_neighbours(lonely, "same-slide", k=5)
    with pytest.raises(HistoseekError, match="no slide can be scored"):
        slide_level_scores(lonely, found)
    with pytest.raises(HistoseekError, match="no query tile can be scored"):
        tile_level_scores(lonely, found)


SLIDE_SOURCES = {
    "01_TUMOR": ("CRC-Prim-HE-02", "CRC-Prim-HE-01"),
    "04_LYMPHO": ("CRC-Prim-HE-01", "CRC-Prim-HE-02"),
    "02_STROMA": ("CRC-Prim-HE-03", "CRC-Prim-HE-07"),
}
GROUP_REGEX = r"CRC-Prim-HE-\d+"
SLIDE_OPTIONS = ("--patch-size", "64", "--group-regex", GROUP_REGEX)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A small random CGD (64 px input), quick on a CPU."""
    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, build_model(ModelConfig(num_classes=3, image_size=64, dim=48)), [])
    return path


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory) -> Path:
    """Six pseudo-slides assembled from real kather2016 tiles (not scanned), one per class and
    source image; the source image is the group (patient)."""
    from assembled_slides import assemble_kather_slide

    root = tmp_path_factory.mktemp("slides")
    for class_name, sources in SLIDE_SOURCES.items():
        (root / class_name).mkdir()
        for source in sources:
            assemble_kather_slide(root / class_name, class_name, source=source)
    return root


def _evaluate(model: Path, *args) -> Result:
    from histoseek.cli import cli

    command = ["evaluate", "--model", model, "--backend", "torch", "--workers", "0", *args]
    return CliRunner().invoke(cli, [str(arg) for arg in command], env={"COLUMNS": "200"})


def test_evaluate_on_slides_scores_tiles_and_slides_as_an_index_of_them_would(
    small_model, slide_folder, tmp_path
):
    from histoseek.index.store import load_index

    result = _evaluate(small_model, "--gallery", slide_folder, *SLIDE_OPTIONS, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["slides"], document["query_slides_left_out"]) == (6, 0)
    assert set(document["slide_metrics"]) == {"recall@1", "mmv@5"}
    assert set(document["tile_metrics"]) >= {"recall@1", "map@5", "mmv@5", "precision@10"}
    assert "its own slide left out" in document["protocol"]

    # The same numbers from an index of the folder, scored by the library's own functions.
    index_dir = tmp_path / "idx"
    from histoseek.cli import cli

    built = CliRunner().invoke(
        cli,
        [
            *("index", str(slide_folder), "-o", str(index_dir), "--model", str(small_model)),
            *("--backend", "torch", "--workers", "0", *SLIDE_OPTIONS),
        ],
    )
    assert built.exit_code == 0, built.output
    tiles = slide_tiles_of_index(load_index(index_dir))
    assert document["tiles"] == len(tiles.slide_ids)
    tile_scores, slide_scores, places = score_slide_tiles(tiles)
    widest_k = 10  # precision@10
    assert document["protocol"] == slide_protocol(
        "same-slide", DEFAULT_MAX_TILES, DEFAULT_TILE_K, places, widest_k
    )
    assert document["slide_metrics"] == pytest.approx(slide_scores.metrics, abs=1e-6)
    assert document["tile_metrics"] == pytest.approx(tile_scores.metrics, abs=1e-6)
    # Either exclusion through the command gives the library's scores for it.
    for exclude, leaves_out in (("same-group", "group (patient)"), ("same-slide", "slide")):
        _, scores, _ = score_slide_tiles(tiles, exclude)
        assert 0.0 <= scores.metrics["recall@1"] <= 1.0
        grouped = _evaluate(
            small_model, "--gallery", slide_folder, *SLIDE_OPTIONS, "--exclude", exclude, "--json"
        )
        assert f"its own {leaves_out} left out" in json.loads(grouped.stdout)["protocol"]
        assert json.loads(grouped.stdout)["slide_metrics"] == pytest.approx(scores.metrics)


def test_evaluate_on_slides_prints_both_levels(small_model, slide_folder):
    result = _evaluate(small_model, "--gallery", slide_folder, *SLIDE_OPTIONS, "--max-tiles", "3")
    assert result.exit_code == 0, result.output
    assert "slide recall@1" in result.stdout and "tile map@5" in result.stdout
    assert "18 of them querying" in result.stdout  # 6 slides × 3 query tiles


def test_slide_only_options_and_a_query_folder_are_refused_where_they_cannot_apply(
    small_model, slide_folder, tmp_path
):
    result = _evaluate(small_model, "--gallery", slide_folder, "--query", slide_folder)
    assert result.exit_code == 1
    assert "--query is for folders of patches" in result.stderr
    patches = tmp_path / "patches"
    for name in ("a", "b"):
        (patches / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (40 * len(name), 90, 150)).save(patches / name / "x.png")
    result = _evaluate(small_model, "--gallery", patches, "--tile-k", "5")
    assert result.exit_code == 1
    assert "--tile-k applies to a gallery of slides" in result.stderr
    result = _evaluate(small_model, "--gallery", patches, "--labels", __file__)
    assert "--labels applies to a gallery of slides" in result.stderr
