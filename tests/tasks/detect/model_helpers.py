"""Tiny DiffusionDet configurations shared by the detection model tests (fast on CPU)."""

from __future__ import annotations

import torch

from tasks.detect.config import DetectConfig
from tasks.detect.model import DiffusionDet, build_detector


def tiny_config(num_classes: int = 3, num_proposals: int = 16, num_stages: int = 2) -> DetectConfig:
    cfg = DetectConfig()
    m = cfg.model
    m.backbone.name, m.backbone.pretrained, m.backbone.norm, m.backbone.freeze_at = (
        "resnet18",
        False,
        "bn",
        0,
    )
    m.backbone.fpn_channels = m.head.hidden_dim = 32
    m.head.num_classes, m.head.num_proposals, m.head.num_stages = (
        num_classes,
        num_proposals,
        num_stages,
    )
    m.head.num_attn_heads, m.head.dim_feedforward, m.head.dim_dynamic = 4, 64, 8
    return cfg


def tiny_model(seed: int = 0, **kwargs) -> DiffusionDet:
    torch.manual_seed(seed)
    return build_detector(tiny_config(**kwargs))


def random_images(sizes, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]
