"""Test-time augmentation: the mean over the 8 flips and rotations, renormalised."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from histoseek.cli import cli
from histoseek.data.synth import render_tissue
from histoseek.data.transforms import EvalTransform
from histoseek.embedder import embedder_for_model
from histoseek.inference.embed_files import DIHEDRAL_VIEWS, dihedral_views, embed_files
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import save_checkpoint

SIZE = 64
# The eight orientations of a square picture, spelled with PIL's own operations.
ORIENTATIONS = [
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
]


@pytest.fixture(scope="module")
def model():
    return build_model(ModelConfig(dim=48, image_size=SIZE), weights="imagenet").eval()


def _tile(folder: Path, name: str = "tile.png", tissue: str = "mucosa") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    render_tissue(tissue, (SIZE, SIZE), np.random.default_rng(3)).save(path)
    return path


def test_dihedral_views_are_the_eight_distinct_orientations():
    images = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    views = dihedral_views(images)
    assert len(views) == DIHEDRAL_VIEWS == 8 and all(view.shape == images.shape for view in views)
    assert np.array_equal(views[0], images)
    assert len({view.tobytes() for view in views}) == 8


def test_tta_embedding_is_the_renormalised_mean_of_the_eight_views(model, tmp_path):
    path = _tile(tmp_path)
    backend = TorchEmbedder(model, device="cpu")
    tta = embed_files(backend, model.config, [path], tta=True).embeddings[0]

    transform = EvalTransform(SIZE, model.config.mean, model.config.std)
    image = Image.open(path).convert("RGB")
    views = [image if op is None else image.transpose(op) for op in ORIENTATIONS]
    each = backend.embed_batch(np.stack([transform(view) for view in views]))
    mean = each.mean(axis=0)
    np.testing.assert_allclose(tta, mean / np.linalg.norm(mean), atol=1e-5)
    plain = embed_files(backend, model.config, [path]).embeddings[0]
    assert not np.allclose(tta, plain, atol=1e-3)


def test_tta_embedding_does_not_change_when_the_image_is_rotated(model, tmp_path):
    path = _tile(tmp_path)
    rotated = tmp_path / "rotated.png"
    Image.open(path).transpose(Image.Transpose.ROTATE_90).save(rotated)
    embedder = embedder_for_model(
        model, "builtin", backend="torch", device="cpu", workers=0, tta=True
    )
    with_tta = embedder.embed_files([path, rotated]).embeddings
    np.testing.assert_allclose(with_tta[0], with_tta[1], atol=1e-5)
    embedder.tta = False
    without = embedder.embed_files([path, rotated]).embeddings
    assert not np.allclose(without[0], without[1], atol=1e-3)


def test_evaluate_tta_option_is_used_and_recorded(model, tmp_path):
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model, [])
    for index, tissue in enumerate(("mucosa", "adipose")):
        for copy in range(2):
            _tile(tmp_path / "gallery" / tissue, f"{index}_{copy}.png", tissue)
    documents = {}
    for flag in ("--tta", None):
        args = ["evaluate", "--model", str(checkpoint), "--gallery", str(tmp_path / "gallery")]
        args += ["--backend", "torch", "--workers", "0", "--json"] + ([flag] if flag else [])
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        documents[flag] = json.loads(result.stdout)
    assert documents["--tta"]["tta"] is True and documents[None]["tta"] is False
    assert documents["--tta"]["query_size"] == 4


def test_image_embedder_batches_follow_its_tta_setting(model):
    images = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    embedder = embedder_for_model(
        model, "builtin", backend="torch", device="cpu", workers=0, tta=True
    )
    views = np.concatenate(dihedral_views(images))
    each = embedder.backend.embed_batch(views).reshape(8, 2, -1).sum(axis=0)
    expected = each / np.linalg.norm(each, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed_batch(images), expected, atol=1e-5)
    embedder.tta = False
    np.testing.assert_array_equal(
        embedder.embed_batch(images), embedder.backend.embed_batch(images)
    )
