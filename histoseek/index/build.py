"""Building and updating an index: embed only new or changed files, then rebuild the trees."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from histoseek.callbacks import Notify, Progress
from histoseek.data.folder import display_path, list_images
from histoseek.data.images import UnreadableImageError, load_rgb
from histoseek.errors import HistoseekError
from histoseek.fsutil import atomic_dir
from histoseek.index.annoy_index import build_annoy
from histoseek.index.defaults import DEFAULT_SEED, DEFAULT_TREES
from histoseek.index.manifest import (
    ANNOY_NAME,
    EMBEDDINGS_NAME,
    ITEMS_NAME,
    MANIFEST_NAME,
    SKIPPED_NAME,
    Manifest,
    read_manifest,
    write_manifest,
)

if TYPE_CHECKING:
    from histoseek.embedder import ImageEmbedder


@dataclass(frozen=True)
class IndexItem:
    """One indexed image. `path` is relative to the indexed folder, '/'-separated; bytes that
    are not UTF-8 are kept as surrogate escapes (JSON stores them as \\udcXX)."""

    path: str
    label: str
    width: int
    height: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SkippedFile:
    """A file under the indexed folder that could not be indexed, and why."""

    path: str
    reason: str


@dataclass
class BuildReport:
    """What an index run did."""

    index_dir: Path
    items: int
    embedded: int
    reused: int
    dropped: int
    skipped: list[SkippedFile]
    backend: str
    seconds: float


def read_items(index_dir: Path) -> list[IndexItem]:
    """The per-item metadata of an index, in item order."""
    with open(Path(index_dir) / ITEMS_NAME, encoding="utf-8") as lines:
        return [IndexItem(**json.loads(line)) for line in lines if line.strip()]


def _write_items(path: Path, items: list[IndexItem]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for item in items:
            out.write(json.dumps(asdict(item)) + "\n")


def _write_skipped(path: Path, source: Path, skipped: list[SkippedFile]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"# {len(skipped)} file(s) under {display_path(source)} could not be indexed\n")
        for entry in skipped:
            out.write(f"{display_path(entry.path)}\t{entry.reason}\n")


@dataclass(frozen=True)
class _Found:
    path: Path
    item_key: str
    size: int
    mtime_ns: int


def _scan(source: Path) -> tuple[list[_Found], list[SkippedFile]]:
    """Stat every image below `source`; files that cannot be stat'ed or are not regular files
    (broken links, FIFOs that would block the reader) are skipped."""
    found, skipped = [], []
    for path in list_images(source):
        key = path.relative_to(source).as_posix()
        try:
            info = os.stat(path)
        except OSError as error:
            skipped.append(SkippedFile(key, error.strerror or str(error)))
            continue
        if not stat.S_ISREG(info.st_mode):
            skipped.append(SkippedFile(key, "not a regular file"))
            continue
        found.append(_Found(path, key, info.st_size, info.st_mtime_ns))
    return found, skipped


def _previous_index(
    index_dir: Path, source: Path, fingerprint: str, overwrite: bool
) -> tuple[list[IndexItem], np.ndarray] | None:
    """The reusable items and embeddings of the index already at `index_dir`, if any."""
    shown = display_path(index_dir)
    if not index_dir.exists():
        return None
    if not index_dir.is_dir():
        raise HistoseekError(f"{shown} exists and is not a folder; choose another -o")
    if not (index_dir / MANIFEST_NAME).exists():
        if any(index_dir.iterdir()):
            raise HistoseekError(f"{shown} exists and is not a histoseek index; choose another -o")
        return None
    try:
        manifest = read_manifest(index_dir)
    except HistoseekError:
        if overwrite:
            return None
        raise
    if overwrite:
        return None
    if manifest.source_dir != str(source):
        raise HistoseekError(
            f"{shown} holds an index of another folder ({display_path(manifest.source_dir)}); "
            "pass --overwrite to replace it, or choose another -o"
        )
    if manifest.model_fingerprint != fingerprint:
        raise HistoseekError(
            f"{shown} was built with another model ({manifest.model_reference}); "
            "pass --overwrite to replace it, or choose another -o"
        )
    embeddings = np.load(index_dir / EMBEDDINGS_NAME)
    return read_items(index_dir), np.asarray(embeddings, np.float32)


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def why_unreadable(path: Path) -> str:
    """The decoder's reason an image file cannot be read."""
    try:
        load_rgb(path)
    except UnreadableImageError as error:
        cause = error.__cause__ or error
        message = str(cause).replace(repr(str(path)), "").replace(str(path), "")
        return message.strip(" :") or type(cause).__name__
    return "could not be decoded"


