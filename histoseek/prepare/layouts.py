"""Finding the images of each supported dataset layout, with their class, group and split."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from histoseek.data.folder import SkippedEntry, display_path, find_images, list_images
from histoseek.data.split import group_ids_from_regex
from histoseek.errors import HistoseekError
from histoseek.prepare.defaults import LAYOUTS

BACH_CLASSES = ("Normal", "Benign", "InSitu", "Invasive")
BACH_LABELS_CSV = "microscopy_ground_truth.csv"
BRACS_SPLITS = ("train", "val", "test")
BRACS_SLIDE_REGEX = r"BRACS_\d+"
# The extended CRC grading set ships as 1_normal/2_low_grade/3_high_grade; some copies use
# Normal/Low/High. Both become the same three labels.
CRC_FOLDERS = {
    "1_normal": "normal",
    "normal": "normal",
    "2_low_grade": "low_grade",
    "low": "low_grade",
    "low_grade": "low_grade",
    "3_high_grade": "high_grade",
    "high": "high_grade",
    "high_grade": "high_grade",
}
CRC_CLASSES = ("normal", "low_grade", "high_grade")
SEARCH_DEPTH = 3
LISTED_EXAMPLES = 5


@dataclass(frozen=True)
class SourceImage:
    """One image to tile: where it is, its class, its group (slide) and any official split."""

    path: Path
    relative: str
    label: str
    group: str
    split: str | None = None


@dataclass
class Discovery:
    """Everything a layout scan found, plus notes the user should read."""

    images: list[SourceImage]
    classes: list[str]
    official_split: bool = False
    notes: list[str] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    """Entries below the class folders that are not read: no regular file, or no listing."""


def _subdirs(folder: Path, searching: bool = False) -> dict[str, Path]:
    """Visible sub-folders of `folder`, keyed by lower-case name; two names that differ only
    in case are refused, since one would hide the other's images. A folder that cannot be
    listed is one line, or while `searching` for the dataset's root, a folder without any."""
    found: dict[str, Path] = {}
    try:
        children = sorted(folder.iterdir())
    except OSError as error:
        if searching:  # say, a lost+found beside the dataset
            return found
        raise HistoseekError(
            f"cannot list {display_path(folder)}: {error.strerror or error}"
        ) from None
    for child in children:
        if not child.is_dir() or child.name.startswith("."):
            continue
        key = child.name.lower()
        if key in found:
            raise HistoseekError(
                f"{display_path(folder)} holds folders {found[key].name!r} and {child.name!r}, "
                "whose names differ only in case; merge or rename them"
            )
        found[key] = child
    return found


def _images_below(folder: Path, skipped: list[SkippedEntry]) -> list[Path]:
    """The image files below `folder`; what cannot be read as one goes to `skipped`."""
    found = find_images(folder)
    skipped.extend(found.skipped)
    return found.paths


def _find_root(src: Path, wanted: set[str], what: str) -> Path:
    """The shallowest folder at or below `src` that holds one of the `wanted` sub-folders
    (below `src`, folders that cannot be listed are passed over)."""
    level = [src]
    for _ in range(SEARCH_DEPTH):
        listed = [_subdirs(folder, searching=folder != src) for folder in level]
        for folder, subdirs in zip(level, listed, strict=True):
            if wanted & set(subdirs):
                return folder
        level = [child for subdirs in listed for child in subdirs.values()]
    raise HistoseekError(
        f"no {what} found in {display_path(src)} or the {SEARCH_DEPTH - 1} levels below it"
    )


def _relative(path: Path, src: Path) -> str:
    return display_path(path.relative_to(src).as_posix())


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED_EXAMPLES])
    return shown + (
        f", … ({len(items) - LISTED_EXAMPLES} more)" if len(items) > LISTED_EXAMPLES else ""
    )


def _read_bach_labels(path: Path) -> tuple[dict[str, str], list[str]]:
    """File name → class from BACH's ground-truth CSV, and the rows it could not use."""
    by_lower = {name.lower(): name for name in BACH_CLASSES}
    labels: dict[str, str] = {}
    unusable: list[str] = []
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not any(cell.strip() for cell in row):
                continue
            label = by_lower.get(row[-1].strip().lower()) if len(row) >= 2 else None
            if label is None:
                # A header line is fine; anything else is worth telling.
                if number > 1:
                    unusable.append(f"line {number}")
                continue
            labels[Path(row[0].strip()).name] = label
    return labels, unusable


def scan_bach(src: Path) -> Discovery:
    """BACH part A: Photos/{Normal,Benign,InSitu,Invasive}/*.tif, labels from the CSV if present."""
    root = _find_root(src, {name.lower() for name in BACH_CLASSES}, "BACH class folders")
    folders = _subdirs(root)
    csv_path = next(
        (p for p in sorted(root.iterdir()) if p.name.lower() == BACH_LABELS_CSV and p.is_file()),
        None,
    )
    csv_labels, unusable = _read_bach_labels(csv_path) if csv_path else ({}, [])
    notes = []
    if unusable:
        notes.append(f"{BACH_LABELS_CSV}: ignored {len(unusable)} row(s) without a BACH class")
    images, disagreements, missing, skipped = [], [], [], []
    for name in BACH_CLASSES:
        if name.lower() not in folders:
            continue
        for path in _images_below(folders[name.lower()], skipped):
            label = name
            if csv_path is not None:
                listed = csv_labels.get(path.name)
                if listed is None:
                    missing.append(path.name)
                elif listed != name:
                    disagreements.append(f"{path.name} (folder {name}, CSV {listed})")
                    label = listed
            relative = _relative(path, src)
            images.append(SourceImage(path=path, relative=relative, label=label, group=relative))
    if disagreements:
        notes.append(
            f"{BACH_LABELS_CSV} disagrees with the folder for {len(disagreements)} image(s); "
            f"the CSV label is used: {_examples(disagreements)}"
        )
    if missing:
        notes.append(
            f"{len(missing)} image(s) are not in {BACH_LABELS_CSV}; their folder is the label: "
            f"{_examples(missing)}"
        )
    classes = [name for name in BACH_CLASSES if any(image.label == name for image in images)]
    return Discovery(images=images, classes=classes, notes=notes, skipped=skipped)


