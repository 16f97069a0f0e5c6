"""`histoseek cache`: list histoseek's cached exports, or clear them and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from histoseek.cli import cli
from histoseek.inference.exported import cached_onnx_path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    # Longer than the listing's table is wide: the path must still print whole, on one line.
    folder = tmp_path / ("cache-" + "x" * 100)
    monkeypatch.setenv("HISTOSEEK_CACHE", str(folder))
    monkeypatch.setenv("COLUMNS", "250")
    return folder


def run(*args: str):
    result = CliRunner().invoke(cli, ["cache", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_empty_cache_says_so(cache):
    assert run() == f"{cache}: no cached export\n"
    assert run("--clear") == f"removed 0 file(s) from {cache}, freed 0 B\n"


def test_cache_lists_and_clears_only_the_exports(cache):
    export = cached_onnx_path("cd" * 32, 224)
    export.parent.mkdir(parents=True)
    export.write_bytes(b"\0" * 2_500_000)
    foreign = cache / "onnx" / "notes.txt"
    foreign.write_text("mine")

    listing = run()
    assert f"histoseek cache: {cache}" in listing
    assert f"onnx/{export.name}" in listing and "2.5 MB" in listing
    assert "total: 1 file(s)" in listing and "notes.txt" not in listing

    cleared = run("--clear")
    assert f"removed {export} (2.5 MB)" in cleared
    assert f"removed 1 file(s) from {cache}, freed 2.5 MB" in cleared
    assert not export.exists() and foreign.read_text() == "mine"


def test_cache_command_does_not_load_torch(cache):
    code = (
        "import sys; from histoseek.cli import main; sys.argv=['histoseek','cache']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.stdout.strip().endswith("False"), completed.stdout + completed.stderr


def test_cache_names_int8_exports(cache):
    export = cached_onnx_path("cd" * 32, 224, int8=True)
    export.parent.mkdir(parents=True)
    export.write_bytes(b"\0" * 1000)
    listing = run()
    assert f"onnx/{export.name}" in listing and "INT8 ONNX export" in listing
