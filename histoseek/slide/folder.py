"""Finding the slides and plain images below a folder: one entry per slide, never its companions.

Some formats are several files: a MIRAX .mrxs has a folder of the same name beside it, a
Hamamatsu .vms/.vmu lists the .jpg/.ngr files it is made of, and a DICOM slide is a folder of
.dcm files (one per level). Each slide is listed once, by the file OpenSlide opens; its
companion files are neither listed as slides nor as plain images.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from histoseek.data.folder import SkippedEntry, irregular, walk_folders
from histoseek.data.images import is_image_name
from histoseek.slide.reader import VENDOR_EXTENSIONS, is_slide_file

# Keys of a .vms/.vmu file that name its companion files (ImageFile, ImageFile(x,y), ...).
_VMS_FILE_KEYS = ("imagefile", "mapfile", "optimisationfile", "macroimage")
_DICOM = ".dcm"
#: Slides made of several files: the one OpenSlide opens and its companions (see above).
MULTI_FILE_SUFFIXES = (".mrxs", ".vms", ".vmu", _DICOM)


@dataclass(frozen=True)
class SlideFile:
    """One slide below the indexed folder."""

    path: Path
    """The file OpenSlide opens."""
    relative: str
    """`path` relative to the folder, '/'-separated: how an index names the slide."""
    name: str
    """The slide relative to the folder: the file, or for DICOM the folder of its .dcm files.
    Its parent folder is the slide's label; --group-regex and --labels match against it."""
    stem: str
    """The slide's default id: the file name without its extension (DICOM: the folder's name)."""
    parts: tuple[Path, ...]
    """Every file the slide is made of (`path` and its companions)."""

    def stat(self) -> tuple[int, int]:
        """(total size in bytes, newest mtime in ns) of the slide's files (see parts_stat)."""
        return parts_stat(self.parts)


def parts_stat(parts: tuple[Path, ...]) -> tuple[int, int]:
    """(total size in bytes, newest mtime in ns) of a slide's files: a change to any of them
    changes one or the other. OSError if one cannot be stat'ed."""
    infos = [os.stat(part) for part in parts]
    return sum(info.st_size for info in infos), max(info.st_mtime_ns for info in infos)


@dataclass
class FoundSources:
    """The slides and plain images below a folder, each sorted by relative path."""

    slides: list[SlideFile]
    images: list[Path]
    skipped: list[SkippedEntry]


def _vms_companions(path: Path) -> set[str]:
    """The file names a Hamamatsu .vms/.vmu file lists as its parts (none if unreadable)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, configparser.Error):
        return set()
    return {
        Path(value.strip()).name
        for section in parser.sections()
        for key, value in parser.items(section)
        if key.startswith(_VMS_FILE_KEYS) and value.strip()
    }


def _files_below(folder: Path) -> list[Path]:
    """The files below `folder` (a MIRAX slide's data folder), sorted."""
    return sorted(Path(dirpath) / name for dirpath, _, names in os.walk(folder) for name in names)


def _slide_files(
    folder: Path, dirnames: list[str], names: list[str], name: str
) -> tuple[Path, ...]:
    """The files of the slide `name` in one folder of the walk (its sub-folder and file names
    as walk_folders lists them), that file first: a MIRAX or Hamamatsu slide's companions too."""
    path, suffix = folder / name, Path(name).suffix.lower()
    if suffix == ".mrxs" and Path(name).stem in dirnames:
        return (path, *_files_below(folder / Path(name).stem))
    if suffix in (".vms", ".vmu") and irregular(path) is None:
        listed = _vms_companions(path) & set(names)
        return (path, *(folder / part for part in sorted(listed)))
    return (path,)


def _dicom_series(folder: Path, names: list[str]) -> tuple[list[SkippedEntry], tuple[Path, ...]]:
    """The .dcm files of one folder of the walk, one DICOM slide: (those before the first
    regular one, each skipped with its reason; the series from that one on, which OpenSlide
    opens by its first file)."""
    files = [folder / name for name in names if Path(name).suffix.lower() == _DICOM]
    passed_over = []
    while files and (problem := irregular(files[0])) is not None:
        passed_over.append(SkippedEntry(files.pop(0), problem))
    return passed_over, tuple(files)


def slide_parts(path: Path) -> tuple[Path, ...]:
    """Every file of the slide OpenSlide opens at `path`, as find_slides_and_images finds
    them there: a multi-file slide's companions too (`path` alone if its folder cannot be
    listed)."""
    if not path.parent.is_dir():
        return (path,)
    listing = next(walk_folders(path.parent), None)
    if listing is None:
        return (path,)
    folder, dirnames, names = listing
    if path.suffix.lower() == _DICOM:
        return _dicom_series(folder, names)[1] or (path,)
    return _slide_files(folder, dirnames, names, path.name)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def find_slides_and_images(root: Path | str) -> FoundSources:
    """Every slide and plain image below `root`, recursively (the walk of
    data.folder.walk_folders: hidden files left out, links to folders followed once each).

    A .tif/.tiff is a slide when OpenSlide recognises it (tiled), else a plain image. Entries
    that are not regular files are skipped with the reason.
    """
    root = Path(root)
    slides: list[SlideFile] = []
    images: list[Path] = []
    skipped: list[SkippedEntry] = []
    for folder, dirnames, names in walk_folders(root, skipped.append):
        parts = {name: _slide_files(folder, dirnames, names, name) for name in names}
        companions: set[str] = set()
        for name, files in parts.items():
            suffix = Path(name).suffix.lower()
            if suffix == ".mrxs" and Path(name).stem in dirnames:
                dirnames.remove(Path(name).stem)  # its data folder, not more slides
            elif suffix in (".vms", ".vmu"):
                companions |= {file.name for file in files[1:]}
        passed_over, dicom = _dicom_series(folder, names)
        skipped += passed_over
        for name in names:
            path = folder / name
            suffix = Path(name).suffix.lower()
            candidate = suffix in VENDOR_EXTENSIONS or is_image_name(name)
            if name in companions or not candidate:
                continue
            if suffix == _DICOM:
                if dicom and path == dicom[0]:
                    # One slide per folder of .dcm files; OpenSlide finds the rest of the series.
                    series = folder if folder != root else path.with_suffix("")
                    relative = _relative(path, root)
                    slides.append(
                        SlideFile(path, relative, _relative(series, root), series.name, dicom)
                    )
                continue
            problem = irregular(path)
            if problem is not None:
                skipped.append(SkippedEntry(path, problem))
            elif is_slide_file(path):
                relative = _relative(path, root)
                slides.append(SlideFile(path, relative, relative, path.stem, parts[name]))
            else:
                images.append(path)

    def order(path: Path) -> bytes:
        return os.fsencode(path.relative_to(root))

    return FoundSources(
        slides=sorted(slides, key=lambda slide: order(slide.path)),
        images=sorted(images, key=order),
        skipped=sorted(skipped, key=lambda entry: order(entry.path)),
    )
