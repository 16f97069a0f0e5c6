"""The search service: concurrent uploads are embedded in shared batches, with the same answers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from serve_helpers import IMAGE_SIZE, WIDE_WINDOW_S, stub_embedder

from histoseek.errors import HistoseekError
from histoseek.serve.service import SearchOptions, SearchService


def ranked(answer) -> list[tuple[int, float]]:
    return [(hit.item, hit.similarity) for hit in answer.hits]


def test_concurrent_uploads_are_batched_and_answer_as_one_at_a_time(opened):
    uploads = [opened.file_of(item).read_bytes() for item in opened.items[::3]]  # 8 tiles
    options = SearchOptions(k=5, exclude_self=False)  # each upload finds its own tile first

    one_at_a_time = SearchService(opened, stub_embedder(batch_size=8), batch_window_s=0.0)
    alone = [ranked(one_at_a_time.search_upload(data, None, options)) for data in uploads]
    one_at_a_time.close()
    assert one_at_a_time.embedder.backend.batch_sizes == [1] * len(uploads)

    batched = SearchService(opened, stub_embedder(batch_size=8), batch_window_s=WIDE_WINDOW_S)
    decoding = threading.Barrier(len(uploads))
    preprocess = batched.preprocess

    def preprocess_together(data: bytes):
        decoding.wait()  # every upload is announced to the batcher before any is embedded
        return preprocess(data)

    batched.preprocess = preprocess_together

    def search(data: bytes):
        return batched.search_upload(data, None, options)

    with ThreadPoolExecutor(len(uploads)) as pool:
        together = [ranked(answer) for answer in pool.map(search, uploads)]
    batched.close()
    assert batched.embedder.backend.batch_sizes == [len(uploads)]
    assert together == alone
    assert [hits[0][0] for hits in together] == list(range(0, len(opened.items), 3))


def test_item_searches_use_the_stored_embedding_and_not_the_model(opened):
    service = SearchService(opened, stub_embedder())
    answer = service.search_item(7, SearchOptions(k=3, exclude_self=False))
    service.close()
    assert answer.hits[0].item == 7 and answer.timings.embed_ms == 0
    assert service.embedder.backend.batch_sizes == []


def test_an_embedder_of_another_model_is_refused(opened):
    embedder = stub_embedder()
    embedder.fingerprint = "another-model"
    with pytest.raises(HistoseekError, match="another model"):
        SearchService(opened, embedder)


@pytest.mark.parametrize("limits", [{"max_upload_bytes": 0}, {"max_pixels": 0}])
def test_upload_limits_below_one_are_refused(opened, limits):
    with pytest.raises(HistoseekError, match="upload limits"):
        SearchService(opened, stub_embedder(), **limits)


def test_an_uploaded_large_jpeg_embeds_as_the_same_file_does_on_the_command_line(opened, tmp_path):
    # 16× the model's input: index and query decode such a JPEG at 1/8 scale.
    tile = Image.open(opened.file_of(opened.items[0])).convert("RGB")
    path = tmp_path / "large.jpg"
    tile.resize((IMAGE_SIZE * 16, IMAGE_SIZE * 16)).save(path, quality=90)
    embedder = stub_embedder()
    on_the_command_line = embedder.embed_files([path]).embeddings[0]
    service = SearchService(opened, embedder)
    uploaded = embedder.backend.embed_batch(service.preprocess(path.read_bytes())[None])[0]
    service.close()
    np.testing.assert_array_equal(uploaded, on_the_command_line)
