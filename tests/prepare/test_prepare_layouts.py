"""Finding images, labels, groups and official splits in each dataset layout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from synthetic_slides import crc_tree, he_image, save

from histoseek.errors import HistoseekError
from histoseek.prepare.layouts import discover


def test_bach_labels_from_csv_win_and_disagreement_is_reported(bach_tree):
    found = discover("bach", bach_tree)
    assert found.classes == ["Normal", "Benign", "InSitu", "Invasive"]
    assert len(found.images) == 8  # stray csv, xml and .DS_Store files are not images
    by_name = {image.path.name: image for image in found.images}
    assert by_name["b001.TIF"].label == "Normal"  # folder says Benign, the CSV says Normal
    assert Counter(image.label for image in found.images) == {
        "Normal": 3,
        "Benign": 1,
        "InSitu": 2,
        "Invasive": 2,
    }
    assert any("b001.TIF (folder Benign, CSV Normal)" in note for note in found.notes)
    assert len({image.group for image in found.images}) == 8
    assert not found.official_split


def test_bach_without_csv_uses_folders(bach_tree):
    next(bach_tree.rglob("microscopy_ground_truth.csv")).unlink()
    found = discover("bach", bach_tree / "ICIAR2018_BACH_Challenge" / "Photos")
    assert Counter(image.label for image in found.images)["Benign"] == 2
    assert found.notes == []


def test_bracs_official_split_and_slide_groups(bracs_tree):
    found = discover("bracs", bracs_tree)
    assert found.official_split
    assert found.classes == ["0_N", "5_DCIS", "6_IC"]
    assert Counter(image.split for image in found.images) == {"train": 9, "val": 3, "test": 6}
    assert {image.group for image in found.images if image.split == "val"} == {"BRACS_4"}
    assert found.notes == []


def test_bracs_reports_a_slide_in_two_official_splits(bracs_tree):
    root = bracs_tree / "BRACS_RoI" / "latest_version"
    save(root / "test" / "0_N" / "BRACS_1_N_9.png", he_image(64, 64))
    found = discover("bracs", bracs_tree / "BRACS_RoI")
    assert any("BRACS_1" in note and "more than one split" in note for note in found.notes)


def test_bracs_images_without_a_slide_id_are_each_their_own_group(bracs_tree):
    root = bracs_tree / "BRACS_RoI" / "latest_version"
    # One name in two splits: two images, not one group that straddles the splits.
    save(root / "train" / "0_N" / "extra.png", he_image(64, 64))
    save(root / "test" / "6_IC" / "extra.png", he_image(64, 64, seed=1))
    found = discover("bracs", root)
    groups = {image.relative: image.group for image in found.images}
    assert groups["train/0_N/extra.png"] == "train/0_N/extra.png"
    assert groups["test/6_IC/extra.png"] == "test/6_IC/extra.png"
    assert "2 image name(s) carry no BRACS_<id> slide id" in " ".join(found.notes)
    assert not any("more than one split" in note for note in found.notes)


@pytest.mark.parametrize(
    "folders", [("1_normal", "2_low_grade", "3_high_grade"), ("Normal", "Low", "High")]
)
def test_crc_accepts_both_spellings(tmp_path, folders):
    crc_tree(tmp_path / "crc" / "CRC_Dataset", folders)
    found = discover("crc", tmp_path / "crc")
    assert found.classes == ["normal", "low_grade", "high_grade"]
    assert Counter(image.label for image in found.images) == {
        "normal": 3,
        "low_grade": 3,
        "high_grade": 3,
    }


def test_a_folder_that_cannot_be_listed_is_passed_over_in_the_search_else_one_line(
    tmp_path, monkeypatch
):
    crc_tree(tmp_path / "crc" / "CRC_Dataset", ("1_normal", "2_low_grade", "3_high_grade"))
    (tmp_path / "crc" / "00locked").mkdir()  # sorted first, as lost+found can be
    listing = Path.iterdir
    locked = {"00locked"}

    def iterdir(self):
        if self.name in locked:
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert len(discover("crc", tmp_path / "crc").images) == 9
    locked.add("CRC_Dataset")
    with pytest.raises(HistoseekError) as refused:
        discover("crc", tmp_path / "crc" / "CRC_Dataset")
    assert str(refused.value) == (
        f"cannot list {tmp_path / 'crc' / 'CRC_Dataset'}: Permission denied"
    )


def test_crc_refuses_two_folders_for_one_grade(tmp_path):
    root = crc_tree(tmp_path / "crc", ("1_normal", "2_low_grade", "3_high_grade"))
    save(root / "Normal" / "extra.png", he_image(64, 64))
    with pytest.raises(HistoseekError, match="keep one of them"):
        discover("crc", root)


def test_folder_classes_groups_and_regex(folder_tree):
    save(folder_tree / "loose.png", he_image(64, 64))
    found = discover("folder", folder_tree)
    assert found.classes == ["stroma", "tumour"]
    assert len(found.images) == 16
    assert len({image.group for image in found.images}) == 16
    assert any("directly in SRC" in note for note in found.notes)
    grouped = discover("folder", folder_tree, group_regex=r"slide\d+")
    assert len({image.group for image in grouped.images}) == 8


def test_class_folders_differing_only_in_case_are_refused(folder_tree):
    save(folder_tree / "Tumour" / "a.png", he_image(64, 64))
    with pytest.raises(HistoseekError) as refused:
        discover("folder", folder_tree)
    assert str(refused.value) == (
        f"{folder_tree} holds folders 'Tumour' and 'tumour', whose names differ only in case; "
        "merge or rename them"
    )


def test_a_group_regex_matching_some_paths_is_noted(folder_tree):
    found = discover("folder", folder_tree, group_regex=r"slide0\d")
    assert len({image.group for image in found.images}) == 4 + 8
    assert any("matches 8 of the 16 paths below SRC; the other 8" in n for n in found.notes)


def test_a_group_regex_matching_no_path_is_refused(folder_tree):
    with pytest.raises(HistoseekError, match="matches none of the 16 paths below SRC"):
        discover("folder", folder_tree, group_regex=r"patient\d+")


def test_layout_without_its_folders_is_refused(tmp_path):
    save(tmp_path / "x" / "a.png", he_image(64, 64))
    with pytest.raises(HistoseekError, match="no BACH class folders"):
        discover("bach", tmp_path)
    with pytest.raises(HistoseekError, match="no images found"):
        discover("folder", tmp_path / "x")
