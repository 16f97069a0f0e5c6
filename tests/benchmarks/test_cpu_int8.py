"""The CPU benchmark's measuring schedule: raw figures and index runs taken in turn, medians."""

from __future__ import annotations

import pytest


def test_raw_figures_and_index_runs_alternate_and_their_medians_are_kept(
    benchmark_script, monkeypatch, tmp_path
):
    script = benchmark_script("cpu_int8")
    schedule: list[tuple[str, str]] = []
    raw_figures = iter([100.0, 50.0, 300.0, 60.0, 200.0, 40.0])
    index_figures = iter([80.0, 30.0, 90.0, 20.0, 70.0, 25.0])

    def raw(embedder, batch, seconds):
        schedule.append(("raw", embedder))
        return next(raw_figures)

    def index(embedder, source, index_dir):
        schedule.append(("index", embedder))
        figure = next(index_figures)
        return {"images": 10, "seconds": 10 / figure, "images_per_s": figure}

    monkeypatch.setattr(script, "raw_images_per_second", raw)
    monkeypatch.setattr(script, "end_to_end", index)
    layouts = [("side by side", "side by side"), ("alone", "fed")]
    own, other = script.measured_in_turns(layouts, None, 1.0, tmp_path, tmp_path / "i", turns=3)
    turn = [("raw", "side by side"), ("index", "side by side"), ("raw", "alone"), ("index", "fed")]
    assert schedule == turn * 3
    assert own["raw_turns"] == [100.0, 300.0, 200.0] and own["raw_images_per_s"] == 200.0
    assert own["index"] == {"images": 10, "images_per_s": 80.0, "turns": [80.0, 90.0, 70.0]}
    assert other["raw_images_per_s"] == 50.0 and other["index"]["images_per_s"] == 25.0


def test_an_index_run_starts_from_an_empty_folder(benchmark_script, monkeypatch, tmp_path):
    script = benchmark_script("cpu_int8")
    stale = tmp_path / "index" / "manifest.json"
    stale.parent.mkdir()
    stale.write_text("{}")
    seen = []

    class Report:
        items = 3

    def build_index(source, index_dir, embedder, overwrite):
        seen.append(index_dir.exists())
        return Report()

    monkeypatch.setattr(script, "build_index", build_index)
    result = script.end_to_end(object(), tmp_path, tmp_path / "index")
    assert seen == [False] and result["images"] == 3 and result["images_per_s"] > 0


def test_zero_turns_are_refused_before_anything_is_measured(benchmark_script, monkeypatch):
    cpu_int8 = benchmark_script("cpu_int8")
    monkeypatch.setattr(cpu_int8, "run", lambda args: pytest.fail("measured with no turns"))
    with pytest.raises(SystemExit) as stopped:
        cpu_int8.main(["--turns", "0"])
    assert stopped.value.code == 2
