"""The JSON API through FastAPI's TestClient: good requests, and every refusal one line of JSON."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import stub_embedder

from histoseek.index.build import build_index
from histoseek.index.search import annoy_search_k, open_index
from histoseek.serve.app import create_app
from histoseek.serve.defaults import MAX_K
from histoseek.serve.service import SearchService

ENDPOINTS = {
    "/healthz",
    "/api/info",
    "/api/search",
    "/api/items/{item_id}/image",
    "/api/items/{item_id}/thumbnail",
    "/api/items/{item_id}/slide",
}


@contextmanager
def served(service: SearchService) -> Iterator[TestClient]:
    """A TestClient of the app over `service`."""
    with TestClient(create_app(service)) as client:
        yield client


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client, data: bytes, name: str = "query.png", **fields):
    """POST /api/search with an image upload and form fields."""
    form = {key: str(value).lower() for key, value in fields.items()}
    return client.post("/api/search", files={"image": (name, data, "image/png")}, data=form)


def refused(response, status: int) -> str:
    """The error of a refused request, checked to be one line of JSON with that status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and body["error"], body
    assert "\n" not in body["error"]
    return body["error"]


def test_health_info_and_openapi_docs(client, opened):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["items"] == len(opened.items) == 24
    assert info["labels"] == {"01_TUMOR": 8, "04_LYMPHO": 8, "07_ADIPOSE": 8}
    assert info["backend"] == "stub (cpu)" and info["model"] == "builtin"
    assert info["manifest"]["source_dir"] == opened.manifest.source_dir
    assert info["limits"]["max_k"] == MAX_K
    assert set(client.get("/openapi.json").json()["paths"]) == ENDPOINTS
    for docs_page in ("/docs", "/redoc"):
        docs = client.get(docs_page)
        assert docs.status_code == 200
        # Everything the docs pages load comes from this server: they work offline.
        loaded = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", docs.text)
        assert loaded and all(url.startswith("/") for url in loaded), loaded
        for url in loaded:
            response = client.get(url)
            assert response.status_code == 200 and response.content, url


def test_an_indexed_tile_uploaded_finds_itself_first_when_kept(client, opened):
    item = 9
    data = opened.file_of(opened.items[item]).read_bytes()
    answer = upload(client, data, name="tile.tif", k=5, exclude_self="false").json()
    assert answer["query"] == {"kind": "upload", "item": None, "name": "tile.tif", "copies": [9]}
    assert [hit["rank"] for hit in answer["hits"]] == [1, 2, 3, 4, 5]
    first = answer["hits"][0]
    assert first["item"] == item and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert first["path"] == opened.items[item].path and first["label"] == "04_LYMPHO"
    similarities = [hit["similarity"] for hit in answer["hits"]]
    assert similarities == sorted(similarities, reverse=True)
    labels = [hit["label"] for hit in answer["hits"]]
    majority = answer["majority"]
    assert majority["of"] == 5 and majority["count"] == labels.count(majority["label"])
    assert [hit["matches_majority"] for hit in answer["hits"]] == [
        label == majority["label"] for label in labels
    ]
    assert answer["mode"] == "annoy" and answer["backend"] == "stub (cpu)"
    assert answer["timings"]["total_ms"] >= answer["timings"]["search_ms"] >= 0


def test_an_upload_leaves_out_indexed_files_with_its_bytes_as_query_does(client, opened):
    data = opened.file_of(opened.items[9]).read_bytes()
    kept = upload(client, data, k=5, exclude_self="false").json()
    answer = upload(client, data, k=5).json()
    assert answer["query"]["copies"] == [9]
    assert [hit["item"] for hit in kept["hits"]][:1] == [9]
    assert [hit["item"] for hit in answer["hits"]][:4] == [hit["item"] for hit in kept["hits"]][1:]
    assert 9 not in [hit["item"] for hit in answer["hits"]] and len(answer["hits"]) == 5
    other = png_bytes(Image.open(io.BytesIO(data)).convert("RGB"))  # same pixels, other bytes
    assert upload(client, other, k=5).json()["query"]["copies"] == []


def test_more_like_this_leaves_the_item_out_unless_asked(client):
    answer = client.post("/api/search", data={"item": "3", "k": "4"}).json()
    assert answer["query"]["kind"] == "item" and answer["query"]["item"] == 3
    assert len(answer["hits"]) == 4 and 3 not in [hit["item"] for hit in answer["hits"]]
    kept = client.post("/api/search", data={"item": "3", "k": "4", "exclude_self": "false"})
    hits = kept.json()["hits"]
    assert hits[0]["item"] == 3 and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert [hit["item"] for hit in hits[1:]] == [hit["item"] for hit in answer["hits"][:3]]


