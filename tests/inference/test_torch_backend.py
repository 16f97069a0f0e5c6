import numpy as np
import pytest
import torch

from histoseek.errors import HistoseekError
from histoseek.inference.torch_backend import TorchEmbedder
from histoseek.model.cgd import ModelConfig, build_model


def test_memory_layouts_give_the_same_embeddings():
    model = build_model(ModelConfig(dim=48, num_classes=0, image_size=64))
    batch = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    channels_last = TorchEmbedder(model, device="cpu").embed_batch(batch)
    nchw = TorchEmbedder(model, device="cpu", channels_last=False).embed_batch(batch)
    assert channels_last.shape == (3, 48) and channels_last.dtype == np.float32
    assert np.allclose(channels_last, nchw, atol=1e-5)
    assert np.allclose(np.linalg.norm(nchw, axis=1), 1.0, atol=1e-5)


def test_a_model_that_embeds_as_nan_is_refused_in_one_line():
    model = build_model(ModelConfig(dim=48, num_classes=0, image_size=64))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    batch = np.zeros((2, 3, 64, 64), np.float32)
    with pytest.raises(HistoseekError, match="^the model embeds an image as numbers that are not"):
        TorchEmbedder(model, device="cpu").embed_batch(batch)
