"""Box formats, the diffusion-space codec and box-delta decoding.

Coordinate frames used across ``tasks/detect``:
- ``boxes_xyxy``: absolute pixels (x1, y1, x2, y2) of the *unpadded resized* image.
- ``boxes_cxcywh_norm``: (cx, cy, w, h) divided by the image (w, h, w, h), nominally in [0, 1].
- diffusion space: ``(2 * boxes_cxcywh_norm - 1) * scale`` (scale 2.0), clamped to [-scale, scale].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(100000.0 / 16)
BBOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
COORD_LIMIT = 1e5  # pixels; (2e5)^2 is far below the float32 maximum


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) (cx, cy, w, h) -> (..., 4) (x1, y1, x2, y2), same frame."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) (x1, y1, x2, y2) -> (..., 4) (cx, cy, w, h), same frame."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def encode(boxes_cxcywh_norm: Tensor, scale: float) -> Tensor:
    """Normalised cxcywh -> diffusion space ``(2b - 1) * scale`` (no clamp)."""
    return (boxes_cxcywh_norm * 2.0 - 1.0) * scale


def decode(x: Tensor, scale: float) -> Tensor:
    """Diffusion space -> normalised cxcywh: clamp to [-scale, scale], then ``(x / scale + 1) / 2``."""
    return (x.clamp(-scale, scale) / scale + 1.0) / 2.0


def diffusion_to_xyxy(x: Tensor, image_whwh: Tensor, scale: float) -> Tensor:
    """Diffusion-space boxes (B, N, 4) -> absolute ``boxes_xyxy`` (B, N, 4) given ``image_whwh`` (B, 4)."""
    return cxcywh_to_xyxy(decode(x, scale)) * image_whwh[:, None, :]


def xyxy_to_diffusion(boxes_xyxy: Tensor, image_whwh: Tensor, scale: float) -> Tensor:
    """Absolute ``boxes_xyxy`` (B, N, 4) -> diffusion space (B, N, 4), clamped to [-scale, scale]."""
    x = encode(xyxy_to_cxcywh(boxes_xyxy / image_whwh[:, None, :]), scale)
    return x.clamp(-scale, scale)


def apply_deltas(
    deltas: Tensor,
    boxes_xyxy: Tensor,
    weights: tuple[float, float, float, float] = BBOX_WEIGHTS,
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """R-CNN box decoding (detectron2 ``Box2BoxTransform.apply_deltas`` for one box per row).

    Args:
        deltas: (R, 4) (dx, dy, dw, dh), divided by ``weights``; dw, dh clamped at ``scale_clamp``.
        boxes_xyxy: (R, 4) reference boxes.

    Returns:
        (R, 4) decoded ``boxes_xyxy`` in the dtype of ``deltas``.
    """
    boxes = boxes_xyxy.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = (deltas[:, 2] / ww).clamp(max=scale_clamp)
    dh = (deltas[:, 3] / wh).clamp(max=scale_clamp)
    pred_cx = dx * widths + ctr_x
    pred_cy = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        (
            pred_cx - 0.5 * pred_w,
            pred_cy - 0.5 * pred_h,
            pred_cx + 0.5 * pred_w,
            pred_cy + 0.5 * pred_h,
        ),
        dim=-1,
    )


def sanitize_xyxy(boxes: Tensor) -> Tensor:
    """Orders the corners of (..., 4) boxes: ``(min(x1,x2), min(y1,y2), max(x1,x2), max(y1,y2))``.

    Used before IoU/GIoU so that degenerate predictions (x2 < x1 after a bad update, or w = 0)
    give finite values and still pass gradients, instead of the official code's assertion.
    Coordinates are also clamped to +-``COORD_LIMIT`` pixels so that areas stay finite in float32.
    """
    x1, y1, x2, y2 = boxes.clamp(-COORD_LIMIT, COORD_LIMIT).unbind(-1)
    return torch.stack(
        (
            torch.minimum(x1, x2),
            torch.minimum(y1, y2),
            torch.maximum(x1, x2),
            torch.maximum(y1, y2),
        ),
        dim=-1,
    )


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU and generalized IoU between every pair of (N, 4) and (M, 4) ``boxes_xyxy``.

    Degenerate boxes are sanitised (:func:`sanitize_xyxy`) and denominators clamped at ``eps``, so the
    result is always finite for finite input. For valid boxes this equals the official computation.

    Returns:
        iou (N, M), giou (N, M).
    """
    a, b = sanitize_xyxy(a), sanitize_xyxy(b)
    area_a, area_b = _area(a), _area(b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = inter / union.clamp(min=eps)
    lt_c = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb_c = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    area_c = wh_c[..., 0] * wh_c[..., 1]
    giou = iou - (area_c - union) / area_c.clamp(min=eps)
    return iou, giou


def elementwise_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalized IoU of matching rows of (R, 4) ``boxes_xyxy`` (the diagonal of the pairwise matrix)."""
    a, b = sanitize_xyxy(a), sanitize_xyxy(b)
    area_a, area_b = _area(a), _area(b)
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=eps)
    wh_c = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0)
    area_c = wh_c[:, 0] * wh_c[:, 1]
    return iou - (area_c - union) / area_c.clamp(min=eps)
