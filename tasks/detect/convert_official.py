"""Convert official DiffusionDet (detectron2) checkpoints to this implementation's state dict.

``DiffusionDetector.from_config(..., weights=...)``, ``evaluate.py --weights`` and ``model.weights=`` load the
official files directly (``tasks/detect/weights.py`` applies this table on the fly); this script stays for those
who want a converted file. The file is read without running code from it (``torch.load(weights_only=True)``, or a
restricted unpickler for detectron2 ``.pkl``).

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

    python -m tasks.detect.convert_official diffdet_coco_res50.pth diffdet_coco_res50_ours.pt

The Swin rows follow timm's own conversion of the original Swin weights. Tests build official-format state dicts
from our R50 / R101 / Swin-B models with :func:`to_official_key` (the inverse table) and check that they load
strictly; no official checkpoint is available offline.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import torch
from torch import Tensor

from backbones.pretrained import read_weights_object
from tasks.common.checkpoint import save_checkpoint

_DROPPED = re.compile(
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_.*|log_one_minus_alphas_cumprod|"
    r"posterior_.*|pixel_mean|pixel_std)$|relative_position_index$|attn_mask$"
)


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


def to_official_key(key: str) -> str:
    """Maps one of our keys to the official (detectron2) name: the inverse of :func:`convert_key`."""
    if m := re.match(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.0\.(weight|bias)$", key):
        kind = "lateral" if m.group(1) == "inner" else "output"
        return f"backbone.fpn_{kind}{int(m.group(2)) + 2}.{m.group(3)}"
    if m := re.match(r"^backbone\.bottom_up\.body\.layers_(\d+)\.downsample\.(.+)$", key):
        return f"backbone.bottom_up.layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    if m := re.match(r"^backbone\.bottom_up\.body\.layers_(\d+)\.(.+)$", key):
        return f"backbone.bottom_up.layers.{m.group(1)}.{m.group(2)}"
    if key.startswith("backbone.bottom_up.body.patch_embed."):
        return key.replace("backbone.bottom_up.body.", "backbone.bottom_up.", 1)
    return key


def convert_official_state_dict(state: dict[str, Any]) -> dict[str, Tensor]:
    """Converts an official state dict (or a detectron2 checkpoint ``{"model": ...}``); numpy arrays (detectron2
    ``.pkl``) become tensors, schedule buffers and derived Swin buffers are dropped."""
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
    state = read_weights_object(
        args.src
    )  # weights_only / restricted unpickler: never runs code from the file
    if not isinstance(state, dict):
        raise SystemExit(
            f"{args.src}: expected a state dict or a checkpoint dict, got {type(state).__name__}"
        )
    save_checkpoint(convert_official_state_dict(state), args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
