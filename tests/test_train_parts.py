"""The parts of the training loop, each on its own: setup, one epoch, checkpoints, resume."""

import json
import math
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from histoseek.data.colour_groups import clusters_per_class, colour_groups
from histoseek.data.folder import LabelledImages, scan_labelled_folder
from histoseek.errors import HistoseekError
from histoseek.inference.embed_files import EmbeddedFiles
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import load_checkpoint
from histoseek.train import (
    EpochValidation,
    finish_run,
    freeze_stages,
    loop,
    make_optimizer,
    make_scheduler,
    prepare_splits,
    resume_config,
    setup_run,
    train,
    train_one_epoch,
    validate_and_checkpoint,
    validation,
)
from histoseek.train.resume_state import read_resume_state, write_resume_state
from histoseek.train.splits import MAX_VALIDATION_GALLERY, Splits
from histoseek.train.weight_average import WeightAverage
from histoseek.train_config import TrainConfig


def _trainable(module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def _frozen(module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def test_lite0_freezes_its_first_four_stages_by_default():
    model = build_model(ModelConfig(dim=48, num_classes=3))
    frozen = freeze_stages(model, None)
    assert len(frozen) == 4  # the stem and block stages of 1, 2 and 2 blocks
    assert _frozen(model.trunk._conv_stem) and _frozen(model.trunk._blocks[0:5])
    assert _trainable(model.trunk._blocks[5:]) and _trainable(model.trunk._conv_head)
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


def test_weight_average_is_the_mean_until_its_horizon_then_exponential():
    model = nn.BatchNorm1d(1)
    average = WeightAverage(model, horizon_steps=2)
    seen = []
    for step, value in enumerate((1.0, 2.0, 4.0), start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        model.num_batches_tracked.fill_(step)
        average.update(model, step)
        seen.append(average.model.weight.item())
    # Step 1 copies, step 2 gives the mean of 1 and 2, step 3 moves halfway (1/2) towards 4.
    assert seen == pytest.approx([1.0, 1.5, 2.75])
    assert average.model.num_batches_tracked.item() == 3  # counters are copied, not averaged
    assert not average.model.training and not average.model.weight.requires_grad
    assert model.weight.item() == 4.0  # the trained model is left alone


def test_a_horizon_under_one_step_keeps_the_latest_weights():
    model = nn.Linear(1, 1)
    average = WeightAverage(model, horizon_steps=0.3)
    with torch.no_grad():
        model.weight.fill_(5.0)
    average.update(model, 4)
    assert average.model.weight.item() == 5.0


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


@pytest.mark.parametrize("group_regex", [None, r"(P\d)_"])
def test_files_sharing_a_name_in_two_classes_are_not_one_group(tmp_path, monkeypatch, group_regex):
    for label, grouped in (("a", "P1_1.png"), ("b", "P2_1.png")):
        (tmp_path / label).mkdir()
        for name in ("1.png", "2.png", "3.png", grouped):
            Image.new("RGB", (8, 8)).save(tmp_path / label / name)
    seen = []

    def split(labels, groups, fractions, seed):
        seen.extend(groups)
        return [i % 2 for i in range(len(labels))]

    monkeypatch.setattr("histoseek.train.splits.stratified_group_split", split)
    prepare_splits(TrainConfig(data_dir=str(tmp_path), run_dir="", group_regex=group_regex))
    unmatched = [f"{label}/{number}.png" for label in ("a", "b") for number in (1, 2, 3)]
    regex_groups = ["P1", "P2"] if group_regex else ["a/P1_1.png", "b/P2_1.png"]
    assert sorted(seen) == sorted(unmatched + regex_groups)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # Never compiled, so even a bad regex went unnoticed.
        ({"val_dir": "elsewhere"}, "--group-regex splits DATA_DIR; it has no use with --val-dir"),
        ({"val_fraction": 0.0}, "--group-regex chooses validation images; give --val-fraction"),
    ],
)
def test_a_group_regex_with_no_held_out_fraction_is_refused(tmp_path, changes, message):
    _tiny_folder(tmp_path / "data")
    config = TrainConfig(data_dir=str(tmp_path / "data"), run_dir="", group_regex="(", **changes)
    with pytest.raises(HistoseekError, match=re.escape(message)):
        prepare_splits(config)


def test_colour_groups_hold_out_whole_colour_clusters(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for number in range(12):
            colour = (230, 150, 190) if number % 2 else (120, 70, 160)
            noise = rng.normal(0, 6, (16, 16, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{number}.png")
    config = TrainConfig(data_dir=str(tmp_path), run_dir="", val_fraction=0.5, colour_groups=True)
    splits = prepare_splits(config)
    images = scan_labelled_folder(tmp_path)
    groups = colour_groups(images.paths, images.labels, clusters_per_class(0.5), config.seed)
    group_of = dict(zip(images.paths, groups, strict=True))
    train_groups = {group_of[path] for path in splits.train.paths}
    val_groups = {group_of[path] for path in splits.val.paths}
    assert train_groups and val_groups and not train_groups & val_groups
    assert len(splits.train) + len(splits.val) == 24


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"group_regex": "x"}, "give --group-regex or --colour-groups, not both"),
        ({"val_dir": "elsewhere"}, "--colour-groups splits DATA_DIR; it has no use with --val-dir"),
        ({"val_fraction": 0.0}, "--colour-groups chooses validation images; give --val-fraction"),
    ],
)
def test_colour_groups_refuse_other_ways_of_choosing_validation(tmp_path, changes, message):
    _tiny_folder(tmp_path / "data")
    config = TrainConfig(data_dir=str(tmp_path / "data"), run_dir="", colour_groups=True, **changes)
    with pytest.raises(HistoseekError, match=re.escape(message)):
        prepare_splits(config)


