"""A service over an index built with --tta embeds its uploads with TTA too."""

from __future__ import annotations

import pytest
from serve_helpers import stub_embedder

from histoseek.errors import HistoseekError
from histoseek.index.build import build_index
from histoseek.index.search import open_index
from histoseek.serve.service import SearchOptions, SearchService


@pytest.fixture(scope="module")
def tta_index(kather_small, tmp_path_factory):
    embedder = stub_embedder()
    embedder.tta = True
    index_dir = tmp_path_factory.mktemp("serve-tta") / "index"
    build_index(kather_small, index_dir, embedder, trees=5)
    return open_index(index_dir)


def test_uploads_to_a_tta_index_are_embedded_with_tta(tta_index):
    embedder = stub_embedder()
    embedder.tta = True
    service = SearchService(tta_index, embedder, batch_window_s=0.0)
    data = tta_index.file_of(tta_index.items[5]).read_bytes()
    answer = service.search_upload(data, None, SearchOptions(k=1, exclude_self=False))
    service.close()
    # The stored TTA embedding is found at cosine 1; the 8 views went through the backend.
    assert answer.hits[0].item == 5 and answer.hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert embedder.backend.batch_sizes == [1] * 8


@pytest.mark.parametrize("index_tta", [True, False])
def test_an_embedder_with_the_other_tta_setting_is_refused(tta_index, opened, index_tta):
    embedder = stub_embedder()
    embedder.tta = not index_tta
    with pytest.raises(HistoseekError, match="--tta; its queries must be embedded the same way"):
        SearchService(tta_index if index_tta else opened, embedder)
