"""The pieces of the training loop: freezing, optimiser groups, schedule, validation split."""

import pytest
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.train import freeze_stages, make_optimizer, make_scheduler, prepare_splits
from histoseek.train_config import TrainConfig


def _trainable(module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def _frozen(module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def test_lite0_freezes_its_first_five_stages_by_default():
    model = build_model(ModelConfig(dim=48, num_classes=3))
    frozen = freeze_stages(model, None)
    assert len(frozen) == 5
    assert _frozen(model.trunk._conv_stem) and _frozen(model.trunk._blocks[0:8])
    assert _trainable(model.trunk._blocks[8:]) and _trainable(model.trunk._conv_head)
    assert _trainable(model.projections) and _trainable(model.classifier)


def test_resnet_freezes_stem_and_layer1_by_default():
    model = build_model(ModelConfig(backbone="resnet50", gd_config="G", dim=32, num_classes=2))
    freeze_stages(model, None)
    assert _frozen(model.trunk[0]) and _frozen(model.trunk[4])
    assert _trainable(model.trunk[5]) and _trainable(model.trunk[7])


def test_explicit_counts_and_too_many_stages():
    model = build_model(ModelConfig(dim=48, num_classes=3))
    assert freeze_stages(model, 0) == [] and _trainable(model)
    with pytest.raises(HistoseekError, match="only 9 stages"):
        freeze_stages(model, 10)


def test_optimizer_gives_the_backbone_a_scaled_learning_rate():
    model = build_model(ModelConfig(dim=48, num_classes=3))
    freeze_stages(model, 5)
    config = TrainConfig(data_dir="", run_dir="", lr=1e-3, backbone_lr_scale=0.1)
    head, trunk = make_optimizer(model, config).param_groups
    assert head["lr"] == pytest.approx(1e-3) and trunk["lr"] == pytest.approx(1e-4)
    assert all(p.requires_grad for p in trunk["params"])
    trunk_ids = {id(p) for p in model.trunk.parameters()}
    assert not any(id(p) in trunk_ids for p in head["params"])


def test_schedule_warms_up_linearly_then_decays_to_zero():
    model = build_model(ModelConfig(dim=48, num_classes=3))
    optimizer = make_optimizer(model, TrainConfig(data_dir="", run_dir="", lr=1.0))
    scheduler = make_scheduler(optimizer, warmup_steps=4, total_steps=12)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0)
    assert rates[8] == pytest.approx(0.5)  # half-way through the cosine
    assert rates == sorted(rates[:4]) + sorted(rates[4:], reverse=True)


def test_validation_split_keeps_groups_together(tmp_path):
    for label in ("a", "b"):
        for slide in range(6):
            for tile in range(3):
                folder = tmp_path / label
                folder.mkdir(exist_ok=True)
                Image.new("RGB", (8, 8)).save(folder / f"slide{label}{slide}_{tile}.png")
    config = TrainConfig(
        data_dir=str(tmp_path), run_dir="", val_fraction=0.34, group_regex=r"slide\w\d"
    )
    splits = prepare_splits(config)
    slide_of = lambda path: path.name.split("_")[0]  # noqa: E731
    train_slides = {slide_of(p) for p in splits.train.paths}
    val_slides = {slide_of(p) for p in splits.val.paths}
    assert train_slides and val_slides and not train_slides & val_slides
    assert {splits.val.class_names[i] for i in splits.val.labels} == {"a", "b"}
