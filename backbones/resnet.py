"""ResNet-18/50/101 with detectron2 semantics and parameter names.

- Stride in the 3x3 conv (torchvision style, detectron2 ``STRIDE_IN_1X1: False``).
- Parameter names follow detectron2 (``stem.conv1.weight``, ``stem.conv1.norm.running_mean``,
  ``res2.0.conv1.weight``, ``res2.0.shortcut.norm.weight`` ...), so an official DiffusionDet checkpoint's
  ``backbone.bottom_up.*`` keys load without renaming. torchvision / timm ImageNet weights are renamed by
  :func:`torchvision_to_ours`.
- ``norm``: ``"frozen_bn"`` (detectron2 ``FrozenBatchNorm2d``, eps 1e-5), ``"bn"`` or ``"gn"`` (32 groups).
- ``freeze_at``: 0 trains everything, 1 freezes the stem, 2 the stem and res2 (official), ... 5.
  Frozen stages get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.base import FeatureSpec
from backbones.pretrained import fetch_timm_state_dict, load_into, read_weights_file

NormKind = Literal["frozen_bn", "bn", "gn"]
STAGES = ("res2", "res3", "res4", "res5")
_DEPTHS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_TIMM_NAMES = {18: "resnet18.tv_in1k", 50: "resnet50.tv_in1k", 101: "resnet101.tv_in1k"}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers), detectron2 semantics.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with ``eps = 1e-5``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Returns ``module`` with every ``nn.BatchNorm2d`` (recursively) replaced by a frozen copy."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """Builds the normalisation layer named ``kind`` for ``channels`` channels."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {kind!r}; expected 'frozen_bn', 'bn' or 'gn'")


class ConvNorm(nn.Conv2d):
    """Bias-free conv followed by its norm layer (``.norm``), detectron2 ``Conv2d(norm=...)`` naming."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: NormKind) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = make_norm(norm, cout)
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # c2_msra_fill

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); projection shortcut when the channel count changes."""

    def __init__(self, cin: int, cout: int, stride: int, norm: NormKind) -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 3, stride, norm)
        self.conv2 = ConvNorm(cout, cout, 3, 1, norm)
        self.shortcut = ConvNorm(cin, cout, 1, stride, norm) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 bottleneck; projection shortcut when channels change."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int, norm: NormKind) -> None:
        super().__init__()
        self.conv1 = ConvNorm(cin, cmid, 1, 1, norm)
        self.conv2 = ConvNorm(cmid, cmid, 3, stride, norm)
        self.conv3 = ConvNorm(cmid, cout, 1, 1, norm)
        self.shortcut = ConvNorm(cin, cout, 1, stride, norm) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + identity)


