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
from histoseek.fsutil import atomic_dir, check_replaceable, dir_lock
from histoseek.index.annoy_index import build_annoy
from histoseek.index.defaults import DEFAULT_SEED, DEFAULT_TREES
from histoseek.index.manifest import (
    ANNOY_NAME,
    EMBEDDINGS_NAME,
    ITEMS_NAME,
    MANIFEST_NAME,
    SKIPPED_NAME,
    DamagedIndexError,
    Manifest,
    read_manifest,
    write_manifest,
)
from histoseek.index.store import IndexItem, OpenIndex, load_index, recover_index

if TYPE_CHECKING:
    from histoseek.embedder import ImageEmbedder


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
    index_dir: Path, source: Path, embedder: ImageEmbedder, overwrite: bool, notify: Notify
) -> OpenIndex | None:
    """The index already at `index_dir` if it is of this folder and model and whole; a
    damaged one is never reused in part, but rebuilt from scratch with a note."""
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
    except DamagedIndexError as error:
        if overwrite:
            return None
        raise HistoseekError(
            f"{error}; it cannot say which folder and model it indexes, so pass --overwrite "
            "to rebuild it"
        ) from None
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
    if (manifest.model_fingerprint, manifest.model_config) != (
        embedder.fingerprint,
        embedder.config.to_dict(),
    ):
        raise HistoseekError(
            f"{shown} was built with another model ({manifest.model_reference}); "
            "pass --overwrite to replace it, or choose another -o"
        )
    try:
        return load_index(index_dir, manifest, in_memory=True)
    except DamagedIndexError as error:
        notify(f"{error}; rebuilding it from scratch")
        return None


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


@dataclass
class _Update:
    """The index a run will write: items and embeddings in scan order, and how it got them."""

    items: list[IndexItem]
    embeddings: np.ndarray
    skipped: list[SkippedFile]
    embedded: int
    reused: int
    dropped: int
    backend: str


def _update(
    source: Path,
    found: list[_Found],
    skipped: list[SkippedFile],
    previous: OpenIndex | None,
    embedder: ImageEmbedder,
    strict: bool,
    progress: Progress | None,
    notify: Notify,
) -> _Update:
    """Reuse the embeddings of unchanged files from `previous`, embed the rest."""
    stored: dict[str, tuple[IndexItem, np.ndarray]] = {}
    if previous is not None:
        old_embeddings = previous.vectors.embeddings
        stored = {item.path: (item, old_embeddings[i]) for i, item in enumerate(previous.items)}
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
    skipped.sort(key=lambda entry: os.fsencode(entry.path))
    return _Update(
        items=[item for item, _ in ordered],
        embeddings=np.stack([vector for _, vector in ordered]).astype(np.float32),
        skipped=skipped,
        embedded=len(fresh),
        reused=len(reusable),
        dropped=len(set(stored) - {entry.item_key for entry in found}),
        backend=backend_name,
    )


def _write_index(
    index_dir: Path,
    source: Path,
    embedder: ImageEmbedder,
    update: _Update,
    trees: int,
    seed: int,
) -> None:
    """Write the index into a temporary folder and swap it in at `index_dir`."""
    manifest = Manifest(
        source_dir=str(source),
        model_reference=embedder.reference,
        model_fingerprint=embedder.fingerprint,
        model_config=embedder.config.to_dict(),
        backend=update.backend,
        dim=int(update.embeddings.shape[1]),
        trees=trees,
        seed=seed,
        items=len(update.items),
        skipped=len(update.skipped),
    )
    with atomic_dir(index_dir) as tmp:
        np.save(tmp / EMBEDDINGS_NAME, update.embeddings)
        _write_items(tmp / ITEMS_NAME, update.items)
        _write_skipped(tmp / SKIPPED_NAME, source, update.skipped)
        build_annoy(update.embeddings, trees, seed, tmp / ANNOY_NAME)
        write_manifest(tmp, manifest)


def build_index(
    source_dir: Path,
    index_dir: Path,
    embedder: ImageEmbedder,
    trees: int = DEFAULT_TREES,
    seed: int = DEFAULT_SEED,
    strict: bool = False,
    overwrite: bool = False,
    wait: bool = False,
    progress: Progress | None = None,
    notify: Notify = lambda message: None,
) -> BuildReport:
    """Index every image below `source_dir` into `index_dir`, reusing an earlier index of it.

    Files whose (relative path, size, mtime) match the earlier index keep their stored
    embedding; new and changed files are embedded; deleted ones are dropped. The earlier
    index is reused only if it passes every check query makes. The whole index is written to
    a temporary folder and swapped in, so a run killed midway leaves the earlier index as it
    was (or beside it, for the next run to put back). One run at a time writes an index: a
    second refuses, or with `wait` waits for the first.
    """
    started = time.perf_counter()
    source = Path(source_dir)
    if not source.exists():
        raise HistoseekError(f"folder not found: {display_path(source)}")
    source = source.resolve()
    index_dir = Path(index_dir)
    check_replaceable(index_dir, keep=[source])
    with dir_lock(index_dir, wait=wait, purpose="histoseek index run", notify=notify):
        recover_index(index_dir, notify)
        found, skipped = _scan(source)
        if not found and not skipped:
            raise HistoseekError(f"no images found in {display_path(source)}")
        if strict and skipped:
            raise HistoseekError(
                f"--strict: {display_path(skipped[0].path)} cannot be indexed ({skipped[0].reason})"
            )
        previous = _previous_index(index_dir, source, embedder, overwrite, notify)
        update = _update(source, found, skipped, previous, embedder, strict, progress, notify)
        _write_index(index_dir, source, embedder, update, trees, seed)
    return BuildReport(
        index_dir=index_dir,
        items=len(update.items),
        embedded=update.embedded,
        reused=update.reused,
        dropped=update.dropped,
        skipped=update.skipped,
        backend=update.backend,
        seconds=time.perf_counter() - started,
    )