def build_index(
    source_dir: Path,
    index_dir: Path,
    embedder: ImageEmbedder,
    trees: int = DEFAULT_TREES,
    seed: int = DEFAULT_SEED,
    strict: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    notify: Notify = lambda message: None,
) -> BuildReport:
    """Index every image below `source_dir` into `index_dir`, reusing an earlier index of it.

    Files whose (relative path, size, mtime) match the earlier index keep their stored
    embedding; new and changed files are embedded; deleted ones are dropped. The whole
    index is written to a temporary folder and swapped in, so a run killed midway leaves
    the earlier index as it was.
    """
    started = time.perf_counter()
    source = Path(source_dir)
    if not source.exists():
        raise HistoseekError(f"folder not found: {display_path(source)}")
    source = source.resolve()
    found, skipped = _scan(source)
    if not found and not skipped:
        raise HistoseekError(f"no images found in {display_path(source)}")
    if strict and skipped:
        raise HistoseekError(
            f"--strict: {display_path(skipped[0].path)} cannot be indexed ({skipped[0].reason})"
        )
    index_dir = Path(index_dir)
    previous = _previous_index(index_dir, source, embedder.fingerprint, overwrite)

    stored: dict[str, tuple[IndexItem, np.ndarray]] = {}
    if previous is not None:
        old_items, old_embeddings = previous
        stored = {item.path: (item, old_embeddings[i]) for i, item in enumerate(old_items)}
    reusable = {
        entry.item_key
        for entry in found
        if entry.item_key in stored
        and (stored[entry.item_key][0].size, stored[entry.item_key][0].mtime_ns)
        == (entry.size, entry.mtime_ns)
    }
    to_embed = [entry for entry in found if entry.item_key not in reusable]
    fresh: dict[str, tuple[IndexItem, np.ndarray]] = {}
    backend_name = "none (all embeddings reused)"
    if to_embed:
        backend_name = embedder.name
        notify(
            f"embedding {len(to_embed)} new or changed image(s), reusing {len(reusable)}, "
            f"with {embedder.name}"
        )
        embedded = embedder.embed_files([entry.path for entry in to_embed], progress)
        for position in embedded.failed:
            entry = to_embed[position]
            skipped.append(SkippedFile(entry.item_key, why_unreadable(entry.path)))
        if strict and embedded.failed:
            entry = to_embed[embedded.failed[0]]
            raise HistoseekError(
                f"--strict: {display_path(entry.path)} cannot be read "
                f"({why_unreadable(entry.path)})"
            )
        for row, position in enumerate(embedded.indices):
            entry = to_embed[int(position)]
            width, height = _image_size(entry.path)
            label = Path(entry.item_key).parent.name
            item = IndexItem(entry.item_key, label, width, height, entry.size, entry.mtime_ns)
            fresh[entry.item_key] = (item, embedded.embeddings[row])

    kept = {**{key: stored[key] for key in reusable}, **fresh}
    ordered = [kept[entry.item_key] for entry in found if entry.item_key in kept]
    if not ordered:
        first = skipped[0]
        raise HistoseekError(
            f"none of the {len(skipped)} image file(s) in {display_path(source)} could be read "
            f"(first: {display_path(first.path)}: {first.reason})"
        )
    items = [item for item, _ in ordered]
    embeddings = np.stack([vector for _, vector in ordered]).astype(np.float32)
    skipped.sort(key=lambda entry: os.fsencode(entry.path))
    dropped = len(set(stored) - {entry.item_key for entry in found})

    manifest = Manifest(
        source_dir=str(source),
        model_reference=embedder.reference,
        model_fingerprint=embedder.fingerprint,
        model_config=embedder.config.to_dict(),
        backend=backend_name,
        dim=int(embeddings.shape[1]),
        trees=trees,
        seed=seed,
        items=len(items),
        skipped=len(skipped),
    )
    with atomic_dir(index_dir) as tmp:
        np.save(tmp / EMBEDDINGS_NAME, embeddings)
        _write_items(tmp / ITEMS_NAME, items)
        _write_skipped(tmp / SKIPPED_NAME, source, skipped)
        build_annoy(embeddings, trees, seed, tmp / ANNOY_NAME)
        write_manifest(tmp, manifest)
    return BuildReport(
        index_dir=index_dir,
        items=len(items),
        embedded=len(fresh),
        reused=len(reusable),
        dropped=dropped,
        skipped=skipped,
        backend=backend_name,
        seconds=time.perf_counter() - started,
    )
