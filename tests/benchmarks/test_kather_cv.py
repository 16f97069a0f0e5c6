"""The kather2016 cross-validation's parts: folds by source image and the pooled metrics."""

from __future__ import annotations

import pytest


@pytest.fixture
def kather_cv(benchmark_script):
    return benchmark_script("kather_cv")


def test_folds_keep_each_source_image_whole(kather_cv):
    groups = [f"CRC-Prim-HE-{i % 6:02d}" for i in range(60)]
    labels = [i % 3 for i in range(60)]
    folds = kather_cv.assign_folds(labels, groups, 3)
    assert set(folds) == {0, 1, 2}
    for group in set(groups):
        assert len({fold for fold, g in zip(folds, groups, strict=True) if g == group}) == 1
    with pytest.raises(SystemExit, match="cannot fill"):
        kather_cv.assign_folds(labels, groups, 7)


def test_pooled_metrics_weight_each_fold_by_its_queries(kather_cv):
    base = dict.fromkeys(kather_cv.METRICS, 0.0)
    folds = [{**base, "recall@1": 1.0, "queries": 30}, {**base, "recall@1": 0.0, "queries": 10}]
    assert kather_cv.pooled(folds)["recall@1"] == pytest.approx(0.75)


def test_a_recipe_beats_the_builtin_model_only_above_it_in_both_r1_and_mmv5(kather_cv):
    builtin = {"recall@1": 0.72, "mmv@5": 0.72}
    assert kather_cv.beats({"recall@1": 0.73, "mmv@5": 0.73}, builtin)
    assert not kather_cv.beats({"recall@1": 0.73, "mmv@5": 0.66}, builtin)
    assert not kather_cv.beats({"recall@1": 0.72, "mmv@5": 0.80}, builtin)  # a tie is no win
    assert kather_cv.builtin_name(True) == "built-in --tta"
