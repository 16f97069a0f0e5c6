"""The index benchmark: its recall reference is the exact top 10, and it caches where told."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def test_exhaustive_search_finds_the_exact_top_ten_and_the_cache_goes_where_told(
    benchmark_script, monkeypatch, tmp_path
):
    index_search = benchmark_script("index_search")
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        folder = tmp_path / "crc-polyps5" / "train" / label
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{label}{i}.png")
    monkeypatch.setattr(index_search, "DATA", tmp_path / "crc-polyps5")
    out = tmp_path / "out.json"
    document = index_search.main(
        [
            "--sizes", "100,300",
            "--dims", "48",
            "--trees", "3",
            "--search-k", "0,100000",
            "--queries", "6",
            "--rank", "4",
            "--cache", str(tmp_path / "cache"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == document
    assert document["machine"]["cpu_cores"] >= 1 and document["machine"]["cpu"]
    assert [(row["dim"], row["size"]) for row in document["annoy"]] == [(48, 100), (48, 300)]
    for row in document["annoy"]:
        default, exhaustive = row["searches"]
        assert default["search_k"] == 10 * 3 and 0 <= default["recall@10"] <= 1
        assert exhaustive["recall@10"] == 1.0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        "crc-polyps5-cgd-seed0-dim48-20.npy"
    ]
