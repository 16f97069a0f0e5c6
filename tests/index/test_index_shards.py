"""Embedding shards: written whole, read back checked, and refused when anything is off."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from histoseek.index.items import IndexItem
from histoseek.index.shards import (
    IMAGES_SHARD,
    SHARD_EMBEDDINGS,
    SHARD_INFO,
    SHARD_ITEMS,
    ShardError,
    ShardInfo,
    SlideRecord,
    holds_plain_images,
    images_part_name,
    images_part_number,
    images_parts,
    link_shard,
    read_shard,
    remove_temporaries,
    shard_folders,
    shard_name,
    write_shard,
)

SLIDE = SlideRecord("tumour/a b.svs", 1000, 2000, 0.25, False)
TILING = {"mpp": 0.5, "patch_size": 64, "min_tissue": 0.5}


def _tiles(count: int) -> list[IndexItem]:
    return [
        IndexItem(SLIDE.path, "tumour", 64, 64, 1000, 2000, "a b", "a b", 128 * i, 0, 128, 0.5)
        for i in range(count)
    ]


def _vectors(count: int, dim: int = 8) -> np.ndarray:
    vectors = np.random.default_rng(count).normal(size=(count, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _info(count: int, **change) -> ShardInfo:
    return replace(ShardInfo("f" * 64, {"dim": 8}, TILING, SLIDE, count, 8), **change)


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return write_shard(
        tmp_path / "shards", shard_name(SLIDE.path), _info(3), _tiles(3), _vectors(3)
    )


def test_a_shard_reads_back_as_written(shard):
    read = read_shard(shard)
    assert read.info == _info(3, created=read.info.created, files=read.info.files)
    assert sorted(read.info.files) == ["embeddings.npy", "items.jsonl"]
    assert read.items == _tiles(3)
    assert np.array_equal(read.embeddings, _vectors(3))
    data = json.loads((shard / SHARD_INFO).read_text())
    assert data["format"] == "histoseek-shard" and data["format_version"] == 1
    assert data["slide"]["path"] == "tumour/a b.svs" and data["tiling"] == TILING


def test_shard_names_are_safe_and_depend_on_the_path_alone():
    name = shard_name("tumour/a b.svs")
    assert name.startswith("a_b-") and len(name) == len("a_b-") + 16
    assert shard_name("tumour/a b.svs") == name != shard_name("normal/a b.svs")
    assert shard_name("x/..svs").startswith("slide-")


def test_an_empty_slide_and_the_images_shard_are_shards_too(tmp_path):
    empty = write_shard(tmp_path, shard_name(SLIDE.path), _info(0), [], np.zeros((0, 8)))
    assert read_shard(empty).items == []
    images = [IndexItem("a.png", "", 5, 5, 1, 2), IndexItem("b/c.png", "b", 5, 5, 1, 2, group="g")]
    info = _info(2, tiling=None, slide=None)
    written = write_shard(tmp_path, IMAGES_SHARD, info, images, _vectors(2))
    assert read_shard(written).items == images
    renamed = tmp_path / "other"
    written.rename(renamed)
    with pytest.raises(ShardError, match="must be named 'images'"):
        read_shard(renamed)


def test_the_parts_of_the_plain_images_are_named_apart_from_every_other_shard():
    assert images_part_name(1) == "images.000001.part"
    assert images_part_name(1234567) == "images.1234567.part"
    for number in (1, 42, 1234567):
        assert images_part_number(images_part_name(number)) == number
        assert holds_plain_images(images_part_name(number))
    assert holds_plain_images(IMAGES_SHARD) and images_part_number(IMAGES_SHARD) is None
    # A slide's shard ends in 16 hex digits, so not even a slide named like a part is one.
    for slide in ("images.000001.part", "x/images.svs", SLIDE.path):
        assert images_part_number(shard_name(slide)) is None
        assert not holds_plain_images(shard_name(slide))
    for other in (
        "images.1.part",
        "images.000001.part.x",
        "images.-00001.part",
        "Images.000001.part",
    ):
        assert images_part_number(other) is None


def test_a_part_is_a_shard_of_plain_images_and_listed_by_number(shard, tmp_path):
    shards = shard.parent
    images = [IndexItem("a.png", "", 5, 5, 1, 2), IndexItem("b/c.png", "b", 5, 5, 1, 2)]
    info = _info(2, tiling=None, slide=None)
    for number in (1000000, 2, 999999):
        write_shard(shards, images_part_name(number), info, images, _vectors(2))
    write_shard(shards, IMAGES_SHARD, info, images, _vectors(2))
    (shards / ".images.000003.part.123-abc.tmp").mkdir()
    assert [path.name for path in images_parts(shards)] == [
        "images.000002.part", "images.999999.part", "images.1000000.part",
    ]  # fmt: skip
    assert read_shard(shards / images_part_name(2)).items == images
    assert images_parts(tmp_path / "absent") == []
    # Only plain images may be a part, and a slide's shard never one.
    renamed = shards / images_part_name(5)
    shard.rename(renamed)
    with pytest.raises(ShardError, match="it is named 'images.000005.part'"):
        read_shard(renamed)


def _rewrite_info(shard: Path, **change) -> None:
    data = json.loads((shard / SHARD_INFO).read_text())
    (shard / SHARD_INFO).write_text(json.dumps({**data, **change}))


def _damage(shard: Path, how: str) -> None:
    embeddings = shard / SHARD_EMBEDDINGS
    if how == "truncated":
        embeddings.write_bytes(embeddings.read_bytes()[:-7])
    elif how == "nan":
        vectors = _vectors(3)
        vectors[1, 2] = np.nan
        np.save(embeddings, vectors)
    elif how == "not unit":
        np.save(embeddings, _vectors(3) * 2)
    elif how == "float64":
        np.save(embeddings, _vectors(3).astype(np.float64))
    elif how == "rows":
        np.save(embeddings, _vectors(4))
    elif how == "pickled":
        np.save(embeddings, np.array([{"a": 1}], dtype=object))
    elif how == "no items":
        (shard / SHARD_ITEMS).unlink()
    elif how == "item count":
        lines = (shard / SHARD_ITEMS).read_text().splitlines()
        (shard / SHARD_ITEMS).write_text("\n".join(lines[:2]) + "\n")
    elif how == "bad item":
        (shard / SHARD_ITEMS).write_text('{"path": 1}\n' * 3)
    elif how == "other slide":
        head, _, tail = (shard / SHARD_ITEMS).read_text().rpartition("a b.svs")
        (shard / SHARD_ITEMS).write_text(f"{head}c.svs{tail}")  # the last item, still in order
    elif how == "repeated":
        first = (shard / SHARD_ITEMS).read_text().splitlines()[0]
        (shard / SHARD_ITEMS).write_text(f"{first}\n" * 3)
    elif how == "reversed":
        lines = (shard / SHARD_ITEMS).read_text().splitlines()
        (shard / SHARD_ITEMS).write_text("\n".join(reversed(lines)) + "\n")
    elif how == "version":
        _rewrite_info(shard, format_version=2)
    elif how == "json":
        (shard / SHARD_INFO).write_text("{")
    elif how == "missing field":
        data = json.loads((shard / SHARD_INFO).read_text())
        del data["dim"]
        (shard / SHARD_INFO).write_text(json.dumps(data))
    elif how == "wrong type":
        _rewrite_info(shard, items="3")
    elif how == "tiling":
        _rewrite_info(shard, tiling={**TILING, "patch_size": 32})
    elif how == "renamed":
        shard.rename(shard.with_name("other-0123456789abcdef"))


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("truncated", "embeddings.npy: truncated"),
        ("nan", "embeddings.npy: row 1 holds a value that is not a finite number"),
        ("not unit", "embeddings.npy: row 0 is not of unit length"),
        ("float64", "embeddings.npy: holds float64 values, but shard.json says float32"),
        ("rows", "embeddings.npy: has 4 rows, but shard.json lists 3 items"),
        ("pickled", "holds object values"),
        ("no items", "it has no items.jsonl"),
        ("item count", "lists 2 items, shard.json says 3"),
        ("bad item", 'items.jsonl, line 1: "label" is missing'),
        ("other slide", "lists 'tumour/c.svs', which is no tile of 'tumour/a b.svs'"),
        ("repeated", "items.jsonl, line 2: 'tumour/a b.svs' is listed twice"),
        ("reversed", "items.jsonl, line 2: 'tumour/a b.svs' is listed out of order"),
        ("version", "shard format version 2"),
        ("json", "shard.json is not valid JSON"),
        ("missing field", '"dim" is missing'),
        ("wrong type", '"items" must be an integer'),
        ("tiling", "its tiles disagree with its tiling options"),
        ("renamed", "it is named 'other-0123456789abcdef'"),
    ],
)
def test_a_damaged_shard_is_refused_saying_why(shard, how, problem):
    _damage(shard, how)
    path = shard if how != "renamed" else shard.with_name("other-0123456789abcdef")
    with pytest.raises(ShardError, match=problem):
        read_shard(path)


def _record_files(shard: Path) -> None:
    """Record the shard's files as they are now in its shard.json, where both can be read."""
    try:
        data = json.loads((shard / SHARD_INFO).read_text())
        files = {name: hashlib.sha256((shard / name).read_bytes()).hexdigest() for name in FILES}
    except (OSError, ValueError):
        return
    (shard / SHARD_INFO).write_text(json.dumps({**data, "files": files}))


