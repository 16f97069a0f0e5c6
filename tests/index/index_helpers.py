"""Helpers for the index tests: real Kather 2016 tiles, an in-process CLI runner, and
`histoseek` runs in another process that a patch stops where a test needs them."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

REPO = Path(__file__).resolve().parents[2]
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
        "--device",
        "cpu",
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


class StoppedRun(Exception):
    """Raised by an embedder that `count_embedded` stops, where a kill would end the run."""


def count_embedded(embedder, stop_after: int | None = None) -> list[int]:
    """Make `embedder` list how many images each of its embed_files calls gets (the list
    returned, in place of any earlier count's), and raise StoppedRun instead of the call after
    the first `stop_after`."""
    embed_files, calls = functools.partial(type(embedder).embed_files, embedder), []

    def counted(sources, progress=None):
        if len(calls) == stop_after:
            raise StoppedRun
        calls.append(len(sources))
        return embed_files(sources, progress)

    embedder.embed_files = counted
    return calls


def build_stopped(source: Path, index_dir: Path, embedder, calls: int) -> None:
    """Run `index` of `source` into `index_dir` and stop it, as a kill would, at the
    embedder's call after the first `calls` (so after as many chunks of plain images)."""
    from histoseek.index.build import build_index

    count_embedded(embedder, stop_after=calls)
    with pytest.raises(StoppedRun):
        build_index(source, index_dir, embedder)


#: Patch for start_run: the run announces HOLDING and waits for a line on its stdin before
#: it embeds anything, so it holds the index's lock for exactly as long as a test needs.
HOLD_BEFORE_EMBEDDING = """
import sys
from histoseek.embedder import ImageEmbedder
_embed_files = ImageEmbedder.embed_files
def embed_files(self, paths, progress=None):
    print("HOLDING", file=sys.stderr, flush=True)
    sys.stdin.readline()
    return _embed_files(self, paths, progress)
ImageEmbedder.embed_files = embed_files
"""


def kill_at_rename(condition: str) -> str:
    """Patch for start_run: the run kills itself (SIGKILL) at the first os.replace(src, dst)
    for which the Python expression `condition` (of src and dst, as str) is true."""
    return f"""
import os, signal
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    src, dst = os.fsdecode(src), os.fsdecode(dst)
    if {condition}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
"""


def _python_path() -> str:
    """PYTHONPATH for a child process: this checkout first, then whatever was set already."""
    return os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))


def start_run(args: list[str | Path], patch: str = "") -> subprocess.Popen:
    """Start `histoseek ARGS` in another process, with the Python code `patch` run first."""
    code = f"{patch}\nfrom histoseek.cli import main\nmain()\n"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": _python_path(), "COLUMNS": "250"},
    )


def read_until(process: subprocess.Popen, marker: str) -> str:
    """The stderr of `process` up to and including the first line holding `marker`."""
    seen = ""
    while marker not in seen:
        line = process.stderr.readline()
        assert line, f"the run ended (exit {process.wait()}) before {marker!r}:\n{seen}"
        seen += line
    return seen


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """(exit code, rest of stderr) of a started run, letting a held one go on first."""
    with contextlib.suppress(BrokenPipeError):  # a run that holds nothing may be done
        process.stdin.write("go\n")
        process.stdin.close()
    rest = process.stderr.read()
    process.stderr.close()
    return process.wait(timeout=300), rest


def stop(process: subprocess.Popen) -> None:
    """Make sure a started run is gone and its pipes closed (for a test's `finally`)."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for pipe in (process.stdin, process.stderr):
        with contextlib.suppress(BrokenPipeError):
            pipe.close()


def leftovers_beside(index_dir: Path) -> list[str]:
    """Names beside `index_dir` that runs writing it create: temporary folders and the lock."""
    return sorted(
        name for name in os.listdir(index_dir.parent) if name.startswith(f".{index_dir.name}.")
    )
