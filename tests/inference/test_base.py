"""What every backend's output must be before anything ranks by it: one finite unit-length
row of the model's dim per image."""

from __future__ import annotations

import numpy as np
import pytest

from histoseek.errors import HistoseekError
from histoseek.inference.base import checked_embeddings

UNIT_ROWS = np.eye(2, 3, dtype=np.float64)


def _check(embeddings: np.ndarray, count: int = 2, dim: int = 3) -> np.ndarray:
    return checked_embeddings(embeddings, count, dim, "the exported model m.onnx", "remake it")


def test_finite_unit_rows_of_the_dim_pass_as_float32():
    rounded = UNIT_ROWS * (1 + 5e-4)
    checked = _check(rounded)
    assert checked.dtype == np.float32 and np.allclose(checked, rounded)


@pytest.mark.parametrize(
    "embeddings, count, dim, problem",
    [
        (UNIT_ROWS, 2, 4, "gives an array of shape (2, 3) for 2 image(s), not (2, 4)"),
        (UNIT_ROWS, 3, 3, "gives an array of shape (2, 3) for 3 image(s), not (3, 3)"),
        (UNIT_ROWS[None], 2, 3, "gives an array of shape (1, 2, 3) for 2 image(s), not (2, 3)"),
        (UNIT_ROWS * [[1], [np.nan]], 2, 3, "embeds an image as numbers that are not finite"),
        (
            np.array([[np.inf, 0, 0], [0, 1, 0]]),
            2,
            3,
            "embeds an image as numbers that are not finite",
        ),
        (UNIT_ROWS * [[1], [2]], 2, 3, "embeds an image as a vector of length 2, not of unit"),
        (UNIT_ROWS * 0.99, 2, 3, "embeds an image as a vector of length 0.99, not of unit"),
    ],
)
def test_anything_else_is_refused_blaming_the_model(embeddings, count, dim, problem):
    with pytest.raises(HistoseekError) as refused:
        _check(embeddings, count, dim)
    message = str(refused.value)
    assert message.startswith(f"the exported model m.onnx {problem}")
    assert message.endswith("; remake it")
