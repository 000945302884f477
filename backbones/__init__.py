"""Backbones shared by all tasks: a plain dict ``BACKBONES`` name -> builder, plus FPN.

Every builder takes keyword arguments only and returns an ``nn.Module`` with ``feature_specs`` whose
``forward(x)`` returns a dict of feature maps. ``build_backbone`` dispatches by name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from backbones.base import Backbone, FeatureSpec
from backbones.fpn import FPN
from backbones.pretrained import PretrainedWeightsError
from backbones.resnet import FrozenBatchNorm2d, ResNet, build_resnet
from backbones.swin import build_swin_b

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": partial(build_resnet, 18),
    "resnet50": partial(build_resnet, 50),
    "resnet101": partial(build_resnet, 101),
    "swin_b": build_swin_b,
}

# Bottom-up features fed to the FPN for each backbone family (res2..res5 / swin0..swin3).
FPN_IN_FEATURES: dict[str, tuple[str, ...]] = {
    "resnet18": ("res2", "res3", "res4", "res5"),
    "resnet50": ("res2", "res3", "res4", "res5"),
    "resnet101": ("res2", "res3", "res4", "res5"),
    "swin_b": ("swin0", "swin1", "swin2", "swin3"),
}


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Builds the bottom-up backbone ``name`` (a key of :data:`BACKBONES`).

    Keyword args are forwarded to the builder: ResNets take ``pretrained``, ``weights``, ``norm``,
    ``freeze_at``, ``out_features``; ``swin_b`` takes ``pretrained``, ``weights``, ``drop_path_rate``.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


def build_fpn_backbone(
    name: str, *, fpn_channels: int = 256, fpn_norm: str = "", **kwargs: Any
) -> FPN:
    """Builds ``name`` via :func:`build_backbone` and wraps it in an FPN with outputs ``p2..p6``."""
    bottom_up = build_backbone(name, **kwargs)
    return FPN(
        bottom_up, in_features=FPN_IN_FEATURES[name], out_channels=fpn_channels, norm=fpn_norm
    )


__all__ = [
    "BACKBONES",
    "FPN",
    "FPN_IN_FEATURES",
    "Backbone",
    "FeatureSpec",
    "FrozenBatchNorm2d",
    "PretrainedWeightsError",
    "ResNet",
    "build_backbone",
    "build_fpn_backbone",
]
