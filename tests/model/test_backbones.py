import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from histoseek.errors import HistoseekError
from histoseek.model.backbones import build_trunk, get_backbone_spec
from histoseek.model.efficientnet_lite import EfficientNetLite


def test_weights_path_loads_a_trunk_state_dict(tmp_path):
    source = EfficientNetLite()
    torch.nn.init.constant_(source._conv_stem.weight, 0.25)
    path = tmp_path / "lite0.pt"
    torch.save(source.state_dict(), path)
    trunk = build_trunk("efficientnet_lite0", str(path))
    assert torch.equal(trunk._conv_stem.weight, source._conv_stem.weight)


def test_weights_path_accepts_a_full_torchvision_resnet_state_dict(tmp_path):
    net = torchvision.models.resnet50(weights=None)
    torch.nn.init.constant_(net.conv1.weight, 0.5)
    path = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), path)  # includes fc.*, which the trunk does not have
    trunk = build_trunk("resnet50", str(path))
    assert torch.equal(trunk[0].weight, net.conv1.weight)


STEM = "_conv_stem.weight"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda state: {"foo": torch.zeros(1)},
            f"none of its keys is one of the backbone's (it has e.g. 'foo', the backbone '{STEM}')",
        ),
        (
            lambda state: {key: value for key, value in state.items() if key != STEM},
            "it lacks 1 of the backbone's {tensors} tensors, e.g. '_conv_stem.weight'",
        ),
        (
            lambda state: {**state, STEM: torch.zeros(3)},
            f"its '{STEM}' has shape [3], the backbone's [32, 3, 3, 3]",
        ),
        (lambda state: {**state, STEM: 1}, f"its '{STEM}' is not a tensor (int)"),
    ],
)
def test_weights_path_that_does_not_fit_says_why(tmp_path, change, why):
    state = EfficientNetLite().state_dict()
    path = tmp_path / "other.pt"
    torch.save(change(state), path)
    with pytest.raises(HistoseekError) as refused:
        build_trunk("efficientnet_lite0", str(path))
    assert str(refused.value) == (
        f"--weights {path} is not a state dict of the efficientnet_lite0 backbone: "
        + why.format(tensors=len(state))
    )


def test_weights_path_that_holds_no_state_dict_says_what_it_holds(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2], path)
    with pytest.raises(HistoseekError) as refused:
        build_trunk("resnet50", str(path))
    assert str(refused.value) == (
        f"--weights {path} holds a list, not a state dict of the resnet50 backbone"
    )


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(HistoseekError, match="imagenet, none or a file"):
        build_trunk("resnet50", str(tmp_path / "missing.pth"))


def test_offline_imagenet_resnet_names_the_alternatives(monkeypatch):
    def offline(**kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models, "resnet50", offline)
    with pytest.raises(HistoseekError) as error:
        build_trunk("resnet50", "imagenet")
    assert "--weights PATH" in str(error.value)
    assert "efficientnet_lite0" in str(error.value)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_the_stages_run_one_after_another_are_the_trunk(name):
    # Validation runs the frozen stages once and the others every epoch (train/validation.py).
    trunk = build_trunk(name, "none").eval()
    stages = get_backbone_spec(name).stages(trunk)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = trunk(images)
        for split in (1, len(stages) // 2, len(stages)):
            first, rest = nn.Sequential(*stages[:split]), nn.Sequential(*stages[split:])
            torch.testing.assert_close(rest(first(images)), expected)
