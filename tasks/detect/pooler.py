"""Multi-level RoI pooling with detectron2 ``ROIPooler`` semantics (ROIAlignV2, FPN level assignment).

On CPU, training spends a fifth of its time in torchvision's ``roi_align`` backward (a serial loop that
first zero-fills a full-size gradient per call). :func:`roi_align_gather` computes the same bilinear
samples with tensor gathers, so its backward is one ``index_add``; the pooler uses it for CPU
tensors that need gradients (``impl="auto"``) and torchvision's kernel everywhere else.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align as tv_roi_align


def _axis_samples(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's bilinear rules along one axis for sample coordinates ``coord`` (R, S):
    out of ``[-1, size]`` -> weight 0; clamp at 0; the last row/column is not interpolated past.
    Returns low and high indices (R, S) int64 and their weights (R, S)."""
    valid = (coord >= -1.0) & (coord <= size)
    c = coord.clamp(min=0.0)
    low = c.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    c = torch.where(at_edge, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    valid = valid.to(c.dtype)
    return low, high, (1.0 - frac) * valid, frac * valid


def roi_align_gather(
    features: Tensor,
    rois: Tensor,
    *,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = True,
) -> Tensor:
    """``torchvision.ops.roi_align`` for a fixed ``sampling_ratio > 0``, written with gathers.

    Args:
        features: (B, C, H, W). rois: (R, 5) ``(batch_index, x1, y1, x2, y2)`` in input pixels.
    Returns:
        (R, C, P, P), equal to torchvision's result up to float summation order.
    """
    if sampling_ratio <= 0:
        raise ValueError("roi_align_gather needs a fixed sampling_ratio > 0")
    b, c, h, w = features.shape
    p, g = output_size, sampling_ratio
    r = rois.shape[0]
    rois = rois.to(features.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / p, roi_h / p
    cell = torch.arange(p, device=rois.device, dtype=rois.dtype).repeat_interleave(g)  # (P*g,)
    sub = (torch.arange(g, device=rois.device, dtype=rois.dtype) + 0.5).repeat(p)
    xs = (x1[:, None] + cell * bin_w[:, None]) + sub * bin_w[:, None] / g  # (R, P*g)
    ys = (y1[:, None] + cell * bin_h[:, None]) + sub * bin_h[:, None] / g
    y_lo, y_hi, wy_lo, wy_hi = _axis_samples(ys, h)
    x_lo, x_hi, wx_lo, wx_hi = _axis_samples(xs, w)
    rows = torch.stack((y_lo, y_hi), -1) * w + (rois[:, 0].to(torch.int64) * h * w)[:, None, None]
    cols = torch.stack((x_lo, x_hi), -1)
    index = rows[:, :, None, :, None] + cols[:, None, :, None, :]  # (R, Sy, Sx, 2, 2)
    weight = (
        torch.stack((wy_lo, wy_hi), -1)[:, :, None, :, None]
        * torch.stack((wx_lo, wx_hi), -1)[:, None, :, None, :]
    )
    flat = features.permute(0, 2, 3, 1).reshape(b * h * w, c)
    values = flat.index_select(0, index.reshape(-1)).view(*index.shape, c)
    samples = (values * weight.unsqueeze(-1)).sum((3, 4))  # (R, Sy, Sx, C)
    pooled = samples.view(r, p, g, p, g, c).sum((2, 4)) / float(g * g)
    return pooled.permute(0, 3, 1, 2).contiguous()


def assign_levels(
    boxes_xyxy: Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """FPN level index (0 = ``min_level``) of each box (R, 4): ``floor(canonical_level +
    log2(sqrt(area) / canonical_box_size + 1e-8))`` clamped to ``[min_level, max_level]``."""
    area = ((boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])).clamp(
        min=0
    )
    levels = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_box_size + 1e-8))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


class RoIPooler(nn.Module):
    """Pools (R, C, P, P) features for boxes over pyramid levels with strides ``strides``.

    Args:
        output_size: P (7).
        strides: strides of the pooled levels, consecutive powers of two (e.g. 4, 8, 16, 32).
        sampling_ratio: ROIAlign sampling ratio (2).
        impl: ``"auto"`` (gathers for CPU features that need gradients, torchvision otherwise),
            ``"torchvision"`` or ``"gather"``.
    """

    def __init__(
        self,
        *,
        output_size: int,
        strides: tuple[int, ...],
        sampling_ratio: int = 2,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if impl not in ("auto", "torchvision", "gather"):
            raise ValueError(f"impl must be 'auto', 'torchvision' or 'gather', got {impl!r}")
        self.impl = impl
        levels = [math.log2(s) for s in strides]
        if any(lv != int(lv) for lv in levels) or any(
            b - a != 1 for a, b in zip(levels, levels[1:])
        ):
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
        roi_align = self._kernel(features[0])
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

    def _kernel(self, feature: Tensor):  # noqa: ANN202
        use_gather = self.impl == "gather" or (
            self.impl == "auto"
            and feature.device.type == "cpu"
            and feature.requires_grad
            and torch.is_grad_enabled()
            and self.sampling_ratio > 0
        )
        return roi_align_gather if use_gather else tv_roi_align