def test_exact_search_agrees_with_annoy_on_a_small_index(client):
    annoy = client.post("/api/search", data={"item": "0", "k": "5", "search_k": "1000"}).json()
    exact = client.post("/api/search", data={"item": "0", "k": "5", "exact": "true"}).json()
    assert exact["mode"] == "exact" and exact["search_k"] is None
    assert [hit["item"] for hit in exact["hits"]] == [hit["item"] for hit in annoy["hits"]]
    assert (annoy["search_k"], annoy["search_k_scaled"]) == (1000, False)


def test_the_search_k_used_is_reported_as_query_reports_it(client, opened):
    fields = {"item": "0", "k": "5"}
    default = annoy_search_k(5, len(opened.items), opened.manifest.trees)
    answer = client.post("/api/search", data=fields).json()
    assert (answer["search_k"], answer["search_k_scaled"]) == (default, False)


def test_k_larger_than_the_index_returns_every_other_item(client, opened):
    hits = client.post("/api/search", data={"item": "0", "k": str(MAX_K)}).json()["hits"]
    assert sorted(hit["item"] for hit in hits) == list(range(1, len(opened.items)))


def test_item_image_and_thumbnail(client, opened):
    full = Image.open(io.BytesIO(client.get("/api/items/5/image").content))
    assert full.format == "PNG"
    original = Image.open(opened.file_of(opened.items[5])).convert("RGB")
    assert np.array_equal(np.asarray(full.convert("RGB")), np.asarray(original))
    response = client.get("/api/items/5/thumbnail")
    assert response.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.content))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 192


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js">' in page.text
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    assert "http" not in client.get("/static/app.js").text  # nothing fetched from elsewhere


@pytest.mark.parametrize(
    "url",
    [
        "/api/items/../../etc/passwd/image",
        "/api/items/..%2F..%2Fetc%2Fpasswd/image",
        "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail",
        "/api/items/%252e%252e%252fetc%252fpasswd/image",
        "/api/items//etc/passwd/image",
        "/api/items/%2Fetc%2Fpasswd/image",
        "/api/items/1%2F..%2F..%2Fmanifest.json/image",
        "/api/items/0x1/image",
        "/static/../service.py",
        "/static/..%2Fservice.py",
        "/static/%2e%2e%2fservice.py",
        "/static/%2Fetc%2Fpasswd",
        "/static/__init__.py",
        "/../../etc/passwd",
    ],
)
def test_traversal_attempts_get_a_json_4xx_and_no_file(client, url):
    response = client.get(url)
    assert 400 <= response.status_code < 500, (url, response.status_code)
    assert list(response.json()) == ["error"]
    assert b"root:" not in response.content and b"import" not in response.content


@pytest.mark.parametrize("field", ["item", "path"])
def test_a_path_in_the_search_form_is_not_a_query(client, field):
    response = client.post("/api/search", data={field: "../../etc/passwd"})
    assert 400 <= response.status_code < 500
    assert list(response.json()) == ["error"]


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../../../../../etc/passwd"])
def test_an_item_whose_path_leads_outside_the_folder_is_refused(opened, path):
    opened.items[2] = replace(opened.items[2], path=path)  # as if items.jsonl were edited
    with served(SearchService(opened, stub_embedder())) as client:
        assert "outside" in refused(client.get("/api/items/2/image"), 403)
        assert "outside" in refused(client.get("/api/items/2/thumbnail"), 403)
        assert client.get("/api/items/3/image").status_code == 200


def test_an_item_reached_through_a_link_out_of_the_folder_is_refused(kather_small, tmp_path):
    tile = next((kather_small / "01_TUMOR").iterdir())
    (tmp_path / "outside").mkdir()
    shutil.copy(tile, tmp_path / "outside" / "secret.tif")
    source = tmp_path / "source"
    (source / "a").mkdir(parents=True)
    shutil.copy(tile, source / "a" / "inside.tif")
    (source / "a" / "linked.tif").symlink_to(tmp_path / "outside" / "secret.tif")
    build_index(source, tmp_path / "index", stub_embedder(), trees=2)
    opened = open_index(tmp_path / "index")
    ids = {item.path: position for position, item in enumerate(opened.items)}
    with served(SearchService(opened, stub_embedder())) as client:
        assert client.get(f"/api/items/{ids['a/inside.tif']}/image").status_code == 200
        refused(client.get(f"/api/items/{ids['a/linked.tif']}/image"), 403)


