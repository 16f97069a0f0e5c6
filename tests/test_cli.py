"""The command line as a whole: every error is one line, help is instant and complete."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from histoseek.cli import cli

COMMANDS = ["cache", "evaluate", "export", "index", "info", "prepare", "query", "synth", "train"]


def one_error_line(result) -> str:
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["query", "-k", "x", "img.png"], "'-k'"),
        (["prepare", "folder", "/no/such/folder", "-o", "out"], "does not exist"),
        (["no-such-command"], "No such command"),
        (["train", "data", "-o", "run", "--epochs", "0"], "--epochs"),
        (["evaluate"], "--gallery"),
        # Range bounds let nan through (every comparison with it is false), and inf past a
        # lower bound; both are refused.
        (["train", "data", "-o", "run", "--lr", "nan"], "'--lr': 'nan' is not a finite number"),
        (["train", "data", "-o", "run", "--ema-epochs", "inf"], "'--ema-epochs': 'inf'"),
        (["train", "data", "-o", "run", "--stain-jitter", "nan"], "'--stain-jitter': 'nan'"),
        (["serve", "index", "--max-upload-mb", "nan"], "'nan' is not a finite number"),
        (["prepare", "folder", "in", "-o", "out", "--scale", "nan"], "'--scale': 'nan'"),
        (["index", "folder", "--mpp", "nan"], "'--mpp': 'nan'"),
        # Seeds and tree counts beyond what Annoy, NumPy and torch take failed after the work.
        (["index", "folder", "--seed", str(2**31)], "'--seed': 2147483648 is not in the range"),
        (["index", "folder", "--trees", str(2**31)], "'--trees': 2147483648 is not in the range"),
        (["synth", "out", "--seed", "-1"], "'--seed': -1 is not in the range 0<=x<=2147483647"),
        (["prepare", "folder", "in", "-o", "out", "--seed", "-1"], "'--seed': -1 is not in"),
        (["train", "data", "-o", "run", "--seed", "-1"], "'--seed': -1 is not in the range"),
        (["evaluate", "--gallery", ".", "--group-regex", ""], "an empty regex finds no group"),
        (["train", "data", "-o", "run", "--group-regex", ""], "an empty regex finds no group"),
        (["index", "folder", "--group-regex", ""], "an empty regex finds no group"),
        # An image size no model may have allocated for it first (info: 120 GB, a traceback).
        (["info", "--image-size", "100000"], "'--image-size': 100000 is not in the range 32<="),
        (["train", "data", "-o", "run", "--image-size", "4097"], "is not in the range 32<=x<=4096"),
    ],
)
def test_usage_errors_are_one_line(args, fragment):
    assert fragment in one_error_line(CliRunner().invoke(cli, args))


def test_bare_command_shows_help():
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_help_does_not_import_torch():
    code = "import sys; from histoseek.cli import main; sys.argv=['histoseek','--help']\n"
    code += "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.stdout.strip().endswith("False"), completed.stdout + completed.stderr


def test_light_defaults_agree_with_the_modules_that_use_them():
    from PIL import Image

    from histoseek.model.backbones import BACKBONE_SPECS
    from histoseek.model.defaults import BACKBONE_NAMES
    from histoseek.prepare.defaults import DEFAULT_MAX_PIXELS

    assert tuple(BACKBONE_SPECS) == BACKBONE_NAMES
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_every_command_module_is_light():
    code = (
        "import sys, histoseek.cli\n"
        "heavy = {'torch', 'numpy', 'PIL', 'onnxruntime', 'annoy', 'rich'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.stdout.strip() == "[]", completed.stdout + completed.stderr
