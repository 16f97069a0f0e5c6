"""The micro-batcher: concurrent queries share model calls and get exactly their own rows back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import WIDE_WINDOW_S

from histoseek.errors import HistoseekError
from histoseek.serve.batcher import MicroBatcher


class CountingModel:
    """embed_batch that records each batch's size; row i's embedding is image i's pixel sums."""

    def __init__(self):
        self.batch_sizes: list[int] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(images))
        return images.reshape(len(images), 3, -1).sum(axis=2)


def images(count: int) -> list[np.ndarray]:
    return [np.full((3, 4, 4), value, np.float32) for value in range(count)]


def embed_together(batcher: MicroBatcher, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Embed every input from its own thread, each announced before any is handed over."""
    announced = threading.Barrier(len(inputs))

    def one(image: np.ndarray) -> np.ndarray:
        with batcher.arriving() as embed:
            announced.wait()
            return embed(image)

    with ThreadPoolExecutor(len(inputs)) as pool:
        return list(pool.map(one, inputs))


def test_concurrent_queries_share_one_batch_and_get_their_own_rows():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=8, window_s=WIDE_WINDOW_S)
    inputs = images(8)
    results = embed_together(batcher, inputs)
    batcher.close()
    assert model.batch_sizes == [8]
    for image, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result, image.reshape(3, -1).sum(axis=1))


def test_batches_never_exceed_the_batch_size():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=3, window_s=WIDE_WINDOW_S)
    embed_together(batcher, images(7))
    batcher.close()
    assert sum(model.batch_sizes) == 7 and max(model.batch_sizes) == 3


def test_a_lone_query_never_waits_for_the_window():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=8, window_s=WIDE_WINDOW_S)
    started = time.monotonic()
    batcher.embed(images(1)[0])
    with batcher.arriving() as embed:
        embed(images(2)[1])
    assert time.monotonic() - started < WIDE_WINDOW_S / 2
    batcher.close()
    assert model.batch_sizes == [1, 1]


def test_a_withdrawn_arrival_holds_no_batch_back():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=8, window_s=WIDE_WINDOW_S)
    with pytest.raises(ValueError, match="not an image"), batcher.arriving():
        raise ValueError("not an image")  # its decoding failed: nothing comes
    started = time.monotonic()
    batcher.embed(images(1)[0])
    assert time.monotonic() - started < WIDE_WINDOW_S / 2
    batcher.close()


def test_a_batch_waits_for_announced_queries_only_up_to_the_window():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=8, window_s=0.2)
    with batcher.arriving():  # announced, never handed over while the first waits
        started = time.monotonic()
        batcher.embed(images(1)[0])
        waited = time.monotonic() - started
    batcher.close()
    assert 0.2 <= waited < WIDE_WINDOW_S / 2 and model.batch_sizes == [1]


def test_a_lone_query_with_no_window_is_embedded_alone():
    model = CountingModel()
    batcher = MicroBatcher(model, max_batch=8, window_s=0.0)
    for image in images(3):
        batcher.embed(image)
    batcher.close()
    assert model.batch_sizes == [1, 1, 1]


def test_a_failing_batch_fails_its_callers_and_the_worker_goes_on():
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise ValueError("backend broke")
        return batch.reshape(len(batch), -1)

    batcher = MicroBatcher(flaky, max_batch=4, window_s=0.0)
    with pytest.raises(ValueError, match="backend broke"):
        batcher.embed(images(1)[0])
    assert batcher.embed(images(2)[1]).shape == (48,)
    batcher.close()


def test_after_close_it_refuses_new_queries():
    batcher = MicroBatcher(CountingModel(), max_batch=2, window_s=0.0)
    batcher.close()
    batcher.close()  # closing twice is harmless
    with pytest.raises(HistoseekError, match="shutting down"):
        batcher.embed(images(1)[0])


@pytest.mark.parametrize("max_batch, window_s", [(0, 0.0), (4, -0.001)])
def test_impossible_settings_are_refused(max_batch, window_s):
    with pytest.raises(HistoseekError):
        MicroBatcher(CountingModel(), max_batch, window_s)


def test_a_worker_that_stops_fails_every_caller_instead_of_leaving_them_waiting():
    class CollectingFails(MicroBatcher):
        def _collect(self):
            time.sleep(0.05)  # the query below is waiting by then, or comes after: both fail
            raise RuntimeError("collect broke")

    batcher = CollectingFails(CountingModel(), max_batch=4, window_s=0.0)
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(batcher.embed, image) for image in images(2)]
        for future in waiting:
            with pytest.raises(HistoseekError, match="the embedding worker stopped: collect"):
                future.result(timeout=10)
    with pytest.raises(HistoseekError, match="the embedding worker stopped: collect broke"):
        batcher.embed(images(1)[0])


def test_a_batch_answered_with_too_few_rows_fails_its_callers():
    batcher = MicroBatcher(lambda batch: batch.reshape(len(batch), -1)[:1], 4, WIDE_WINDOW_S)
    with ThreadPoolExecutor(2) as pool, batcher.arriving() as first, batcher.arriving() as second:
        futures = [
            pool.submit(embed, image)
            for embed, image in zip((first, second), images(2), strict=True)
        ]
        for future in futures:
            with pytest.raises(ValueError, match="the model gave 1 embeddings for 2 images"):
                future.result(timeout=10)
    batcher.close()
