"""Multi-level RoI pooling with detectron2 ``ROIPooler`` semantics (ROIAlignV2, FPN level assignment)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align


def assign_levels(
    boxes_xyxy: Tensor, min_level: int, max_level: int,
    canonical_box_size: float = 224.0, canonical_level: int = 4,
) -> Tensor:
    """FPN level index (0 = ``min_level``) of each box (R, 4): ``floor(canonical_level +
    log2(sqrt(area) / canonical_box_size + 1e-8))`` clamped to ``[min_level, max_level]``."""
    area = ((boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])).clamp(min=0)
    levels = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_box_size + 1e-8))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


class RoIPooler(nn.Module):
    """Pools (R, C, P, P) features for boxes over pyramid levels with strides ``strides``.

    Args:
        output_size: P (7).
        strides: strides of the pooled levels, consecutive powers of two (e.g. 4, 8, 16, 32).
        sampling_ratio: ROIAlign sampling ratio (2).
    """

    def __init__(self, *, output_size: int, strides: tuple[int, ...], sampling_ratio: int = 2) -> None:
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if any(lv != int(lv) for lv in levels) or any(b - a != 1 for a, b in zip(levels, levels[1:])):
            raise ValueError(f"pooler strides must be consecutive powers of two, got {strides}")
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.scales = tuple(1.0 / s for s in strides)
        self.min_level, self.max_level = int(levels[0]), int(levels[-1])

    def forward(self, features: list[Tensor], boxes_xyxy: Tensor) -> Tensor:
        """Args: features, one (B, C, H_l, W_l) per level; boxes_xyxy (B, N, 4) absolute.
        Returns (B * N, C, P, P), image-major."""
        b, n = boxes_xyxy.shape[:2]
        flat = boxes_xyxy.reshape(-1, 4).float()
        batch_idx = torch.arange(b, device=flat.device, dtype=flat.dtype).repeat_interleave(n)
        rois = torch.cat([batch_idx[:, None], flat], dim=1)
        args = dict(output_size=self.output_size, sampling_ratio=self.sampling_ratio, aligned=True)
        if len(features) == 1:
            return roi_align(features[0], rois, spatial_scale=self.scales[0], **args)
        levels = assign_levels(flat, self.min_level, self.max_level)
        c = features[0].shape[1]
        out = features[0].new_zeros((b * n, c, self.output_size, self.output_size))
        for lvl, (feat, scale) in enumerate(zip(features, self.scales)):
            idx = torch.nonzero(levels == lvl, as_tuple=False).squeeze(1)
            if idx.numel():
                pooled = roi_align(feat, rois[idx], spatial_scale=scale, **args)
                out.index_put_((idx,), pooled.to(out.dtype))
        return out
