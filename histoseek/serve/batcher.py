"""Micro-batching: queries from many request threads embedded together by one model."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from histoseek.errors import HistoseekError

_STOP = object()


class MicroBatcher:
    """Embeds single preprocessed images from many threads in shared batches, on one thread.

    A caller waits on a future. The worker takes the first waiting image, collects more for up
    to `window_s` seconds or until it holds `max_batch`, and embeds them with one call: on a
    CPU a batch of n costs far less than n single images, and only one thread drives the model.
    """

    def __init__(
        self, embed_batch: Callable[[np.ndarray], np.ndarray], max_batch: int, window_s: float
    ):
        if max_batch < 1 or window_s < 0:
            raise HistoseekError(
                f"a batch holds at least 1 image and waits 0 s or more, not {max_batch} and "
                f"{window_s} s"
            )
        self.embed_batch = embed_batch
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="histoseek-batcher", daemon=True)
        self._thread.start()

    def embed(self, image: np.ndarray) -> np.ndarray:
        """Embed one CHW image (blocks until its batch is done) → its (dim,) embedding."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise HistoseekError("the search service is shutting down")
            self._queue.put((image, future))
        return future.result()

    def close(self) -> None:
        """Embed what is already waiting, then stop the worker thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def _collect(self) -> tuple[list[tuple[np.ndarray, Future]], bool]:
        """The next batch, and whether the stop signal came after it."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                waiting = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if waiting is _STOP:
                return batch, True
            batch.append(waiting)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._collect()
            if not batch:
                continue
            futures = [future for _, future in batch]
            try:
                embeddings = self.embed_batch(np.stack([image for image, _ in batch]))
            except Exception as error:  # the callers get the backend's error, the worker lives on
                for future in futures:
                    future.set_exception(error)
                continue
            for future, embedding in zip(futures, embeddings, strict=True):
                future.set_result(embedding)
