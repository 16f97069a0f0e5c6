"""Which slide, label and patient (group) each indexed item belongs to.

A slide's id is its file stem (for DICOM, its folder's name); where two slides share a stem,
each is named by its path instead. Its label is its parent folder's name and its group its
id, unless `--group-regex` matches its path (the group is the first capture group, or the
whole match) or a `--labels` CSV lists it. A plain image's label is its parent folder's name;
it has a group only where `--group-regex` matches its path.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from histoseek.data.folder import display_path
from histoseek.data.split import compile_group_regex, regex_group
from histoseek.errors import HistoseekError
from histoseek.slide.folder import SlideFile

LABEL_COLUMNS = ("slide", "label", "group")


@dataclass(frozen=True)
class SlideIdentity:
    """Who a slide's tiles belong to."""

    slide_id: str
    label: str
    group: str


@dataclass(frozen=True)
class LabelRow:
    """One row of a --labels CSV: a slide's name, its label and its group (None: default)."""

    slide: str
    label: str
    group: str | None


def read_labels_csv(path: Path) -> list[LabelRow]:
    """The rows of a --labels CSV (columns slide,label[,group], with that header)."""
    shown = display_path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [name.strip().lower() for name in reader.fieldnames or []]
            if "slide" not in columns or "label" not in columns:
                raise HistoseekError(
                    f"--labels {shown}: the first line must name the columns slide,label,group "
                    f"(group may be left out); it names {', '.join(columns) or 'none'}"
                )
            reader.fieldnames = columns
            rows = []
            for number, row in enumerate(reader, start=2):
                slide = (row.get("slide") or "").strip()
                label = (row.get("label") or "").strip()
                group = (row.get("group") or "").strip() or None
                if not slide and not label:
                    continue
                if not slide or not label:
                    raise HistoseekError(
                        f"--labels {shown}, line {number}: needs both a slide and a label"
                    )
                rows.append(LabelRow(slide, label, group))
    except OSError as error:
        raise HistoseekError(f"cannot read --labels {shown}: {error.strerror or error}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise HistoseekError(f"--labels {shown} is not a UTF-8 CSV file ({error})") from None
    repeated = [name for name, count in Counter(row.slide for row in rows).items() if count > 1]
    if repeated:
        raise HistoseekError(f"--labels {shown} lists the slide {repeated[0]!r} more than once")
    return rows


def _names(slide: SlideFile) -> set[str]:
    """The names a --labels row may use for a slide: its path, with or without extension, its
    file name or its stem."""
    path = PurePosixPath(slide.name)
    return {slide.name, str(path.with_suffix("")), path.name, slide.stem}


def identify_slides(
    slides: Sequence[SlideFile],
    group_regex: str | None = None,
    labels: Sequence[LabelRow] = (),
) -> tuple[dict[str, SlideIdentity], list[str]]:
    """Each slide's id, label and group, keyed by its `relative` path; and notes for the user.

    A --labels row matches a slide by path (with or without extension), file name or stem;
    a row that matches two slides is refused. Its slide name becomes the slide's id.
    """
    regex = compile_group_regex(group_regex)
    stems = Counter(slide.stem for slide in slides)
    by_name: dict[str, list[SlideFile]] = {}
    for slide in slides:
        for name in _names(slide):
            by_name.setdefault(name, []).append(slide)
    listed: dict[str, LabelRow] = {}
    unmatched = []
    for row in labels:
        matches = by_name.get(row.slide, [])
        if len(matches) > 1:
            raise HistoseekError(
                f"--labels: {row.slide!r} names {len(matches)} slides "
                f"({display_path(matches[0].name)}, {display_path(matches[1].name)}); "
                "name them by path"
            )
        if not matches:
            unmatched.append(row.slide)
        elif matches[0].relative in listed:
            raise HistoseekError(
                f"--labels lists {display_path(matches[0].name)} twice "
                f"({listed[matches[0].relative].slide!r} and {row.slide!r})"
            )
        else:
            listed[matches[0].relative] = row
    identities = {}
    for slide in slides:
        row = listed.get(slide.relative)
        if row is not None:
            slide_id, label = row.slide, row.label
        else:
            unique = stems[slide.stem] == 1
            slide_id = slide.stem if unique else str(PurePosixPath(slide.name).with_suffix(""))
            label = PurePosixPath(slide.name).parent.name
        group = (row.group if row else None) or regex_group(regex, slide.name) or slide_id
        identities[slide.relative] = SlideIdentity(slide_id, label, group)
    notes = []
    if unmatched:
        notes.append(
            f"--labels: {len(unmatched)} row(s) name no slide found (first: {unmatched[0]!r})"
        )
    if labels and len(listed) < len(slides):
        missing = [slide for slide in slides if slide.relative not in listed]
        notes.append(
            f"--labels does not list {len(missing)} slide(s), labelled by their folder "
            f"(first: {display_path(missing[0].name)})"
        )
    return identities, notes
