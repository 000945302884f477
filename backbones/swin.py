"""Swin Transformer backbone (timm ``features_only``) returning NCHW ``swin0..swin3`` features.

Like the official DiffusionDet Swin backbone, each returned stage passes through its own LayerNorm
(``norm0..norm3``, freshly initialised, not part of the ImageNet checkpoint). Any input size works
(timm ``strict_img_size=False``; windows are padded internally).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from backbones.base import FeatureSpec
from backbones.pretrained import fetch_timm_state_dict, load_into, read_weights_file

SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7)
_TIMM_ARCH = "swin_base_patch4_window7_224"
_TIMM_PRETRAINED = (
    "swin_base_patch4_window7_224.ms_in22k"  # the official recipe uses the 22k weights
)


class SwinBackbone(nn.Module):
    """timm Swin wrapped to the backbone contract.

    Args:
        drop_path_rate: stochastic-depth rate (0.3 in the official recipe).
        arch_kwargs: overrides of the Swin-B architecture (``embed_dim``, ``depths``, ``num_heads``,
            ``window_size``), e.g. a tiny Swin for tests.
    """

    def __init__(self, *, drop_path_rate: float = 0.3, **arch_kwargs: Any) -> None:
        super().__init__()
        import timm

        arch = {**SWIN_B, **arch_kwargs}
        self.body = timm.create_model(
            _TIMM_ARCH,
            pretrained=False,
            features_only=True,
            strict_img_size=False,
            drop_path_rate=drop_path_rate,
            **arch,
        )
        channels = self.body.feature_info.channels()
        strides = self.body.feature_info.reduction()
        self.feature_specs = [
            FeatureSpec(f"swin{i}", c, s) for i, (c, s) in enumerate(zip(channels, strides))
        ]
        for i, c in enumerate(channels):
            self.add_module(f"norm{i}", nn.LayerNorm(c))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Args: x (B, 3, H, W). Returns ``{"swin0": (B, C0, H/4, W/4), ..., "swin3": (B, C3, H/32, W/32)}``."""
        feats = self.body(x)  # NHWC
        out = {}
        for i, f in enumerate(feats):
            f = getattr(self, f"norm{i}")(f)
            out[f"swin{i}"] = f.permute(0, 3, 1, 2).contiguous()
        return out


def _timm_to_features_only(key: str) -> str | None:
    """Renames a timm Swin classifier key (``layers.0.blocks...``) to the features_only body."""
    if key.startswith(("head.", "norm.")) or "relative_position_index" in key or "attn_mask" in key:
        return None
    if key.startswith("layers."):
        key = "layers_" + key[len("layers.") :]
    return "body." + key if not key.startswith(("body.", "norm")) else key


def _original_to_timm(state: dict) -> dict:
    """Microsoft's original Swin files put PatchMerging at the end of stage i; timm at the start of
    stage i + 1 (same channel order). Files already in timm format (``head.fc.*``) pass through."""
    if any(k.startswith("head.fc.") or k.startswith("body.") for k in state):
        return state
    out = {}
    for key, value in state.items():
        m = re.match(r"^layers\.(\d+)\.downsample\.(.+)$", key)
        out[f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}" if m else key] = value
    return out


def build_swin_b(
    *,
    pretrained: bool = False,
    weights: str | None = None,
    drop_path_rate: float = 0.3,
    **arch_kwargs: Any,
) -> SwinBackbone:
    """Builds Swin-B (or a variant via ``arch_kwargs``) and loads ImageNet-22k weights when asked."""
    model = SwinBackbone(drop_path_rate=drop_path_rate, **arch_kwargs)
    if weights is not None:
        load_into(
            model,
            _original_to_timm(read_weights_file(weights)),
            source=f"swin weights {weights!r}",
            rename=_timm_to_features_only,
        )
    elif pretrained:
        load_into(
            model,
            fetch_timm_state_dict(_TIMM_PRETRAINED, backbone="swin_b"),
            source=_TIMM_PRETRAINED,
            rename=_timm_to_features_only,
        )
    return model
