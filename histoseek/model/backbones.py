"""Backbones as data: each entry says how to build the trunk and how to normalise its input."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from histoseek.errors import HistoseekError
from histoseek.model.efficientnet_lite import LITE0, LITE1, LITE2, EfficientNetLite, LiteVariant
from histoseek.model.safe_load import load_tensors


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone trunk and what input it expects."""

    name: str
    out_channels: int
    # Input normalisation on 0..1 pixels: (x - mean) / std per channel.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[bool], nn.Module]
    # The trunk's stages from input to output, for freezing the first N of them; run one after
    # another they compute the trunk.
    stages: Callable[[nn.Module], list[nn.Module]]
    # How many stages training freezes by default: the early, generic, high-resolution ones,
    # which are also the costliest to back-propagate through.
    default_frozen_stages: int
    # The input side its ImageNet weights were trained at: training's default image size.
    native_size: int


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Every EfficientNet-Lite was trained on (x - 127) / 128 with x in 0..255 (see efficientnet_lite).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def _efficientnet_lite(variant: LiteVariant) -> Callable[[bool], nn.Module]:
    def build(imagenet: bool) -> nn.Module:
        trunk = EfficientNetLite(variant)
        if imagenet:
            trunk.load_imagenet_weights()
        return trunk

    return build


# The torchvision ResNet modules a trunk keeps, in order (the Sequential's indices).
_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _resnet_stages(trunk: nn.Module) -> list[nn.Module]:
    return [trunk[:4], *trunk[4:]]


def _resnet_trunk(arch: str) -> Callable[[bool], nn.Module]:
    def build(imagenet: bool) -> nn.Module:
        import torchvision.models as tvm

        factory, weights = {
            "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
            "resnext50": (tvm.resnext50_32x4d, tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V1),
        }[arch]
        if imagenet:
            try:
                net = factory(weights=weights)
            except Exception as error:  # no internet, no cache: urllib, ssl or hub errors
                raise HistoseekError(
                    f"could not get torchvision's ImageNet weights for {arch} ({error}); "
                    "use --weights PATH with a local state dict, --weights none, or the offline "
                    "default backbone --backbone efficientnet_lite0"
                ) from None
        else:
            net = factory(weights=None)
        # CGD keeps layer3 at stride 8 (28×28 for 224 px), so the last map is 14×14.
        first = net.layer3[0]
        first.conv2.stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        return nn.Sequential(*(getattr(net, name) for name in _RESNET_PARTS))

    return build


def _lite_spec(variant: LiteVariant) -> BackboneSpec:
    # Freezing the stem and the first three block stages (up to stride 8) is the recipe chosen
    # on validation for Lite0 (README, fourteenth round); the larger Lites have the same nine
    # stages at the same strides.
    return BackboneSpec(
        variant.name,
        EfficientNetLite.out_channels,
        LITE_MEAN,
        LITE_STD,
        _efficientnet_lite(variant),
        EfficientNetLite.stages,
        4,
        variant.native_size,
    )


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    **{variant.name: _lite_spec(variant) for variant in (LITE0, LITE1, LITE2)},
    "resnet50": BackboneSpec(
        "resnet50",
        2048,
        IMAGENET_MEAN,
        IMAGENET_STD,
        _resnet_trunk("resnet50"),
        _resnet_stages,
        2,
        224,
    ),
    "resnext50": BackboneSpec(
        "resnext50",
        2048,
        IMAGENET_MEAN,
        IMAGENET_STD,
        _resnet_trunk("resnext50"),
        _resnet_stages,
        2,
        224,
    ),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    """Look up a backbone by name, with a clear error listing the known ones."""
    try:
        return BACKBONE_SPECS[name]
    except KeyError:
        raise HistoseekError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_SPECS)}"
        ) from None


def build_trunk(name: str, weights: str) -> nn.Module:
    """Build a backbone trunk with weights 'imagenet', 'none' or a state-dict PATH."""
    spec = get_backbone_spec(name)
    if weights in ("imagenet", "none"):
        return spec.build(weights == "imagenet")
    trunk = spec.build(False)
    if not Path(weights).is_file():
        raise HistoseekError(f"--weights must be imagenet, none or a file; not found: {weights}")
    state = load_tensors(Path(weights), "--weights file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    expected = f"a state dict of the {name} backbone"
    if not isinstance(state, dict):
        raise HistoseekError(f"--weights {weights} holds a {type(state).__name__}, not {expected}")
    state = _match_trunk_keys(trunk, state)
    misfit = _misfit(trunk.state_dict(), state)
    if misfit is not None:
        raise HistoseekError(f"--weights {weights} is not {expected}: {misfit}")
    try:
        trunk.load_state_dict(state, strict=True)
    except RuntimeError as error:
        # Torch's first line is only a heading; the second says what failed.
        detail = " ".join(str(error).split("\n")[1:2]).strip() or str(error)
        raise HistoseekError(f"--weights {weights} is not {expected}: {detail}") from None
    return trunk


def _misfit(wanted: Mapping[str, torch.Tensor], state: Mapping) -> str | None:
    """What keeps `state` (its extra keys already dropped by _match_trunk_keys) from loading
    into a trunk whose own state is `wanted`, in a few words (torch lists every missing key,
    hundreds of them); None if nothing does."""
    missing = [key for key in wanted if key not in state]
    if len(missing) == len(wanted):
        shown = next(iter(state), None)
        has = f"it has e.g. {shown!r}" if shown is not None else "it is empty"
        return f"none of its keys is one of the backbone's ({has}, the backbone {missing[0]!r})"
    if missing:
        return (
            f"it lacks {len(missing)} of the backbone's {len(wanted)} tensors, e.g. {missing[0]!r}"
        )
    for key, own in wanted.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"its {key!r} is not a tensor ({type(value).__name__})"
        if value.shape != own.shape:
            return f"its {key!r} has shape {list(value.shape)}, the backbone's {list(own.shape)}"
    return None


def _match_trunk_keys(trunk: nn.Module, state: dict) -> dict:
    """Accept a full classifier's state dict (torchvision names) for a trunk."""
    wanted = set(trunk.state_dict())
    if set(state) >= wanted:
        return {k: state[k] for k in wanted}
    if isinstance(trunk, nn.Sequential):
        # torchvision ResNet keys (conv1, bn1, layer1...) map onto the Sequential's indices.
        renamed = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head in _RESNET_PARTS:
                renamed[f"{_RESNET_PARTS.index(head)}.{rest}"] = value
        if set(renamed) >= wanted:
            return {k: renamed[k] for k in wanted}
    return state