# The loop's parts on tiny images made here: no pretrained weights, 32 px, a few steps.


def _tiny_folder(root, classes=("a", "b"), per_class=6):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.array([200, 60 + 120 * c, 120], dtype=np.float64)
            pixels = np.clip(base + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    return root


def _config(data, run_dir, **changes) -> TrainConfig:
    options = {
        "weights": "none",
        "device": "cpu",
        "image_size": 32,
        "dim": 6,
        "batch_size": 4,
        "m_per_class": 2,
        "workers": 0,
        "epochs": 1,
        "val_fraction": 0.34,
        **changes,
    }
    return TrainConfig(data_dir=str(data), run_dir=str(run_dir), **options)


def _record(epoch: int) -> dict:
    return {"epoch": epoch, "loss": 1.0, "images_per_s": 10.0}


@pytest.fixture
def tiny(tmp_path):
    return _tiny_folder(tmp_path / "data")


def test_setup_checks_then_builds_the_run_and_writes_only_config_and_log(tiny, tmp_path):
    lines = []
    run = setup_run(_config(tiny, tmp_path / "run"), notify=lines.append)
    assert len(run.splits.train) + len(run.splits.val) == 12 and len(run.splits.val) >= 2
    assert run.sampler.batch_size == 4 and len(run.sampler) == 2
    assert run.model.config.dim == 6 and run.model.config.num_classes == 2
    assert len(run.optimizer.param_groups) == 2 and not run.scaler.is_enabled()
    assert run.start_epoch == 0 and run.history == [] and run.previous is None
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "train.log",
        "train_config.json",
    ]
    assert lines[0].startswith("training efficientnet_lite0 CGD (G, dim 6)")
    assert lines[0] in (tmp_path / "run" / "train.log").read_text()


def test_a_group_regex_that_misses_some_training_names_is_logged(tiny, tmp_path):
    lines = []
    config = _config(tiny, tmp_path / "run", group_regex=r"a\d")
    run = setup_run(config, notify=lines.append)
    assert run.splits.notes == [
        "--group-regex 'a\\d' matches 6 of the 12 training file names; the other 6 are each a "
        "group of their own (e.g. 'b0.png')"
    ]
    assert run.splits.notes[0] in lines[1]
    assert run.splits.notes[0] in (tmp_path / "run" / "train.log").read_text()


