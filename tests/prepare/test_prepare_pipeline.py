"""End to end: `histoseek prepare` on synthetic copies of each layout, and on real Kather tiles."""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from synthetic_slides import crc_tree, he_image, save, truncated_png

from histoseek.cli import cli
from histoseek.data.folder import list_images, scan_labelled_folder

KATHER = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kather2016"


def run(*args: object) -> object:
    return CliRunner().invoke(cli, ["prepare", *map(str, args)])


def ok(*args: object) -> list[dict]:
    """Run prepare, expect success, return the manifest rows (checked against the files)."""
    result = run(*args)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("-o") + 1])
    with (out / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    written = {path.relative_to(out).as_posix() for path in list_images(out)}
    assert written == {row["path"] for row in rows}
    for row in rows:
        split, label, name = row["path"].split("/")
        assert (split, label) == (row["split"], row["label"])
        assert name.endswith(f"_{row['x']}_{row['y']}.png")
    return rows


def fails(*args: object) -> str:
    """Run prepare, expect one clear error line and exit code 1; return that line."""
    result = run(*args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def splits_of(rows: list[dict], key: str) -> dict[str, set[str]]:
    found = defaultdict(set)
    for row in rows:
        found[row[key]].add(row["split"])
    return found


def test_bach_patches_labels_and_background_dropped(bach_tree, tmp_path):
    out = tmp_path / "out"
    rows = ok("bach", bach_tree, "-o", out, "--patch-size", 64, "--workers", 0)
    # 8 images of 256×192, tissue in the left 128 columns: 2×3 tissue patches each.
    assert len(rows) == 8 * 6
    assert all(int(row["x"]) < 128 and float(row["tissue_fraction"]) == 1.0 for row in rows)
    assert Counter(row["label"] for row in rows) == {
        "Normal": 18,
        "Benign": 6,
        "InSitu": 12,
        "Invasive": 12,
    }
    assert {row["label"] for row in rows if row["source"].endswith("b001.TIF")} == {"Normal"}
    assert all(len(splits) == 1 for splits in splits_of(rows, "group").values())
    assert {row["split"] for row in rows} == {"train", "val", "test"}
    record = json.loads((out / "prepare.json").read_text())
    assert record["layout"] == "bach" and record["options"]["split"] == [0.7, 0.15, 0.15]
    assert (out / "skipped.txt").read_text() == ""
    # The output feeds `histoseek train` as it is.
    train = scan_labelled_folder(out / "train")
    assert len(train) == sum(row["split"] == "train" for row in rows)


def test_background_only_without_a_tissue_threshold(bach_tree, tmp_path):
    rows = ok("bach", bach_tree, "-o", tmp_path / "o", "--patch-size", 64, "--min-tissue", 0)
    assert len(rows) == 8 * 12
    assert sum(float(row["tissue_fraction"]) == 0.0 for row in rows) == 8 * 6


def test_bracs_keeps_the_official_split(bracs_tree, tmp_path):
    rows = ok("bracs", bracs_tree, "-o", tmp_path / "out", "--patch-size", 64, "--workers", 0)
    assert len(rows) == 18 * 6  # 192×128 images, all tissue
    for row in rows:
        assert row["source"].split("/")[2] == row["split"]
        assert row["group"] == "_".join(Path(row["source"]).name.split("_")[:2])
    assert all(len(splits) == 1 for splits in splits_of(rows, "group").values())
    line = fails("bracs", bracs_tree, "-o", tmp_path / "o2", "--split", "0.5,0.5")
    assert "official split" in line


@pytest.mark.parametrize(
    "folders", [("1_normal", "2_low_grade", "3_high_grade"), ("Normal", "Low", "High")]
)
def test_crc_both_spellings_same_patches_with_two_workers(tmp_path, folders):
    src = crc_tree(tmp_path / "crc", folders)
    serial = ok("crc", src, "-o", tmp_path / "a", "--patch-size", 64, "--workers", 0)
    assert len(serial) == 9 * 20  # 320×256 images, all tissue
    assert {row["label"] for row in serial} == {"normal", "low_grade", "high_grade"}
    assert all(len(splits) == 1 for splits in splits_of(serial, "source").values())
    if folders[0] == "1_normal":
        parallel = ok("crc", src, "-o", tmp_path / "b", "--patch-size", 64, "--workers", 2)
        assert parallel == serial


def test_folder_scale_stride_and_group_regex(folder_tree, tmp_path):
    rows = ok(
        "folder", folder_tree, "-o", tmp_path / "out", "--patch-size", 32, "--stride", 16,
        "--scale", 0.5, "--group-regex", r"slide\d+", "--split", "0.5,0.5", "--seed", 3,
        "--workers", 0,
    )  # fmt: skip
    # 128 px images at scale 0.5 are 64 px: a 3×3 grid of 32 px patches every 16 px.
    assert len(rows) == 16 * 9
    assert {(row["x"], row["y"]) for row in rows} == {
        (str(x), str(y)) for x in (0, 16, 32) for y in (0, 16, 32)
    }
    assert {row["scale"] for row in rows} == {"0.5"}
    groups = splits_of(rows, "group")
    assert len(groups) == 8 and all(len(splits) == 1 for splits in groups.values())
    assert {row["split"] for row in rows} == {"train", "test"}
    with Image.open(tmp_path / "out" / rows[0]["path"]) as patch:
        assert patch.size == (32, 32)


def test_truncated_image_is_skipped_and_listed(tmp_path):
    src = crc_tree(tmp_path / "crc", ("1_normal", "2_low_grade", "3_high_grade"))
    truncated_png(src / "1_normal" / "broken.PNG")
    result = run("crc", src, "-o", tmp_path / "out", "--patch-size", 64, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable image" in result.output
    listed = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith("1_normal/broken.PNG\t")
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["skipped"] == 1


def test_sources_with_the_longest_names_give_patch_names_files_can_have(tmp_path):
    src = tmp_path / "src"
    stem = "x" * 250  # with ".png", a 254-byte name: as long as most file systems allow
    for label, seed in (("a", 1), ("b", 2)):
        save(src / label / f"{stem}.png", he_image(128, 128, seed=seed))
        save(src / label / "short.png", he_image(128, 128, seed=seed + 10))
    args = ("folder", src, "-o", tmp_path / "out", "--patch-size", 64, "--workers", 0)
    rows = ok(*args, "--min-tissue", 0, "--split", "1")
    names = {row["path"].split("/")[-1] for row in rows}
    assert all(len(name.encode()) <= 255 for name in names)
    long_ids = {name.rsplit("_", 2)[0] for name in names if name.startswith("x")}
    # One id per source, cut to 200 characters and told apart by a hash of its path.
    assert len(long_ids) == 2
    assert all(re.fullmatch("x{200}-[0-9a-f]{8}", source_id) for source_id in long_ids)


def test_images_above_max_pixels_are_refused_or_read(tmp_path, monkeypatch):
    src = crc_tree(tmp_path / "crc", ("1_normal", "2_low_grade", "3_high_grade"))
    line = fails("crc", src, "-o", tmp_path / "out", "--max-pixels", 10_000)
    assert "--max-pixels 81920" in line and "exceed --max-pixels 10,000" in line
    assert not (tmp_path / "out").exists()
    # Pillow's own limit below the image size (as for a huge BRACS RoI), though above a
    # patch's: --max-pixels lifts it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    rows = ok("crc", src, "-o", tmp_path / "out", "--max-pixels", 81920, "--patch-size", 128,
              "--workers", 0)  # fmt: skip
    assert len(rows) == 9 * 4
    assert Image.MAX_IMAGE_PIXELS == 20_000


def test_existing_output_is_refused_unless_overwrite(folder_tree, tmp_path):
    out = tmp_path / "out"
    first = ok("folder", folder_tree, "-o", out, "--patch-size", 64, "--workers", 0)
    assert "already holds this preparation" in fails(
        "folder", folder_tree, "-o", out, "--patch-size", 64
    )
    line = fails("folder", folder_tree, "-o", out, "--patch-size", 32)
    assert "different preparation (differs in: patch_size, stride)" in line
    assert len(list_images(out)) == len(first)
    second = ok("folder", folder_tree, "-o", out, "--patch-size", 32, "--overwrite", "--workers", 0)
    assert len(second) == 4 * len(first) and len(list_images(out)) == len(second)
    other = tmp_path / "other"
    (other / "keep.txt").parent.mkdir()
    (other / "keep.txt").write_text("mine")
    for overwrite in ((), ("--overwrite",)):
        line = fails("folder", folder_tree, "-o", other, *overwrite)
        assert "holds files that histoseek prepare did not write (it has no prepare.json)" in line
        assert "--overwrite or not; choose another output folder" in line
        assert [path.name for path in other.iterdir()] == ["keep.txt"]
        notes = tmp_path / "notes.txt"
        notes.write_text("mine")
        assert "exists and is not a folder" in fails("folder", folder_tree, "-o", notes, *overwrite)
        assert notes.read_text() == "mine"
    for damaged in ("[1, 2]", '{"options": [[1]], "layout": "folder"}'):
        (out / "prepare.json").write_text(damaged)
        line = fails("folder", folder_tree, "-o", out, "--patch-size", 64)
        assert "prepare.json is damaged (it is not a preparation record)" in line
    assert "inside SRC" in fails("folder", folder_tree, "-o", folder_tree / "patches")


def test_nothing_is_written_when_no_patch_fits(folder_tree, tmp_path):
    assert "lower --min-tissue or --patch-size" in fails(
        "folder", folder_tree, "-o", tmp_path / "out", "--patch-size", 500
    )
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


def test_nothing_is_written_when_no_image_can_be_read(tmp_path):
    src = tmp_path / "src"
    for name in ("a", "b"):
        (src / name).mkdir(parents=True)
        (src / name / "empty.png").write_bytes(b"")
    line = fails("folder", src, "-o", tmp_path / "out", "--workers", 0)
    assert line.startswith("Error: none of the 2 image(s) could be read (the first, a/empty.png: ")
    assert "--min-tissue" not in line
    assert not (tmp_path / "out").exists()


def test_a_scale_or_stride_that_would_cut_too_many_patches_is_refused(folder_tree, tmp_path):
    # --scale 1e9 makes each 128 px image 128e9 px a side: its grid of patches alone would
    # exhaust memory (the run was killed) instead of ending in one line.
    line = fails("folder", folder_tree, "-o", tmp_path / "out", "--scale", 1e9, "--workers", 0)
    assert "--scale 1e+09" in line and "patches" in line, line
    assert not (tmp_path / "out").exists()
    line = fails("folder", folder_tree, "-o", tmp_path / "out", "--patch-size", 1,
                 "--stride", 1, "--scale", 20, "--workers", 0)  # fmt: skip
    assert "--stride 1" in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


def test_the_reference_is_a_regular_file_read_under_the_pixel_limit(folder_tree, tmp_path):
    fifo = tmp_path / "reference.png"
    os.mkfifo(fifo)
    base = ("folder", folder_tree, "--normalize", "reinhard", "--workers", 0)
    line = fails(*base, "-o", tmp_path / "out", "--reference", fifo)
    assert f"--reference {fifo} is not a regular file" in line
    big = save(tmp_path / "big.png", he_image(200, 200, seed=7))
    line = fails(*base, "-o", tmp_path / "out", "--reference", big, "--max-pixels", 30_000)
    assert "40,000 pixels is above the limit of 30,000" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_stain_normalisation_is_applied_and_recorded(folder_tree, tmp_path, method):
    reference = save(tmp_path / "reference.png", he_image(128, 128, seed=7, strength=1.4))
    out = tmp_path / "out"
    rows = ok("folder", folder_tree, "-o", out, "--patch-size", 64, "--normalize", method,
              "--reference", reference, "--workers", 0)  # fmt: skip
    assert {row["stain"] for row in rows} == {method}
    normalization = json.loads((out / "prepare.json").read_text())["normalization"]
    assert normalization["method"] == method
    assert normalization["reference"] == str(reference.resolve())
    key = "stain_matrix" if method == "macenko" else "lab_mean"
    assert key in normalization["parameters"]
    # The reference is darker than the sources; normalised patches follow it.
    plain = ok("folder", folder_tree, "-o", tmp_path / "plain", "--patch-size", 64, "--workers", 0)

    def mean_level(root: Path, rows: list[dict]) -> float:
        levels = []
        for row in rows:
            with Image.open(root / row["path"]) as patch:
                levels.append(np.asarray(patch.convert("L")).mean())
        return float(np.mean(levels))

    assert mean_level(out, rows) < mean_level(tmp_path / "plain", plain) - 5
    assert "give both or neither" in fails(
        "folder", folder_tree, "-o", tmp_path / "x", "--normalize", method
    )


def test_kather_tiles_through_folder(tmp_path):
    if not KATHER.is_dir():
        pytest.skip(f"real Kather 2016 tiles not present at {KATHER}")
    out = tmp_path / "kather"
    rows = ok("folder", KATHER, "-o", out, "--patch-size", 64, "--group-regex",
              r"CRC-Prim-HE-\d+", "--workers", 0)  # fmt: skip
    per_source = Counter(row["source"] for row in rows)
    assert max(per_source.values()) == 4  # 150 px tiles hold a 2×2 grid of 64 px patches
    groups = splits_of(rows, "group")
    assert all(group.startswith("CRC-Prim-HE-") for group in groups)
    assert all(len(splits) == 1 for splits in groups.values())
    labels = Counter(row["label"] for row in rows)
    # Tumour tiles are tissue throughout; the empty-background class is almost all dropped.
    assert labels["01_TUMOR"] > 0.9 * 33 * 4
    assert labels["08_EMPTY"] < 0.2 * 33 * 4


def test_entries_that_are_not_read_are_listed_in_skipped_txt(folder_tree, tmp_path, fifo_guard):
    fifo_guard.make(folder_tree / "stroma" / "slide00" / "pipe.png")
    os.symlink(tmp_path / "gone.png", folder_tree / "tumour" / "slide10" / "broken.png")
    out = tmp_path / "out"
    result = run("folder", folder_tree, "-o", out, "--patch-size", 64, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable image(s)" in result.output
    assert (out / "skipped.txt").read_text().splitlines() == [
        "stroma/slide00/pipe.png\tnot a regular file",
        "tumour/slide10/broken.png\tNo such file or directory",
    ]
    assert json.loads((out / "prepare.json").read_text())["skipped"] == 2
    assert fifo_guard.opened == []


def test_images_with_too_little_stain_for_macenko_are_left_as_they_are_and_named(
    folder_tree, tmp_path
):
    rng = np.random.default_rng(0)
    pale = rng.integers((235, 170, 215), (251, 191, 231), (128, 128, 3)).astype(np.uint8)
    save(folder_tree / "stroma" / "slide09" / "pale.png", pale)
    reference = save(tmp_path / "reference.png", he_image(128, 128, seed=7, strength=1.4))
    args = ("folder", folder_tree, "-o", tmp_path / "out", "--patch-size", 64)
    result = run(*args, "--normalize", "macenko", "--reference", reference, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert "1 source image(s) hold too little stain to fit --normalize macenko" in result.output
    assert "stroma/slide09/pale.png" in result.output
    rows = ok(*args, "--normalize", "macenko", "--reference", reference, "--overwrite")
    stains = {(row["source"], row["stain"]) for row in rows}
    assert ("stroma/slide09/pale.png", "none") in stains
    assert {stain for source, stain in stains if source != "stroma/slide09/pale.png"} == {"macenko"}


def test_what_a_killed_run_left_is_put_back_and_a_second_run_is_refused(folder_tree, tmp_path):
    from histoseek.fsutil import dir_lock

    out = tmp_path / "out"
    args = ("folder", folder_tree, "-o", out, "--patch-size", 64, "--workers", 0)
    first = ok(*args)
    # Killed between moving the old output aside and moving the new one in (pid 2**22 + 1
    # is beyond Linux's range, so no live run); and a killed run's half-written folder.
    os.replace(out, tmp_path / f".out.{2**22 + 1}-abc.old")
    (tmp_path / f".out.{2**22 + 2}-def.tmp").mkdir()
    result = run(*args)
    assert result.exit_code == 1
    assert "restored" in result.output and "the previous copy" in result.output
    assert "removed 1 temporary folder(s)" in result.output
    assert "already holds this preparation" in result.output
    assert len(list_images(out)) == len(first)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder", "out"]
    with dir_lock(out):
        assert "is being written by another histoseek prepare run" in fails(*args, "--overwrite")