def scan_bracs(src: Path) -> Discovery:
    """BRACS RoIs: {train,val,test}/<class>/*.png, official split, grouped by slide id."""
    root = _find_root(src, {"train"}, "BRACS split folder 'train'")
    splits = _subdirs(root)
    found = [(split, splits[split]) for split in BRACS_SPLITS if split in splits]
    paths, labels, split_names, skipped = [], [], [], []
    for split, folder in found:
        for class_dir in _subdirs(folder).values():
            for path in _images_below(class_dir, skipped):
                paths.append(path)
                labels.append(class_dir.name)
                split_names.append(split)
    names = [path.name for path in paths]
    relatives = [_relative(path, src) for path in paths]
    groups = group_ids_from_regex(names, BRACS_SLIDE_REGEX, ids=relatives)
    notes = []
    ungrouped = [
        name
        for name, relative, group in zip(names, relatives, groups, strict=True)
        if group == relative
    ]
    if ungrouped:
        notes.append(
            f"{len(ungrouped)} image name(s) carry no BRACS_<id> slide id; each is its own "
            f"group: {_examples(ungrouped)}"
        )
    images = [
        SourceImage(path=p, relative=relative, label=label, group=group, split=split)
        for p, relative, label, group, split in zip(
            paths, relatives, labels, groups, split_names, strict=True
        )
    ]
    return Discovery(
        images=images,
        classes=sorted(set(labels)),
        official_split=True,
        notes=notes,
        skipped=skipped,
    )


def _official_split_leaks(images: list[SourceImage]) -> list[str]:
    """A note naming the groups that an official split puts in more than one split."""
    splits_of = defaultdict(set)
    for image in images:
        splits_of[image.group].add(image.split)
    leaking = sorted(group for group, splits in splits_of.items() if len(splits) > 1)
    if not leaking:
        return []
    return [
        f"the official split puts {len(leaking)} slide(s) in more than one split: "
        f"{_examples(leaking)}"
    ]


def scan_crc(src: Path) -> Discovery:
    """Extended CRC grading: {1_normal,2_low_grade,3_high_grade} (or Normal/Low/High) folders."""
    root = _find_root(src, set(CRC_FOLDERS), "CRC grade folders (1_normal, 2_low_grade, …)")
    chosen: dict[str, Path] = {}
    notes = []
    for lower, folder in _subdirs(root).items():
        label = CRC_FOLDERS.get(lower)
        if label is None:
            notes.append(f"ignored folder {display_path(folder.name)}: not a CRC grade")
        elif label in chosen:
            raise HistoseekError(
                f"both {display_path(chosen[label].name)} and {display_path(folder.name)} hold "
                f"the {label} class in {display_path(root)}; keep one of them"
            )
        else:
            chosen[label] = folder
    skipped: list[SkippedEntry] = []
    images = [
        SourceImage(
            path=path, relative=_relative(path, src), label=label, group=_relative(path, src)
        )
        for label in CRC_CLASSES
        if label in chosen
        for path in _images_below(chosen[label], skipped)
    ]
    classes = [label for label in CRC_CLASSES if any(image.label == label for image in images)]
    return Discovery(images=images, classes=classes, notes=notes, skipped=skipped)


def scan_folder(src: Path) -> Discovery:
    """Any SRC/<class>/**/image tree: the class is the top-level folder under SRC."""
    images, skipped = [], []
    for folder in _subdirs(src).values():
        for path in _images_below(folder, skipped):
            relative = _relative(path, src)
            images.append(
                SourceImage(path=path, relative=relative, label=folder.name, group=relative)
            )
    notes = []
    loose = [path for path in list_images(src) if path.parent == src]
    if loose:
        notes.append(f"ignored {len(loose)} image(s) directly in SRC: they have no class folder")
    classes = sorted({image.label for image in images})
    return Discovery(images=images, classes=classes, notes=notes, skipped=skipped)


_SCANNERS = {"bach": scan_bach, "bracs": scan_bracs, "crc": scan_crc, "folder": scan_folder}


def discover(layout: str, src: Path, group_regex: str | None = None) -> Discovery:
    """Scan `src` as the named layout; `group_regex` (matched on the path below SRC) sets groups."""
    if layout not in _SCANNERS:
        raise HistoseekError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    src = Path(src)
    if not src.is_dir():
        raise HistoseekError(f"not a folder: {display_path(src)}")
    found = _SCANNERS[layout](src)
    if not found.images:
        raise HistoseekError(f"no images found for the {layout} layout in {display_path(src)}")
    if group_regex is not None:
        groups = group_ids_from_regex(
            [image.relative for image in found.images],
            group_regex,
            "paths below SRC",
            found.notes.append,
        )
        found.images = [
            replace(image, group=g) for image, g in zip(found.images, groups, strict=True)
        ]
    if found.official_split:
        found.notes.extend(_official_split_leaks(found.images))
    return found