def test_training_can_start_from_the_pooled_descriptors_themselves(tiny, tmp_path):
    options = {"gd_config": "SG", "dim": 2 * 1280, "power": 0.5, "identity_init": True}
    run = setup_run(_config(tiny, tmp_path / "run", **options))
    assert run.model.config.power == 0.5
    for projection in run.model.projections:
        assert torch.equal(projection.weight, torch.eye(1280))
    with pytest.raises(HistoseekError, match=r"identity projections need dim 2560 .* not 6"):
        setup_run(_config(tiny, tmp_path / "refused", gd_config="SG", identity_init=True))
    assert not (tmp_path / "refused").exists()


def test_processes_that_split_the_data_differently_are_refused(tiny, tmp_path, monkeypatch):
    fingerprints = []

    def disagreeing(ddp, value):
        fingerprints.append(value)
        return False

    monkeypatch.setattr(loop, "agree_on", disagreeing)
    with pytest.raises(HistoseekError, match="found different images, or split them"):
        setup_run(_config(tiny, tmp_path / "run"))
    assert fingerprints == [prepare_splits(_config(tiny, tmp_path / "run")).fingerprint]
    assert not (tmp_path / "run").exists()


# Each line in one write: print() writes the text and its newline separately, and the two
# ranks' unbuffered output interleaves between them.
AGREEMENT_SCRIPT = """
import sys
from histoseek.train.distributed import agree_on, leave_distributed, setup_distributed
ddp = setup_distributed("cpu")
same = agree_on(ddp, "split")
differ = agree_on(ddp, f"split of rank {ddp.rank}")
sys.stdout.write(f"rank {ddp.rank}: {same} {differ}\\n")
leave_distributed(ddp)
"""


def test_agree_on_compares_the_values_of_every_rank(tmp_path):
    script = tmp_path / "agree.py"
    script.write_text(AGREEMENT_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, "--standalone", str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(result.stdout.splitlines()) == ["rank 0: True False", "rank 1: True False"]


def test_one_epoch_trains_the_unfrozen_weights_and_reports_progress(tiny, tmp_path):
    run = setup_run(_config(tiny, tmp_path / "run"))
    frozen_before = [p.clone() for stage in run.frozen for p in stage.parameters()]
    head_before = run.model.projections[0].weight.clone()
    calls = []
    record = train_one_epoch(run, 0, progress=lambda done, total: calls.append((done, total)))
    assert set(record) == {"epoch", "loss", "images_per_s"} and record["epoch"] == 1
    assert math.isfinite(record["loss"]) and record["loss"] > 0 and record["images_per_s"] > 0
    assert calls == [(4, 8), (8, 8)]
    assert not torch.equal(run.model.projections[0].weight, head_before)
    frozen_after = [p for stage in run.frozen for p in stage.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, frozen_after, strict=True))
    assert run.scheduler.last_epoch == 2


def test_checkpoint_keeps_the_best_model_and_always_the_resume_state(tiny, tmp_path):
    scores = iter({"val_recall@1": v, "val_mmv@5": v, "val_score": v} for v in (0.5, 0.25))
    lines = []
    run = setup_run(_config(tiny, tmp_path / "run", epochs=2), notify=lines.append)
    run.validation = lambda model, device: next(scores)
    validate_and_checkpoint(run, _record(1))
    assert lines[-1].startswith("epoch 1/2: loss 1.0000") and lines[-1].endswith("(best)")
    validate_and_checkpoint(run, _record(2))
    assert lines[-1].endswith("val R@1 0.2500, mMV@5 0.2500")
    assert [h["val_score"] for h in run.history] == [0.5, 0.25]
    assert run.best == {"epoch": 1, "val_score": 0.5}
    _, class_names, extra = load_checkpoint(tmp_path / "run" / "model.pt")
    assert class_names == ["a", "b"] and extra["epoch"] == 1
    state = read_resume_state(tmp_path / "run" / "last.pt")
    assert state.epoch == 2 and state.best == run.best and state.class_names == ["a", "b"]
    metrics = finish_run(run)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert lines[-1] == f"best epoch 1; model written to {tmp_path / 'run' / 'model.pt'}"


