import os
import pickle
import re
import zipfile

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


def _payload(model) -> dict:
    return {
        "format": "histoseek-cgd",
        "version": 1,
        "config": model.config.to_dict(),
        "class_names": ["a", "b", "c"],
        "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "extra": {},
    }


def _without(payload: dict, key: str) -> dict:
    return {k: v for k, v in payload.items() if k != key}


def _with_config(payload: dict, **changes) -> dict:
    return {**payload, "config": {**payload["config"], **changes}}


def _with_weight(payload: dict, value: float) -> dict:
    """The payload with one entry of its last floating-point tensor set to `value`."""
    state = dict(payload["state_dict"])
    name = [key for key, tensor in state.items() if tensor.is_floating_point()][-1]
    state[name] = state[name].clone().flatten()
    state[name][0] = value
    return {
        **payload,
        "state_dict": {**state, name: state[name].view_as(payload["state_dict"][name])},
    }


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _without(p, "config"), "config is missing or not a mapping"),
        (lambda p: {**p, "config": list(p["config"].values())}, "config is missing"),
        (lambda p: [p], "is not a histoseek checkpoint"),
        (lambda p: {**p, "class_names": 3}, "class_names is not a list of names"),
        (lambda p: {**p, "class_names": ["a", 2]}, "class_names is not a list of names"),
        (lambda p: {**p, "state_dict": list(p["state_dict"].values())}, "state_dict"),
        (lambda p: {**p, "state_dict": {"trunk.w": [1.0, 2.0]}}, "state_dict"),
        (lambda p: _without(p, "state_dict"), "state_dict"),
        (lambda p: _with_weight(p, float("nan")), "holds numbers that are not finite"),
        (lambda p: _with_weight(p, float("-inf")), "holds numbers that are not finite"),
        (lambda p: {**p, "extra": [1]}, "extra is not a mapping"),
        (lambda p: {**p, "version": "1"}, "version '1' is not a positive whole number"),
        (lambda p: {**p, "version": 2}, "newer histoseek"),
        (lambda p: _with_config(p, image_size="64"), "image size must be a whole number"),
        (lambda p: _with_config(p, image_size=10**6), "image size 1000000 is out of range"),
        (lambda p: _with_config(p, dim=3_000_000_000), "dim 3000000000 is out of range"),
        (lambda p: _with_config(p, dim=48.0), "dim must be a whole number"),
        (lambda p: _with_config(p, num_classes=10**9), "num_classes 1000000000 is out of range"),
        (lambda p: _with_config(p, backbone="vgg"), "unknown backbone"),
        (lambda p: _with_config(p, backbone=["resnet50"]), "backbone must be a name"),
        (lambda p: _with_config(p, gd_config="SXG"), "invalid gd-config"),
        (lambda p: _with_config(p, gd_config=3), "gd-config must be a string"),
        (lambda p: _with_config(p, mean=[0.5, 0.5]), "mean must be 3 finite numbers"),
        (lambda p: _with_config(p, std=5), "std must be 3 finite numbers"),
        (lambda p: _with_config(p, std=[1.0, 0.0, 1.0]), "std [1.0, 0.0, 1.0] must be positive"),
    ],
)
def test_malformed_checkpoints_fail_with_one_line(tmp_path, model, damage, message):
    path = tmp_path / "model.pt"
    torch.save(damage(_payload(model)), path)
    with pytest.raises(HistoseekError, match=re.escape(message)) as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_weights_that_do_not_fit_the_config_are_named_in_one_line(tmp_path, model):
    path = tmp_path / "model.pt"
    payload = _payload(model)
    payload["state_dict"]["projections.0.weight"] = torch.zeros(5, 5)
    torch.save(payload, path)
    with pytest.raises(HistoseekError, match="size mismatch for projections.0.weight") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def _zip_with_text(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda path: zipfile.ZipFile(path, "w").close(), "an empty zip archive"),
        (_zip_with_text, "a zip archive without PyTorch's data.pkl"),
        (
            lambda path: path.write_text("hello, not a checkpoint\n"),
            "neither a zip archive nor a pickle, the two formats torch.save writes",
        ),
        (lambda path: path.write_bytes(b""), "the file is empty"),
    ],
)
def test_files_that_are_not_pytorch_say_so(tmp_path, write, reason):
    path = tmp_path / "model.pt"
    write(path)
    expected = f"is not a PyTorch checkpoint ({reason})"
    with pytest.raises(HistoseekError, match=re.escape(expected)) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.parametrize("tagged", [True, False])
def test_resume_state_is_named_as_such(tmp_path, model, tagged):
    run = tmp_path / "run"
    run.mkdir()
    state = {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 2}
    if tagged:
        state["format"] = "histoseek-resume-state"
    torch.save(state, run / "last.pt")
    expected = f"{run / 'last.pt'} is a training resume state (last.pt), not a model; use "
    with pytest.raises(HistoseekError, match=re.escape(expected + str(run / "model.pt"))):
        load_checkpoint(run / "last.pt")
