"""`histoseek evaluate` on degenerate and odd galleries: refused, flagged, never NaN."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from histoseek.cli import cli
from histoseek.errors import HistoseekError
from histoseek.evaluate import check_evaluation_set


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small random CGD (64 px input), quick on a CPU."""
    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, build_model(ModelConfig(num_classes=3, image_size=64, dim=48)), [])
    return path


def _images(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """Noise images in root/<class>/, each class with its own tint."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 120, (32, 32, 3)) + np.array([40 * c, 0, 120 - 40 * c])
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}-{i}.png")
    return root


def _evaluate(checkpoint: Path, *args) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(checkpoint),
            "--backend",
            "torch",
            "--workers",
            "0",
            *map(str, args),
        ],
    )
    return result.exit_code, result.stdout, result.stderr


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


def test_a_single_class_gallery_is_refused(tmp_path):
    gallery = _images(tmp_path / "g", {"tumour": 4})
    with pytest.raises(HistoseekError, match=r"holds one class \(tumour\).*every metric"):
        check_evaluation_set(gallery)
    query = _images(tmp_path / "q", {"tumour": 2, "stroma": 2})
    with pytest.raises(HistoseekError, match="holds one class"):
        check_evaluation_set(gallery, query)


def test_one_image_per_class_is_refused(tmp_path):
    gallery = _images(tmp_path / "g", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(HistoseekError, match="every class holds a single image"):
        check_evaluation_set(gallery)


def test_query_classes_missing_from_the_gallery_are_refused(tmp_path):
    gallery = _images(tmp_path / "g", {"a": 2, "b": 2})
    query = _images(tmp_path / "q", {"c": 2, "d": 1})
    with pytest.raises(HistoseekError, match=r"query classes are not in the gallery \(c, d\)"):
        check_evaluation_set(gallery, query)


def test_groups_that_exclude_every_match_are_refused(tmp_path):
    gallery = _images(tmp_path / "g", {"a": 2, "b": 2})
    with pytest.raises(HistoseekError, match="own group"):
        check_evaluation_set(gallery, group_regex=r"^\w")  # each class is one group: a, b


@pytest.mark.parametrize(
    "gallery_classes, query_classes, message",
    [
        ({"tumour": 3}, None, "holds one class (tumour)"),
        ({"a": 1, "b": 1}, None, "every class holds a single image"),
        ({"a": 2, "b": 2}, {"c": 1}, "query classes are not in the gallery (c)"),
    ],
)
def test_degenerate_galleries_are_refused_before_the_model_loads(
    tmp_path, monkeypatch, gallery_classes, query_classes, message
):
    import histoseek.embedder

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the folders were checked")

    monkeypatch.setattr(histoseek.embedder, "load_image_embedder", refuse)
    args = ["--gallery", _images(tmp_path / "g", gallery_classes)]
    if query_classes:
        args += ["--query", _images(tmp_path / "q", query_classes)]
    code, _, stderr = _evaluate(tmp_path / "unused.pt", *args, "--json")
    assert code == 1 and message in _one_line(stderr)


def test_queries_with_nothing_to_find_are_left_out_and_counted(checkpoint, tmp_path):
    # Class c has one image: leave-one-out gives it nothing to find (map@5 used to be NaN).
    gallery = _images(tmp_path / "g", {"a": 3, "b": 3, "c": 1})
    code, stdout, stderr = _evaluate(checkpoint, "--gallery", gallery, "--json")
    assert code == 0, stderr
    document = json.loads(stdout)  # strict JSON: NaN would not parse as a number here
    assert document["query_size"] == 7 and document["queries_left_out"] == 1
    assert all(0.0 <= value <= 1.0 for value in document["metrics"].values())
    assert "NaN" not in stdout
    assert "1 of 7 queries have no gallery image of their own class" in stderr

    code, stdout, _ = _evaluate(checkpoint, "--gallery", gallery)
    assert code == 0
    assert "7 (1 left out: nothing of their class to find)" in stdout


def test_a_large_group_cuts_k_and_says_so(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 12, "b": 3})
    for path in sorted(gallery.rglob("*.png")):
        number = int(path.stem.split("-")[1])
        group = "s2" if path.parent.name == "b" else "s1" if number < 8 else "s3"
        path.rename(path.with_name(f"{group}_{path.name}"))
    code, stdout, stderr = _evaluate(
        checkpoint, "--gallery", gallery, "--group-regex", r"^s\d", "--json"
    )
    assert code == 0, stderr
    document = json.loads(stdout)
    # s1 holds 8 of the 15 images: its queries may retrieve only 7.
    assert (
        "7 neighbours per query, as many as the largest group leaves: metrics @k above 7 are "
        "taken over those 7" in document["protocol"]
    )
    assert all(0.0 <= value <= 1.0 for value in document["metrics"].values())


def test_a_gallery_smaller_than_k_says_how_deep_it_ranks(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 3, "b": 3})
    code, stdout, stderr = _evaluate(checkpoint, "--gallery", gallery, "--json")
    assert code == 0, stderr
    document = json.loads(stdout)
    # Leave-one-out in 6 images ranks 5, fewer than precision@10's 10.
    assert document["protocol"].endswith(
        "; 5 neighbours per query, as many as the gallery offers each query: metrics @k above "
        "5 are taken over those 5"
    )


def test_a_query_sharing_a_file_name_with_a_gallery_image_is_not_in_its_group(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 1, "b": 2})
    queries = _images(tmp_path / "q", {"a": 1, "b": 1})
    for path in (gallery / "b").iterdir():
        path.rename(path.with_name(f"P2_{path.name}"))
    (queries / "b" / "b-0.png").rename(queries / "b" / "P3_b-0.png")
    # q/a/a-0.png and g/a/a-0.png match no regex: each is a group of its own, so the query
    # finds the gallery's one image of class a (it used to be left out as in its group).
    code, stdout, stderr = _evaluate(
        checkpoint, "--gallery", gallery, "--query", queries, "--group-regex", r"(P\d)_", "--json"
    )
    assert code == 0, stderr
    assert json.loads(stdout)["queries_left_out"] == 0


def test_a_query_folder_inside_the_gallery_is_refused(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 3, "b": 3})
    inside = tmp_path / "q"
    inside.mkdir()
    (inside / "b").symlink_to(gallery / "b", target_is_directory=True)
    hard = tmp_path / "h"
    for name in ("a", "b"):
        (hard / name).mkdir(parents=True)
        os.link(gallery / name / f"{name}-0.png", hard / name / f"{name}-0.png")
    for query, shared in ((gallery, 6), (inside, 3), (hard, 2)):
        code, _, stderr = _evaluate(checkpoint, "--gallery", gallery, "--query", query)
        assert code != 0
        line = _one_line(stderr)
        assert f"--query {query} shares {shared} of its {shared} images with {gallery}" in line
        assert line.endswith("for leave-one-out within the gallery, leave --query out")


def test_a_group_regex_that_matches_no_file_name_is_refused(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 3, "b": 3})
    code, _, stderr = _evaluate(checkpoint, "--gallery", gallery, "--group-regex", r"patient\d")
    assert code != 0
    assert "matches none of the 6 gallery file names" in _one_line(stderr)


def test_a_group_regex_that_matches_some_file_names_is_noted(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 3, "b": 3})
    code, _, stderr = _evaluate(checkpoint, "--gallery", gallery, "--group-regex", "a")
    assert code == 0, stderr
    notes = [line for line in stderr.splitlines() if "--group-regex" in line]
    assert len(notes) == 1 and notes[0].startswith("note: --group-regex 'a' matches 3 of the 6 ")


def test_query_classes_partly_missing_from_the_gallery_are_left_out(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 3, "b": 3})
    query = _images(tmp_path / "q", {"a": 2, "z": 2}, seed=1)
    code, stdout, stderr = _evaluate(checkpoint, "--gallery", gallery, "--query", query, "--json")
    assert code == 0, stderr
    document = json.loads(stdout)
    assert (document["query_size"], document["queries_left_out"]) == (4, 2)
    assert all(np.isfinite(value) for value in document["metrics"].values())


def test_names_with_markup_and_fifos_in_the_gallery(checkpoint, tmp_path, fifo_guard):
    gallery = _images(tmp_path / "g[", {"[red]a": 3, "b]": 3})
    fifo_guard.make(gallery / "b]" / "pipe.png")
    code, stdout, stderr = _evaluate(
        checkpoint, "--gallery", gallery, "--group-regex", r"[a-z]+-\d", "--workers", "2"
    )
    assert code == 0, stderr
    assert "[a-z]+-\\d" in stdout and "skipped" in stdout
    code, stdout, _ = _evaluate(checkpoint, "--gallery", gallery, "--json")
    assert code == 0
    assert json.loads(stdout)["skipped_unreadable"] == [str(gallery / "b]" / "pipe.png")]
    assert fifo_guard.opened == []


def test_images_above_the_pixel_limit_are_skipped_as_unreadable(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 3, "b": 3})
    Image.new("RGB", (64, 64)).save(gallery / "a" / "large.png")
    code, stdout, stderr = _evaluate(
        checkpoint, "--gallery", gallery, "--json", "--max-pixels", "1024"
    )
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["skipped_unreadable"] == [str(gallery / "a" / "large.png")]
    assert document["gallery_size"] == 6


def test_a_class_left_without_readable_images_is_named_as_unreadable(checkpoint, tmp_path):
    gallery = _images(tmp_path / "g", {"a": 4})
    (gallery / "b").mkdir()
    for name in ("x.png", "y.png"):
        (gallery / "b" / name).write_bytes(b"not an image")
    code, _, stderr = _evaluate(checkpoint, "--gallery", gallery)
    assert code != 0
    line = stderr.strip().splitlines()[-1]  # after the embedding's progress bar
    assert (
        line.startswith("Error: ")
        and "holds one class (a) (2 image(s) could not be read, e.g. " in line
    )
    assert line.endswith("evaluate needs at least 2 class folders with readable images")
