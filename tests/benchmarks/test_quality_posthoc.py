"""The post-training levers: query expansion and trunk interpolation by hand, the choice, and
a whole run over a small kept run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from histoseek.model.backbones import build_trunk
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import save_checkpoint

RECIPE = "lite0-bb1-g-20ep-temp0.2-crop0.8-stain0.5-freeze4"


@pytest.fixture(scope="module")
def posthoc(benchmark_script):
    return benchmark_script("quality_posthoc")


def test_query_expansion_adds_the_nearest_gallery_rows_weighted_by_similarity(posthoc):
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    query = np.array([[0.8, 0.6]], dtype=np.float32)
    # k=1, α=0: the query plus its nearest row (cosine 0.8 to [1, 0]), unit length again.
    plain = posthoc.expand_queries(query, gallery, 1, 0.0)
    np.testing.assert_allclose(plain, [[1.8, 0.6] / np.hypot(1.8, 0.6)], rtol=1e-6)
    # k=2, α=3: rows weighted 0.8³ and 0.6³.
    weighted = posthoc.expand_queries(query, gallery, 2, 3.0)
    expected = np.array([0.8 + 0.512, 0.6 + 0.216])
    np.testing.assert_allclose(weighted, [expected / np.linalg.norm(expected)], rtol=1e-6)


def test_trunk_interpolation_mixes_float_weights_and_keeps_counters(posthoc):
    network = build_model(ModelConfig(image_size=64), weights="none", seed=1)
    imagenet = build_trunk("efficientnet_lite0", "imagenet").state_dict()
    trained = {key: value.clone() for key, value in network.trunk.state_dict().items()}
    weight = next(key for key, value in trained.items() if value.is_floating_point())
    counter = next(key for key, value in trained.items() if not value.is_floating_point())
    head = network.projections[0].weight.clone()

    mixed = posthoc.interpolated_trunk(network, imagenet, trained, 0.25).trunk.state_dict()
    torch.testing.assert_close(mixed[weight], 0.25 * trained[weight] + 0.75 * imagenet[weight])
    assert torch.equal(mixed[counter], trained[counter])
    assert torch.equal(network.projections[0].weight, head)  # the head stays as trained
    ends = posthoc.interpolated_trunk(network, imagenet, trained, 1.0).trunk.state_dict()
    torch.testing.assert_close(ends[weight], trained[weight])


class _Flat:
    """A toy backend: each image's first row of red values, as a unit vector."""

    name, dim, precision, batch_threads = "flat", 4, "fp32", 1

    def embed_batch(self, images):
        rows = images[:, 0, 0, :].astype(np.float64) + 1.0
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_one_view_embeds_that_view_and_all_eight_average_as_tta_does(posthoc):
    from histoseek.inference.embed_files import embed_batch_tta

    images = np.random.default_rng(0).random((3, 3, 4, 4)).astype(np.float32)
    mirror = posthoc.OneView(_Flat(), 4)
    assert (mirror.name, mirror.dim) == ("flat", 4)
    np.testing.assert_allclose(
        mirror.embed_batch(images), _Flat().embed_batch(images[..., ::-1].copy())
    )
    views = [
        posthoc.Embedded(posthoc.OneView(_Flat(), v).embed_batch(images), [], []) for v in range(8)
    ]
    np.testing.assert_allclose(
        posthoc.mean_of_views(views), embed_batch_tta(_Flat(), images), rtol=1e-6
    )


def test_a_setting_is_chosen_only_beyond_the_margin_and_within_the_cost_cap(posthoc):
    rows = [
        {"setting": "defaults", "mean_score": 0.90, "embed_cost": 1.0},
        {"setting": "a", "mean_score": 0.905, "embed_cost": 1.0},  # within the margin
        {"setting": "b", "mean_score": 0.95, "embed_cost": 2.5},  # too costly
        {"setting": "c", "mean_score": 0.915, "embed_cost": 1.0},
        {"setting": "d", "mean_score": 0.92, "embed_cost": 2.0},
    ]
    assert posthoc.choose(rows, 0.01, 2.0)["setting"] == "d"
    assert posthoc.choose(rows, 0.03, 2.0) is None
    assert posthoc.choose(rows, 0.01, 1.0)["setting"] == "c"


