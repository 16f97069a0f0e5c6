"""Slide ids, labels and groups: folder names, --group-regex and a --labels CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from histoseek.errors import HistoseekError
from histoseek.index.labels import LabelRow, SlideIdentity, identify_slides, read_labels_csv
from histoseek.slide.folder import SlideFile


def _slide(name: str, relative: str | None = None, stem: str | None = None) -> SlideFile:
    relative = relative or name
    return SlideFile(Path("/r") / relative, relative, name, stem or Path(name).stem, ())


SLIDES = [
    _slide("tumour/P01-A.svs"),
    _slide("tumour/P02-A.svs"),
    _slide("normal/P01-B.svs"),
    _slide("normal/dup.tif"),
    _slide("tumour/dup.tif"),
    _slide("normal/series9", "normal/series9/0001.dcm", "series9"),
]


def test_ids_are_stems_unless_they_repeat_labels_are_folders_groups_default_to_the_id():
    identities, notes = identify_slides(SLIDES)
    assert notes == []
    assert identities["tumour/P01-A.svs"] == SlideIdentity("P01-A", "tumour", "P01-A")
    assert identities["normal/dup.tif"] == SlideIdentity("normal/dup", "normal", "normal/dup")
    assert identities["tumour/dup.tif"].slide_id == "tumour/dup"
    assert identities["normal/series9/0001.dcm"] == SlideIdentity("series9", "normal", "series9")


def test_group_regex_groups_slides_of_one_patient():
    identities, _ = identify_slides(SLIDES, group_regex=r"(P\d+)-")
    assert identities["tumour/P01-A.svs"].group == identities["normal/P01-B.svs"].group == "P01"
    assert identities["tumour/P02-A.svs"].group == "P02"
    assert identities["normal/dup.tif"].group == "normal/dup"  # no match: the slide itself
    with pytest.raises(HistoseekError, match="invalid --group-regex"):
        identify_slides(SLIDES, group_regex="(")


def test_a_labels_csv_names_slides_by_stem_file_name_or_path(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "\ufeffSlide,Label,Group\n"
        "P01-A,invasive,patient1\n"
        "P01-B.svs,benign,patient1\n"
        "tumour/dup,insitu,\n"
        "normal/series9,normal,\n"
        "absent,x,y\n"
        "\n",
        encoding="utf-8",
    )
    rows = read_labels_csv(csv)
    assert rows[0] == LabelRow("P01-A", "invasive", "patient1") and rows[2].group is None
    identities, notes = identify_slides(SLIDES, group_regex=r"(P\d+)-", labels=rows)
    assert identities["tumour/P01-A.svs"] == SlideIdentity("P01-A", "invasive", "patient1")
    assert identities["normal/P01-B.svs"] == SlideIdentity("P01-B.svs", "benign", "patient1")
    assert identities["tumour/dup.tif"] == SlideIdentity("tumour/dup", "insitu", "tumour/dup")
    assert identities["normal/series9/0001.dcm"].label == "normal"
    assert identities["tumour/P02-A.svs"] == SlideIdentity("P02-A", "tumour", "P02")
    assert notes == [
        "--labels: 1 row(s) name no slide found (first: 'absent')",
        "--labels does not list 2 slide(s), labelled by their folder (first: tumour/P02-A.svs)",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name,label\na,b\n", "must name the columns slide,label,group"),
        ("slide,label\na,\n", "line 2: needs both a slide and a label"),
        ("slide,label\na,b\na,c\n", "lists the slide 'a' more than once"),
        (b"slide,label\n\xff\xfe,b\n", "is not a UTF-8 CSV file"),
    ],
)
def test_bad_labels_csv_is_one_clear_error(tmp_path, text, problem):
    csv = tmp_path / "labels.csv"
    csv.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(HistoseekError, match=problem):
        read_labels_csv(csv)
    with pytest.raises(HistoseekError, match="cannot read --labels"):
        read_labels_csv(tmp_path / "absent.csv")


def test_a_row_naming_two_slides_or_one_slide_twice_is_refused():
    with pytest.raises(HistoseekError, match="'dup' names 2 slides"):
        identify_slides(SLIDES, labels=[LabelRow("dup", "x", None)])
    with pytest.raises(HistoseekError, match="lists tumour/P02-A.svs twice"):
        identify_slides(
            SLIDES, labels=[LabelRow("P02-A", "x", None), LabelRow("P02-A.svs", "y", None)]
        )