def test_a_weight_average_is_validated_kept_and_resumed(tiny, tmp_path):
    config = _config(tiny, tmp_path / "run", epochs=2, ema_epochs=1.0)
    run = setup_run(config)
    assert run.average is not None and run.average.horizon_steps == 2  # 2 steps an epoch
    validated = []
    run.validation = lambda model, device: (
        validated.append(model)
        or {
            "val_recall@1": 0.5,
            "val_mmv@5": 0.5,
            "val_score": 0.5,
        }
    )
    train_one_epoch(run, 0)
    validate_and_checkpoint(run, _record(1))
    averaged, trained = run.average.model, run.model
    assert validated == [averaged] and run.kept_model is averaged
    assert not torch.equal(averaged.projections[0].weight, trained.projections[0].weight)
    saved, _, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    for name, value in averaged.state_dict().items():
        assert torch.equal(saved.state_dict()[name], value), name
    resumed = setup_run(resume_config(tmp_path / "run", {}), resume=True)
    for name, value in averaged.state_dict().items():
        assert torch.equal(resumed.average.model.state_dict()[name], value), name
    assert torch.equal(resumed.model.projections[0].weight, trained.projections[0].weight)


def test_without_a_weight_average_the_trained_weights_are_kept(tiny, tmp_path):
    run = setup_run(_config(tiny, tmp_path / "run", val_fraction=0))
    assert run.average is None and run.kept_model is run.model
    validate_and_checkpoint(run, _record(1))
    assert read_resume_state(tmp_path / "run" / "last.pt").averaged_model == {}


