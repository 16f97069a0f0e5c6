"""The built-in pooling benchmark runs end to end on a few tiles and writes its JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KATHER = ROOT / ".." / "shared" / "data" / "kather2016"


def test_every_descriptor_is_scored_on_every_set_with_and_without_tta(
    benchmark_script, tmp_path: Path
):
    if not KATHER.is_dir():
        pytest.skip(f"real tiles not available: {KATHER} is absent")
    kather = tmp_path / "kather"
    for name in ("01_TUMOR", "07_ADIPOSE"):
        (kather / name).mkdir(parents=True)
        for tile in sorted((KATHER / name).glob("*.tif"))[:3]:
            shutil.copy(tile, kather / name)
    out = tmp_path / "pooling.json"
    argv = ["--kather", str(kather), "--synthetic-per-class", "2", "--image-size", "48"]
    document = benchmark_script("builtin_pooling").main(
        [*argv, "--workers", "0", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == document
    rows = document["results"]
    assert {(r["set"], r["tta"]) for r in rows} == {
        (name, tta) for name in ("kather2016", "synthetic") for tta in (False, True)
    }
    assert [r["descriptor"] for r in rows[:4]] == [
        "built-in model",
        "former built-in (random projections)",
        "plain average pooling",
        "plain GeM",
    ]
    assert [r["dim"] for r in rows[:4]] == [1280, 1536, 1280, 1280]
    assert {r["images"] for r in rows if r["set"] == "kather2016"} == {6}
    assert all(0.0 <= r["recall@1"] <= 1.0 for r in rows)
