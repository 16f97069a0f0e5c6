"""End to end: `histoseek train` then `evaluate` on a few real tiles, tiny and on the CPU."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from histoseek.cli import cli
from histoseek.model.checkpoint import load_checkpoint
from histoseek.train.run_folder import PreviousRun
from histoseek.train_config import TrainConfig

# For runs validated on a --val-dir, which no --val-fraction goes with.
FAST_FOR_VAL_DIR = [
    "--image-size",
    "64",
    "--dim",
    "48",
    "--batch-size",
    "12",
    "--m-per-class",
    "4",
    "--workers",
    "0",
    "--weights",
    "none",
]
FAST = [*FAST_FOR_VAL_DIR, "--val-fraction", "0.25"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, fragment):
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


@pytest.fixture(scope="module")
def trained_run(kather_small, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    result = run("train", kather_small, "-o", run_dir, "--epochs", "2", *FAST)
    assert result.exit_code == 0, result.output
    return run_dir


def test_train_writes_model_metrics_and_log(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {
        "model.pt",
        "last.pt",
        "metrics.json",
        "train.log",
        "train_config.json",
    }
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for record in metrics["history"]:
        assert record["loss"] > 0 and record["images_per_s"] > 0
        assert 0.0 <= record["val_recall@1"] <= 1.0 and 0.0 <= record["val_score"] <= 1.0
    assert metrics["best"]["epoch"] in (1, 2)
    assert metrics["train_images"] + metrics["val_images"] == 24
    model, class_names, extra = load_checkpoint(trained_run / "model.pt")
    assert class_names == ["01_TUMOR", "04_LYMPHO", "07_ADIPOSE"]
    assert model.config.image_size == 64 and model.config.dim == 48
    assert extra["epoch"] == metrics["best"]["epoch"]
    assert "epoch 2/2" in (trained_run / "train.log").read_text()


def test_checkpoint_loads_with_safe_torch_load(trained_run):
    payload = torch.load(trained_run / "model.pt", weights_only=True)
    assert payload["config"]["backbone"] == TrainConfig.backbone == "efficientnet_lite0"


def test_evaluate_reports_metrics_in_range(trained_run, kather_small):
    result = run(
        "evaluate",
        "--model",
        trained_run / "model.pt",
        "--gallery",
        kather_small,
        "--workers",
        "0",
        "--json",
        "--backend",
        "torch",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document["metrics"]) == {
        "recall@1",
        "recall@2",
        "recall@4",
        "recall@8",
        "map@5",
        "mmv@5",
        "precision@10",
    }
    assert all(0.0 <= v <= 1.0 for v in document["metrics"].values())
    assert document["metrics"]["recall@1"] <= document["metrics"]["recall@8"]
    assert document["gallery_size"] == document["query_size"] == 24


def test_evaluate_with_query_folder_and_groups(trained_run, kather_small, tmp_path):
    query = tmp_path / "query"
    shutil.copytree(kather_small / "01_TUMOR", query / "01_TUMOR")
    result = run(
        "evaluate",
        "--model",
        trained_run / "model.pt",
        "--gallery",
        kather_small,
        "--query",
        query,
        "--workers",
        "0",
        "--json",
        "--recall-k",
        "1,3",
        "--group-regex",
        r"CRC-Prim-HE-\d+",
        "--backend",
        "torch",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["query_size"] == 8
    assert set(document["metrics"]) >= {"recall@1", "recall@3"}
    assert "own group excluded" in document["protocol"]


def test_resume_extends_a_finished_run(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    result = run("train", "--resume", copy, "--epochs", "3", "--workers", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    history = json.loads((copy / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert json.loads((copy / "train_config.json").read_text())["image_size"] == 64


def test_resume_refuses_options_that_cannot_change(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    before = (copy / "last.pt").read_bytes()
    result = run("train", "--resume", copy, "--lr", "0.5", "--dim", "96", "--epochs", "3")
    assert_one_line_error(
        result,
        "--resume continues the run as configured; these options cannot change on resume: "
        "--lr, --dim",
    )
    assert (copy / "last.pt").read_bytes() == before


def test_resume_state_given_as_model_is_named(trained_run):
    result = run("info", "--model", trained_run / "last.pt")
    assert_one_line_error(
        result,
        f"{trained_run / 'last.pt'} is a training resume state (last.pt), not a model; "
        f"use {trained_run / 'model.pt'}",
    )


def test_overwrite_that_fails_keeps_the_previous_model(trained_run, kather_small, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    before = (copy / "model.pt").read_bytes()
    one_class = tmp_path / "one"
    shutil.copytree(kather_small / "01_TUMOR", one_class / "01_TUMOR")
    result = run("train", one_class, "-o", copy, *FAST, "--overwrite")
    assert_one_line_error(result, "at least 2")
    assert (copy / "model.pt").read_bytes() == before


def test_a_killed_overwrite_is_undone_before_the_next_run(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    # What `train --overwrite` killed in its first epoch leaves: the run it replaces set
    # aside, and its own configuration and log.
    aside = PreviousRun.set_aside(copy).aside
    (copy / "train_config.json").write_text("{}")
    (copy / "train.log").write_text("killed\n")
    torchrun = {"WORLD_SIZE": "2", "RANK": "1"}
    refused = CliRunner().invoke(cli, ["train", "--resume", str(copy)], env=torchrun)
    assert_one_line_error(refused, f"{aside} holds the run that a killed `train --overwrite`")
    result = run("train", "--resume", copy, "--epochs", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"restored the run in {copy}" in result.stderr
    history = json.loads((copy / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert not aside.exists()


def test_unreadable_image_is_skipped_and_listed(kather_small, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(kather_small, data)
    (data / "01_TUMOR" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = run(
        "train", data, "-o", tmp_path / "run", "--epochs", "1", *FAST, "--val-fraction", "0"
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert any(path.endswith("broken.png") for path in metrics["skipped_unreadable"])
    assert "val_score" not in metrics["history"][0]


def test_the_training_folder_is_recorded_as_an_absolute_path(kather_small, tmp_path, monkeypatch):
    monkeypatch.chdir(kather_small.parent)
    result = run("train", kather_small.name, "-o", tmp_path / "run", "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["data_dir"] == str(kather_small)
    extra = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["extra"]
    assert extra["train_config"]["data_dir"] == str(kather_small)


def test_a_relative_validation_folder_is_recorded_absolute_and_resumes_from_elsewhere(
    kather_small, tmp_path, monkeypatch
):
    for name in ("01_TUMOR", "04_LYMPHO"):
        (tmp_path / "val" / name).mkdir(parents=True)
        for tile in sorted((kather_small / name).iterdir())[:2]:
            shutil.copy(tile, tmp_path / "val" / name / tile.name)
    monkeypatch.chdir(tmp_path)
    result = run(
        "train", kather_small, "-o", "run", "--epochs", "1", *FAST_FOR_VAL_DIR, "--val-dir", "val"
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["val_dir"] == str(tmp_path / "val")
    monkeypatch.chdir(tmp_path / "run")
    result = run("train", "--resume", ".", "--epochs", "2", "--val-dir", "../val")
    assert result.exit_code == 0, result.output


def test_existing_run_is_not_overwritten(trained_run):
    before = (trained_run / "model.pt").read_bytes()
    result = run("train", trained_run.parent, "-o", trained_run, *FAST)
    assert_one_line_error(result, "--overwrite")
    assert (trained_run / "model.pt").read_bytes() == before


@pytest.mark.parametrize("case", ["missing", "empty", "single-class"])
def test_bad_data_folders_fail_with_one_line(case, kather_small, tmp_path):
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
    if case == "single-class":
        shutil.copytree(kather_small / "01_TUMOR", data / "01_TUMOR")
    result = run("train", data, "-o", tmp_path / "run", *FAST)
    fragment = {"missing": "not a folder", "empty": "no images", "single-class": "at least 2"}
    assert_one_line_error(result, fragment[case])
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_validation_folder_sharing_training_images_is_refused(kather_small, tmp_path):
    linked = tmp_path / "linked"
    linked.symlink_to(kather_small, target_is_directory=True)
    for val_dir in (kather_small, linked):
        result = run(
            "train", kather_small, "-o", tmp_path / "run", *FAST_FOR_VAL_DIR, "--val-dir", val_dir
        )
        assert_one_line_error(result, f"--val-dir {val_dir} shares")
        assert "validation must be images that training never sees" in result.stderr
        assert not (tmp_path / "run").exists()


def test_the_log_says_how_batches_are_made_up(trained_run):
    # --batch-size 12 of --m-per-class 4: 3 classes of 4.
    heading = (trained_run / "train.log").read_text().splitlines()[0]
    assert "batches of 3 classes × 4 images per process" in heading


def test_a_batch_too_small_for_two_classes_is_refused(kather_small, tmp_path):
    result = run("train", kather_small, "-o", tmp_path / "run", *FAST, "--batch-size", "7")
    assert_one_line_error(
        result,
        "--batch-size 7 holds fewer than 2 classes of --m-per-class 4 images per process: "
        "give --batch-size 8 or more, or a smaller --m-per-class",
    )
    assert not (tmp_path / "run").exists()


def test_stain_jitter_above_one_is_refused(kather_small, tmp_path):
    result = run("train", kather_small, "-o", tmp_path / "run", *FAST, "--stain-jitter", "1.5")
    assert_one_line_error(result, "--stain-jitter")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "option, field, attribute, value",
    [("--blur", "blur", "blur", 1.5), ("--hsv-jitter", "hsv_jitter", "hsv_strength", 0.3)],
)
def test_an_augmentation_option_is_trained_with_and_kept_in_the_run(
    kather_small, tmp_path, monkeypatch, option, field, attribute, value
):
    from histoseek.data import transforms

    seen = []
    original = transforms.TrainTransform.__init__

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(getattr(self, attribute))

    monkeypatch.setattr(transforms.TrainTransform, "__init__", recording_init)
    run_dir = tmp_path / "run"
    result = run("train", kather_small, "-o", run_dir, "--epochs", "1", option, str(value), *FAST)
    assert result.exit_code == 0, result.output
    assert seen == [value]
    assert json.loads((run_dir / "train_config.json").read_text())[field] == value
    _, _, extra = load_checkpoint(run_dir / "model.pt")
    assert extra["train_config"][field] == value


@pytest.mark.parametrize("option, value", [("--blur", "9"), ("--hsv-jitter", "1.5")])
def test_an_augmentation_beyond_its_range_is_refused(kather_small, tmp_path, option, value):
    result = run("train", kather_small, "-o", tmp_path / "run", *FAST, option, value)
    assert_one_line_error(result, option)
    assert not (tmp_path / "run").exists()


def test_a_weight_average_is_trained_kept_and_resumed(kather_small, tmp_path):
    run_dir = tmp_path / "run"
    result = run(
        "train", kather_small, "-o", run_dir, "--epochs", "1", "--ema-epochs", "0.5", *FAST
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "train_config.json").read_text())["ema_epochs"] == 0.5
    _, _, extra = load_checkpoint(run_dir / "model.pt")
    assert extra["train_config"]["ema_epochs"] == 0.5
    resumed = run("train", "--resume", run_dir, "--epochs", "2")
    assert resumed.exit_code == 0, resumed.output
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]

    negative = run("train", kather_small, "-o", tmp_path / "other", *FAST, "--ema-epochs", "-1")
    assert_one_line_error(negative, "--ema-epochs")
    assert not (tmp_path / "other").exists()


def test_a_diverging_run_stops_in_one_line_before_saving_a_model(
    kather_small, tmp_path, monkeypatch
):
    from histoseek.losses import BatchHardTripletLoss

    original = BatchHardTripletLoss.forward
    monkeypatch.setattr(
        BatchHardTripletLoss, "forward", lambda self, *a: original(self, *a) * float("nan")
    )
    result = run("train", kather_small, "-o", tmp_path / "run", "--epochs", "1", *FAST)
    assert result.exit_code != 0
    # The run's heading, then the error.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("training "), result.stderr
    assert "training diverged in epoch 1" in lines[1] and "--lr" in lines[1]
    assert not (tmp_path / "run" / "model.pt").exists()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_colour_groups_choose_the_validation_images(kather_small, tmp_path):
    run_dir = tmp_path / "run"
    result = run("train", kather_small, "-o", run_dir, "--epochs", "1", "--colour-groups", *FAST)
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "train_config.json").read_text())["colour_groups"] is True
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_images"] + metrics["val_images"] == 24 and metrics["val_images"] > 0

    both = run("train", kather_small, "-o", tmp_path / "other", "--colour-groups",
               "--group-regex", "x", *FAST)  # fmt: skip
    assert_one_line_error(both, "give --group-regex or --colour-groups, not both")
    assert not (tmp_path / "other" / "model.pt").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--val-fraction", "0.25"], "--val-fraction holds out part of DATA_DIR; it has no use "
         "with --val-dir"),
        (["--group-regex", "("], "--group-regex splits DATA_DIR; it has no use with --val-dir"),
    ],
)  # fmt: skip
def test_options_that_split_data_dir_are_refused_with_a_validation_folder(
    kather_small, tmp_path, options, message
):
    val = tmp_path / "val"
    shutil.copytree(kather_small / "01_TUMOR", val / "01_TUMOR")
    result = run(
        "train", kather_small, "-o", tmp_path / "run", *FAST_FOR_VAL_DIR, "--val-dir", val,
        *options,
    )  # fmt: skip
    assert_one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_a_group_regex_without_a_validation_fraction_is_refused(kather_small, tmp_path):
    result = run("train", kather_small, "-o", tmp_path / "run", *FAST_FOR_VAL_DIR,
                 "--val-fraction", "0", "--group-regex", "HE-\\d+")  # fmt: skip
    assert_one_line_error(result, "--group-regex chooses validation images; give --val-fraction")
    assert not (tmp_path / "run").exists()


def test_validation_folder_with_one_image_is_refused(kather_small, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(kather_small / "01_TUMOR", val / "01_TUMOR")
    for extra in sorted((val / "01_TUMOR").iterdir())[1:]:
        extra.unlink()
    result = run("train", kather_small, "-o", tmp_path / "run", *FAST_FOR_VAL_DIR, "--val-dir", val)
    assert_one_line_error(result, "validation needs at least 2")
    assert not (tmp_path / "run").exists()


def test_resume_without_state_fails(tmp_path):
    assert_one_line_error(run("train", "--resume", tmp_path), "nothing to resume")


def test_corrupt_checkpoint_fails_with_one_line(tmp_path, kather_small):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"definitely not a checkpoint")
    assert_one_line_error(
        run("evaluate", "--model", bad, "--gallery", kather_small), "is not a PyTorch checkpoint"
    )
    assert_one_line_error(run("info", "--model", bad), "is not a PyTorch checkpoint")


def test_info_reports_a_trained_model(trained_run):
    result = run("info", "--model", trained_run / "model.pt", "--image-size", "64")
    assert result.exit_code == 0, result.output
    assert "efficientnet_lite0" in result.stdout and "01_TUMOR" in result.stdout


def test_info_reproduces_reference_figures():
    result = run(
        "info", "--backbone", "resnet50", "--gd-config", "SG", "--dim", "1536", "--classes", "98"
    )
    assert result.exit_code == 0, result.output
    assert "26.86M" in result.stdout and "10.68G" in result.stdout


def test_training_under_torchrun_with_two_processes(kather_small, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "-m",
        "histoseek",
        "train",
        str(kather_small),
        "-o",
        str(run_dir),
        "--epochs",
        "1",
        *FAST,
        # 2 classes of 4 in each process's batch.
        "--batch-size",
        "16",
    ]
    # A session of its own, so a hang can be killed with every worker torchrun started.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("torchrun training did not finish within 300 s")
    assert process.returncode == 0, stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["history"]) == 1
    assert "2 process(es)" in (run_dir / "train.log").read_text()
    load_checkpoint(run_dir / "model.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_with_amp(kather_small, tmp_path):
    result = run(
        "train",
        kather_small,
        "-o",
        tmp_path / "run",
        "--epochs",
        "1",
        *FAST,
        "--device",
        "cuda",
        "--amp",
    )
    assert result.exit_code == 0, result.output
    assert "device cuda" in (tmp_path / "run" / "train.log").read_text()
    model, _, _ = load_checkpoint(tmp_path / "run" / "model.pt")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cuda_request_without_gpu_fails_with_one_line(kather_small, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = run("train", kather_small, "-o", tmp_path / "run", *FAST, "--device", "cuda")
    assert_one_line_error(result, "no CUDA GPU")