def test_a_resume_state_missing_its_weight_average_is_refused(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run", ema_epochs=1.0)
    state = read_resume_state(tmp_path / "run" / "last.pt")
    write_resume_state(tmp_path / "run" / "last.pt", replace(state, averaged_model={}))
    with pytest.raises(
        HistoseekError, match="last.pt holds no weight average, which this run keeps"
    ):
        setup_run(resume_config(tmp_path / "run", {}), resume=True)


def _validation(run, frozen_stages=None) -> EpochValidation:
    frozen = len(run.frozen) if frozen_stages is None else frozen_stages
    return EpochValidation(run.splits.val, run.splits.val_gallery, frozen, 4, 0)


def test_validation_queries_the_training_images(tiny, tmp_path, monkeypatch):
    run = setup_run(_config(tiny, tmp_path / "run"))
    val, gallery = run.splits.val, run.splits.val_gallery
    assert gallery is run.splits.train
    # Every image embeds at its class's corner, so each query finds its class's training images.
    corner = np.eye(2, dtype=np.float32)
    rows = {p: corner[lab] for p, lab in zip(val.paths, val.labels, strict=True)}
    rows |= {p: corner[lab] for p, lab in zip(gallery.paths, gallery.labels, strict=True)}

    def embed(embedder, config, paths, batch_size, workers):
        found = np.arange(len(paths))
        return EmbeddedFiles(np.stack([rows[p] for p in paths]), found, [], np.zeros((0, 2)))

    monkeypatch.setattr(validation, "embed_files", embed)
    scores = _validation(run, frozen_stages=0)(run.model, run.device)
    assert scores == {"val_recall@1": 1.0, "val_mmv@5": 1.0, "val_score": 1.0}
    # The same neighbours judged by the training images' labels: swapped, every answer is wrong.
    swapped = replace(gallery, labels=[1 - label for label in gallery.labels])
    scores = EpochValidation(val, swapped, 0, 4, 0)(run.model, run.device)
    assert scores == {"val_recall@1": 0.0, "val_mmv@5": 0.0, "val_score": 0.0}


def test_validation_keeps_the_frozen_stages_output_and_embeds_as_the_whole_model(
    tiny, tmp_path, monkeypatch
):
    run = setup_run(_config(tiny, tmp_path / "run"))
    assert len(run.frozen) == 4
    whole = _validation(run, frozen_stages=0)._embed(run.model, run.device)
    kept = _validation(run)
    first = kept._embed(run.model, run.device)
    # Later epochs decode nothing: they start from the kept output of the frozen stages.
    monkeypatch.setattr(validation, "embed_files", None)
    again = kept._embed(run.model, run.device)
    for (plain, rows), (cached, cached_rows), (later, _) in zip(whole, first, again, strict=True):
        assert np.array_equal(rows, cached_rows)
        np.testing.assert_allclose(cached, plain, atol=1e-5)
        np.testing.assert_array_equal(later, cached)


def test_validation_keeps_nothing_above_its_size_limit(tiny, tmp_path, monkeypatch):
    run = setup_run(_config(tiny, tmp_path / "run"))
    monkeypatch.setattr(validation, "MAX_KEPT_BYTES", 0)
    check = _validation(run)
    scores = check(run.model, run.device)
    assert check._kept is None and not check._keep
    assert scores == _validation(run, frozen_stages=0)(run.model, run.device)


def test_validation_reports_its_measure_of_a_real_model(tiny, tmp_path):
    run = setup_run(_config(tiny, tmp_path / "run"))
    scores = run.validation(run.model, run.device)
    assert set(scores) == {"val_recall@1", "val_mmv@5", "val_score"}
    assert scores["val_score"] == pytest.approx((scores["val_recall@1"] + scores["val_mmv@5"]) / 2)


def test_a_large_training_set_is_sampled_per_class_for_validation(tmp_path):
    images = LabelledImages(
        tmp_path,
        [tmp_path / f"{i}.png" for i in range(3 * MAX_VALIDATION_GALLERY)],
        [0] * (3 * MAX_VALIDATION_GALLERY - 3) + [1, 1, 1],
        ["common", "rare"],
    )
    splits = Splits(images, images)
    gallery = splits.val_gallery
    counts = np.bincount(gallery.labels)
    # The common class its share (5,997 of 6,000 images: 1,999 of 2,000); the rare one keeps
    # all 3 of its images, though its share rounds to 1.
    assert counts.tolist() == [MAX_VALIDATION_GALLERY - 1, 3]
    assert len(set(gallery.paths)) == len(gallery) and set(gallery.paths) <= set(images.paths)
    assert splits.val_gallery is gallery
    assert Splits(images, images).val_gallery.paths == gallery.paths


def test_resume_refuses_a_run_validated_the_earlier_way(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run", epochs=2, val_fraction=0.34)
    state = read_resume_state(tmp_path / "run" / "last.pt")
    write_resume_state(
        tmp_path / "run" / "last.pt", replace(state, best={"epoch": 1, "val_recall@1": 0.9})
    )
    with pytest.raises(HistoseekError, match="Recall@1 within the validation images"):
        setup_run(resume_config(tmp_path / "run", {}), resume=True)


def test_train_composes_the_parts(tiny, tmp_path):
    lines = []
    metrics = train(_config(tiny, tmp_path / "run", epochs=2), notify=lines.append)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["train_images"] + metrics["val_images"] == 12
    assert lines[-1].startswith("best epoch") and (tmp_path / "run" / "model.pt").is_file()


# Validation needs two readable images: refused up front, or stopped before any claim.


def test_a_validation_folder_with_one_image_is_refused_before_the_run_starts(tiny, tmp_path):
    val = tmp_path / "val"
    (val / "a").mkdir(parents=True)
    shutil.copy(tiny / "a" / "a0.png", val / "a")
    with pytest.raises(HistoseekError, match="holds 1 image.s. of the training classes; valid"):
        setup_run(_config(tiny, tmp_path / "run", val_dir=str(val)))
    assert not (tmp_path / "run").exists()


def test_a_validation_fraction_leaving_one_image_is_refused(tiny, tmp_path):
    with pytest.raises(HistoseekError, match="--val-fraction 0.01 holds out 1 image"):
        prepare_splits(_config(tiny, tmp_path / "run", val_fraction=0.01))


def test_unreadable_validation_images_stop_the_run_without_claiming_a_model(tiny, tmp_path):
    val = tmp_path / "val"
    (val / "a").mkdir(parents=True)
    shutil.copy(tiny / "a" / "a0.png", val / "a")
    (val / "a" / "broken.png").write_bytes(b"broken")
    lines = []
    config = _config(tiny, tmp_path / "run", val_dir=str(val))
    with pytest.raises(HistoseekError, match="only 1 of the 2 validation images can be read"):
        train(config, notify=lines.append)
    assert not (tmp_path / "run" / "model.pt").exists()
    assert not (tmp_path / "run" / "last.pt").exists()
    assert "model" not in (tmp_path / "run" / "train.log").read_text()


# Unreadable training images are replaced, so every batch (and every rank) keeps its size.


def test_unreadable_training_images_are_replaced_and_listed(tiny, tmp_path):
    (tiny / "a" / "a1.png").write_bytes(b"broken")
    run = setup_run(_config(tiny, tmp_path / "run", val_fraction=0))
    calls = []
    train_one_epoch(run, 0, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (12, 12)  # no image dropped from any batch
    assert run.unreadable == {str(tiny / "a" / "a1.png")}
    validate_and_checkpoint(run, _record(1))
    assert finish_run(run)["skipped_unreadable"] == [str(tiny / "a" / "a1.png")]


def test_a_class_without_a_readable_image_is_refused(tiny, tmp_path):
    for path in (tiny / "b").iterdir():
        path.write_bytes(b"broken")
    with pytest.raises(HistoseekError, match="none of the 6 training image.s. of class b can"):
        setup_run(_config(tiny, tmp_path / "run", val_fraction=0))
    assert not (tmp_path / "run").exists()


# Resuming: the state carries everything, and only some options may change.


def _finished_run(data, run_dir, **changes):
    config = _config(data, run_dir, **{"val_fraction": 0, **changes})
    run = setup_run(config)
    validate_and_checkpoint(run, _record(1))
    finish_run(run)
    return config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"val_fraction": "0.1"}, "val_fraction is '0.1', not float"),
        ({"lr": float("nan")}, "lr is nan, not float"),
        ({"epochs": 2.5}, "epochs is 2.5, not int"),
        ({"image_size": True}, "image_size is True, not int | None"),
        ({"train_sizes": [224, "256"]}, "train_sizes is [224, '256'], not list[int] | None"),
        ({"colour": 1}, "colour is not a training option"),
        # Values of the right type that the options themselves refuse.
        ({"temperature": -1}, "temperature is -1, not > 0"),
        ({"m_per_class": 1}, "m_per_class is 1, not >= 2"),
        ({"label_smoothing": 2}, "label_smoothing is 2, not in [0, 1)"),
        ({"margin": -1}, "margin is -1, not >= 0"),
        ({"crop_scale": 5}, "crop_scale is 5, not in (0, 1]"),
        ({"stain_jitter": 3}, "stain_jitter is 3, not in [0, 1]"),
        ({"blur": 9}, "blur is 9, not in [0, 8]"),
        ({"hsv_jitter": 2}, "hsv_jitter is 2, not in [0, 1]"),
        ({"workers": -1}, "workers is -1, not >= 0"),
        ({"seed": 2**31}, "seed is 2147483648, not in [0, 2147483647]"),
        ({"image_size": 16}, "image_size is 16, not in [32, 4096]"),
        ({"device": "tpu"}, "device is 'tpu', not one of auto, cpu, cuda"),
        (
            {"backbone": "vgg16"},
            "backbone is 'vgg16', not one of efficientnet_lite0, "
            "efficientnet_lite1, efficientnet_lite2, resnet50, resnext50",
        ),
    ],
)
def test_a_damaged_run_configuration_is_refused_in_one_line(tiny, tmp_path, change, message):
    _finished_run(tiny, tmp_path / "run")
    path = tmp_path / "run" / "train_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(HistoseekError) as refused:
        resume_config(tmp_path / "run", {})
    assert str(refused.value) == f"cannot read the run's configuration {path}: {message}"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda state: _without(state, "model"), "it has no model"),
        (lambda state: {**_without(state, "optimizer"), "scheduler": 3}, "it has no optimizer"),
        (lambda state: {**state, "best": {}}, "its best epoch records no val_score"),
        (lambda state: _without(state, "epoch"), "it has no epoch"),
        (lambda state: {**state, "epoch": -1}, "its epoch -1 is not a whole number"),
        (lambda state: {**state, "best": {"val_score": 0.5}}, "its best epoch is not named"),
        (
            lambda state: {**state, "best": {"epoch": "1", "val_score": 0.5}},
            "its best epoch '1' is not a whole number",
        ),
        (
            lambda state: {**state, "history": [1.0]},
            "its history is not a list of epoch records",
        ),
        (
            lambda state: {**state, "best": {"epoch": 1, "val_score": "high"}},
            "its best epoch's val_score 'high' is not a finite number",
        ),
    ],
)
def test_a_damaged_resume_state_is_refused_in_one_line(tiny, tmp_path, change, message):
    _finished_run(tiny, tmp_path / "run")
    path = tmp_path / "run" / "last.pt"
    torch.save(change(torch.load(path, weights_only=True)), path)
    with pytest.raises(HistoseekError) as refused:
        read_resume_state(path)
    assert str(refused.value) == f"{path} is a damaged training resume state: {message}"


