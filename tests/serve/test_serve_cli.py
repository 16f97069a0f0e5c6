"""`histoseek serve`: the command wires a real model and index into the app and guards its start."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient

from histoseek.cli import cli
from histoseek.data.images import current_pixel_limit


@pytest.fixture(scope="session")
def real_index(kather_small, tmp_path_factory) -> Path:
    """An index of the real tiles by a small trained-format CGD (64 px, 96-d) on torch."""
    from histoseek.embedder import load_image_embedder
    from histoseek.index.build import build_index
    from histoseek.model.cgd import ModelConfig, build_model
    from histoseek.model.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("serve-cli")
    checkpoint = root / "model.pt"
    model = build_model(ModelConfig(num_classes=3, image_size=64, dim=96), weights="imagenet")
    save_checkpoint(checkpoint, model, ["01_TUMOR", "04_LYMPHO", "07_ADIPOSE"])
    embedder = load_image_embedder(checkpoint, backend="torch", workers=0)
    build_index(kather_small, root / "index", embedder, trees=5)
    return root / "index"


@pytest.fixture
def started(monkeypatch) -> dict:
    """Stands in for uvicorn: records the app and socket `serve` would run, and closes it."""
    import histoseek.serve.server

    captured: dict = {}

    def run_server(app, sock):
        captured["app"], captured["address"] = app, sock.getsockname()
        captured["pixel_limit"] = current_pixel_limit()
        sock.close()

    monkeypatch.setattr(histoseek.serve.server, "run_server", run_server)
    return captured


def serve(*args) -> Result:
    return CliRunner().invoke(cli, ["serve", *map(str, args)], catch_exceptions=False)


def error_line(result: Result) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_serve_answers_as_query_does(real_index, kather_small, started):
    from histoseek.embedder import embedder_for_model
    from histoseek.index.search import load_index_model, open_index, search_images

    result = serve("--index", real_index, "--backend", "torch", "--port", "0")
    assert result.exit_code == 0, result.output
    assert "serving" in result.stderr and "no authentication" not in result.stderr
    assert started["address"][0] == "127.0.0.1" and started["address"][1] > 0

    tile = sorted((kather_small / "04_LYMPHO").iterdir())[2]
    with TestClient(started["app"]) as client:
        info = client.get("/api/info").json()
        response = client.post(
            "/api/search", files={"image": (tile.name, tile.read_bytes())}, data={"k": "6"}
        )
    assert info["backend"].startswith("torch") and info["image_size"] == 64
    hits = response.json()["hits"]

    opened = open_index(real_index)
    network, class_names, reference = load_index_model(opened)
    embedder = embedder_for_model(network, reference, class_names, "torch", "cpu", workers=0)
    # Both leave out the tile's own entry: the upload has its very bytes.
    (expected,) = search_images(opened, embedder, [tile], 6).results
    own = [item.path for item in opened.items].index(f"04_LYMPHO/{tile.name}")
    assert response.json()["query"]["copies"] == [own]
    assert own not in [hit["item"] for hit in hits] and len(hits) == 6
    assert [hit["path"] for hit in hits] == [
        hit.path.relative_to(opened.manifest.source_dir).as_posix() for hit in expected.hits
    ]
    assert [hit["similarity"] for hit in hits] == pytest.approx(
        [hit.similarity for hit in expected.hits], abs=1e-4
    )


def test_max_pixels_limits_uploads_and_the_images_shown(real_index, kather_small, started):
    tile = sorted((kather_small / "04_LYMPHO").iterdir())[0]  # 150 × 150 = 22,500 pixels
    options = ("--backend", "torch", "--port", "0", "--max-pixels", 20000)
    result = serve("--index", real_index, *options)
    assert result.exit_code == 0, result.output
    assert started["pixel_limit"] == 20000  # indexed images are read under it while serving
    with TestClient(started["app"]) as client:
        limits = client.get("/api/info").json()["limits"]
        response = client.post("/api/search", files={"image": (tile.name, tile.read_bytes())})
    assert limits["max_pixels"] == 20000
    assert response.status_code == 413
    assert "the limit is 20,000" in response.json()["error"]


def test_another_host_must_be_asked_for_and_is_warned_about(real_index, started):
    result = serve("--index", real_index, "--backend", "torch", "--host", "0.0.0.0", "--port", "0")
    assert result.exit_code == 0, result.output
    assert "no authentication" in result.stderr
    assert started["address"][0] == "0.0.0.0"


def test_a_port_in_use_is_one_line_before_the_model_loads(real_index, started):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = error_line(serve("--index", real_index, "--port", port))
    assert f"port {port}" in line and "in use" in line
    assert "app" not in started


def test_a_missing_index_is_one_line(tmp_path, started):
    assert "no index" in error_line(serve("--index", tmp_path / "nothing", "--port", "0"))


@pytest.mark.parametrize(
    "option, value",
    [
        ("--max-upload-mb", "0"),
        ("--max-upload-mb", "1e-7"),  # under one byte
        ("--max-upload-mb", "1e13"),  # more than a read can be asked for
        ("--batch-window-ms", "-1"),
        ("--batch-window-ms", "1e300"),  # a wait the batcher's clock cannot hold
        ("--port", "70000"),
    ],
)
def test_bad_limits_are_usage_errors(option, value, started):
    assert option in error_line(serve(option, value))


def test_limits_given_on_the_command_line_reach_the_service(real_index, started):
    args = ["--max-upload-mb", "0.5", "--batch-window-ms", "2", "--batch-size", "4"]
    assert serve("--index", real_index, "--backend", "torch", "--port", "0", *args).exit_code == 0
    with TestClient(started["app"]) as client:
        info = client.get("/api/info").json()
    assert info["limits"]["max_upload_bytes"] == 500_000
    assert info["batching"] == {"max_batch": 4, "window_ms": 2.0}


def test_the_command_is_listed_and_keeps_the_cli_light():
    assert "serve" in CliRunner().invoke(cli, ["--help"]).stdout
    code = (
        "import sys, histoseek.cli\n"
        "print(sorted({'fastapi', 'uvicorn', 'starlette', 'PIL'} & set(sys.modules)))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.stdout.strip() == "[]", completed.stdout + completed.stderr


def test_the_model_threads_do_not_spin_beside_request_decoding(real_index, started, monkeypatch):
    import histoseek.embedder

    plans = []

    def recording_plan(*args, **kwargs):
        plans.append(real_plan(*args, **kwargs))
        return plans[-1]

    real_plan = histoseek.embedder.cpu_plan
    monkeypatch.setattr(histoseek.embedder, "cpu_plan", recording_plan)
    assert serve("--index", real_index, "--backend", "torch", "--port", "0").exit_code == 0
    assert [(plan.decoding_workers, plan.spinning, plan.batch_threads) for plan in plans] == [
        (0, False, 1)
    ]
