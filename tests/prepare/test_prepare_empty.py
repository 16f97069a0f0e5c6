"""A class or a split that comes out of prepare empty is named, with the option that changes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from synthetic_slides import truncated_png

from histoseek.cli import cli
from histoseek.data.synth import write_synthetic_set
from histoseek.prepare.prepare_dataset import PrepareOptions, prepare_dataset


def notes_of(src: Path, out: Path, **options) -> list[str]:
    options.setdefault("patch_size", 128)
    summary = prepare_dataset(src, out, PrepareOptions(layout="folder", **options), workers=0)
    return summary.notes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Two 256 px synthetic images of each class: adipose and background are mostly white."""
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_set(root, per_class=2, size=256, classes=["adipose", "background", "mucosa"])
    return root


def test_prepare_names_the_empty_classes_and_min_tissue(synthetic, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["prepare", "folder", str(synthetic), "-o", str(tmp_path / "out"), "--patch-size"]
        + ["128", "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    notes = result.stderr.splitlines()  # one line each, however long
    for name in ("adipose", "background"):
        assert (
            f"note: class {name} gave no patch: every patch had less than 50% tissue "
            "(--min-tissue 0.5); lower --min-tissue to keep it"
        ) in notes
    assert "class mucosa gave no patch" not in result.stderr


def test_no_warning_when_every_class_and_split_has_patches(synthetic, tmp_path):
    assert notes_of(synthetic, tmp_path / "out", min_tissue=0.0) == []


def test_a_split_without_source_images_names_split(tmp_path):
    src = tmp_path / "src"
    write_synthetic_set(src, per_class=1, size=256, classes=["mucosa", "stroma"])
    notes = notes_of(src, tmp_path / "out", min_tissue=0.0)
    assert notes == [
        "split test got no source image: 2 group(s) of images cannot fill the 3 splits of "
        "--split 0.7,0.15,0.15; give fewer --split fractions, or more images"
    ]
    one_group = notes_of(src, tmp_path / "grouped", min_tissue=0.0, group_regex="synthetic")
    assert one_group == [
        "splits val, test got no source image: 1 group(s) of images cannot fill the 3 splits "
        "of --split 0.7,0.15,0.15; give fewer --split fractions, or more images"
    ]
    # A split given no share on purpose is not warned about.
    assert notes_of(src, tmp_path / "two", min_tissue=0.0, split="0.5,0.5,0") == []


def test_a_split_whose_images_lost_every_patch_names_min_tissue(tmp_path):
    src = tmp_path / "src"
    write_synthetic_set(src, per_class=1, size=256, classes=["adipose", "mucosa"])
    notes = notes_of(src, tmp_path / "out", split="0.5,0.5")
    assert "class adipose gave no patch: every patch had less than 50% tissue" in notes[0]
    split_notes = [note for note in notes if note.startswith("split ")]
    assert len(split_notes) == 1
    assert (
        "gave no patch: every patch had less than 50% tissue (--min-tissue 0.5)" in (split_notes[0])
    )


def test_images_smaller_than_a_patch_name_patch_size(tmp_path):
    src = tmp_path / "src"
    write_synthetic_set(src, per_class=2, size=256, classes=["mucosa"])
    write_synthetic_set(tmp_path / "small", per_class=2, size=96, classes=["stroma"])
    (tmp_path / "small" / "stroma").rename(src / "stroma")
    notes = notes_of(src, tmp_path / "out", min_tissue=0.0, split="1", scale=0.5)
    assert notes == [
        "class stroma gave no patch: its images are smaller than one 128×128 patch after "
        "--scale 0.5 (--patch-size 128); lower --patch-size to keep it"
    ]


def test_a_class_of_unreadable_images_points_to_skipped_list(tmp_path):
    src = tmp_path / "src"
    write_synthetic_set(src, per_class=2, size=256, classes=["mucosa"])
    for i in range(2):
        truncated_png(src / "stroma" / f"broken{i}.png")
    notes = notes_of(src, tmp_path / "out", min_tissue=0.0, split="1")
    assert notes == [
        "class stroma gave no patch: all 2 of its image(s) are unreadable (listed in skipped.txt)"
    ]
