"""An index on disk: reading every file of it back strictly, and recovering it after a kill.

`load_index` is the one check of an index folder, used by query before searching it and by
an incremental `index` run before reusing any of it.
"""

from __future__ import annotations

import os
import shlex
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoseek.callbacks import Notify
from histoseek.data.folder import display_path
from histoseek.errors import HistoseekError
from histoseek.fsutil import leftovers, lock_if_free, recover_dir
from histoseek.index.annoy_index import VectorIndex
from histoseek.index.defaults import DEFAULT_INDEX_DIR, DEFAULT_SEED, DEFAULT_TREES
from histoseek.index.items import IndexItem, parse_item
from histoseek.index.manifest import (
    ANNOY_NAME,
    EMBEDDINGS_NAME,
    ITEMS_NAME,
    DamagedIndexError,
    Manifest,
    locate_index,
    read_manifest,
)
from histoseek.inference.base import UNIT_LENGTH_TOLERANCE
from histoseek.prepare.defaults import DEFAULT_MIN_TISSUE, DEFAULT_PATCH_SIZE
from histoseek.slide.defaults import DEFAULT_MPP

T = typing.TypeVar("T")

#: Rows checked at a time, so a big index needs no big temporary array.
_ROW_CHECK_ROWS = 16_384
#: Reads of an index that `index` runs keep swapping midway, before giving up.
_READ_TRIES = 3


@dataclass
class OpenIndex:
    """A checked index on disk: its manifest, item metadata and vectors."""

    path: Path
    manifest: Manifest
    items: list[IndexItem]
    vectors: VectorIndex

    def file_of(self, item: IndexItem) -> Path:
        """Where an item's image file lives (item paths never leave the indexed folder)."""
        return Path(self.manifest.source_dir) / item.path


def _read_items(index_dir: Path, manifest: Manifest) -> list[IndexItem]:
    """The per-item metadata of an index, in item order, every line checked."""
    path = Path(index_dir) / ITEMS_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DamagedIndexError(
            index_dir, path, f"cannot be read ({error.strerror})", manifest
        ) from None
    except UnicodeDecodeError as error:
        raise DamagedIndexError(
            index_dir, path, f"not UTF-8 (byte {error.start})", manifest
        ) from None
    items: list[IndexItem] = []
    previous = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = parse_item(line)
            order = item.order
            if previous is not None and order <= previous:
                where = f" (tile at {item.x}, {item.y})" if item.is_tile else ""
                problem = "is listed twice" if order == previous else "is out of order"
                raise ValueError(f"{item.path!r}{where} {problem}")
        except ValueError as error:
            raise DamagedIndexError(index_dir, path, f"line {number}: {error}", manifest) from None
        previous = order
        items.append(item)
    return items


def _dtype_text(dtype: np.dtype) -> str:
    return dtype.name if dtype.isnative else dtype.str


