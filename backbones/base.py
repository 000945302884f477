"""The backbone contract shared by every task.

A backbone is an ``nn.Module`` with a ``feature_specs`` attribute (one :class:`FeatureSpec` per
output) whose ``forward(x)`` maps an image batch ``(B, 3, H, W)`` to a dict ``name -> (B, C, H/s, W/s)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@dataclass(frozen=True)
class FeatureSpec:
    """Description of one feature map produced by a backbone.

    Attributes:
        name: key of the feature in the backbone's output dict (e.g. ``"res4"``, ``"p3"``).
        channels: number of channels C.
        stride: down-sampling factor relative to the input image.
    """

    name: str
    channels: int
    stride: int


@runtime_checkable
class Backbone(Protocol):
    """Structural type of a backbone (any ``nn.Module`` with these members qualifies)."""

    feature_specs: list[FeatureSpec]

    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...


def spec_by_name(specs: list[FeatureSpec], name: str) -> FeatureSpec:
    """Returns the spec called ``name``; raises ``ValueError`` listing the available names."""
    for spec in specs:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown feature {name!r}; available: {[s.name for s in specs]}")
