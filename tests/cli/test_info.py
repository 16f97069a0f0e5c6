"""`histoseek info`: the built-in model by default, a described architecture on request, and
the backends, device and cache of this installation."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from histoseek.cli import cli
from histoseek.inference.availability import auto_device
from histoseek.inference.exported import cached_onnx_path
from histoseek.model.cgd import builtin_model
from histoseek.model.checkpoint import model_fingerprint


@pytest.fixture
def wide(monkeypatch):
    """A wide console, so that rich does not wrap the lines the tests look for."""
    monkeypatch.setenv("COLUMNS", "250")


def run(*args: object):
    return CliRunner().invoke(cli, ["info", *map(str, args)])


def rows(output: str) -> dict[str, str]:
    """The property → value rows of info's two-column tables."""
    cells = (line.strip("│").split("│") for line in output.splitlines() if line.startswith("│"))
    return {name.strip(): value.strip() for name, value in cells}


def test_info_describes_the_builtin_model_and_this_installation(wide, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HISTOSEEK_CACHE", str(cache))
    export = cached_onnx_path("ab" * 32, 224)
    export.parent.mkdir(parents=True)
    export.write_bytes(b"\0" * 2500)

    result = run()
    assert result.exit_code == 0, result.output
    shown = rows(result.stdout)
    assert shown["model"].startswith("builtin (ImageNet EfficientNet-Lite0")
    assert shown["fingerprint"] == model_fingerprint(builtin_model())[:16]
    for backend in ("torch", "onnx (CPU)", "onnx (CUDA)", "tensorrt"):
        assert shown[f"backend {backend}"][0] in "✓✗"
    assert shown["backend torch"] == f"✓ PyTorch {torch.__version__}"
    assert shown["device (auto)"] == auto_device()
    assert shown["cache"] == f"{cache}: 1 file(s), 2.5 kB — see `histoseek cache`"


@pytest.mark.parametrize("option", [["--backbone", "efficientnet_lite0"], ["--classes", "0"]])
def test_info_describes_an_architecture_given_explicitly(wide, option):
    # Even an option given at its default value asks for a described architecture.
    result = run(*option, "--dim", "48", "--image-size", "64")
    assert result.exit_code == 0, result.output
    shown = rows(result.stdout)
    assert shown["model"] == "described architecture, untrained (random weights)"
    assert shown["embedding dim"] == "48" and "fingerprint" not in shown


def test_info_refuses_architecture_options_with_a_model(tmp_path):
    result = run("--model", tmp_path / "model.pt", "--dim", "48", "--backbone", "resnet50")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: --backbone, --dim describe an untrained architecture; they do not apply with "
        "--model"
    )


def test_an_unreadable_cache_is_shown_in_its_row_and_the_rest_still_is(wide, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("x")
    monkeypatch.setenv("HISTOSEEK_CACHE", str(not_a_folder))
    result = run("--classes", "0", "--dim", "48", "--image-size", "64")
    assert result.exit_code == 0, result.output
    shown = rows(result.stdout)
    assert shown["cache"].startswith(f"✗ cannot read the cache folder {not_a_folder / 'onnx'}: ")
    assert shown["backend torch"] == f"✓ PyTorch {torch.__version__}"
    assert shown["device (auto)"] == auto_device()
