"""Annoy over L2-normalised embeddings: a seeded build, memory-mapped loading, and search.

For unit vectors Annoy's angular distance is d = sqrt(2 - 2 cos), so cos = 1 - d² / 2.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from histoseek.index.manifest import METRIC
from histoseek.metrics import exact_neighbours


def build_annoy(embeddings: np.ndarray, trees: int, seed: int, path: Path) -> None:
    """Build and save an angular Annoy index over `embeddings` (row i is item i).

    One build thread: Annoy's threads each grow trees from their own seed and append them
    in the order they finish, so only a single-threaded build gives the same file every time.
    """
    index = AnnoyIndex(embeddings.shape[1], METRIC)
    index.set_seed(seed)
    # Rows of a plain array, as lists: a memory-mapped array's rows are memmap objects, each
    # slower to make than Annoy takes to add it (10× the whole loop).
    for item, vector in enumerate(np.asarray(embeddings)):
        index.add_item(item, vector.tolist())
    index.build(trees, n_jobs=1)
    try:
        with _annoy_stderr_silenced():
            index.save(str(path))
    except OSError as error:
        raise _with_errno(error) from None


@contextlib.contextmanager
def _annoy_stderr_silenced() -> Iterator[None]:
    """Annoy prints each error to stderr before raising it; the caller reports it once."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _with_errno(error: OSError) -> OSError:
    """Annoy's OSError, with the errno it only writes into its message ("... (28)")."""
    number = re.search(r"\((\d+)\)$", str(error))
    if error.errno is None and number:
        return OSError(int(number[1]), os.strerror(int(number[1])))
    return error


def node_bytes(dim: int) -> int:
    """Bytes per node of an angular Annoy file: two int32 children and an int32 count, then
    the float32 vector. A file of any other size cannot be an index of `dim`-d vectors."""
    return 12 + 4 * dim


def cosine_from_angular(distances: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors from Annoy's angular distance."""
    return 1.0 - np.square(distances) / 2.0


#: Int32 values of Annoy nodes checked at a time (64 MiB), whatever the dim.
_CHECK_VALUES = 1 << 24


def _check_nodes(annoy_path: Path, embeddings: np.ndarray) -> None:
    """Every node of an Annoy file as search follows it, ValueError on the first fault.

    Item nodes must hold the embeddings' rows exactly; a leaf lists item ids only; a split
    node's children come before it in the file (Annoy writes children first). Annoy itself
    trusts these ids, so a damaged one would crash or hang the search instead.
    """
    rows, dim = embeddings.shape
    nodes = np.memmap(annoy_path, np.int32, mode="r").reshape(-1, 3 + dim)
    if len(nodes) <= rows:
        raise ValueError(f"holds {len(nodes)} nodes: no trees over its {rows} items")
    leaf_capacity = 2 + dim  # Annoy's K: a leaf's item ids fill its children and vector
    step = max(1, _CHECK_VALUES // (3 + dim))
    for start in range(0, rows, step):
        chunk = np.asarray(nodes[start : min(start + step, rows)])
        stored = chunk[:, 3:].view(np.float32)
        wrong = (chunk[:, 0] != 1) | (stored != embeddings[start : start + step]).any(axis=1)
        if wrong.any():
            item = start + int(np.argmax(wrong))
            raise ValueError(f"item {item} is not row {item} of the embeddings")
    for start in range(rows, len(nodes), step):
        chunk = np.asarray(nodes[start : start + step])
        count, slots = chunk[:, 0], chunk[:, 1:]
        leaf = count <= leaf_capacity
        listed = np.arange(slots.shape[1]) < count[:, None]
        bad_leaf = leaf & (listed & ((slots < 0) | (slots >= rows))).any(axis=1)
        own = np.arange(start, start + len(chunk))[:, None]
        children = slots[:, :2]
        plane = slots[:, 2:].view(np.float32)
        bad_split = ~leaf & (
            ((children < 0) | (children >= own)).any(axis=1) | ~np.isfinite(plane).all(axis=1)
        )
        wrong = (count < 1) | bad_leaf | bad_split
        if wrong.any():
            raise ValueError(f"tree node {start + int(np.argmax(wrong))} is damaged")


class VectorIndex:
    """A saved Annoy file (memory-mapped) and the embeddings it was built from."""

    def __init__(self, annoy_path: Path, embeddings: np.ndarray):
        """Load the Annoy file built from `embeddings`, refusing one that does not match them
        or whose trees are damaged (ValueError saying how; OSError when it cannot be read)."""
        rows, dim = embeddings.shape
        size = os.stat(annoy_path).st_size
        if size == 0 or size % node_bytes(dim):
            raise ValueError(f"{size} bytes cannot hold an Annoy index of {dim}-d vectors")
        self.embeddings = embeddings
        self.annoy = AnnoyIndex(dim, METRIC)
        with _annoy_stderr_silenced():
            self.annoy.load(str(annoy_path))  # Annoy memory-maps the file: loading is instant
        if self.annoy.get_n_items() != rows:
            raise ValueError(
                f"holds {self.annoy.get_n_items()} items, but the embeddings have {rows} rows"
            )
        _check_nodes(annoy_path, embeddings)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(self, query: np.ndarray, k: int, search_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k nearest items: (item ids, cosine similarities), best first.

        `search_k` is how many candidate items Annoy inspects (-1: Annoy's k × trees); more
        is slower and finds the true neighbours more often.
        """
        ids, distances = self.annoy.get_nns_by_vector(
            query.astype(np.float32), k, search_k=search_k, include_distances=True
        )
        return np.asarray(ids, np.int64), cosine_from_angular(np.asarray(distances, np.float64))

    def search_exact(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The exact k nearest items by cosine over the stored embeddings, best first."""
        found = exact_neighbours(query[None, :], self.embeddings, min(k, len(self)))
        return found.indices[0], found.similarities[0].astype(np.float64)
