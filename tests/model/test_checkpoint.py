import os
import pickle

import pytest
import torch

from histoseek.errors import HistoseekError
from histoseek.model.cgd import ModelConfig, build_model
from histoseek.model.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint


@pytest.fixture
def model():
    return build_model(ModelConfig(dim=48, num_classes=3, image_size=64), seed=3).eval()


def test_round_trip_keeps_weights_config_and_classes(tmp_path, model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, ["a", "b", "c"], extra={"epoch": 4})
    loaded, class_names, extra = load_checkpoint(path)
    assert model_fingerprint(loaded) == model_fingerprint(model)
    assert loaded.config == model.config
    assert class_names == ["a", "b", "c"] and extra == {"epoch": 4}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.embed(x), model.embed(x), atol=1e-6)
    # The file is plain tensors and containers: safe loading works on it directly.
    assert torch.load(path, weights_only=True)["class_names"] == ["a", "b", "c"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(HistoseekError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_checkpoint(tmp_path, model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, ["a", "b", "c"])
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(HistoseekError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_foreign_state_dict_is_not_a_checkpoint(tmp_path, model):
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(HistoseekError, match="not a histoseek checkpoint"):
        load_checkpoint(path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"format": "histoseek-cgd", "payload": _Exploit(marker)}, path)
    with pytest.raises(HistoseekError, match="never runs"):
        load_checkpoint(path)
    assert not os.path.exists(marker)


def test_plain_pickle_file_is_refused(tmp_path):
    marker = str(tmp_path / "pwned2")
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(HistoseekError):
        load_checkpoint(path)
    assert not os.path.exists(marker)
