"""One --max-pixels for every command that decodes images: the same option, default and check."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from histoseek.cli import cli
from histoseek.prepare.defaults import DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("command", ["index", "query", "evaluate", "train", "prepare"])
def test_every_decoding_command_has_the_same_max_pixels_option(command):
    result = CliRunner().invoke(cli, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # help lines wrap at any space
    assert "--max-pixels INTEGER RANGE" in text
    assert f"[default: {DEFAULT_MAX_PIXELS}; x>=1]" in text


def test_train_decodes_under_the_limit_it_is_given(tmp_path, monkeypatch):
    import histoseek.data.images
    import histoseek.train

    seen = []
    monkeypatch.setattr(
        histoseek.train,
        "train",
        lambda config, **options: seen.append(histoseek.data.images._max_pixels),
    )
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
    args = ["train", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--max-pixels", "4096"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen == [4096]
    assert histoseek.data.images._max_pixels == DEFAULT_MAX_PIXELS  # restored afterwards


def _index_command(tmp_path) -> list[str]:
    """`index` of a 32×32 and an 80×80 image with a small checkpoint, into tmp_path/idx."""
    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import save_checkpoint

    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, build_model(ModelConfig(num_classes=2, image_size=64, dim=48)), [])
    source = tmp_path / "images" / "a"
    source.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, size in (("small.png", 32), ("large.png", 80)):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(source / name)
    args = ["index", str(source.parent), "--model", str(checkpoint), "--backend", "torch"]
    return [*args, "--workers", "0", "-o", str(tmp_path / "idx")]


LARGE_SKIPPED = "a/large.png\t80×80 = 6,400 pixels is above the limit of 5,000 (--max-pixels)"


def test_index_skips_images_above_the_limit_with_the_reason(tmp_path):
    result = CliRunner().invoke(cli, [*_index_command(tmp_path), "--max-pixels", "5000"])
    assert result.exit_code == 0, result.output
    assert "indexed 1 image(s)" in result.stderr
    assert (tmp_path / "idx" / "skipped.txt").read_text().splitlines()[1:] == [LARGE_SKIPPED]


def test_an_incremental_index_holds_reused_images_to_the_limit_too(tmp_path):
    command = _index_command(tmp_path)
    assert CliRunner().invoke(cli, command).exit_code == 0
    result = CliRunner().invoke(cli, [*command, "--max-pixels", "5000"])
    assert result.exit_code == 0, result.output
    assert "indexed 1 image(s)" in result.stderr
    assert (tmp_path / "idx" / "skipped.txt").read_text().splitlines()[1:] == [LARGE_SKIPPED]


def test_prepare_and_slide_reading_decode_up_to_their_own_max_pixels(tmp_path, monkeypatch):
    import histoseek.data.images
    from histoseek.slide.reader import open_slide

    # A process-wide limit below these images: their own --max-pixels must govern instead.
    monkeypatch.setattr(histoseek.data.images, "_max_pixels", 1000)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i in range(2):
            (tmp_path / "src" / name).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(60, 200, (128, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "src" / name / f"{i}.png")
    args = ["prepare", "folder", str(tmp_path / "src"), "-o", str(tmp_path / "out")]
    options = ["--patch-size", "64", "--min-tissue", "0", "--workers", "0"]
    result = CliRunner().invoke(cli, [*args, *options, "--max-pixels", "20000"])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.stdout
    with open_slide(tmp_path / "src" / "a" / "0.png", slide_mpp=0.5, max_pixels=20_000) as slide:
        assert slide.dimensions == (128, 128)
