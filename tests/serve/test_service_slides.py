"""The service over an index of slides and images: where each tile hit lies, tiles read back
from their slides, slide overviews with the hit's box, and exclusion by slide or patient.

The slides are pseudo-slides assembled from real kather2016 tiles (see assembled_slides.py);
the source image (CRC-Prim-HE-NN) stands for the patient.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_helpers import LOOSE_IMAGE, stub_embedder

from histoseek.index.items import read_item_image
from histoseek.index.search import open_index
from histoseek.report.slide_views import HIT_COLOUR
from histoseek.serve.defaults import SLIDE_VIEW_SIZE


@pytest.fixture
def slide_client(slide_index_dir) -> Iterator:
    from fastapi.testclient import TestClient

    from histoseek.serve.app import create_app
    from histoseek.serve.service import SearchService

    service = SearchService(open_index(slide_index_dir), stub_embedder())
    with TestClient(create_app(service)) as client:
        yield client, service


def _first_tile(service, slide_class: str) -> int:
    return next(
        number
        for number, item in enumerate(service.index.items)
        if item.is_tile and item.path.startswith(slide_class)
    )


def test_tile_hits_say_where_they_lie_and_images_say_nothing_of_slides(slide_client):
    client, service = slide_client
    tile = _first_tile(service, "01_TUMOR")
    answer = client.post("/api/search", data={"item": tile, "k": 1000}).json()
    hits = {hit["item"]: hit for hit in answer["hits"]}
    assert len(hits) == len(service.index.items) - 1
    for number, hit in hits.items():
        item = service.index.items[number]
        if item.is_tile:
            assert (hit["slide"], hit["group"], hit["x"], hit["y"]) == (
                item.slide_id,
                item.group,
                item.x,
                item.y,
            )
            assert (hit["size"], hit["mpp"]) == (item.tile_size, item.mpp)
            assert hit["slide"].startswith("assembled_")
        else:
            assert hit["path"] == LOOSE_IMAGE
            assert hit["group"] == "CRC-Prim-HE-01"
            assert hit["slide"] is hit["x"] is hit["y"] is hit["size"] is hit["mpp"] is None


def test_a_tile_is_read_back_from_its_slide_at_full_resolution(slide_client):
    client, service = slide_client
    tile = _first_tile(service, "04_LYMPHO")
    response = client.get(f"/api/items/{tile}/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content)).convert("RGB")
    source = service.index.manifest.source_dir
    expected = read_item_image(source, service.index.items[tile])
    assert image.size == (64, 64)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    thumbnail = client.get(f"/api/items/{tile}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/jpeg"


def test_the_slide_overview_outlines_the_tile(slide_client):
    client, service = slide_client
    tile = _first_tile(service, "01_TUMOR")
    response = client.get(f"/api/items/{tile}/slide")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    overview = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), np.int16)
    assert max(overview.shape[:2]) == SLIDE_VIEW_SIZE
    item = service.index.items[tile]
    with_box = _slide_dimensions(service, tile)
    scale = overview.shape[1] / with_box[0]
    left, top = round(item.x * scale), round(item.y * scale)
    # The box's top left corner is drawn in the hit colour; glass far from it is not.
    corner = overview[top + 1, left + 1]
    assert np.abs(corner - np.array(HIT_COLOUR)).max() < 60
    assert np.abs(overview[-2, -2] - np.array(HIT_COLOUR)).max() > 100


def _slide_dimensions(service, item_id: int) -> tuple[int, int]:
    from histoseek.slide.reader import open_slide

    with open_slide(service.item_file(item_id)) as slide:
        return slide.dimensions


def test_an_image_item_has_no_slide_overview(slide_client):
    client, service = slide_client
    image_item = next(n for n, item in enumerate(service.index.items) if not item.is_tile)
    response = client.get(f"/api/items/{image_item}/slide")
    assert response.status_code == 404
    assert response.json() == {"error": f"item {image_item} is an image file, not a slide tile"}


def test_exclusion_by_slide_and_by_patient(slide_client):
    client, service = slide_client
    items = service.index.items
    tile = _first_tile(service, "01_TUMOR")
    query = items[tile]

    def hits(**fields) -> list[int]:
        answer = client.post("/api/search", data={"item": tile, "k": 1000, **fields})
        assert answer.status_code == 200, answer.text
        return [hit["item"] for hit in answer.json()["hits"]]

    everything = hits()
    other_slides = hits(exclude="same-slide")
    assert other_slides and all(items[n].slide_id != query.slide_id for n in other_slides)
    assert set(other_slides) == {n for n in everything if items[n].slide_id != query.slide_id}
    other_patients = hits(exclude="same-group")
    assert other_patients and all(items[n].group != query.group for n in other_patients)
    # The loose image belongs to the other patient's group, so it stays.
    assert any(not items[n].is_tile for n in other_patients)


def test_exclusion_scales_search_k_and_says_so(slide_client):
    client, service = slide_client
    tile = _first_tile(service, "01_TUMOR")
    plain = client.post("/api/search", data={"item": tile}).json()
    excluding = client.post("/api/search", data={"item": tile, "exclude": "same-slide"}).json()
    assert (plain["search_k_scaled"], excluding["search_k_scaled"]) == (False, True)
    assert plain["search_k"] == excluding["search_k"]


def test_an_exclusion_that_leaves_nothing_is_refused(slide_index_dir):
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from histoseek.serve.app import create_app
    from histoseek.serve.service import SearchService

    one_patient = open_index(slide_index_dir)
    one_patient.items = [replace(item, group="P1") for item in one_patient.items]
    service = SearchService(one_patient, stub_embedder())
    tile = _first_tile(service, "01_TUMOR")
    with TestClient(create_app(service)) as client:
        refused = client.post("/api/search", data={"item": tile, "exclude": "same-group"})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "exclude=same-group leaves nothing to search: every item of the index is "
        f"from the group (patient) of item {tile}"
    }


def test_exclusion_refusals_are_one_line(slide_client):
    client, service = slide_client
    image_item = next(n for n, item in enumerate(service.index.items) if not item.is_tile)
    refused = client.post("/api/search", data={"item": image_item, "exclude": "same-slide"})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": f"exclude=same-slide: item {image_item} is an image file, not a slide tile"
    }
    data = (Path(service.index.manifest.source_dir) / LOOSE_IMAGE).read_bytes()
    upload = client.post(
        "/api/search",
        files={"image": ("q.png", data, "image/png")},
        data={"exclude": "same-group"},
    )
    assert upload.status_code == 400 and "slide and patient are unknown" in upload.json()["error"]
    unknown = client.post("/api/search", data={"item": 0, "exclude": "same-planet"})
    assert unknown.status_code == 422 and "\n" not in unknown.json()["error"]


def test_a_slide_gone_since_indexing_is_a_404(slide_index_dir, tmp_path):
    from fastapi.testclient import TestClient

    from histoseek.serve.app import create_app
    from histoseek.serve.service import SearchService

    copy = tmp_path / "index"
    shutil.copytree(slide_index_dir, copy)
    opened = open_index(copy)
    moved = tmp_path / "archive"
    shutil.copytree(opened.manifest.source_dir, moved)
    opened.manifest.source_dir = str(moved)
    service = SearchService(opened, stub_embedder())
    tile = _first_tile(service, "01_TUMOR")
    (moved / service.index.items[tile].path).unlink()
    with TestClient(create_app(service)) as client:
        errors = {}
        for what in ("image", "slide", "thumbnail"):
            response = client.get(f"/api/items/{tile}/{what}")
            assert response.status_code == 404, what
            errors[what] = response.json()["error"]
    missing = f"cannot read item {tile}'s image: the file is missing"
    assert errors["image"] == errors["thumbnail"] == missing
    assert errors["slide"].startswith("cannot read the slide: ")
    assert "\n" not in errors["slide"]
