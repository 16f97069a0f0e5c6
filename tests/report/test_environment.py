"""Sizes as people read them, in `histoseek info` and `histoseek cache`."""

import pytest

from histoseek.report.environment import format_size


@pytest.mark.parametrize(
    "size, shown",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (21_345_678, "21.3 MB"),
        (3_100_000_000, "3.1 GB"),
        (4_200_000_000_000, "4200.0 GB"),
    ],
)
def test_format_size(size, shown):
    assert format_size(size) == shown