def test_every_setting_carries_its_value(posthoc):
    values = {s.name: posthoc.setting_value(s.name) for s in posthoc.settings()}
    assert values["defaults"] is None
    assert values["query expansion k=3 α=3"] == (3, 3.0)
    assert values["trunk interpolated t=0.7"] == 0.7
    assert values["built-in concatenated β=0.5"] == 0.5
    assert values["views: mirror"] == [0, 4]


def _write_classes(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("a", "b", "c")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (64, 64, 3)) + 60 * np.eye(3, dtype=int)[c] * 2
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{seed}-{i}.png")


def test_a_whole_run_scores_every_setting_and_reads_test_for_the_choice(
    posthoc, tmp_path, monkeypatch
):
    monkeypatch.setattr(posthoc, "QUERY_EXPANSION", [(1, 0.0)])
    monkeypatch.setattr(posthoc, "INTERPOLATION", (0.5,))
    monkeypatch.setattr(posthoc, "CONCATENATION", (1.0,))
    monkeypatch.setattr(posthoc, "VIEW_SETS", {"mirror": (0, 4)})
    full = tmp_path / "work" / "full"
    for part, per_class, seed in (("fit", 4, 0), ("val", 2, 1)):
        _write_classes(full / "split" / part, per_class, seed)
    _write_classes(full / "split" / "gallery", 3, 2)
    _write_classes(tmp_path / "crc" / "test", 2, 3)
    model = build_model(ModelConfig(num_classes=3, image_size=64, dim=48), seed=2)
    save_checkpoint(full / "runs" / RECIPE / "model.pt", model, ["a", "b", "c"])

    out = tmp_path / "posthoc.json"
    argv = ["--recipes", RECIPE, "--work-dir", str(tmp_path / "work"), "--backend", "torch",
            "--workers", "0", "--out", str(out), "--data", str(tmp_path / "crc")]  # fmt: skip
    document = posthoc.main([*argv, "--margin", "-1", "--read-test"])
    settings = [row["setting"] for row in document["rows"]]
    assert settings == [
        "defaults",
        "query expansion k=1 α=0",
        "trunk interpolated t=0.5",
        "built-in concatenated β=1",
        "views: mirror",
    ]
    assert document["rows"][-1]["embed_cost"] == 2.0
    # A margin of -1 lets the best of the three win; its test metrics are read once.
    chosen = next(row for row in document["rows"] if row["setting"] == document["chosen"])
    best = max(document["rows"][1:], key=lambda row: row["mean_score"])
    assert chosen is not None and chosen["setting"] == best["setting"]
    assert 0.0 <= chosen["test"]["recall@1"] <= 1.0
    assert json.loads(out.read_text())["chosen"] == document["chosen"]
    assert all("test" not in row for row in document["rows"] if row is not chosen)

    # The embeddings are kept: a second run embeds nothing and scores the same.
    kept = sorted(p.name for p in (tmp_path / "work" / "posthoc").iterdir())
    monkeypatch.setattr(posthoc.EmbeddingStore, "_embedder", lambda *a: pytest.fail("embedded"))
    again = posthoc.main(argv)
    assert [r["mean_score"] for r in again["rows"]] == [r["mean_score"] for r in document["rows"]]
    assert sorted(p.name for p in (tmp_path / "work" / "posthoc").iterdir()) == kept


def test_missing_runs_are_one_line(posthoc, tmp_path):
    with pytest.raises(SystemExit, match="no kept run"):
        posthoc.main(["--recipes", RECIPE, "--work-dir", str(tmp_path)])
