"""Shared fixtures: small sets of real tiles copied from ../shared/data."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
KATHER = SHARED_DATA / "kather2016"


def copy_kather_tiles(target: Path, classes: list[str], per_class: int) -> Path:
    """Copy the first `per_class` tiles of each kather2016 class into target/<class>/."""
    if not KATHER.is_dir():
        pytest.skip(f"real tiles not available: {KATHER} is absent")
    for name in classes:
        (target / name).mkdir(parents=True, exist_ok=True)
        for tile in sorted((KATHER / name).glob("*.tif"))[:per_class]:
            shutil.copy(tile, target / name / tile.name)
    return target


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory) -> Iterator[Path]:
    """Keep the on-the-fly ONNX exports of the test models out of the user's own cache."""
    cache = tmp_path_factory.mktemp("histoseek-cache")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("HISTOSEEK_CACHE", str(cache))
    yield cache
    patcher.undo()


@pytest.fixture(scope="session")
def kather_small(tmp_path_factory) -> Path:
    """Three kather2016 classes, eight real tiles each (read-only: copy before changing)."""
    return copy_kather_tiles(
        tmp_path_factory.mktemp("kather_small"), ["01_TUMOR", "04_LYMPHO", "07_ADIPOSE"], 8
    )


class FifoGuard:
    """FIFOs named like images, and a watcher that notices anything opening one to read.

    A reader of a FIFO blocks until a writer comes; the watcher opens each FIFO for writing
    without blocking, which succeeds only while a reader waits: it records that, and closes
    at once so the reader sees an empty file instead of hanging the test.
    """

    def __init__(self) -> None:
        self.fifos: list[Path] = []
        self.opened: list[Path] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def make(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self.fifos.append(path)
        return path

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for path in list(self.fifos):
                try:
                    descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue  # no reader waiting (ENXIO), or the FIFO is gone
                self.opened.append(path)
                os.close(descriptor)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def fifo_guard() -> Iterator[FifoGuard]:
    """Make FIFOs with `fifo_guard.make(path)`; `fifo_guard.opened` lists those read."""
    guard = FifoGuard()
    yield guard
    guard.stop()
