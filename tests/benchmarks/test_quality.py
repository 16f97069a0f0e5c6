"""The quality benchmark trains with histoseek's defaults, changing only what it is told to."""

from __future__ import annotations

from dataclasses import replace

import pytest

from histoseek.train_config import TrainConfig


class _Stop(Exception):
    pass


def test_the_run_uses_the_training_defaults_and_the_seed_given(
    benchmark_script, monkeypatch, tmp_path
):
    quality = benchmark_script("quality")
    (tmp_path / "crc-polyps5").mkdir()
    monkeypatch.setattr(quality, "DATA", tmp_path)
    configs = []

    def fake_train(config, overwrite, notify):
        configs.append(config)
        raise _Stop

    monkeypatch.setattr(quality, "train", fake_train)
    with pytest.raises(_Stop):
        quality.main(["--seed", "3", "--run-dir", str(tmp_path / "run")])
    defaults = TrainConfig(data_dir=configs[0].data_dir, run_dir=str(tmp_path / "run"))
    assert configs[0] == replace(defaults, seed=3)
    assert configs[0].data_dir == str(tmp_path / "crc-polyps5" / "train")
