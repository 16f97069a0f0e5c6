"""Fixtures for the service tests: an index of real tiles embedded by a quick stub backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from assembled_slides import KATHER
from serve_helpers import build_slide_archive, stub_embedder

from histoseek.index.build import build_index
from histoseek.index.search import OpenIndex, open_index


@pytest.fixture(scope="session")
def stub_index_dir(kather_small, tmp_path_factory) -> Path:
    """An index of 24 real tiles of 3 classes built with the stub backend (read-only)."""
    index_dir = tmp_path_factory.mktemp("serve") / "index"
    build_index(kather_small, index_dir, stub_embedder(), trees=5)
    return index_dir


@pytest.fixture(scope="session")
def slide_index_dir(tmp_path_factory) -> Path:
    """An index of two pseudo-slides and one image built with the stub backend (read-only)."""
    if not KATHER.is_dir():
        pytest.skip(f"the slide archive is assembled from kather2016 tiles: {KATHER} is absent")
    return build_slide_archive(tmp_path_factory.mktemp("serve_slides"))


@pytest.fixture
def opened(stub_index_dir) -> OpenIndex:
    """The stub index, opened afresh (tests may change its items in memory)."""
    return open_index(stub_index_dir)


@pytest.fixture
def service(opened) -> Iterator:
    """A search service over the stub index (batch window 5 ms)."""
    from histoseek.serve.service import SearchService

    service = SearchService(opened, stub_embedder())
    yield service
    service.close()


@pytest.fixture
def client(service) -> Iterator:
    """A TestClient of the app over `service`."""
    from fastapi.testclient import TestClient

    from histoseek.serve.app import create_app

    with TestClient(create_app(service)) as client:
        yield client
