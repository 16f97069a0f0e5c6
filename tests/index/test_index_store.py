"""The one check of an index on disk: every file read back strictly, every fault one line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from histoseek.errors import HistoseekError
from histoseek.index.annoy_index import build_annoy
from histoseek.index.manifest import DamagedIndexError, Manifest, write_manifest
from histoseek.index.store import is_whole_index, load_index, rebuild_command

ROWS, DIM = 8, 16


def _vectors(rows: int = ROWS, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _item(number: int) -> dict:
    return {
        "path": f"class{number // 4}/tile{number}.png",
        "label": f"class{number // 4}",
        "width": 150,
        "height": 150,
        "size": 1000 + number,
        "mtime_ns": 10**18 + number,
    }


def _write_lines(path: Path, items: list) -> None:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """A small, whole index written file by file as build_index writes it."""
    path = tmp_path_factory.mktemp("store") / "idx"
    path.mkdir()
    vectors = _vectors()
    np.save(path / "embeddings.npy", vectors)
    _write_lines(path / "items.jsonl", [_item(number) for number in range(ROWS)])
    build_annoy(vectors, trees=3, seed=0, path=path / "annoy.ann")
    write_manifest(path, _manifest())
    return path


def _manifest(**changes) -> Manifest:
    """The manifest of the small index, with `changes`."""
    fields = dict(
        source_dir="/data/patches",
        model_reference="builtin",
        model_fingerprint="0" * 64,
        model_config={"dim": DIM},
        backend="torch (cpu)",
        dim=DIM,
        trees=3,
        seed=0,
        items=ROWS,
        skipped=0,
    )
    return Manifest(**{**fields, **changes})


@pytest.fixture
def index_copy(whole, tmp_path) -> Path:
    return Path(shutil.copytree(whole, tmp_path / "idx"))


def _edit_manifest(**changes) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        data = json.loads((index / "manifest.json").read_text())
        for name, value in changes.items():
            if value is _DELETE:
                del data[name]
            else:
                data[name] = value
        (index / "manifest.json").write_text(json.dumps(data))

    return edit


_DELETE = object()


def _edit_item(line: int, **changes) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        items = [_item(number) for number in range(ROWS)]
        items[line] = {**items[line], **changes}
        _write_lines(index / "items.jsonl", items)

    return edit


def _drop_item_field(name: str) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        items = [_item(number) for number in range(ROWS)]
        del items[3][name]
        _write_lines(index / "items.jsonl", items)

    return edit


def _swap_item_lines(index: Path) -> None:
    lines = (index / "items.jsonl").read_text().splitlines(keepends=True)
    lines[4], lines[5] = lines[5], lines[4]
    (index / "items.jsonl").write_text("".join(lines))


def _delete_item_line(index: Path) -> None:
    lines = (index / "items.jsonl").read_text().splitlines(keepends=True)
    (index / "items.jsonl").write_text("".join(lines[:2] + lines[3:]))


def _bad_json_line(index: Path) -> None:
    lines = (index / "items.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    (index / "items.jsonl").write_text("".join(lines))


def _save(array: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], None]:
    return lambda index: np.save(index / "embeddings.npy", array, allow_pickle=allow_pickle)


def _with_value(value: float, row: int = 2) -> np.ndarray:
    vectors = _vectors()
    vectors[row, 5] = value
    return vectors


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def edit(index: Path) -> None:
        path = index / name
        path.write_bytes(path.read_bytes()[:keep])

    return edit


def _append(name: str) -> Callable[[Path], None]:
    return lambda index: (index / name).write_bytes((index / name).read_bytes() + b"\0" * 4)


def _annoy_of(vectors: np.ndarray) -> Callable[[Path], None]:
    return lambda index: build_annoy(vectors, trees=3, seed=0, path=index / "annoy.ann")


def _damage_last_tree_node(index: Path) -> None:
    nodes = np.fromfile(index / "annoy.ann", np.int32).reshape(-1, 3 + DIM)
    nodes[-1, 1] = 99  # the root is a leaf of the 8 items: it now lists item 99
    nodes.tofile(index / "annoy.ann")


def _remove(name: str) -> Callable[[Path], None]:
    return lambda index: (index / name).unlink()


def _object_array() -> np.ndarray:
    array = np.empty((ROWS, DIM), dtype=object)
    array[:] = 0.5
    return array


CORRUPTIONS = {
    # manifest.json, field by field
    "manifest not JSON": (
        lambda index: (index / "manifest.json").write_text("{"),
        "manifest.json: not valid JSON",
    ),
    "trees a string": (_edit_manifest(trees="lots"), '"trees" must be an integer, not a string'),
    "version a string": (
        _edit_manifest(format_version="1"),
        '"format_version" must be an integer, not a string',
    ),
    "dim true": (_edit_manifest(dim=True), '"dim" must be an integer, not true/false'),
    "dim missing": (_edit_manifest(dim=_DELETE), '"dim" is missing'),
    "config a list": (_edit_manifest(model_config=[]), '"model_config" must be an object'),
    "no items": (_edit_manifest(items=0), '"items" must be 1 or more, not 0'),
    "int64 dtype": (_edit_manifest(embeddings_dtype="int64"), "histoseek indexes use 'float32'"),
    "relative source": (_edit_manifest(source_dir="patches"), '"source_dir" must be an absolute'),
    # items.jsonl, line by line
    "a line deleted": (_delete_item_line, "items.jsonl: lists 7 items, but the manifest says 8"),
    "a line not JSON": (_bad_json_line, "items.jsonl: line 3: not valid JSON"),
    "path a list": (_edit_item(0, path=["a", "b"]), 'line 1: "path" must be a string, not a list'),
    "path escapes": (_edit_item(4, path="../../etc/x.png"), 'line 5: "path" is not a plain'),
    "path absolute": (_edit_item(4, path="/etc/x.png"), 'line 5: "path" is absolute'),
    "path twice": (_edit_item(1, path=_item(0)["path"]), "line 2: 'class0/tile0.png' is listed"),
    "lines swapped": (_swap_item_lines, "line 6: 'class1/tile4.png' is out of order"),
    "width a string": (_edit_item(6, width="150"), 'line 7: "width" must be an integer'),
    "size negative": (_edit_item(6, size=-1), 'line 7: "size" must be 0 or more'),
    "label missing": (_drop_item_field("label"), 'line 4: "label" is missing'),
    "extra field": (_edit_item(0, colour=1), 'line 1: "colour" is not an item field'),
    "an item a list": (lambda index: _write_lines(index / "items.jsonl", [[]] * ROWS), "a list"),
    "items missing": (_remove("items.jsonl"), "items.jsonl: cannot be read (No such file"),
    # embeddings.npy
    "1-D embeddings": (_save(_vectors()[0]), "embeddings.npy: a 1-D array (shape (16,))"),
    "int64 embeddings": (
        _save(np.ones((ROWS, DIM), np.int64)),
        "embeddings.npy: holds int64 values, but the manifest says float32",
    ),
    "float64 embeddings": (_save(_vectors().astype(np.float64)), "holds float64 values"),
    "big-endian embeddings": (_save(_vectors().astype(">f4")), "holds >f4 values"),
    "NaN embedding": (_save(_with_value(np.nan)), "embeddings.npy: row 2 holds a value that"),
    "infinite embedding": (_save(_with_value(np.inf, row=7)), "row 7 holds a value that is not"),
    "embedding not unit": (_save(_vectors() * 1.01), "embeddings.npy: row 0 is not of unit"),
    "object embeddings": (_save(_object_array(), allow_pickle=True), "holds object values"),
    "7 rows": (_save(_vectors(ROWS - 1)), "embeddings.npy: has 7 rows, but the manifest lists 8"),
    "other dim": (_save(_vectors(dim=DIM + 1)), "rows of 17 values, but the manifest says dim 16"),
    "truncated embeddings": (_truncate("embeddings.npy", 300), "embeddings.npy: truncated (300"),
    "longer embeddings": (_append("embeddings.npy"), "embeddings.npy: longer than its array"),
    "not an array": (_truncate("embeddings.npy", 3), "embeddings.npy: not a NumPy array file"),
    "embeddings missing": (_remove("embeddings.npy"), "embeddings.npy: cannot be read (No such"),
    # annoy.ann
    "annoy missing": (_remove("annoy.ann"), "annoy.ann: cannot be read (No such file"),
    "annoy empty": (_truncate("annoy.ann", 0), "annoy.ann: 0 bytes cannot hold an Annoy index"),
    "annoy truncated": (_truncate("annoy.ann", 1000), "1000 bytes cannot hold an Annoy index of"),
    "annoy of fewer items": (_annoy_of(_vectors(ROWS - 1)), "annoy.ann: holds 7 items, but the"),
    "annoy of other vectors": (_annoy_of(_vectors(seed=1)), "annoy.ann: item 0 is not row 0"),
    "annoy tree damaged": (_damage_last_tree_node, "annoy.ann: tree node 13 is damaged"),
}


def test_a_whole_index_loads_memory_mapped_or_in_memory(whole):
    mapped = load_index(whole)
    assert isinstance(mapped.vectors.embeddings, np.memmap)
    assert [item.path for item in mapped.items] == [_item(n)["path"] for n in range(ROWS)]
    assert mapped.file_of(mapped.items[0]) == Path("/data/patches/class0/tile0.png")
    loaded = load_index(whole, in_memory=True)
    assert not isinstance(loaded.vectors.embeddings, np.memmap)
    np.testing.assert_array_equal(loaded.vectors.embeddings, _vectors())
    assert is_whole_index(whole)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_every_fault_is_one_line_naming_the_file(corruption, index_copy):
    corrupt, fragment = CORRUPTIONS[corruption]
    corrupt(index_copy)
    with pytest.raises(DamagedIndexError) as raised:
        load_index(index_copy)
    message = str(raised.value)
    assert message.startswith(f"the index {index_copy} is damaged: {index_copy}/"), message
    assert fragment in message
    assert "\n" not in message
    assert not is_whole_index(index_copy)


def test_a_version_string_is_a_wrong_type_not_another_version(index_copy):
    _edit_manifest(format_version="1")(index_copy)
    with pytest.raises(DamagedIndexError) as raised:
        load_index(index_copy)
    assert "reads version" not in str(raised.value)


def test_another_version_or_format_is_not_damage(index_copy):
    _edit_manifest(format_version=3)(index_copy)
    with pytest.raises(HistoseekError, match="has index format version 3") as raised:
        load_index(index_copy)
    assert not isinstance(raised.value, DamagedIndexError)
    _edit_manifest(format="something-else")(index_copy)
    with pytest.raises(HistoseekError, match="is not a histoseek index"):
        load_index(index_copy)


def test_the_rebuild_command_repeats_every_recorded_option():
    # Following a rebuild hint that left --mpp or --tta out built another index, silently.
    manifest = _manifest(source_dir="/data/my slides", trees=10, mpp=1.0, slide_mpp=0.25, tta=True)
    assert rebuild_command(Path("idx"), manifest, "--overwrite") == (
        "`histoseek index '/data/my slides' -o idx --model builtin --mpp 1 --slide-mpp 0.25 "
        "--trees 10 --tta --overwrite` (with the --labels and --group-regex it was built "
        "with, if any)"
    )
