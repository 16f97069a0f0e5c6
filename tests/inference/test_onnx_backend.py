"""The ONNX Runtime backend trusts an export only as far as its graph and its output agree
with the config its metadata records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from histoseek.errors import HistoseekError
from histoseek.inference.onnx_backend import OnnxEmbedder
from histoseek.inference.select import create_embedder
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import load_checkpoint, save_checkpoint
from histoseek_export.onnx_export import export_onnx

SIZE = 64
IMAGES = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def _exported(folder: Path, dim: int) -> Path:
    """A checkpoint of a small untrained model of `dim` with its ONNX export beside it."""
    path = folder / f"dim{dim}" / "model.pt"
    path.parent.mkdir()
    save_checkpoint(path, build_model(ModelConfig(image_size=SIZE, dim=dim), weights="none"), [])
    export_onnx(load_checkpoint(path)[0], path.with_suffix(".onnx"))
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(a 48-d model's checkpoint, a 96-d one's), each with its export beside it."""
    folder = tmp_path_factory.mktemp("onnx-backend")
    return _exported(folder, 48), _exported(folder, 96)


def _with_metadata_of(graph: onnx.ModelProto, source: Path) -> onnx.ModelProto:
    """`graph` claiming to be the export at `source`: its fingerprint and config."""
    del graph.metadata_props[:]
    graph.metadata_props.extend(onnx.load(str(source)).metadata_props)
    return graph


def _scaled(source: Path, factor: float) -> onnx.ModelProto:
    """The export at `source` with its output multiplied by `factor`."""
    graph = onnx.load(str(source))
    output = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [f"{name}_raw" if name == output else name for name in node.output]
    graph.graph.initializer.append(numpy_helper.from_array(np.float32(factor), "factor"))
    graph.graph.node.append(helper.make_node("Mul", [f"{output}_raw", "factor"], [output]))
    return graph


def _beside(checkpoint: Path, graph: onnx.ModelProto, folder: Path) -> Path:
    """A copy of `checkpoint` in `folder`, with `graph` as the export beside it."""
    folder.mkdir()
    copy = folder / "model.pt"
    copy.write_bytes(checkpoint.read_bytes())
    onnx.save(graph, str(copy.with_suffix(".onnx")))
    return copy


def test_an_export_of_another_dim_than_its_config_is_refused_on_load(checkpoints, tmp_path):
    small, large = checkpoints
    graph = _with_metadata_of(
        onnx.load(str(large.with_suffix(".onnx"))), small.with_suffix(".onnx")
    )
    checkpoint = _beside(small, graph, tmp_path / "otherdim")
    export = checkpoint.with_suffix(".onnx")
    with pytest.raises(HistoseekError) as refused:
        OnnxEmbedder(export)
    assert str(refused.value) == (
        f"{export} is not the model its metadata describes: it gives 96 values per image, not "
        "dim 48; export it again: histoseek export --model CHECKPOINT --overwrite"
    )
    # auto skips it with a note, as any unusable export, and runs the model itself.
    notes: list[str] = []
    embedder = create_embedder(
        load_checkpoint(checkpoint)[0], "auto", "cpu", checkpoint, notify=notes.append
    )
    assert notes[0] == f"not using {export}: {refused.value}"
    assert embedder.embed_batch(IMAGES).shape == (2, 48)


def test_an_export_for_other_images_than_its_config_is_refused_on_load(checkpoints, tmp_path):
    small, _ = checkpoints
    graph = onnx.load(str(small.with_suffix(".onnx")))
    graph.graph.input[0].type.tensor_type.shape.dim[2].dim_value = SIZE * 2
    export = tmp_path / "taller.onnx"
    onnx.save(graph, str(export))
    with pytest.raises(HistoseekError, match=r"takes input of shape \['batch', 3, 128, 64\], "):
        OnnxEmbedder(export)


def test_an_export_whose_output_is_not_of_unit_length_is_refused_naming_it(checkpoints, tmp_path):
    small, _ = checkpoints
    export = tmp_path / "scaled.onnx"
    onnx.save(_scaled(small.with_suffix(".onnx"), 2.0), str(export))
    embedder = OnnxEmbedder(export)  # nothing in its graph or metadata tells
    with pytest.raises(HistoseekError) as refused:
        embedder.embed_batch(IMAGES)
    assert str(refused.value) == (
        f"the exported model {export} embeds an image as a vector of length 2, not of unit "
        "length; export it again: histoseek export --model CHECKPOINT --overwrite"
    )


def test_a_faithful_export_passes_every_check(checkpoints):
    small, _ = checkpoints
    got = OnnxEmbedder(small.with_suffix(".onnx")).embed_batch(IMAGES)
    reference = TorchEmbedder(load_checkpoint(small)[0], device="cpu").embed_batch(IMAGES)
    assert np.min(np.sum(reference * got, axis=1)) >= 0.9999