class Stem(nn.Module):
    """7x7 stride-2 conv + norm + ReLU + 3x3 stride-2 max-pool (output stride 4)."""

    def __init__(self, norm: NormKind, channels: int = 64) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, channels, 7, 2, norm)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet returning ``res2..res5`` (strides 4..32) as a dict.

    Args:
        depth: 18, 50 or 101.
        norm: normalisation kind (see module docstring).
        freeze_at: number of leading stages (stem = 1, res2 = 2, ...) to freeze.
        out_features: which of ``res2..res5`` to return.
        width: stem / res2 base width (64 = the standard ResNet). Other values scale every stage
            (e.g. 32 halves all channels, about 4x fewer FLOPs) and only train from scratch.
    """

    def __init__(
        self,
        depth: int = 50,
        *,
        norm: NormKind = "frozen_bn",
        freeze_at: int = 2,
        out_features: tuple[str, ...] = STAGES,
        width: int = 64,
    ) -> None:
        super().__init__()
        if width < 8:
            raise ValueError(f"ResNet width must be >= 8, got {width}")
        if depth not in _DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(_DEPTHS)}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        unknown = set(out_features) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown ResNet out_features {sorted(unknown)}; choose from {STAGES}")
        self.depth = depth
        self.out_features = tuple(out_features)
        self.stem = Stem(norm, width)
        basic = depth < 50
        cin, specs = width, []
        for i, (name, blocks) in enumerate(zip(STAGES, _DEPTHS[depth])):
            cout = width * 2**i if basic else 4 * width * 2**i
            blocks_list: list[nn.Module] = []
            for j in range(blocks):
                stride = 2 if (j == 0 and i > 0) else 1
                if basic:
                    blocks_list.append(BasicBlock(cin, cout, stride, norm))
                else:
                    blocks_list.append(BottleneckBlock(cin, cout // 4, cout, stride, norm))
                cin = cout
            self.add_module(name, nn.Sequential(*blocks_list))
            specs.append(FeatureSpec(name, cout, 4 * 2**i))
        self.feature_specs = [s for s in specs if s.name in self.out_features]
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freezes the stem (``freeze_at >= 1``) and ``res2..`` up to stage ``freeze_at``."""
        modules = [self.stem] + [getattr(self, n) for n in STAGES]
        for module in modules[:freeze_at]:
            for p in module.parameters():
                p.requires_grad_(False)
            FrozenBatchNorm2d.convert(module)  # replaces BatchNorm children in place

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args: x (B, 3, H, W) normalised image. Returns ``{"res2": (B, C2, H/4, W/4), ...}``."""
        out: dict[str, Tensor] = {}
        x = self.stem(x)
        last = self.out_features[-1] if self.out_features else None
        for name in STAGES:
            x = getattr(self, name)(x)
            if name in self.out_features:
                out[name] = x
            if name == last:
                break
        return out


def torchvision_to_ours(key: str) -> str | None:
    """Renames a torchvision/timm ResNet key (``layer1.0.bn2.weight``) to ours (``res2.0.conv2.norm.weight``).

    Keys already in detectron2/our naming pass through; classifier keys (``fc.*``) are dropped.
    """
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None
    if m := re.match(r"^bn1\.(.+)$", key):
        return f"stem.conv1.norm.{m.group(1)}"
    if key == "conv1.weight":
        return "stem.conv1.weight"
    if m := re.match(r"^layer(\d)\.(\d+)\.conv(\d)\.weight$", key):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.weight"
    if m := re.match(r"^layer(\d)\.(\d+)\.bn(\d)\.(.+)$", key):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.conv{m.group(3)}.norm.{m.group(4)}"
    if m := re.match(r"^layer(\d)\.(\d+)\.downsample\.0\.weight$", key):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.weight"
    if m := re.match(r"^layer(\d)\.(\d+)\.downsample\.1\.(.+)$", key):
        return f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.norm.{m.group(3)}"
    return key


def build_resnet(
    depth: int,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    norm: NormKind = "frozen_bn",
    freeze_at: int = 2,
    out_features: tuple[str, ...] = STAGES,
    width: int = 64,
) -> ResNet:
    """Builds a ResNet and loads ImageNet weights (local ``weights`` file, else timm when ``pretrained``).

    Weights are loaded before freezing so that frozen BatchNorms keep the pretrained statistics.
    ImageNet weights exist for ``width=64`` only.
    """
    if width != 64 and (pretrained or weights is not None):
        raise ValueError(
            f"resnet{depth} width={width}: ImageNet weights exist for width 64 only; "
            "set pretrained=false (and no weights file) to train from scratch"
        )
    model = ResNet(depth, norm=norm, freeze_at=0, out_features=out_features, width=width)
    if weights is not None:
        load_into(
            model,
            read_weights_file(weights),
            source=f"resnet{depth} weights {weights!r}",
            rename=torchvision_to_ours,
        )
    elif pretrained:
        name = _TIMM_NAMES[depth]
        load_into(
            model,
            fetch_timm_state_dict(name, backbone=f"resnet{depth}"),
            source=name,
            rename=torchvision_to_ours,
        )
    model.freeze(freeze_at)
    return model
