"""Official (detectron2) checkpoint keys convert to a state dict that loads strictly."""

from __future__ import annotations

import re

import torch

from tasks.detect.convert_official import convert_key, convert_official_state_dict
from tests.tasks.detect.model_helpers import tiny_model


def to_official(key: str) -> str:
    """Our key -> the detectron2 DiffusionDet name (written from detectron2's FPN naming)."""
    if m := re.match(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(weight|bias)$", key):
        kind = "lateral" if m.group(1) == "inner" else "output"
        return f"backbone.fpn_{kind}{int(m.group(2)) + 2}.{m.group(3)}"
    return key


def test_official_resnet_checkpoint_loads_strictly() -> None:
    model = tiny_model(seed=1)
    official = {to_official(k): v.clone() for k, v in model.state_dict().items()}
    official["alphas_cumprod"] = torch.ones(1000, dtype=torch.float64)  # schedule buffers are dropped
    official["sqrt_recipm1_alphas_cumprod"] = torch.ones(1000, dtype=torch.float64)
    assert "backbone.fpn_lateral2.weight" in official and "head.head_series.0.self_attn.in_proj_weight" in official
    fresh = tiny_model(seed=2)
    fresh.load_state_dict(convert_official_state_dict({"model": official}), strict=True)
    for (k, v), w in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(v, w), k


def test_swin_key_table() -> None:
    assert convert_key("backbone.bottom_up.layers.0.downsample.reduction.weight") == \
        "backbone.bottom_up.body.layers_1.downsample.reduction.weight"
    assert convert_key("backbone.bottom_up.layers.2.blocks.3.attn.qkv.weight") == \
        "backbone.bottom_up.body.layers_2.blocks.3.attn.qkv.weight"
    assert convert_key("backbone.bottom_up.layers.2.blocks.3.attn.relative_position_index") is None
    assert convert_key("backbone.bottom_up.norm3.weight") == "backbone.bottom_up.norm3.weight"
