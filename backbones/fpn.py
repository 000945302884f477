"""Feature Pyramid Network over a bottom-up backbone (detectron2 ``build_resnet_fpn_backbone`` semantics).

Built on ``torchvision.ops.FeaturePyramidNetwork``: 1x1 lateral convs, nearest-neighbour top-down
upsampling, sum fusion, 3x3 output convs (no norm by default), and ``p6`` = max-pool(k=1, s=2) of ``p5``
(``LastLevelMaxPool``). Outputs are named ``p{log2(stride)}``. Parameter map to detectron2:
``fpn_lateral{s}`` <-> ``fpn.inner_blocks.{i}.0``, ``fpn_output{s}`` <-> ``fpn.layer_blocks.{i}.0``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from backbones.base import FeatureSpec, spec_by_name


class FPN(nn.Module):
    """FPN wrapper following the backbone contract.

    Args:
        bottom_up: a backbone (``feature_specs`` + dict output).
        in_features: names of the bottom-up features to fuse, fine to coarse (e.g. ``res2..res5``).
        out_channels: channels of every pyramid level.
        top_block: add ``p6`` by max-pooling the coarsest level.
        norm: ``""`` (none, official) or ``"gn"`` for GroupNorm(32) in the FPN convs.
    """

    def __init__(
        self,
        bottom_up: nn.Module,
        *,
        in_features: tuple[str, ...],
        out_channels: int = 256,
        top_block: bool = True,
        norm: str = "",
    ) -> None:
        super().__init__()
        if norm not in ("", "gn"):
            raise ValueError(f"unsupported FPN norm {norm!r}; expected '' or 'gn'")
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        in_specs = [spec_by_name(bottom_up.feature_specs, n) for n in self.in_features]
        norm_layer = (lambda c: nn.GroupNorm(32, c)) if norm == "gn" else None
        self.fpn = FeaturePyramidNetwork(
            [s.channels for s in in_specs],
            out_channels,
            extra_blocks=LastLevelMaxPool() if top_block else None,
            norm_layer=norm_layer,
        )
        strides = [s.stride for s in in_specs]
        if top_block:
            strides.append(strides[-1] * 2)
        self.feature_specs = [
            FeatureSpec(f"p{int(math.log2(s))}", out_channels, s) for s in strides
        ]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args: x (B, 3, H, W) with H, W multiples of the coarsest stride. Returns ``{"p2": ..., "p6": ...}``."""
        bottom = self.bottom_up(x)
        feats = OrderedDict((name, bottom[name]) for name in self.in_features)
        outs = self.fpn(feats)
        return {spec.name: out for spec, out in zip(self.feature_specs, outs.values())}
