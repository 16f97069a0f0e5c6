"""Embedding files: batches run side by side in threads, or one at a time fed by workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histoseek.errors import HistoseekError
from histoseek.inference.embed_files import embed_files
from histoseek.model.cgd import ModelConfig

SIZE = 32
CONFIG = ModelConfig(image_size=SIZE, dim=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class ChannelMeans:
    """A stand-in model: each image's mean per channel, normalised; it records its calls."""

    name = "channel means"
    dim = 3

    def __init__(self, batch_threads: int, fail_on_size: int | None = None):
        self.batch_threads = batch_threads
        self.fail_on_size = fail_on_size
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.both_running = threading.Barrier(2, timeout=10)

    def embed_batch(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls.append((threading.current_thread().name, len(images)))
        if self.batch_threads > 1 and len(self.calls) <= 2:
            self.both_running.wait()  # the first two batches must run at the same time
        if len(images) == self.fail_on_size:
            self.failed = True
            raise HistoseekError("the model failed")
        if getattr(self, "failed", False):
            time.sleep(0.1)  # batches after a failure are slow: they should be cancelled
        means = images.mean(axis=(2, 3)) + 1e-3
        return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Eleven images of distinct colours, and two unreadable files among them."""
    paths = []
    for number in range(11):
        path = tmp_path / f"{number:02d}.png"
        Image.new("RGB", (SIZE * 2, SIZE), (20 * number, 200 - 15 * number, 90)).save(path)
        paths.append(path)
    for name in ("03.png", "08.png"):
        (tmp_path / name).write_bytes(b"not an image")
    return paths


def test_side_by_side_embeds_what_one_at_a_time_does_in_input_order(files):
    progress: list[tuple[int, int]] = []
    threaded = embed_files(
        ChannelMeans(2), CONFIG, files, batch_size=4, progress=lambda *p: progress.append(p)
    )
    serial = embed_files(ChannelMeans(batch_threads=1), CONFIG, files, batch_size=4)
    assert threaded.failed == serial.failed == [3, 8]
    assert threaded.indices.tolist() == serial.indices.tolist() == [0, 1, 2, 4, 5, 6, 7, 9, 10]
    np.testing.assert_allclose(threaded.embeddings, serial.embeddings, atol=1e-6)
    assert threaded.stored_sizes.tolist() == serial.stored_sizes.tolist() == [[SIZE * 2, SIZE]] * 9
    assert progress[-1] == (11, 11) and [done for done, _ in progress] == sorted(
        done for done, _ in progress
    )


@pytest.mark.parametrize("batch_threads", [1, 2])
def test_a_job_of_only_unreadable_files_gives_empty_arrays_of_the_right_shape(files, batch_threads):
    unreadable = [files[3], files[8]]
    embedded = embed_files(ChannelMeans(batch_threads), CONFIG, unreadable, batch_size=4)
    assert embedded.failed == [0, 1]
    assert embedded.embeddings.shape == (0, 3) and embedded.embeddings.dtype == np.float32
    assert embedded.indices.shape == (0,) and embedded.stored_sizes.shape == (0, 2)


def test_batches_run_on_every_thread_and_a_small_job_is_split_over_them(files):
    backend = ChannelMeans(batch_threads=2)
    embedded = embed_files(backend, CONFIG, files[:6], batch_size=32)
    # Six images, two threads: two batches of three (one unreadable), one on each thread.
    assert sorted(size for _, size in backend.calls) == [2, 3]
    assert len({thread for thread, _ in backend.calls}) == 2
    assert embedded.indices.tolist() == [0, 1, 2, 4, 5]


def test_a_failing_batch_raises_its_error_and_stops_the_rest(files):
    backend = ChannelMeans(batch_threads=2, fail_on_size=1)
    with pytest.raises(HistoseekError, match="the model failed"):
        embed_files(backend, CONFIG, files * 3, batch_size=2)
    assert len(backend.calls) < 10  # most of the 17 batches, queued behind it, never ran
    assert not [t for t in threading.enumerate() if t.name.startswith("histoseek-embed")]


def test_without_batch_threads_batches_run_one_at_a_time_in_this_thread(files):
    backend = ChannelMeans(batch_threads=1)
    embed_files(backend, CONFIG, files, batch_size=4)
    assert {thread for thread, _ in backend.calls} == {threading.current_thread().name}
    assert [size for _, size in backend.calls] == [3, 4, 2]  # unreadable files left out
