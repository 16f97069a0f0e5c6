"""The metadata beside a TensorRT engine is checked value by value before it is trusted (no GPU
needed: it is plain JSON)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from histoseek.errors import HistoseekError
from histoseek.inference.exported import read_engine_metadata
from histoseek.model.cgd import builtin_config

GOOD = {
    "fingerprint": "f" * 64,
    "config": builtin_config().to_dict(),
    "precision": "fp16",
    "tensorrt_version": "10.9.0",
    "gpu_name": "NVIDIA H100",
    "compute_capability": "9.0",
    "max_batch": 64,
}


def _written(tmp_path: Path, metadata: object) -> Path:
    engine = tmp_path / "model.engine"
    Path(f"{engine}.json").write_text(json.dumps(metadata))
    return engine


def test_metadata_as_export_writes_it_is_read_back(tmp_path):
    assert read_engine_metadata(_written(tmp_path, GOOD)) == GOOD


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"fingerprint": 12345}, "fingerprint is not a string"),
        ({"gpu_name": None}, "gpu_name is not a string"),
        ({"compute_capability": [9, 0]}, "compute_capability is not a string"),
        ({"tensorrt_version": 10}, "tensorrt_version is not a string"),
        ({"precision": "int4"}, "precision 'int4' is not fp16 or fp32"),
        ({"config": "oops"}, "config is not a mapping"),
        ({"config": {**GOOD["config"], "dim": "48"}}, "config: dim must be a whole number"),
        ({"config": {}}, "config has no backbone, "),
    ],
)
def test_metadata_with_values_of_the_wrong_kind_is_refused_in_one_line(tmp_path, changes, message):
    engine = _written(tmp_path, {**GOOD, **changes})
    with pytest.raises(HistoseekError, match=re.escape(message)) as caught:
        read_engine_metadata(engine)
    assert str(caught.value).startswith(f"{engine}.json: ") and "\n" not in str(caught.value)


def test_metadata_missing_a_key_is_not_engine_metadata(tmp_path):
    engine = _written(tmp_path, {key: GOOD[key] for key in GOOD if key != "precision"})
    with pytest.raises(HistoseekError, match="is not histoseek engine metadata"):
        read_engine_metadata(engine)