def read_matrix(
    path: Path, rows: int, dim: int, dtype: str, told: str, in_memory: bool = False
) -> np.ndarray:
    """A .npy file as a (rows, dim) array of `dtype` whose rows are unit vectors, as `told`
    (say, "the manifest") says it is; ValueError says what is wrong. Its header is checked
    before any data is read, and pickled (object) arrays are never loaded. Memory-mapped
    unless `in_memory`."""
    with open(path, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, found = read_header(file)
        except ValueError as error:
            raise ValueError(f"not a NumPy array file ({error})") from None
        data_start = file.tell()
    if found != np.dtype(dtype):
        raise ValueError(f"holds {_dtype_text(found)} values, but {told} says {dtype}")
    if len(shape) != 2:
        raise ValueError(f"a {len(shape)}-D array (shape {shape}), not one row per item")
    if shape[1] != dim:
        raise ValueError(f"rows of {shape[1]} values, but {told} says dim {dim}")
    if shape[0] != rows:
        raise ValueError(f"has {shape[0]} rows, but {told} lists {rows} items")
    size = os.stat(path).st_size
    expected = data_start + shape[0] * shape[1] * found.itemsize
    if size != expected:
        raise ValueError(
            f"{'truncated' if size < expected else 'longer than its array'} "
            f"({size} bytes, {expected} expected)"
        )
    if rows == 0:
        return np.zeros((0, dim), dtype)
    embeddings = np.load(path, mmap_mode=None if in_memory else "r", allow_pickle=False)
    for start in range(0, shape[0], _ROW_CHECK_ROWS):
        chunk = np.asarray(embeddings[start : start + _ROW_CHECK_ROWS], np.float64)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(f"row {row} holds a value that is not a finite number")
        off = np.abs(np.linalg.norm(chunk, axis=1) - 1.0) > UNIT_LENGTH_TOLERANCE
        if off.any():
            raise ValueError(f"row {start + int(np.argmax(off))} is not of unit length")
    return embeddings


def load_index(index_dir: Path, in_memory: bool = False) -> OpenIndex:
    """Read the index at `index_dir` and check every file of it against the others.

    The manifest field by field; items.jsonl line by line (types, and paths that stay inside
    the indexed folder); embeddings.npy (2-D, the manifest's dtype, finite, one row per item,
    the manifest's dim, unit rows); annoy.ann (one item per row, vectors matching the rows,
    trees that point only where they may).
    Any fault is one DamagedIndexError naming the file and what is wrong; an index of another
    format version, or no index at all, is a HistoseekError. `in_memory` loads the embeddings
    instead of memory-mapping them.

    Reading never waits for a writer, so an `index` run may swap a new index into place
    midway: a read that spans a swap (the folder is another one after it than before) is
    done again, so what is returned is all the old index or all the new, never a mix.
    """
    index_dir = Path(index_dir)
    for _ in range(_READ_TRIES):
        before = _folder_identity(index_dir)
        try:
            opened = _read_index(index_dir, in_memory)
        except HistoseekError:
            if _folder_identity(index_dir) == before:
                raise
            continue
        if _folder_identity(index_dir) == before:
            return opened
    raise HistoseekError(
        f"{display_path(index_dir)} was replaced {_READ_TRIES} times while it was being read "
        "(an `index` run is writing it); try again when it is done"
    )


def _folder_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder at `path`, which a swap changes; None if it is absent."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _read_index(index_dir: Path, in_memory: bool) -> OpenIndex:
    manifest = read_manifest(index_dir)
    items = _read_items(index_dir, manifest)
    if len(items) != manifest.items:
        raise DamagedIndexError(
            index_dir,
            index_dir / ITEMS_NAME,
            f"lists {len(items)} items, but the manifest says {manifest.items}",
            manifest,
        )
    embeddings = _checked_file(
        index_dir,
        EMBEDDINGS_NAME,
        manifest,
        lambda path: read_matrix(
            path, manifest.items, manifest.dim, manifest.embeddings_dtype, "the manifest", in_memory
        ),
    )
    vectors = _checked_file(
        index_dir, ANNOY_NAME, manifest, lambda path: VectorIndex(path, embeddings)
    )
    return OpenIndex(index_dir, manifest, items, vectors)


def _checked_file(index_dir: Path, name: str, manifest: Manifest, load: Callable[[Path], T]) -> T:
    """load(index_dir / name), its OSError or ValueError turned into a DamagedIndexError."""
    path = index_dir / name
    try:
        return load(path)
    except OSError as error:
        problem = f"cannot be read ({error.strerror or error})"
        raise DamagedIndexError(index_dir, path, problem, manifest) from None
    except ValueError as error:
        raise DamagedIndexError(index_dir, path, str(error), manifest) from None


def is_whole_index(index_dir: Path) -> bool:
    """Whether `index_dir` holds an index that passes every check of load_index."""
    try:
        load_index(index_dir)
    except HistoseekError:
        return False
    return True


def recover_index(index_dir: Path, notify: Notify = lambda message: None) -> None:
    """Put back an index that a run killed while swapping it left beside `index_dir`, and
    remove what killed runs left there. Call it holding dir_lock(index_dir)."""
    recover_dir(index_dir, accept=is_whole_index, notify=notify)


def open_index(index_dir: Path | None, notify: Notify = lambda message: None) -> OpenIndex:
    """Open the index at `index_dir` (default ./histoseek-index) for searching, checked whole.

    What a killed `index` run left beside it is recovered first, unless a live run holds its
    lock (that one will); reading never waits for a writer.
    """
    target = DEFAULT_INDEX_DIR if index_dir is None else Path(index_dir)
    if leftovers(target):
        with lock_if_free(target) as locked:
            if locked:
                recover_index(target, notify)
    path = locate_index(index_dir)
    try:
        return load_index(path)
    except DamagedIndexError as error:
        rebuild = (
            f"`histoseek index DIR -o {shlex.quote(display_path(path))} --overwrite`"
            if error.manifest is None
            else rebuild_command(path, error.manifest)
        )
        raise HistoseekError(f"{error}; rebuild it with {rebuild}") from None


def rebuild_command(index_dir: Path, manifest: Manifest, *extra: str) -> str:
    """The `histoseek index` command (in backquotes) that builds the index at `index_dir`
    again as its manifest records it, with `extra` options; --labels and --group-regex are
    not recorded, so the text asks for them."""
    options = [
        ("--model", manifest.model_reference, None),
        ("--mpp", manifest.mpp, DEFAULT_MPP),
        ("--patch-size", manifest.patch_size, DEFAULT_PATCH_SIZE),
        ("--min-tissue", manifest.min_tissue, DEFAULT_MIN_TISSUE),
        ("--slide-mpp", manifest.slide_mpp, None),
        ("--trees", manifest.trees, DEFAULT_TREES),
        ("--seed", manifest.seed, DEFAULT_SEED),
    ]
    words = ["histoseek", "index", display_path(manifest.source_dir), "-o", display_path(index_dir)]
    for flag, value, default in options:
        if value is not None and value != default:
            words += [flag, value if isinstance(value, str) else f"{value:g}"]
    words += ["--tta"] * manifest.tta + list(extra)
    command = " ".join(shlex.quote(word) for word in words)
    return f"`{command}` (with the --labels and --group-regex it was built with, if any)"
