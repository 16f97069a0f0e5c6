"""`--tta` on index and query: the manifest records it and queries follow the index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from index_helpers import error_line, index_args, run_cli

from histoseek.embedder import load_image_embedder
from histoseek.index.manifest import DamagedIndexError, read_manifest


def _query(index_dir: Path, image: Path, *extra: str) -> list:
    return [
        "query",
        image,
        "--index",
        index_dir,
        "-k",
        "1",
        "--exact",
        "--json",
        "--backend",
        "torch",
        "--workers",
        "0",
        "--include-self",
        *extra,
    ]


def test_tta_index_records_it_and_its_queries_follow(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir, "--tta")).exit_code == 0
    manifest = read_manifest(index_dir)
    assert manifest.tta is True
    stored = np.load(index_dir / "embeddings.npy")
    files = sorted(tiles.rglob("*.tif"))
    expected = load_image_embedder(checkpoint, backend="torch", workers=0, tta=True)
    np.testing.assert_allclose(stored, expected.embed_files(files).embeddings, atol=1e-5)

    # Without --tta the query is still embedded as the index was: it finds itself at cosine 1.
    result = run_cli(*_query(index_dir, files[0]))
    assert result.exit_code == 0, result.output
    assert "built with --tta" in result.stderr
    hit = json.loads(result.stdout)["queries"][0]["results"][0]
    assert hit["similarity"] > 0.99999


def test_tta_query_on_a_plain_index_is_refused(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    assert read_manifest(index_dir).tta is False
    image = next(tiles.rglob("*.tif"))
    line = error_line(run_cli(*_query(index_dir, image, "--tta")))
    assert "built without --tta" in line and "--overwrite --tta" in line


def test_updating_an_index_keeps_its_tta_setting(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir, "--tta")).exit_code == 0
    line = error_line(run_cli(*index_args(tiles, checkpoint, "-o", index_dir)))
    assert "built with --tta; pass --tta to update it" in line
    again = run_cli(*index_args(tiles, checkpoint, "-o", index_dir, "--tta"))
    assert again.exit_code == 0 and "0 embedded, 8 reused" in again.stderr
    # --overwrite without --tta re-embeds: the stored shards hold TTA embeddings.
    replaced = run_cli(*index_args(tiles, checkpoint, "-o", index_dir, "--overwrite"))
    assert replaced.exit_code == 0 and read_manifest(index_dir).tta is False
    assert "8 embedded, 0 reused" in replaced.stderr
    assert (
        "1 stored shard(s) were made another way (another model, --tta or precision), so they "
        "are embedded again"
    ) in replaced.stderr
    plain = load_image_embedder(checkpoint, backend="torch", workers=0)
    files = sorted(tiles.rglob("*.tif"))
    stored = np.load(index_dir / "embeddings.npy")
    np.testing.assert_allclose(stored, plain.embed_files(files).embeddings, atol=1e-5)


def test_an_index_from_before_tta_existed_reads_as_built_without_it(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    manifest_path = index_dir / "manifest.json"
    document = json.loads(manifest_path.read_text())
    del document["tta"], document["precision"]
    manifest_path.write_text(json.dumps(document))
    manifest = read_manifest(index_dir)
    assert (manifest.tta, manifest.precision) == (False, "fp32")
    again = run_cli(*index_args(tiles, checkpoint, "-o", index_dir))
    assert again.exit_code == 0 and "0 embedded, 8 reused" in again.stderr


def test_a_manifest_with_an_unknown_precision_is_damaged(tiles, checkpoint, tmp_path):
    index_dir = tmp_path / "idx"
    assert run_cli(*index_args(tiles, checkpoint, "-o", index_dir)).exit_code == 0
    manifest_path = index_dir / "manifest.json"
    document = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**document, "precision": "int4"}))
    with pytest.raises(
        DamagedIndexError, match="\"precision\" is 'int4', not fp32 or fp16 or int8"
    ):
        read_manifest(index_dir)