def test_a_missing_item_file_is_404(opened, tmp_path):
    opened.items[4] = replace(opened.items[4], path="01_TUMOR/gone.tif")
    with served(SearchService(opened, stub_embedder())) as client:
        assert "missing" in refused(client.get("/api/items/4/image"), 404)


def test_unknown_and_negative_ids_are_404(client):
    for item in (24, 10**9, -1):
        assert "no item" in refused(client.get(f"/api/items/{item}/image"), 404)
        assert "no item" in refused(client.get(f"/api/items/{item}/thumbnail"), 404)
        refused(client.post("/api/search", data={"item": str(item)}), 404)


@pytest.mark.parametrize("k", ["0", "-3", str(MAX_K + 1), "ten", "2.5"])
def test_k_out_of_range_is_refused(client, k):
    assert "k" in refused(client.post("/api/search", data={"item": "1", "k": k}), 422)


def test_search_k_out_of_range_is_refused(client):
    refused(client.post("/api/search", data={"item": "1", "search_k": "0"}), 422)


def test_search_k_with_exact_search_is_refused(client):
    fields = {"item": "1", "search_k": "5", "exact": "true"}
    assert refused(client.post("/api/search", data=fields), 400) == (
        "search_k sets how far Annoy searches, and exact searches every stored embedding "
        "instead: send one or the other"
    )


def test_wrong_content_types_are_refused(client):
    assert "form" in refused(client.post("/api/search", json={"item": 1}), 415)
    text = client.post("/api/search", content=b"item=1", headers={"content-type": "text/plain"})
    refused(text, 415)
    not_an_image = upload(client, b"just some text, not an image", name="notes.txt")
    assert "not an image" in refused(not_an_image, 415)


def test_a_search_needs_exactly_one_query(client, opened):
    refused(client.post("/api/search", data={"k": "3"}), 400)
    data = opened.file_of(opened.items[0]).read_bytes()
    refused(upload(client, data, item=2), 400)


def test_empty_and_truncated_images_are_400(client, opened):
    refused(upload(client, b""), 400)
    whole = png_bytes(Image.open(opened.file_of(opened.items[0])).convert("RGB"))
    assert "decode" in refused(upload(client, whole[: len(whole) // 2]), 400)


def test_oversized_uploads_are_refused_before_embedding(opened):
    embedder = stub_embedder()
    with served(SearchService(opened, embedder, max_upload_bytes=50_000)) as client:
        noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)
        big = png_bytes(Image.fromarray(noise))
        assert len(big) > 50_000
        assert "limit" in refused(upload(client, big), 413)
        huge = b"\0" * 200_000  # over the whole body's limit: refused by its Content-Length
        assert "limit" in refused(upload(client, huge), 413)
        chunks = (b"x" * 10_000 for _ in range(100))  # no Content-Length: counted as it comes
        form = {"content-type": "multipart/form-data; boundary=b"}
        streamed = client.post("/api/search", content=chunks, headers=form)
        assert "limit" in refused(streamed, 413)
        assert embedder.backend.batch_sizes == []


def test_images_over_the_pixel_limit_are_refused(opened):
    with served(SearchService(opened, stub_embedder(), max_pixels=100 * 100)) as client:
        wide = png_bytes(Image.new("RGB", (101, 100), (200, 120, 180)))
        assert "pixels" in refused(upload(client, wide), 413)
        fits = png_bytes(Image.new("RGB", (100, 100), (200, 120, 180)))
        assert upload(client, fits, k=2).status_code == 200


def test_requests_change_nothing_in_the_index(client, stub_index_dir: Path, opened):
    def digests() -> dict[str, str]:
        return {
            path.relative_to(stub_index_dir).as_posix(): hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
            for path in sorted(stub_index_dir.rglob("*"))
            if path.is_file()
        }

    before = digests()
    data = opened.file_of(opened.items[0]).read_bytes()
    upload(client, data, k=3)
    client.post("/api/search", data={"item": "1", "k": "3"})
    client.get("/api/items/1/image")
    client.get("/api/items/1/thumbnail")
    assert digests() == before
