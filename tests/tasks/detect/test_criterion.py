"""Set criterion: weighted keys per stage, finiteness on degenerate boxes, empty images, fed loss."""

from __future__ import annotations

import pytest
import torch

from tasks.detect.criterion import SetCriterion
from tasks.detect.matcher import SimOTAMatcher

WHWH = torch.tensor([100.0, 80.0, 100.0, 80.0])


def _targets(boxes_list, labels_list):
    return [
        {
            "boxes_xyxy": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(lab, dtype=torch.long),
            "image_whwh": WHWH,
        }
        for b, lab in zip(boxes_list, labels_list)
    ]


def _criterion(**kwargs) -> SetCriterion:
    return SetCriterion(num_classes=3, matcher=SimOTAMatcher(), **kwargs)


def test_keys_weights_and_deep_supervision() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 6, 3, generator=g)
    boxes = torch.tensor([10.0, 10, 30, 30]) + torch.rand(3, 2, 6, 4, generator=g) * 20
    targets = _targets([[[10, 10, 40, 40]], [[5, 5, 20, 30], [50, 40, 90, 70]]], [[0], [1, 2]])
    losses = _criterion()(logits, boxes, targets)
    assert set(losses) == {
        f"{n}{s}" for n in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0", "_1")
    }
    unweighted = _criterion().stage_losses(logits[-1], boxes[-1], targets)
    for name, w in (("loss_ce", 2.0), ("loss_bbox", 5.0), ("loss_giou", 2.0)):
        torch.testing.assert_close(losses[name], unweighted[name] * w)
    last_only = _criterion(deep_supervision=False)(logits, boxes, targets)
    assert set(last_only) == {"loss_ce", "loss_bbox", "loss_giou"}


def test_finite_on_degenerate_predictions() -> None:
    boxes = torch.tensor(
        [[[[30.0, 30, 10, 10], [5, 5, 5, 5], [0, 0, 1e30, 1e30], [20, 20, 20, 60]]]],
        requires_grad=True,
    )
    logits = torch.zeros(1, 1, 4, 3, requires_grad=True)
    targets = _targets([[[10, 10, 30, 30], [20, 20, 20, 20]]], [[0, 1]])  # includes a zero-area GT
    losses = _criterion()(logits, boxes, targets)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values())
    total.backward()
    assert torch.isfinite(boxes.grad).all() and torch.isfinite(logits.grad).all()


def test_empty_images_give_zero_box_losses() -> None:
    logits = torch.randn(1, 2, 5, 3, requires_grad=True)
    boxes = torch.rand(1, 2, 5, 4, requires_grad=True)
    losses = _criterion()(logits, boxes, _targets([[], []], [[], []]))
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert losses["loss_ce"].item() > 0  # all negatives, normalised by 1
    sum(losses.values()).backward()


def test_fed_loss_masks_classes_and_needs_weights() -> None:
    logits = torch.randn(1, 1, 5, 3)
    boxes = torch.tensor(
        [
            [
                [
                    [10.0, 10, 30, 30],
                    [50, 50, 70, 70],
                    [0, 40, 20, 60],
                    [60, 0, 90, 20],
                    [40, 10, 60, 30],
                ]
            ]
        ]
    )
    targets = _targets([[[10, 10, 30, 30]]], [[0]])
    with pytest.raises(ValueError, match="set_fed_loss_weights"):
        _criterion(use_fed_loss=True)(logits, boxes, targets)
    fed = _criterion(
        use_fed_loss=True, fed_loss_num_classes=2, fed_loss_cls_weights=torch.tensor([1.0, 0, 0])
    )
    # unique gt classes = {0, background} already reach 2 -> only class 0 contributes
    full = _criterion().stage_losses(logits[0], boxes[0], targets)["loss_ce"]
    masked = fed.stage_losses(logits[0], boxes[0], targets)["loss_ce"]
    assert 0 < masked.item() < full.item()
