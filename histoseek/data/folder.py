"""Walking a folder of image patches: recursive, sorted, safe against link loops and odd names."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from histoseek.data.images import is_image_name
from histoseek.errors import HistoseekError


def display_path(path: Path | str) -> str:
    """A printable form of a path whose name may not be valid UTF-8."""
    return os.fsencode(str(path)).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class SkippedEntry:
    """An entry that is not listed, and why: a file with an image name that is no regular
    file (a FIFO, a broken link...), or a folder that cannot be listed."""

    path: Path
    reason: str


@dataclass(frozen=True)
class FoundImages:
    """The image files below a folder, and the image-named entries that are not regular files."""

    paths: list[Path]
    skipped: list[SkippedEntry]


def walk_folders(
    root: Path | str, unlisted: Callable[[SkippedEntry], None] = lambda entry: None
) -> Iterator[tuple[Path, list[str], list[str]]]:
    """(folder, its sub-folder names, its file names) for `root` and every folder below it,
    top down, names sorted and hidden file names left out; prune the sub-folder list in
    place to skip some. A folder that cannot be listed goes to `unlisted`, with the reason.

    Symbolic links to folders are followed once each: a link that points back up the tree
    would otherwise make the walk endless.
    """
    root = Path(root)
    if not root.is_dir():
        raise HistoseekError(f"not a folder: {display_path(root)}")
    seen_dirs: set[tuple[int, int]] = set()

    def cannot_list(error: OSError) -> None:
        why = f"folder cannot be listed: {error.strerror or error}"
        unlisted(SkippedEntry(Path(error.filename), why))

    for dirpath, dirnames, filenames in os.walk(root, onerror=cannot_list, followlinks=True):
        info = os.stat(dirpath)
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs:
            dirnames.clear()
            continue
        seen_dirs.add(key)
        dirnames.sort()
        yield Path(dirpath), dirnames, sorted(n for n in filenames if not n.startswith("."))


def irregular(path: Path) -> str | None:
    """Why `path` is no regular file (FIFOs would block the reader forever; sockets, devices,
    broken links), or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return error.strerror or str(error)
    return None if stat.S_ISREG(mode) else "not a regular file"


def find_images(root: Path | str) -> FoundImages:
    """Every regular image file below `root`, recursively, sorted by relative path (see
    `walk_folders`); entries that are not regular files are skipped with a reason."""
    root = Path(root)
    found: list[Path] = []
    skipped: list[SkippedEntry] = []
    for folder, _, names in walk_folders(root, skipped.append):
        for name in names:
            if not is_image_name(name):
                continue
            path = folder / name
            problem = irregular(path)
            if problem is None:
                found.append(path)
            else:
                skipped.append(SkippedEntry(path, problem))

    def order(path: Path) -> bytes:
        return os.fsencode(path.relative_to(root))

    return FoundImages(
        sorted(found, key=order), sorted(skipped, key=lambda entry: order(entry.path))
    )


def list_images(root: Path | str) -> list[Path]:
    """The regular image files below `root` (see `find_images`), without the skipped entries."""
    return find_images(root).paths


@dataclass(frozen=True)
class LabelledImages:
    """Image paths with their class labels (the name of each image's parent folder)."""

    root: Path
    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    skipped: list[SkippedEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def scan_labelled_folder(
    root: Path | str, class_names: list[str] | None = None, min_classes: int = 1
) -> LabelledImages:
    """List the images below `root` labelled by parent folder name.

    With `class_names` given (a trained model's classes), images of other classes are
    labelled -1 rather than refused, so a gallery may hold classes the model never saw.
    """
    root = Path(root)
    found = find_images(root)
    paths = found.paths
    if not paths:
        raise HistoseekError(f"no images found in {display_path(root)}")
    folder_names = [path.parent.name for path in paths]
    names = class_names if class_names is not None else sorted(set(folder_names))
    if len(set(folder_names)) < min_classes:
        raise HistoseekError(
            f"{display_path(root)} holds {len(set(folder_names))} class folder(s); "
            f"at least {min_classes} are needed (one sub-folder per class)"
        )
    index = {name: i for i, name in enumerate(names)}
    labels = [index.get(name, -1) for name in folder_names]
    return LabelledImages(
        root=root, paths=paths, labels=labels, class_names=list(names), skipped=found.skipped
    )


def _file_identity(path: Path) -> tuple[int, int] | Path:
    """What tells files apart whatever names or links lead to them: (device, inode), or the
    resolved path of one that cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return Path(path).resolve()
    return info.st_dev, info.st_ino


def refuse_shared_images(
    held_out: LabelledImages, seen: LabelledImages, flag: str, hint: str
) -> None:
    """Refuse held-out images (validation, queries) that are also files of `seen` (training,
    the gallery), however the two folders are named or linked (symbolic or hard links): each
    would find itself."""
    seen_files = {_file_identity(path) for path in seen.paths}
    shared = [path for path in held_out.paths if _file_identity(path) in seen_files]
    if shared:
        raise HistoseekError(
            f"{flag} {display_path(held_out.root)} shares {len(shared)} of its "
            f"{len(held_out)} images with {display_path(seen.root)} "
            f"(e.g. {display_path(shared[0])}); {hint}"
        )
