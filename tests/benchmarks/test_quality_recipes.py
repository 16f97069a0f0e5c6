"""The recipe search's parts: recipes as valid data, the validation split and the choice."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from histoseek.data.colour_groups import clusters_per_class, colour_groups
from histoseek.data.folder import scan_labelled_folder
from histoseek.model.backbones import BACKBONE_SPECS
from histoseek.model.cgd import ModelConfig
from histoseek.train_config import TrainConfig


@pytest.fixture(scope="module")
def recipes(benchmark_script):
    return benchmark_script("quality_recipes")


def test_every_recipe_is_a_valid_training_configuration(recipes):
    assert len(recipes.RECIPES_BY_NAME) == len(recipes.RECIPES)
    for recipe in recipes.RECIPES:
        config = TrainConfig(data_dir="d", run_dir="r", **recipe.train)
        ModelConfig(
            backbone=config.backbone,
            gd_config=config.gd_config,
            dim=config.dim,
            image_size=recipe.test_size or config.image_size,
        )
        assert config.backbone in BACKBONE_SPECS
    # The evaluation-only variants share their base recipe's training run.
    keys = {r.name: r.training_key() for r in recipes.RECIPES}
    assert keys["lite0-tta"] == keys["lite0"] and keys["lite0-ms-test256"] == keys["lite0-ms"]


def test_recipes_are_picked_by_name_and_unknown_names_refused(recipes):
    assert [r.name for r in recipes.pick_recipes("lite0-g, lite0")] == ["lite0-g", "lite0"]
    assert len(recipes.pick_recipes(None)) == len(recipes.RECIPES)
    with pytest.raises(SystemExit, match="unknown recipe"):
        recipes.pick_recipes("lite0,lite9")


def _write_set(root: Path, per_class: int) -> Path:
    for label in ("a", "b", "c"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            (root / label / f"{label}{i}.png").write_bytes(b"not decoded here")
    return root


def test_validation_split_is_stratified_disjoint_and_covers_the_gallery(recipes, tmp_path):
    source = _write_set(tmp_path / "train", 50)
    fit, val, gallery = recipes.validation_split(source, tmp_path / "split", quick=False)
    names = {folder: {p.name for p in folder.rglob("*.png")} for folder in (fit, val, gallery)}
    assert not names[fit] & names[val]
    assert names[fit] | names[val] == names[gallery] and len(names[gallery]) == 150
    assert sorted(len(list((val / label).iterdir())) for label in "abc") == [10, 10, 10]
    assert all(p.is_symlink() and p.resolve().parent.parent == source for p in val.rglob("*.png"))
    quick = recipes.validation_split(source, tmp_path / "quick", quick=True)
    assert len(list(quick[2].rglob("*.png"))) == 120  # 40 per class


def test_colour_validation_holds_out_whole_colour_clusters(recipes, tmp_path):
    source = tmp_path / "train"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (source / label).mkdir(parents=True)
        for i in range(40):
            shade = np.array((230, 150, 190) if i % 2 else (120, 70, 160)) * (0.8 + i / 200)
            pixels = np.clip(shade + rng.normal(0, 4, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(source / label / f"{label}{i}.png")
    fit, val, _ = recipes.validation_split(source, tmp_path / "split", False, "colour")
    images = scan_labelled_folder(source)
    groups = colour_groups(images.paths, images.labels, clusters_per_class(recipes.VAL_FRACTION))
    group_of = {path.name: group for path, group in zip(images.paths, groups, strict=True)}
    fit_groups = {group_of[p.name] for p in fit.rglob("*.png")}
    val_groups = {group_of[p.name] for p in val.rglob("*.png")}
    assert val_groups and not fit_groups & val_groups
    assert {p.parent.name for p in val.rglob("*.png")} == {"a", "b"}


def test_choice_is_the_best_validation_score_within_the_time_budget_and_cost_cap(recipes):
    rows = [
        {"recipe": "slow", "val_score": 0.9, "train_minutes": 45.0, "embed_cost": 1.0},
        {"recipe": "dear", "val_score": 0.95, "train_minutes": 5.0, "embed_cost": 8.0},
        {"recipe": "fast", "val_score": 0.8, "train_minutes": 5.0, "embed_cost": 1.0},
        {"recipe": "faster", "val_score": 0.8, "train_minutes": 4.0, "embed_cost": 1.5},
        {"recipe": "weak", "val_score": 0.7, "train_minutes": 1.0, "embed_cost": 1.0},
    ]
    assert recipes.choose(rows, max_minutes=30, max_cost=2)["recipe"] == "faster"
    assert recipes.choose(rows, max_minutes=30, max_cost=1.2)["recipe"] == "fast"
    assert recipes.choose(rows, max_minutes=60, max_cost=2)["recipe"] == "slow"
    assert recipes.choose(rows, max_minutes=30, max_cost=8)["recipe"] == "dear"
    # None eligible: the best of all.
    assert recipes.choose(rows, max_minutes=0.5, max_cost=2)["recipe"] == "dear"


def test_embed_cost_counts_size_backbone_and_tta_views_against_the_builtin_model(recipes):
    cost = {
        name: recipes.embed_cost(recipes.RECIPES_BY_NAME[name]) for name in recipes.RECIPES_BY_NAME
    }
    # Lite0 at 224 px is the built-in model's trunk; the heads differ by a rounding error.
    assert cost["lite0"] == pytest.approx(1.0, abs=0.01)
    assert cost["lite0-tta"] == pytest.approx(8 * cost["lite0"])
    assert cost["lite0-ms-test256"] == pytest.approx(cost["lite0-256"])
    assert cost["lite0-256"] > 1.2
    assert 1.3 < cost["lite1-240"] < 2.0 < cost["lite2-260"]
    assert cost["lite1-240-tta"] == pytest.approx(8 * cost["lite1-240"])


def test_the_budget_stops_new_training_runs_only_once_spent(recipes):
    assert not recipes.budget_spent(100.0, None, 1e9)  # no budget: never spent
    assert not recipes.budget_spent(100.0, 2.0, 100.0 + 119)
    assert recipes.budget_spent(100.0, 2.0, 100.0 + 120)


def test_skip_test_chooses_on_validation_without_reading_the_test_set(
    recipes, tmp_path, monkeypatch
):
    data = tmp_path / "crc"
    _write_set(data / "train", 10)  # and no test/ folder: reading it would fail
    val_scores = {"lite0": 0.7, "lite0-g": 0.9}
    evaluated = []

    def fake_train(recipe, fit_dir, val_dir, run_dir, quick, workers):
        return run_dir / "model.pt", 1.0

    def fake_evaluate(embedder, evaluation_set):
        evaluated.append(evaluation_set)
        score = val_scores[embedder]
        return SimpleNamespace(metrics={"recall@1": score, "mmv@5": score})

    monkeypatch.setattr(recipes, "train_recipe", fake_train)
    monkeypatch.setattr(recipes, "recipe_embedder", lambda path, recipe, workers: recipe.name)
    monkeypatch.setattr(recipes, "evaluate", fake_evaluate)
    out = tmp_path / "search.json"
    document = recipes.main(
        ["--recipes", "lite0,lite0-g", "--skip-test", "--data", str(data),
         "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    )  # fmt: skip
    assert document["chosen"] == "lite0-g" and len(evaluated) == 2  # validation only
    assert all("test" not in row for row in document["rows"])
    assert json.loads(out.read_text())["chosen"] == "lite0-g"
    assert (tmp_path / "work" / "full" / "split" / "val").is_dir()


def test_every_recipe_names_what_the_defaults_have_changed(recipes):
    # The defaults are whatever this search chose last, so a recipe that left a chosen setting
    # (backbone, size, learning rates, descriptors, epochs, temperature, crops, stain jitter) to
    # them would change meaning with every choice: the first recipe still trains as the first
    # rounds did.
    for recipe in recipes.RECIPES:
        assert recipe.train.keys() >= recipes.CHOSEN_SETTINGS
    first = recipes.RECIPES_BY_NAME["lite0"].train
    chosen_since = ("gd_config", "epochs", "temperature", "crop_scale", "stain_jitter")
    assert tuple(first[name] for name in chosen_since) == ("SMG", 12, 0.5, 0.5, 0.2)
    assert recipes.RECIPES_BY_NAME["lite0-lr3e-3"].train["backbone_lr_scale"] == 0.1
    assert recipes.RECIPES_BY_NAME["lite0-bb1-g"].train["epochs"] == 12


def test_the_training_defaults_are_the_recipe_the_search_chose(recipes):
    # README, "Validation by colour clusters": the fourteenth round chose
    # lite0-bb1-g-20ep-temp0.2-crop0.8-stain0.5-freeze4.
    chosen_recipe = recipes.RECIPES_BY_NAME["lite0-bb1-g-20ep-temp0.2-crop0.8-stain0.5-freeze4"]
    chosen = TrainConfig(data_dir="d", run_dir="r", **chosen_recipe.train)
    defaults = TrainConfig(data_dir="d", run_dir="r")
    spec = BACKBONE_SPECS[defaults.backbone]
    assert (spec.native_size, spec.default_frozen_stages) == (
        chosen.image_size,
        chosen.freeze_stages,
    )
    sized = replace(defaults, image_size=chosen.image_size, freeze_stages=chosen.freeze_stages)
    assert sized == chosen


def test_a_later_search_keeps_the_runs_of_the_same_split_and_refuses_another(
    recipes, tmp_path, monkeypatch
):
    data = tmp_path / "crc"
    _write_set(data / "train", 10)
    monkeypatch.setattr(
        recipes, "train_recipe", lambda recipe, fit_dir, val_dir, run_dir, *_: _fake_run(run_dir)
    )
    monkeypatch.setattr(recipes, "recipe_embedder", lambda path, recipe, workers: recipe.name)
    monkeypatch.setattr(
        recipes,
        "evaluate",
        lambda embedder, evaluation_set: SimpleNamespace(metrics={"recall@1": 0.5, "mmv@5": 0.5}),
    )
    work = tmp_path / "work"

    def search(recipe: str, *extra: str) -> None:
        recipes.main(
            ["--recipes", recipe, "--skip-test", "--data", str(data), "--work-dir", str(work),
             "--out", str(tmp_path / "search.json"), *extra]
        )  # fmt: skip

    search("lite0")
    search("lite0-g")
    runs = work / "full" / "runs"
    assert sorted(path.name for path in runs.iterdir()) == ["lite0", "lite0-g"]
    assert (work / "full" / "split" / "val").is_dir()
    with pytest.raises(SystemExit, match="holds runs trained on another split"):
        search("lite0-sg", "--val-groups", "colour")
    assert sorted(path.name for path in runs.iterdir()) == ["lite0", "lite0-g"]


def _fake_run(run_dir: Path) -> tuple[Path, float]:
    run_dir.mkdir(parents=True)
    (run_dir / "model.pt").write_bytes(b"a run")
    return run_dir / "model.pt", 1.0
