"""Convert official DiffusionDet (detectron2) checkpoints to this implementation's state dict.

The head and the ResNet keep the official parameter names, so the table is short:

=====================================================  ===================================================
official (detectron2)                                  ours
=====================================================  ===================================================
``backbone.bottom_up.{stem,res2..res5}.*``             unchanged
``backbone.fpn_lateral{L}.{weight,bias}``              ``backbone.fpn.inner_blocks.{L-2}.0.*``
``backbone.fpn_output{L}.{weight,bias}``               ``backbone.fpn.layer_blocks.{L-2}.0.*``
``backbone.bottom_up.layers.{i}.downsample.*`` (Swin)   ``backbone.bottom_up.body.layers_{i+1}.downsample.*``
``backbone.bottom_up.layers.{i}.*`` (Swin)              ``backbone.bottom_up.body.layers_{i}.*``
``backbone.bottom_up.patch_embed.*`` (Swin)             ``backbone.bottom_up.body.patch_embed.*``
``backbone.bottom_up.norm{i}.*`` (Swin)                 unchanged
``head.*``                                             unchanged
schedule buffers (``betas``, ``alphas_cumprod`` ...)     dropped (the schedule is rebuilt from the config)
=====================================================  ===================================================

    python tasks/detect/convert_official.py diffdet_coco_res50.pth diffdet_coco_res50_ours.pt

The Swin rows follow timm's own conversion of the original Swin weights; only the ResNet rows are
covered by tests here (no official checkpoint is available offline).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from torch import Tensor

_DROPPED = re.compile(r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_.*|log_one_minus_alphas_cumprod|"
                      r"posterior_.*|pixel_mean|pixel_std)$|relative_position_index$|attn_mask$")


def convert_key(key: str) -> str | None:
    """Maps one official key to ours (None = drop)."""
    if _DROPPED.search(key):
        return None
    if m := re.match(r"^backbone\.fpn_(lateral|output)(\d)\.(weight|bias)$", key):
        block = "inner_blocks" if m.group(1) == "lateral" else "layer_blocks"
        return f"backbone.fpn.{block}.{int(m.group(2)) - 2}.0.{m.group(3)}"
    if m := re.match(r"^backbone\.bottom_up\.layers\.(\d+)\.downsample\.(.+)$", key):
        return f"backbone.bottom_up.body.layers_{int(m.group(1)) + 1}.downsample.{m.group(2)}"
    if m := re.match(r"^backbone\.bottom_up\.layers\.(\d+)\.(.+)$", key):
        return f"backbone.bottom_up.body.layers_{m.group(1)}.{m.group(2)}"
    if key.startswith("backbone.bottom_up.patch_embed."):
        return key.replace("backbone.bottom_up.", "backbone.bottom_up.body.", 1)
    return key


def convert_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Converts an official state dict (or a detectron2 checkpoint ``{"model": ...}``)."""
    if isinstance(state.get("model"), dict):
        state = state["model"]
    out = {}
    for key, value in state.items():
        new = convert_key(key)
        if new is not None:
            out[new] = torch.as_tensor(value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an official DiffusionDet checkpoint.")
    parser.add_argument("src", help="official .pth (detectron2 checkpoint)")
    parser.add_argument("dst", help="output state dict (.pt) for DiffusionDetector(weights=...)")
    args = parser.parse_args(argv)
    state = torch.load(args.src, map_location="cpu", weights_only=False)  # detectron2 pickles metadata
    torch.save(convert_official_state_dict(state), args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
