"""`histoseek index`: contents, repeatability, incremental updates, bad files, odd folders."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from index_helpers import (
    build_stopped,
    count_embedded,
    error_line,
    index_args,
    kather_tiles,
    run_cli,
    start_run,
    stop,
)

from histoseek import __version__
from histoseek.embedder import load_image_embedder
from histoseek.errors import HistoseekError
from histoseek.index import build
from histoseek.index.manifest import FORMAT_VERSION, read_manifest
from histoseek.index.shards import read_shard
from histoseek.index.store import load_index
from histoseek.model.checkpoint import load_checkpoint, model_fingerprint


def _items(index_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (index_dir / "items.jsonl").read_text().splitlines()]


def test_index_writes_trees_embeddings_metadata_and_manifest(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir, "--trees", "7", "--seed", "3"))
    assert result.exit_code == 0, result.output
    assert "indexed 8 image(s)" in result.stderr

    manifest = json.loads((index_dir / "manifest.json").read_text())
    model, _, _ = load_checkpoint(checkpoint)
    assert manifest["format"] == "histoseek-index"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["histoseek_version"] == __version__
    assert manifest["model_reference"] == str(checkpoint.resolve())
    assert manifest["model_fingerprint"] == model_fingerprint(model)
    assert manifest["model_config"] == model.config.to_dict()
    assert manifest["backend"] == "torch (cpu)"
    assert (manifest["dim"], manifest["metric"], manifest["trees"], manifest["seed"]) == (
        96,
        "angular",
        7,
        3,
    )
    assert (manifest["items"], manifest["skipped"]) == (8, 0)
    assert manifest["source_dir"] == str(tiles.resolve())
    assert manifest["created"].endswith("+00:00")

    embeddings = np.load(index_dir / "embeddings.npy")
    assert embeddings.shape == (8, 96) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    items = _items(index_dir)
    expected = sorted(p.relative_to(tiles).as_posix() for p in tiles.rglob("*.tif"))
    assert [item["path"] for item in items] == expected
    for item in items:
        file = tiles / item["path"]
        assert item["label"] == file.parent.name
        assert (item["width"], item["height"]) == (150, 150)
        assert (item["size"], item["mtime_ns"]) == (file.stat().st_size, file.stat().st_mtime_ns)
    assert (index_dir / "annoy.ann").stat().st_size > 0
    assert (index_dir / "skipped.txt").read_text().startswith("# 0 file(s)")


def test_same_input_gives_the_same_index(tiles, checkpoint, tmp_path):
    for name in ("a", "b"):
        result = run_cli(*index_args(tiles, checkpoint, "-o", tmp_path / name))
        assert result.exit_code == 0, result.output
    for file in ("annoy.ann", "embeddings.npy", "items.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_rerun_embeds_only_new_and_changed_files_and_drops_deleted(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    before = dict(
        zip(
            [item["path"] for item in _items(index_dir)],
            np.load(index_dir / "embeddings.npy"),
            strict=True,
        )
    )

    unchanged = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert "8 image(s)" in unchanged.stderr
    assert "0 embedded, 8 reused, 0 dropped" in unchanged.stderr

    files = sorted(tiles.rglob("*.tif"))
    deleted, changed = files[0], files[1]
    deleted.unlink()
    shutil.copyfile(files[-1], changed)  # new content, new size or mtime
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    added = tiles / "03_COMPLEX" / "new.tif"
    added.parent.mkdir()
    shutil.copyfile(files[2], added)

    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert "indexed 8 image(s)" in result.stderr
    assert "2 embedded, 6 reused, 1 dropped" in result.stderr
    after = dict(
        zip(
            [item["path"] for item in _items(index_dir)],
            np.load(index_dir / "embeddings.npy"),
            strict=True,
        )
    )
    key = lambda path: path.relative_to(tiles).as_posix()  # noqa: E731
    assert key(deleted) not in after
    assert "03_COMPLEX/new.tif" in after
    np.testing.assert_allclose(after["03_COMPLEX/new.tif"], before[key(files[2])], atol=1e-5)
    np.testing.assert_allclose(after[key(changed)], before[key(files[-1])], atol=1e-5)
    for path in files[2:]:
        np.testing.assert_array_equal(after[key(path)], before[key(path)])
    assert read_manifest(index_dir).items == 8


def test_an_indexed_image_that_cannot_be_read_now_counts_as_dropped(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    broken = sorted(tiles.rglob("*.tif"))[3]
    broken.write_bytes(b"not an image any more")

    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert "0 embedded, 7 reused, 1 dropped" in result.stderr
    assert "skipped 1 unreadable file(s)" in result.stderr
    assert read_manifest(index_dir).items == 7


def test_unreadable_truncated_and_fake_images_are_skipped_and_listed(tiles, checkpoint, tmp_path):
    png = tiles / "01_TUMOR" / "truncated.png"
    from PIL import Image

    Image.open(next(tiles.rglob("*.tif"))).save(png)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    (tiles / "02_STROMA" / "notes.jpg").write_text("not an image")
    (tiles / "02_STROMA" / "empty.tif").write_bytes(b"")
    (tiles / "README.txt").write_text("ignored: not an image file name")

    index_dir = tmp_path / "idx"
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert "indexed 8 image(s)" in result.stderr
    assert "skipped 3 unreadable file(s)" in result.stderr
    listed = (index_dir / "skipped.txt").read_text().splitlines()
    assert listed[0].startswith("# 3 file(s)")
    assert [line.split("\t")[0] for line in listed[1:]] == [
        "01_TUMOR/truncated.png",
        "02_STROMA/empty.tif",
        "02_STROMA/notes.jpg",
    ]
    assert all(line.split("\t")[1] for line in listed[1:])
    assert read_manifest(index_dir).skipped == 3

    strict_dir = tmp_path / "strict"
    strict = run_cli(*index_args(tiles, checkpoint, "-o", strict_dir, "--strict"))
    assert "--strict" in error_line(strict)
    assert not strict_dir.exists()


def test_parallel_decoding_gives_the_same_embeddings(tiles, checkpoint, tmp_path):
    args = ["--batch-size", "2"]
    assert run_cli(*index_args(tiles, checkpoint, "-o", tmp_path / "a", *args)).exit_code == 0
    parallel = [*index_args(tiles, checkpoint, "-o", tmp_path / "b", *args)]
    parallel[parallel.index("--workers") + 1] = "2"
    assert run_cli(*parallel).exit_code == 0
    np.testing.assert_allclose(
        np.load(tmp_path / "a" / "embeddings.npy"), np.load(tmp_path / "b" / "embeddings.npy")
    )


def test_symlink_loops_and_non_utf8_names(tiles, checkpoint, tmp_path):
    os.symlink("..", tiles / "01_TUMOR" / "loop")
    os.symlink(".", tiles / "02_STROMA" / "self")
    odd = os.fsencode(tiles / "05_DEBRIS") + b"/bad\xff name.tif"
    shutil.copyfile(next((tiles / "07_ADIPOSE").iterdir()), odd)

    index_dir = tmp_path / "idx"
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert result.exit_code == 0, result.output
    assert "indexed 9 image(s)" in result.stderr
    paths = [item["path"] for item in _items(index_dir)]
    assert os.fsdecode(b"05_DEBRIS/bad\xff name.tif") in paths
    assert not any("loop" in path or "self" in path for path in paths)

    odd_name = odd.decode("utf-8", "surrogateescape")
    query = run_cli("query", odd_name, "--index", index_dir, "--json", "--include-self")
    assert query.exit_code == 0, query.output
    document = json.loads(query.stdout)
    top = document["queries"][0]["results"][0]
    assert top["path"].endswith("05_DEBRIS/bad\ufffd name.tif")
    assert top["similarity"] == pytest.approx(1.0, abs=1e-4)
    table = run_cli("query", odd_name, "--index", index_dir, "--include-self")
    assert "bad\ufffd name.tif" in table.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "folder not found"),
        (lambda root: root.mkdir(), "no images found"),
        (lambda root: (root.mkdir(), (root / "a.txt").write_text("x")), "no images found"),
    ],
)
def test_missing_or_empty_folder_is_one_line(make, message, checkpoint, tmp_path):
    root = tmp_path / "patches"
    make(root)
    result = run_cli(*index_args(root, checkpoint, "-o", tmp_path / "idx"))
    assert message in error_line(result)
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ((), "folder not found"),
        (("--group-regex", "(unclosed"), "--group-regex"),
        (("--labels", "missing.csv"), "missing.csv"),
    ],
)
def test_inputs_are_checked_before_the_model_loads(
    options, message, tiles, checkpoint, tmp_path, monkeypatch
):
    import histoseek.embedder

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(histoseek.embedder, "load_image_embedder", never)
    folder = tiles if options else tmp_path / "absent"
    monkeypatch.chdir(tmp_path)
    result = run_cli(*index_args(folder, checkpoint, "-o", tmp_path / "idx", *options))
    assert message in error_line(result)


def test_a_folder_of_only_unreadable_files_is_one_line(checkpoint, tmp_path):
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "a.png").write_text("not a png")
    result = run_cli(*index_args(tmp_path / "patches", checkpoint, "-o", tmp_path / "idx"))
    assert "none of the 1 image file(s)" in error_line(result)


def test_index_of_another_folder_or_model_needs_overwrite(
    tiles, checkpoint, other_checkpoint, tmp_path
):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    other = tmp_path / "other"
    shutil.copytree(tiles / "01_TUMOR", other / "01_TUMOR")

    refused = run_cli(*index_args(other, checkpoint, "-o", index_dir))
    assert "holds an index of another folder" in error_line(refused)
    refused = run_cli(*index_args(tiles, other_checkpoint, "-o", index_dir))
    assert "was built with another model" in error_line(refused)
    assert read_manifest(index_dir).items == 8

    replaced = run_cli(*index_args(other, checkpoint, "-o", index_dir, "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    # copytree kept the files' mtimes: same path, size and mtime, same model, same embedding.
    assert "0 embedded, 2 reused, 6 dropped" in replaced.stderr
    assert read_manifest(index_dir).source_dir == str(other.resolve())
    assert read_manifest(index_dir).items == 2
    replaced = run_cli(*index_args(other, other_checkpoint, "-o", index_dir, "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    assert "2 embedded, 0 reused" in replaced.stderr

    stranger = tmp_path / "not-an-index"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    refused = run_cli(*index_args(tiles, checkpoint, "-o", stranger, "--overwrite"))
    assert "is not a histoseek index" in error_line(refused)
    assert (stranger / "keep.txt").read_text() == "mine"


def test_embeddings_of_another_precision_are_never_mixed_in(tiles, checkpoint, tmp_path):
    from histoseek.embedder import load_image_embedder

    index_dir = tmp_path / "idx"
    fp32 = load_image_embedder(checkpoint, backend="torch", workers=0)
    assert build.build_index(tiles, index_dir, fp32).embedded == 8
    assert read_manifest(index_dir).precision == "fp32"
    int8 = load_image_embedder(checkpoint, backend="torch", workers=0)
    int8.backend.precision = "int8"  # stands in for an INT8 export of the same weights
    with pytest.raises(HistoseekError) as raised:
        build.build_index(tiles, index_dir, int8)
    assert str(raised.value) == (
        f"{index_dir} holds FP32 embeddings and torch (cpu) embeds in INT8; choose a backend "
        "that embeds in FP32 (--backend) to update it, or pass --overwrite to embed "
        "everything again"
    )
    report = build.build_index(tiles, index_dir, int8, overwrite=True)
    assert (report.embedded, report.reused) == (8, 0)
    assert read_manifest(index_dir).precision == "int8"
    assert {info["precision"] for info in _shard_infos(index_dir)} == {"int8"}


def _shard_infos(index_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in index_dir.glob("shards/*/shard.json")]


def test_builtin_model_is_the_default_and_is_recorded(tmp_path, monkeypatch):
    root = tmp_path / "patches"
    for path in kather_tiles(1)[:3]:
        (root / path.parent.name).mkdir(parents=True)
        shutil.copy2(path, root / path.parent.name / path.name)
    monkeypatch.chdir(tmp_path)
    result = run_cli("index", "patches", "--backend", "torch", "--workers", "0")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(Path("histoseek-index"))
    assert (manifest.model_reference, manifest.dim) == ("builtin", 1280)
    image = next(root.rglob("*.tif"))
    query = run_cli("query", image, "-k", "2", "--backend", "torch", "--include-self")
    assert query.exit_code == 0, query.output
    assert "1.0000" in query.stdout
    assert "hint: majority label among the 2 results" in query.stdout


def test_the_current_folder_or_the_indexed_one_cannot_be_the_output(
    tiles, checkpoint, tmp_path, monkeypatch
):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    line = error_line(run_cli(*index_args(tiles, checkpoint, "-o", ".")))
    assert line == (
        "Error: . is the current folder or holds it, so it cannot be replaced as a whole; "
        "choose an output folder of its own"
    )
    line = error_line(run_cli(*index_args(tiles, checkpoint, "-o", tiles)))
    assert f"{tiles} is or holds {tiles.resolve()}, so it cannot be replaced" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles", "work"]
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("failing", ["embeddings", "annoy"])
def test_a_full_disk_is_one_line_and_the_previous_index_stays(
    failing, tiles, checkpoint, tmp_path, monkeypatch
):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    before = {path.name: path.read_bytes() for path in index_dir.iterdir() if path.is_file()}
    shutil.copyfile(sorted(tiles.rglob("*.tif"))[0], tiles / "01_TUMOR" / "new.tif")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "embeddings":
        monkeypatch.setattr(np, "save", disk_full)
    else:
        monkeypatch.setattr(build, "build_annoy", disk_full)
    line = error_line(run_cli(*index_args(tiles, checkpoint, "-o", index_dir)))
    # np.save first writes the new shard of the plain images, the trees come at the end.
    written = index_dir / "shards" / "images" if failing == "embeddings" else index_dir
    assert line == f"Error: no space left on device while writing {written}"
    assert {p.name: p.read_bytes() for p in index_dir.iterdir() if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == ["idx", "tiles"]


def test_a_group_regex_that_matches_no_path_is_refused_and_one_that_misses_some_noted(
    tiles, checkpoint, tmp_path
):
    index_dir = tmp_path / "idx"
    line = error_line(
        run_cli(*index_args(tiles, checkpoint, "-o", index_dir, "--group-regex", "patient"))
    )
    assert "--group-regex 'patient' matches none of the 8 paths below the folder" in line
    assert not index_dir.exists()
    result = run_cli(*index_args(tiles, checkpoint, "-o", index_dir, "--group-regex", "TUMOR"))
    assert result.exit_code == 0, result.output
    assert "--group-regex 'TUMOR' matches 2 of the 8 paths below the folder" in result.stderr
    groups = [item.group for item in load_index(index_dir).items]
    assert groups.count("TUMOR") == 2 and groups.count(None) == 6


def _shard_names(index_dir: Path) -> list[str]:
    return sorted(path.name for path in (index_dir / "shards").iterdir())


def _written_shards(monkeypatch) -> list[str]:
    """The names of the shards index writes from now on, in order."""
    names, write_shard = [], build.write_shard

    def recorded(shards_dir, name, *args, **kwargs):
        names.append(name)
        return write_shard(shards_dir, name, *args, **kwargs)

    monkeypatch.setattr(build, "write_shard", recorded)
    return names


def _same_index(index_dir: Path, reference: Path) -> None:
    for name in ("items.jsonl", "skipped.txt"):
        assert (index_dir / name).read_text() == (reference / name).read_text(), name
    np.testing.assert_allclose(
        np.load(index_dir / "embeddings.npy"), np.load(reference / "embeddings.npy"), atol=1e-5
    )


def test_images_are_kept_a_chunk_at_a_time_and_index_as_in_one_go(
    tiles, checkpoint, tmp_path, monkeypatch
):
    (tiles / "02_STROMA" / "empty.tif").write_bytes(b"")  # the 5th image, in the 2nd chunk
    embedder = load_image_embedder(checkpoint, backend="torch", workers=0)
    build.build_index(tiles, tmp_path / "whole", embedder)
    monkeypatch.setattr(build, "IMAGES_CHUNK", 3)
    calls, written, progress = count_embedded(embedder), _written_shards(monkeypatch), []
    index_dir = tmp_path / "idx"
    report = build.build_index(
        tiles, index_dir, embedder, progress=lambda done, total: progress.append((done, total))
    )
    assert calls == [3, 3, 3]
    # Each chunk is kept as soon as it is embedded, but the last, which the images shard is.
    assert written == ["images.000001.part", "images.000002.part", "images"]
    assert (report.embedded, report.reused, report.dropped, report.items) == (8, 0, 0, 8)
    assert [entry.path for entry in report.skipped] == ["02_STROMA/empty.tif"]
    assert progress == sorted(progress) and progress[-1] == (9, 9)
    assert {total for _, total in progress} == {9}
    assert _shard_names(index_dir) == ["images"]
    _same_index(index_dir, tmp_path / "whole")


KILL_AFTER_THE_FIRST_PART = """
import os, signal
import histoseek.index.build as build
build.IMAGES_CHUNK = 3
_write_shard = build.write_shard
def write_shard(*args, **kwargs):
    written = _write_shard(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return written
build.write_shard = write_shard
"""


def test_a_run_killed_while_embedding_images_keeps_its_parts_and_the_next_embeds_the_rest(
    tiles, checkpoint, tmp_path, monkeypatch
):
    whole = tmp_path / "whole"
    assert run_cli(*index_args(tiles, checkpoint, "-o", whole)).exit_code == 0
    index_dir = tmp_path / "idx"
    process = start_run(index_args(tiles, checkpoint, "-o", index_dir), KILL_AFTER_THE_FIRST_PART)
    try:
        assert process.wait(timeout=300) == -signal.SIGKILL, process.stderr.read()
    finally:
        stop(process)
    assert not (index_dir / "manifest.json").exists()
    assert _shard_names(index_dir) == ["images.000001.part"]
    paths = sorted(path.relative_to(tiles).as_posix() for path in tiles.rglob("*.tif"))
    part = read_shard(index_dir / "shards" / "images.000001.part")
    assert [item.path for item in part.items] == paths[:3]

    monkeypatch.setattr(build, "IMAGES_CHUNK", 3)
    embedder = load_image_embedder(checkpoint, backend="torch", workers=0)
    calls, written = count_embedded(embedder), _written_shards(monkeypatch)
    report = build.build_index(tiles, index_dir, embedder)
    assert calls == [3, 2]  # only the images the killed run had not kept
    assert written == ["images.000002.part", "images"]
    # The part's images are reused, and the part is no slide left out.
    assert (report.embedded, report.reused, report.dropped, report.items) == (5, 3, 0, 8)
    assert _shard_names(index_dir) == ["images"]
    _same_index(index_dir, whole)


def test_an_image_kept_in_a_part_and_deleted_since_counts_as_dropped(
    tiles, checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr(build, "IMAGES_CHUNK", 3)
    embedder = load_image_embedder(checkpoint, backend="torch", workers=0)
    index_dir = tmp_path / "idx"
    build_stopped(tiles, index_dir, embedder, calls=1)
    assert _shard_names(index_dir) == ["images.000001.part"]
    deleted = sorted(tiles.rglob("*.tif"))[0]
    deleted.unlink()

    calls = count_embedded(embedder)
    report = build.build_index(tiles, index_dir, embedder)
    assert calls == [3, 2]
    assert (report.embedded, report.reused, report.dropped, report.items) == (5, 2, 1, 7)
    assert deleted.name not in (index_dir / "items.jsonl").read_text()
    assert _shard_names(index_dir) == ["images"]


def test_a_part_holds_images_changed_since_the_images_shard_and_is_the_one_reused(
    tiles, checkpoint, tmp_path, monkeypatch
):
    embedder = load_image_embedder(checkpoint, backend="torch", workers=0)
    index_dir = tmp_path / "idx"
    build.build_index(tiles, index_dir, embedder)
    changed = sorted(tiles.rglob("*.tif"))[:4]
    for path in changed:
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    monkeypatch.setattr(build, "IMAGES_CHUNK", 3)
    build_stopped(tiles, index_dir, embedder, calls=1)
    assert _shard_names(index_dir) == ["images", "images.000001.part"]

    calls = count_embedded(embedder)
    report = build.build_index(tiles, index_dir, embedder)
    assert calls == [1]  # the images shard holds the 3 others as they were before
    assert (report.embedded, report.reused, report.dropped) == (1, 7, 0)
    items = {item["path"]: item["mtime_ns"] for item in _items(index_dir)}
    assert all(items[path.relative_to(tiles).as_posix()] == path.stat().st_mtime_ns
               for path in changed)  # fmt: skip
    assert _shard_names(index_dir) == ["images"]


def test_parts_embedded_with_another_model_are_embedded_again(
    tiles, checkpoint, other_checkpoint, tmp_path, monkeypatch
):
    embedder = load_image_embedder(checkpoint, backend="torch", workers=0)
    build.build_index(tiles, tmp_path / "whole", embedder)
    monkeypatch.setattr(build, "IMAGES_CHUNK", 3)
    other = load_image_embedder(other_checkpoint, backend="torch", workers=0)
    index_dir = tmp_path / "idx"
    build_stopped(tiles, index_dir, other, calls=2)
    assert _shard_names(index_dir) == ["images.000001.part", "images.000002.part"]

    notes: list[str] = []
    calls = count_embedded(embedder)
    report = build.build_index(tiles, index_dir, embedder, notify=notes.append)
    assert calls == [3, 3, 2]
    assert (report.embedded, report.reused, report.dropped) == (8, 0, 0)
    assert (
        "2 stored shard(s) were made another way (another model, --tta or precision), so they "
        "are embedded again"
    ) in notes
    assert _shard_names(index_dir) == ["images"]
    _same_index(index_dir, tmp_path / "whole")
