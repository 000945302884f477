"""Box formats, diffusion codec, delta decoding and sanitised (G)IoU."""

from __future__ import annotations

import math

import torch
from torchvision.ops import box_iou, generalized_box_iou

from tasks.detect import box_codec as bc


def test_diffusion_codec_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    cxcywh = torch.rand(2, 10, 4, generator=g) * 0.5 + 0.25
    whwh = torch.tensor([[640.0, 480, 640, 480], [100, 200, 100, 200]])
    x = bc.encode(cxcywh, 2.0)
    assert x.min() >= -2 and x.max() <= 2
    torch.testing.assert_close(bc.decode(x, 2.0), cxcywh)
    xyxy = bc.diffusion_to_xyxy(x, whwh, 2.0)
    torch.testing.assert_close(bc.xyxy_to_diffusion(xyxy, whwh, 2.0), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(bc.xyxy_to_cxcywh(bc.cxcywh_to_xyxy(cxcywh)), cxcywh)


def test_decode_clamps_to_scale() -> None:
    x = torch.tensor([[-5.0, 5.0, 0.0, 2.0]])
    torch.testing.assert_close(bc.decode(x, 2.0), torch.tensor([[0.0, 1.0, 0.5, 1.0]]))


def test_apply_deltas_identity_and_known_shift() -> None:
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    torch.testing.assert_close(bc.apply_deltas(torch.zeros(1, 4), boxes), boxes)
    # dx = 2 (weight 2) moves the centre by one width; dw = log 2 doubles the width
    out = bc.apply_deltas(torch.tensor([[2.0, 0.0, math.log(2.0), 0.0]]), boxes)
    torch.testing.assert_close(out, torch.tensor([[30.0, 20.0, 110.0, 100.0]]))
    huge = bc.apply_deltas(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), boxes)
    assert torch.isfinite(huge).all()  # dw clamped at log(1e5 / 16)


def test_giou_matches_torchvision_on_valid_boxes() -> None:
    g = torch.Generator().manual_seed(1)
    a = bc.cxcywh_to_xyxy(torch.rand(7, 4, generator=g) * 100 + 1)
    b = bc.cxcywh_to_xyxy(torch.rand(5, 4, generator=g) * 100 + 1)
    iou, giou = bc.pairwise_iou_giou(a, b)
    torch.testing.assert_close(iou, box_iou(a, b))
    torch.testing.assert_close(giou, generalized_box_iou(a, b))
    torch.testing.assert_close(
        bc.elementwise_giou(a[:5], b), torch.diag(generalized_box_iou(a[:5], b))
    )


def test_giou_finite_on_degenerate_boxes() -> None:
    a = torch.tensor(
        [[10.0, 10, 5, 5], [3, 3, 3, 3], [0, 0, 1e30, 1e30], [7, 8, 7, 20]], requires_grad=True
    )
    b = torch.tensor([[0.0, 0, 10, 10], [3, 3, 3, 3], [1, 1, 2, 2], [0, 0, 0, 0]])
    giou = bc.elementwise_giou(a, b)
    assert torch.isfinite(giou).all() and (giou <= 1).all() and (giou >= -1).all()
    giou.sum().backward()
    assert torch.isfinite(a.grad).all()
    iou, pg = bc.pairwise_iou_giou(a.detach(), b)
    assert torch.isfinite(iou).all() and torch.isfinite(pg).all()
    # a reversed box is treated as its ordered version
    torch.testing.assert_close(
        giou[0], bc.elementwise_giou(torch.tensor([[5.0, 5, 10, 10]]), b[:1])[0]
    )