def _without(state: dict, key: str) -> dict:
    return {name: value for name, value in state.items() if name != key}


def test_resume_restores_the_amp_gradient_scaler(tiny, tmp_path, monkeypatch):
    # On a CPU, AMP is off, so stand in an enabled CPU scaler for float16 CUDA's.
    monkeypatch.setattr(
        loop, "make_grad_scaler", lambda *args: torch.amp.GradScaler("cpu", init_scale=1024.0)
    )
    run = setup_run(_config(tiny, tmp_path / "run", val_fraction=0, epochs=2))
    train_one_epoch(run, 0)
    run.scaler.update(new_scale=256.0)
    validate_and_checkpoint(run, _record(1))
    resumed = setup_run(resume_config(tmp_path / "run", {}), resume=True)
    assert resumed.scaler.get_scale() == 256.0
    assert resumed.start_epoch == 1 and resumed.scheduler.last_epoch == 3
    assert torch.equal(resumed.model.projections[0].weight, run.model.projections[0].weight)


def test_resume_applies_the_options_that_may_change(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run")
    moved = tmp_path / "moved"
    shutil.copytree(tiny, moved)
    given = {"epochs": 3, "workers": 1, "device": "cpu", "data_dir": moved, "lr": TrainConfig.lr}
    config = resume_config(tmp_path / "run", given)
    assert (config.epochs, config.workers, config.device) == (3, 1, "cpu")
    assert config.data_dir == str(moved) and config.run_dir == str(tmp_path / "run")
    # An option repeating the run's value (its default learning rate) is fine.
    assert config.dim == 6 and config.lr == TrainConfig.lr


def test_resume_refuses_every_other_option_naming_them(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run")
    with pytest.raises(
        HistoseekError,
        match="^--resume continues the run as configured; these options cannot change on "
        "resume: --lr, --dim, --val-dir$",
    ):
        resume_config(tmp_path / "run", {"lr": 0.5, "dim": 12, "epochs": 2, "val_dir": "v"})
    with pytest.raises(HistoseekError, match="in its own folder; drop -o"):
        resume_config(tmp_path / "run", {"run_dir": tmp_path / "elsewhere"})


def test_resume_refuses_other_classes_and_fewer_epochs(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run", epochs=2)
    other = _tiny_folder(tmp_path / "other", classes=("a", "c"))
    config = resume_config(tmp_path / "run", {"data_dir": other})
    with pytest.raises(HistoseekError, match=r"the data's classes \(a, c\) differ from the run's"):
        setup_run(config, resume=True)
    with pytest.raises(HistoseekError, match="--epochs 0 is fewer than the 1 this run has done"):
        setup_run(resume_config(tmp_path / "run", {"epochs": 0}), resume=True)


def test_resume_cannot_overwrite(tiny, tmp_path):
    config = _finished_run(tiny, tmp_path / "run")
    with pytest.raises(HistoseekError, match="cannot go with --resume"):
        setup_run(config, resume=True, overwrite=True)


# --overwrite replaces a run only once the new one has its first checkpoint.


def _old_run(tiny, run_dir):
    _finished_run(tiny, run_dir)
    (run_dir / "notes.txt").write_text("mine")
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_overwrite_checks_everything_before_touching_the_old_run(tiny, tmp_path):
    before = _old_run(tiny, tmp_path / "run")
    one_class = tmp_path / "one"
    shutil.copytree(tiny / "a", one_class / "a")
    with pytest.raises(HistoseekError, match="at least 2"):
        train(_config(one_class, tmp_path / "run"), overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_an_overwrite_that_fails_mid_run_restores_the_old_run(tiny, tmp_path):
    before = _old_run(tiny, tmp_path / "run")
    val = tmp_path / "val"
    (val / "a").mkdir(parents=True)
    shutil.copy(tiny / "a" / "a0.png", val / "a")
    (val / "a" / "broken.png").write_bytes(b"broken")
    with pytest.raises(HistoseekError, match="validation images can be read"):
        train(_config(tiny, tmp_path / "run", val_dir=str(val)), overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


@pytest.mark.parametrize(
    ("backbone", "size"),
    [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)],
)
def test_no_image_size_means_the_backbones_native_size(tiny, tmp_path, backbone, size):
    config = _config(tiny, tmp_path / "run", backbone=backbone, image_size=None)
    run = setup_run(config, notify=lambda line: None)
    assert run.model.config.image_size == size
    assert run.loader.dataset.transform.size == size


def test_a_successful_overwrite_replaces_only_the_run_files(tiny, tmp_path):
    before = _old_run(tiny, tmp_path / "run")
    train(_config(tiny, tmp_path / "run", seed=1), overwrite=True)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert set(after) == set(before) and after["notes.txt"] == b"mine"
    assert after["model.pt"] != before["model.pt"]
    assert after["train.log"].count(b"training efficientnet_lite0") == 1


def test_the_split_fingerprint_names_files_and_roles_not_where_the_data_lives(tiny, tmp_path):
    splits = prepare_splits(_config(tiny, tmp_path / "run"))
    moved = shutil.copytree(tiny, tmp_path / "moved")
    assert prepare_splits(_config(moved, tmp_path / "run")).fingerprint == splits.fingerprint
    # The same files with one training and one validation image trading places.
    train_paths, val_paths = list(splits.train.paths), list(splits.val.paths)
    train_paths[0], val_paths[0] = val_paths[0], train_paths[0]
    swapped = Splits(replace(splits.train, paths=train_paths), replace(splits.val, paths=val_paths))
    assert swapped.fingerprint != splits.fingerprint
    assert Splits(splits.train, None).fingerprint != splits.fingerprint


def test_resume_refuses_data_whose_split_changed_and_accepts_moved_data(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run", val_fraction=0.34, epochs=2)
    state_before = (tmp_path / "run" / "last.pt").read_bytes()
    moved = shutil.copytree(tiny, tmp_path / "moved")
    resumed = setup_run(resume_config(tmp_path / "run", {"data_dir": moved}), resume=True)
    assert resumed.start_epoch == 1
    shutil.copy(moved / "a" / "a0.png", moved / "a" / "a9.png")
    with pytest.raises(HistoseekError, match="differ from the run's .* restore the data"):
        setup_run(resume_config(tmp_path / "run", {"data_dir": moved}), resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == state_before


def test_a_resume_state_without_a_split_fingerprint_still_resumes(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run", epochs=2)
    state = read_resume_state(tmp_path / "run" / "last.pt")
    assert state.split_fingerprint is not None
    write_resume_state(tmp_path / "run" / "last.pt", replace(state, split_fingerprint=None))
    shutil.copy(tiny / "a" / "a0.png", tiny / "a" / "a9.png")
    assert setup_run(resume_config(tmp_path / "run", {}), resume=True).start_epoch == 1


def test_a_split_fingerprint_that_is_not_text_is_refused(tiny, tmp_path):
    _finished_run(tiny, tmp_path / "run", epochs=2)
    state = read_resume_state(tmp_path / "run" / "last.pt")
    write_resume_state(tmp_path / "run" / "last.pt", replace(state, split_fingerprint=7))
    with pytest.raises(HistoseekError, match="split_fingerprint is not text"):
        read_resume_state(tmp_path / "run" / "last.pt")
