import os

import pytest
from PIL import Image

from histoseek.data.folder import display_path, find_images, list_images, scan_labelled_folder
from histoseek.errors import HistoseekError


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_walks_recursively_sorted_and_ignores_other_files(tmp_path):
    for rel in ["b/2.png", "a/x/3.TIF", "a/1.jpg"]:
        _image(tmp_path / rel)
    (tmp_path / "a" / "notes.csv").write_text("x")
    (tmp_path / "a" / ".DS_Store").write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/1.jpg", "a/x/3.TIF", "b/2.png"]


def test_symlink_loop_does_not_hang(tmp_path):
    _image(tmp_path / "a" / "1.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    found = list_images(tmp_path)
    assert [p.name for p in found] == ["1.png"]


def test_non_utf8_file_names_are_listed_and_printable(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    raw = os.path.join(os.fsencode(folder), b"bad\xff.png")
    Image.new("RGB", (4, 4)).save(raw.decode("utf-8", "surrogateescape"))
    (found,) = list_images(tmp_path)
    assert os.fsencode(found).endswith(b"bad\xff.png")
    assert display_path(found).endswith("bad\ufffd.png")


def test_labels_come_from_parent_folders(tmp_path):
    for rel in ["tumour/a.png", "stroma/b.png", "stroma/deep/c.png"]:
        _image(tmp_path / rel)
    images = scan_labelled_folder(tmp_path, min_classes=2)
    assert images.class_names == ["deep", "stroma", "tumour"]
    assert [images.class_names[i] for i in images.labels] == ["stroma", "deep", "tumour"]


def test_known_class_names_label_unknown_folders_minus_one(tmp_path):
    _image(tmp_path / "a" / "1.png")
    _image(tmp_path / "z" / "2.png")
    images = scan_labelled_folder(tmp_path, class_names=["a", "b"])
    assert images.labels == [0, -1]


def test_missing_empty_and_single_class_folders_are_refused(tmp_path):
    with pytest.raises(HistoseekError, match="not a folder"):
        list_images(tmp_path / "missing")
    with pytest.raises(HistoseekError, match="no images"):
        scan_labelled_folder(tmp_path)
    _image(tmp_path / "only" / "1.png")
    with pytest.raises(HistoseekError, match="at least 2"):
        scan_labelled_folder(tmp_path, min_classes=2)


def test_fifos_and_broken_links_are_skipped_with_a_reason(tmp_path, fifo_guard):
    _image(tmp_path / "a" / "1.png")
    fifo_guard.make(tmp_path / "a" / "pipe.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "a" / "broken.png")
    found = find_images(tmp_path)
    assert [p.name for p in found.paths] == ["1.png"]
    assert [(e.path.name, e.reason) for e in found.skipped] == [
        ("broken.png", "No such file or directory"),
        ("pipe.png", "not a regular file"),
    ]
    assert list_images(tmp_path) == found.paths


def test_a_folder_that_cannot_be_listed_is_skipped_with_the_reason(tmp_path, monkeypatch):
    _image(tmp_path / "a" / "1.png")
    _image(tmp_path / "a" / "locked" / "2.png")
    listing = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = find_images(tmp_path)
    assert [p.name for p in found.paths] == ["1.png"]
    assert [(e.path, e.reason) for e in found.skipped] == [
        (tmp_path / "a" / "locked", "folder cannot be listed: Permission denied")
    ]


def test_the_labelled_scan_training_uses_skips_fifos(tmp_path, fifo_guard):
    _image(tmp_path / "a" / "1.png")
    _image(tmp_path / "b" / "2.png")
    fifo_guard.make(tmp_path / "b" / "pipe.png")
    images = scan_labelled_folder(tmp_path, min_classes=2)
    assert [p.name for p in images.paths] == ["1.png", "2.png"]
    assert [entry.path.name for entry in images.skipped] == ["pipe.png"]
    assert fifo_guard.opened == []
