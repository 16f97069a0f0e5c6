"""Tests for the synthetic H&E-like patch generator and the `histoseek synth` command."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from histoseek.cli import cli
from histoseek.data import synth
from histoseek.data.folder import scan_labelled_folder
from histoseek.data.synth import TISSUE_CLASSES, render_tissue, write_synthetic_set
from histoseek.errors import HistoseekError


def _pixels(tissue: str, size: tuple[int, int], seed: int | list[int]) -> np.ndarray:
    return np.asarray(render_tissue(tissue, size, np.random.default_rng(seed)))


def _colour_histogram(pixels: np.ndarray) -> np.ndarray:
    levels = pixels.reshape(-1, 3) // 64
    counts = np.bincount(levels[:, 0] * 16 + levels[:, 1] * 4 + levels[:, 2], minlength=64)
    return counts / counts.sum()


def _relative_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


@pytest.mark.parametrize("tissue", TISSUE_CLASSES)
def test_render_tissue_gives_rgb_image_of_requested_width_and_height(tissue: str) -> None:
    image = render_tissue(tissue, (40, 24), np.random.default_rng(0))
    assert image.mode == "RGB"
    assert image.size == (40, 24)


def test_render_tissue_is_deterministic_for_a_generator_state() -> None:
    first = _pixels("mucosa", (64, 64), 5)
    assert np.array_equal(first, _pixels("mucosa", (64, 64), 5))
    assert not np.array_equal(first, _pixels("mucosa", (64, 64), 6))


def test_render_tissue_draws_a_large_non_square_slide_with_fixed_texture_scale() -> None:
    pixels = _pixels("lymphocytes", (2048, 1536), 0)
    assert pixels.shape == (1536, 2048, 3)
    # Nuclei keep their pixel size, so every region of a large image is textured, not stretched.
    for tile in (pixels[:128, :128], pixels[-128:, -128:], pixels[700:828, 1000:1128]):
        assert tile.std() > 20


def test_stain_colours_look_like_haematoxylin_and_eosin() -> None:
    nuclei = _pixels("lymphocytes", (96, 96), 1).reshape(-1, 3).astype(int)
    darkest = nuclei[nuclei.sum(axis=1) < np.percentile(nuclei.sum(axis=1), 10)].mean(axis=0)
    red, green, blue = darkest
    assert blue > red > green  # blue-purple haematoxylin

    red, green, blue = _pixels("stroma", (96, 96), 1).reshape(-1, 3).mean(axis=0)
    assert red > blue > green  # pink eosin

    glass = _pixels("background", (96, 96), 1)
    assert glass.mean() > 225 and glass.std() < 10


@pytest.mark.parametrize("tissue", TISSUE_CLASSES)
def test_images_of_one_class_vary(tissue: str) -> None:
    first, second = (_pixels(tissue, (64, 64), [9, number]) for number in range(2))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 1


def test_colour_histogram_nearest_centroid_tells_the_classes_apart() -> None:
    centroids = {
        tissue: np.mean([_colour_histogram(_pixels(tissue, (96, 96), [1, i])) for i in range(6)], 0)
        for tissue in TISSUE_CLASSES
    }
    correct = 0
    for tissue in TISSUE_CLASSES:
        for number in range(10):
            held_out = _colour_histogram(_pixels(tissue, (96, 96), [2, number]))
            guess = min(centroids, key=lambda name: np.abs(centroids[name] - held_out).sum())
            correct += guess == tissue
    accuracy = correct / (10 * len(TISSUE_CLASSES))
    assert accuracy >= 0.85  # chance is 0.2


def test_render_tissue_refuses_unknown_class_and_tiny_size() -> None:
    with pytest.raises(HistoseekError, match="unknown tissue class 'bone'"):
        render_tissue("bone", (32, 32), np.random.default_rng(0))
    with pytest.raises(HistoseekError, match="16 to 8192 pixels a side"):
        render_tissue("stroma", (32, 15), np.random.default_rng(0))


def test_write_synthetic_set_lays_out_labelled_named_files(tmp_path: Path) -> None:
    out = tmp_path / "set"
    written = write_synthetic_set(out, per_class=3, size=32, seed=4, classes=["stroma", "adipose"])

    expected = [
        f"{name}/synthetic_{name}_{i:04d}.png" for name in ("stroma", "adipose") for i in range(3)
    ]
    assert [str(path.relative_to(out)) for path in written] == expected
    assert _relative_files(out) == sorted([*expected, "SYNTHETIC.md"])
    for path in written:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))

    labelled = scan_labelled_folder(out)
    assert labelled.class_names == ["adipose", "stroma"]
    assert [labelled.class_names[label] for label in labelled.labels] == [
        path.parent.name for path in labelled.paths
    ]

    notes = (out / "SYNTHETIC.md").read_text(encoding="utf-8")
    assert "not real tissue" in notes
    assert "--per-class 3 --size 32 --height 32 --classes stroma,adipose --seed 4" in notes


def test_write_synthetic_set_is_byte_identical_for_same_options(tmp_path: Path) -> None:
    first = write_synthetic_set(tmp_path / "a", per_class=2, size=24, seed=7)
    second = write_synthetic_set(tmp_path / "b", per_class=2, size=24, seed=7)
    other = write_synthetic_set(tmp_path / "c", per_class=2, size=24, seed=8)
    for a, b, c in zip(first, second, other, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
    notes = [(tmp_path / name / "SYNTHETIC.md").read_bytes() for name in "ab"]
    assert notes[0] == notes[1]


def test_an_image_depends_only_on_seed_class_and_number(tmp_path: Path) -> None:
    everything = write_synthetic_set(tmp_path / "all", per_class=3, size=24, seed=1)
    stroma_only = write_synthetic_set(
        tmp_path / "one", per_class=1, size=24, seed=1, classes=["stroma"]
    )
    matching = [path for path in everything if path.name == stroma_only[0].name]
    assert matching[0].read_bytes() == stroma_only[0].read_bytes()


def test_write_synthetic_set_writes_non_square_images(tmp_path: Path) -> None:
    (path,) = write_synthetic_set(
        tmp_path / "wide", per_class=1, size=300, height=120, classes=["mucosa"]
    )
    with Image.open(path) as image:
        assert image.size == (300, 120)


def test_a_failed_run_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = []

    def render_then_fail(tissue: str, size: tuple[int, int], rng: np.random.Generator):
        if len(rendered) == 3:
            raise RuntimeError("disk on fire")
        rendered.append(tissue)
        return Image.new("RGB", size)

    monkeypatch.setattr(synth, "render_tissue", render_then_fail)
    with pytest.raises(RuntimeError):
        write_synthetic_set(tmp_path / "set", per_class=2, size=16)
    assert len(rendered) == 3
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_writes_the_set_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = CliRunner().invoke(
        cli,
        ["synth", str(out), "--per-class", "2", "--size", "40", "--height", "20"]
        + ["--classes", "lymphocytes, background", "--seed", "3"],
    )
    assert result.exit_code == 0, result.output
    assert "Wrote 4 synthetic images (2 classes x 2, 40x20 px, seed 3)" in result.output
    assert _relative_files(out) == [
        "SYNTHETIC.md",
        "background/synthetic_background_0000.png",
        "background/synthetic_background_0001.png",
        "lymphocytes/synthetic_lymphocytes_0000.png",
        "lymphocytes/synthetic_lymphocytes_0001.png",
    ]
    with Image.open(out / "background" / "synthetic_background_0000.png") as image:
        assert image.size == (40, 20)
    reference = write_synthetic_set(
        tmp_path / "library", per_class=2, size=40, height=20, seed=3, classes=["lymphocytes"]
    )
    assert reference[1].read_bytes() == (out / "lymphocytes" / reference[1].name).read_bytes()


def test_cli_synth_defaults_to_every_class_twenty_each_at_224(tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = CliRunner().invoke(cli, ["synth", str(out), "--classes", "background"])
    assert result.exit_code == 0, result.output
    images = sorted((out / "background").iterdir())
    assert len(images) == 20
    with Image.open(images[0]) as image:
        assert image.size == (224, 224)
    assert "--seed 0" in (out / "SYNTHETIC.md").read_text(encoding="utf-8")


def test_cli_synth_replaces_an_earlier_set_only_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "set"
    args = ["synth", str(out), "--per-class", "1", "--size", "16"]
    assert CliRunner().invoke(cli, [*args, "--classes", "adipose"]).exit_code == 0
    before = _relative_files(out)

    refused = CliRunner().invoke(cli, [*args, "--classes", "stroma"])
    assert refused.exit_code != 0
    assert refused.output.strip().splitlines() == [
        f"Error: {out} already holds a synthetic set; use --overwrite to replace it"
    ]
    assert _relative_files(out) == before

    replaced = CliRunner().invoke(cli, [*args, "--classes", "stroma", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert _relative_files(out) == ["SYNTHETIC.md", "stroma/synthetic_stroma_0000.png"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_cli_synth_never_replaces_a_folder_of_other_files(tmp_path: Path, overwrite) -> None:
    out = tmp_path / "documents"
    out.mkdir()
    keep = out / "precious.txt"
    keep.write_text("mine")
    args = ["synth", str(out), "--per-class", "1", "--size", "16", *overwrite]

    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code != 0
    assert refused.output.strip().splitlines() == [
        f"Error: {out} holds files that histoseek synth did not write (it has no "
        "SYNTHETIC.md), so it will not replace it, --overwrite or not; choose another output "
        "folder"
    ]
    assert _relative_files(out) == ["precious.txt"] and keep.read_text() == "mine"


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_cli_synth_never_replaces_a_file(tmp_path: Path, overwrite) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    refused = CliRunner().invoke(cli, ["synth", str(out), "--per-class", "1", *overwrite])
    assert refused.exit_code != 0
    assert refused.output.strip().splitlines() == [
        f"Error: {out} exists and is not a folder; choose another output folder"
    ]
    assert out.read_text() == "mine"


def test_cli_synth_puts_back_what_a_killed_run_left_and_refuses_a_second_run(
    tmp_path: Path,
) -> None:
    from histoseek.fsutil import dir_lock

    out = tmp_path / "set"
    args = ["synth", str(out), "--per-class", "1", "--size", "16", "--classes", "stroma"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = _relative_files(out)
    # Killed between moving the old set aside and moving the new one in (pid 2**22 + 1 is
    # beyond Linux's range, so no live run), and another killed run's half-written folder.
    os.replace(out, tmp_path / f".set.{2**22 + 1}-abc.old")
    (tmp_path / f".set.{2**22 + 2}-def.tmp").mkdir()

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "note: restored" in result.output and "the previous copy" in result.output
    assert "note: removed 1 temporary folder(s)" in result.output
    assert "already holds a synthetic set" in result.output
    assert _relative_files(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["set"]

    with dir_lock(out):
        refused = CliRunner().invoke(cli, [*args, "--overwrite"])
    assert refused.exit_code == 1
    assert "is being written by another histoseek synth run" in refused.output
    assert _relative_files(out) == before


def test_cli_synth_accepts_an_existing_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    result = CliRunner().invoke(cli, ["synth", str(out), "--per-class", "1", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert len(list(out.rglob("*.png"))) == len(TISSUE_CLASSES)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--classes", "stroma,bone"], "unknown tissue class 'bone'"),
        (["--classes", "stroma,"], "unknown tissue class ''"),
        (["--size", "15"], "16 to 8192 pixels a side, got 15x15"),
        (["--height", "8"], "16 to 8192 pixels a side, got 224x8"),
        (["--size", "8193"], "16 to 8192 pixels a side, got 8193x8193"),
        (["--per-class", "0"], "need at least 1 image per class, got 0"),
        (["--seed", "-1"], "'--seed': -1 is not in the range 0<=x<=2147483647"),
    ],
)
def test_cli_synth_rejects_bad_options_in_one_line(
    tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "set"
    result = CliRunner().invoke(cli, ["synth", str(out), *options])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()
