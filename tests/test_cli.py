"""The command line as a whole: every error is one line, help is instant and complete."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from histoseek.cli import cli

COMMANDS = ["evaluate", "export", "index", "info", "prepare", "query", "synth", "train"]


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
