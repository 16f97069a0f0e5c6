"""Helpers for the index tests: real Kather 2016 tiles and an in-process CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

KATHER = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "kather2016"
CLASSES = ("01_TUMOR", "02_STROMA", "05_DEBRIS", "07_ADIPOSE")
PER_CLASS = 2


def kather_tiles(count_per_class: int = PER_CLASS) -> list[Path]:
    """The first tiles of a few Kather 2016 classes, or skip when the data is absent."""
    if not KATHER.is_dir():
        pytest.skip(f"real tiles not available: {KATHER} is missing")
    return [
        path for name in CLASSES for path in sorted((KATHER / name).iterdir())[:count_per_class]
    ]


def copy_tiles(root: Path) -> Path:
    """Copy 8 real 150×150 tiles into root/<class>/: 2 in each of 4 class folders."""
    for path in kather_tiles():
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / path.parent.name / path.name)
    return root


def run_cli(*args: str | Path) -> Result:
    """Run `histoseek ARGS` in this process (the working folder is the caller's)."""
    from histoseek.cli import cli

    return CliRunner().invoke(
        cli, [str(arg) for arg in args], catch_exceptions=False, env={"COLUMNS": "250"}
    )


def index_args(directory: Path, checkpoint: Path, *extra: str | Path) -> list[str | Path]:
    """`index` arguments for a quick CPU run with the small model."""
    return [
        "index",
        directory,
        "--model",
        checkpoint,
        "--backend",
        "torch",
        "--workers",
        "0",
        *extra,
    ]


def error_line(result: Result) -> str:
    """The error of a failed command, asserting it is one line and the last thing printed."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert sum(line.startswith("Error") for line in lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[-1]
