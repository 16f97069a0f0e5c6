"""Micro-batching: queries from many request threads embedded together by one model."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager

import numpy as np

from histoseek.errors import HistoseekError


class MicroBatcher:
    """Embeds single preprocessed images from many threads in shared batches, on one thread.

    A caller waits on a future. The worker embeds what is waiting as soon as no other query is
    on its way, so a lone query never waits. Queries still being decoded are announced with
    `arriving()`: while any is, the worker waits for them, up to `window_s` seconds or until
    it holds `max_batch` images, then embeds them with one call. On a CPU a batch of n costs
    far less than n single images, and while one batch runs the next one gathers.
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
        self._waiting: deque[tuple[np.ndarray, Future]] = deque()
        self._expected = 0  # announced queries whose image is not waiting yet
        self._changed = threading.Condition()
        self._closed = False
        self._stopped_by: str | None = None  # why the worker stopped, if it failed
        self._thread = threading.Thread(target=self._run, name="histoseek-batcher", daemon=True)
        self._thread.start()

    def embed(self, image: np.ndarray) -> np.ndarray:
        """Embed one CHW image (blocks until its batch is done) → its (dim,) embedding."""
        return self._submit(image, None)

    @contextmanager
    def arriving(self) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        """Announce a query whose image is still being decoded; yields the function that
        embeds it. A batch forming meanwhile waits for it (up to the window); leaving the
        block without embedding, on an error, withdraws it."""
        announcement = {"pending": True}
        with self._changed:
            self._expected += 1
        try:
            yield lambda image: self._submit(image, announcement)
        finally:
            with self._changed:
                if announcement["pending"]:
                    self._expected -= 1
                    self._changed.notify_all()

    def _submit(self, image: np.ndarray, announcement: dict | None) -> np.ndarray:
        future: Future = Future()
        with self._changed:
            if self._closed:
                raise HistoseekError(self._stopped_by or "the search service is shutting down")
            self._waiting.append((image, future))
            if announcement is not None and announcement["pending"]:
                announcement["pending"] = False
                self._expected -= 1
            self._changed.notify_all()
        return future.result()

    def close(self) -> None:
        """Embed what is already waiting, then stop the worker thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _collect(self) -> list[tuple[np.ndarray, Future]]:
        """The next batch; empty once closed with nothing left waiting."""
        with self._changed:
            while not self._waiting and not self._closed:
                self._changed.wait()
            deadline = time.monotonic() + self.window_s
            while (
                self._waiting
                and len(self._waiting) < self.max_batch
                and self._expected > 0
                and not self._closed
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            count = min(len(self._waiting), self.max_batch)
            return [self._waiting.popleft() for _ in range(count)]

    def _run(self) -> None:
        try:
            self._embed_batches()
        except Exception as error:  # no caller may wait for a worker that is gone
            with self._changed:
                self._closed = True
                self._stopped_by = f"the embedding worker stopped: {error}"
                waiting = [future for _, future in self._waiting]
                self._waiting.clear()
            for future in waiting:
                future.set_exception(HistoseekError(self._stopped_by))

    def _embed_batches(self) -> None:
        while batch := self._collect():
            futures = [future for _, future in batch]
            try:
                embeddings = self.embed_batch(np.stack([image for image, _ in batch]))
                if len(embeddings) != len(futures):
                    raise ValueError(
                        f"the model gave {len(embeddings)} embeddings for {len(futures)} images"
                    )
            except Exception as error:  # the callers get the backend's error, the worker lives on
                for future in futures:
                    future.set_exception(error)
                continue
            for future, embedding in zip(futures, embeddings, strict=True):
                future.set_result(embedding)