FILES = (SHARD_ITEMS, SHARD_EMBEDDINGS)


@pytest.mark.parametrize("name", FILES)
def test_a_file_from_another_shard_is_refused(shard, tmp_path, name):
    # Copied in from another machine's shard of the same slide: every other check passes.
    other = write_shard(
        tmp_path / "other", shard.name, _info(3, tta=True), _tiles(3), _vectors(3)[::-1]
    )
    if name == SHARD_ITEMS:
        items = (shard / name).read_text().replace('"label": "tumour"', '"label": "normal"')
        (other / name).write_text(items)
    (shard / name).write_bytes((other / name).read_bytes())
    with pytest.raises(ShardError, match=f"{name} is not the file its shard.json was written"):
        read_shard(shard)
    _record_files(shard)
    assert len(read_shard(shard).items) == 3


def test_temporaries_are_not_shards_and_are_removed(shard):
    shards = shard.parent
    (shards / ".x.123-abc.tmp").mkdir()
    (shards / ".y.tmp").write_text("")
    assert shard_folders(shards) == [shard]
    remove_temporaries(shards)
    assert sorted(path.name for path in shards.iterdir()) == [shard.name]


def test_a_linked_shard_is_the_same_shard_elsewhere(shard, tmp_path):
    copy = tmp_path / "next" / "shards" / shard.name
    link_shard(shard, copy)
    assert read_shard(copy).items == read_shard(shard).items
    assert (copy / SHARD_EMBEDDINGS).stat().st_ino == (shard / SHARD_EMBEDDINGS).stat().st_ino


def test_a_shard_from_before_file_hashes_reads_unchecked(shard):
    data = json.loads((shard / SHARD_INFO).read_text())
    del data["files"]
    (shard / SHARD_INFO).write_text(json.dumps(data))
    assert read_shard(shard).info.files is None
