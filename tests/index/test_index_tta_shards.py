"""Embedding shards record --tta and the precision, and a run reuses only shards embedded the
way it embeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histoseek.index.items import IndexItem
from histoseek.index.shards import (
    SHARD_INFO,
    ShardInfo,
    SlideRecord,
    read_shard,
    shard_name,
    write_shard,
)
from histoseek.index.slides import TilingOptions, shard_fits

SLIDE = SlideRecord("tumour/a.svs", 1000, 2000, 0.25, False)
OPTIONS = TilingOptions(mpp=0.5, patch_size=64, min_tissue=0.5)


def _shard(folder: Path, tta: bool) -> Path:
    info = ShardInfo("f" * 64, {"dim": 8}, OPTIONS.shard_tiling(), SLIDE, 1, 8, tta=tta)
    item = IndexItem(SLIDE.path, "tumour", 64, 64, 1000, 2000, "a", "a", 0, 0, 128, 0.5)
    vector = np.eye(1, 8, dtype=np.float32)
    return write_shard(folder, shard_name(SLIDE.path), info, [item], vector)


def test_a_slide_shard_fits_only_runs_with_its_tta_setting(tmp_path):
    info = read_shard(_shard(tmp_path / "shards", tta=True)).info
    assert info.tta is True
    fits = [
        shard_fits(info, SLIDE.path, 1000, 2000, ("f" * 64, {"dim": 8}, tta, "fp32"), OPTIONS)
        for tta in (True, False)
    ]
    assert fits == [True, False]


def test_a_slide_shard_fits_only_runs_embedding_in_its_precision(tmp_path):
    info = read_shard(_shard(tmp_path / "shards", tta=False)).info
    assert info.precision == "fp32"
    fits = [
        shard_fits(info, SLIDE.path, 1000, 2000, ("f" * 64, {"dim": 8}, False, precision), OPTIONS)
        for precision in ("fp32", "int8", "fp16")
    ]
    assert fits == [True, False, False]


def test_a_shard_from_before_tta_existed_reads_as_embedded_without_it(tmp_path):
    path = _shard(tmp_path / "shards", tta=False)
    data = json.loads((path / SHARD_INFO).read_text())
    del data["tta"], data["precision"]
    (path / SHARD_INFO).write_text(json.dumps(data))
    assert read_shard(path).info.recipe() == ("f" * 64, {"dim": 8}, False, "fp32")
