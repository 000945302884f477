"""DiffusionDet loss values and matching against independent oracles.

Oracles: torchvision's ``sigmoid_focal_loss`` / ``generalized_box_iou_loss`` / ``generalized_box_iou``,
and hand-computed cases (the normalisation by the matched count, the 2/5/2 weights, focal alpha 0.25,
the matcher's cost formula and dynamic k). The matcher is replaced by a fixed assignment where only the
loss arithmetic is under test, so a wrong normaliser cannot hide behind a matching change.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import (
    box_iou,
    generalized_box_iou,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from tasks.detect.criterion import SetCriterion
from tasks.detect.matcher import SimOTAMatcher
from tests.tasks.detect.model_helpers import tiny_model


class FixedMatcher:
    """Returns a preset ``(fg_mask, gt_index)`` per image, whatever the predictions."""

    def __init__(self, matches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.matches = matches

    def __call__(self, logits, boxes, targets):
        return self.matches


def _case(num_classes: int = 3):
    """Two non-square images (w, h) = (100, 60) and (80, 120), 4 proposals each, 2 + 1 GTs.

    The fixed assignment matches 3 proposals in image 0 (one GT twice: one-to-many) and 1 in image 1,
    so the matched count (4) differs from the GT count (3), the proposal count (8) and the image count (2).
    """
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, num_classes, generator=g) * 2
    whwh = torch.tensor([[100.0, 60, 100, 60], [80, 120, 80, 120]])
    xy = torch.rand(2, 4, 2, generator=g) * whwh[:, None, :2] * 0.5
    wh = (0.1 + torch.rand(2, 4, 2, generator=g) * 0.4) * whwh[:, None, :2]
    boxes = torch.cat([xy, xy + wh], -1)
    targets = [
        {
            "labels": torch.tensor([2, 0]),
            "boxes_xyxy": torch.tensor([[10.0, 5, 60, 40], [50, 20, 95, 58]]),
            "image_whwh": whwh[0],
        },
        {
            "labels": torch.tensor([1]),
            "boxes_xyxy": torch.tensor([[5.0, 30, 70, 110]]),
            "image_whwh": whwh[1],
        },
    ]
    matches = [
        (torch.tensor([True, False, True, True]), torch.tensor([0, 1, 1])),
        (torch.tensor([False, True, False, False]), torch.tensor([0])),
    ]
    return logits, boxes, targets, matches


def _oracle_losses(logits, boxes, targets, matches, alpha=0.25, gamma=2.0):
    """Unweighted losses of one stage from torchvision ops and plain loops."""
    onehot = torch.zeros_like(logits)
    src, gt, l1 = [], [], 0.0
    for b, ((fg, gi), t) in enumerate(zip(matches, targets)):
        w, h = float(t["image_whwh"][0]), float(t["image_whwh"][1])
        for q, j in zip(torch.nonzero(fg).flatten().tolist(), gi.tolist()):
            onehot[b, q, int(t["labels"][j])] = 1.0
            src.append(boxes[b, q])
            gt.append(t["boxes_xyxy"][j])
            for c, norm in enumerate((w, h, w, h)):
                l1 += abs(float(boxes[b, q, c]) / norm - float(t["boxes_xyxy"][j, c]) / norm)
    n = len(src)
    focal = float(sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma, reduction="sum")) / n
    giou = float(generalized_box_iou_loss(torch.stack(src), torch.stack(gt), reduction="sum")) / n
    return {"loss_ce": focal, "loss_bbox": l1 / n, "loss_giou": giou}


def test_stage_losses_equal_torchvision_and_are_normalised_by_the_matched_count() -> None:
    logits, boxes, targets, matches = _case()
    crit = SetCriterion(num_classes=3, matcher=FixedMatcher(matches))  # library defaults
    got = {k: float(v) for k, v in crit.stage_losses(logits, boxes, targets).items()}
    want = _oracle_losses(logits, boxes, targets, matches)
    for key in want:
        assert math.isclose(got[key], want[key], rel_tol=1e-5), (key, got[key], want[key])
    # the normaliser is the matched count (4), not the GT count (3), N (4) or B * N (8)
    wrong = {k: v * 4 / 3 for k, v in want.items()}
    assert all(not math.isclose(got[k], wrong[k], rel_tol=1e-3) for k in want)


def test_default_focal_alpha_is_a_quarter_and_gamma_two() -> None:
    logits, boxes, targets, matches = _case()
    got = float(
        SetCriterion(num_classes=3, matcher=FixedMatcher(matches)).stage_losses(
            logits, boxes, targets
        )["loss_ce"]
    )
    assert math.isclose(
        got, _oracle_losses(logits, boxes, targets, matches, alpha=0.25)["loss_ce"], rel_tol=1e-5
    )
    for alpha, gamma in ((0.75, 2.0), (-1.0, 2.0), (0.5, 2.0), (0.25, 1.0), (0.25, 0.0)):
        other = _oracle_losses(logits, boxes, targets, matches, alpha=alpha, gamma=gamma)["loss_ce"]
        assert not math.isclose(got, other, rel_tol=1e-3), (alpha, gamma)


def test_weights_and_deep_supervision_from_the_default_config() -> None:
    """``build_detector`` on the default loss config: every stage weighted 2 / 5 / 2, ``_s`` suffixes."""
    logits, boxes, targets, matches = _case()
    model = tiny_model(num_classes=3, num_stages=2)
    model.criterion.matcher = FixedMatcher(matches)
    g = torch.Generator().manual_seed(5)
    stage0_logits = torch.randn(logits.shape, generator=g)
    losses = model.criterion(
        torch.stack([stage0_logits, logits]), torch.stack([boxes.flip(0), boxes]), targets
    )
    assert set(losses) == {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "loss_ce_0",
        "loss_bbox_0",
        "loss_giou_0",
    }
    weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    last = _oracle_losses(logits, boxes, targets, matches)
    first = _oracle_losses(stage0_logits, boxes.flip(0), targets, matches)
    for key, w in weights.items():
        assert math.isclose(float(losses[key]), w * last[key], rel_tol=1e-5), key
        assert math.isclose(float(losses[key + "_0"]), w * first[key], rel_tol=1e-5), key


def test_no_match_gives_zero_box_losses_and_focal_over_all_logits() -> None:
    logits, boxes, targets, _ = _case()
    none = [(torch.zeros(4, dtype=torch.bool), torch.zeros(0, dtype=torch.long))] * 2
    got = SetCriterion(num_classes=3, matcher=FixedMatcher(none)).stage_losses(
        logits, boxes, targets
    )
    all_negative = float(
        sigmoid_focal_loss(logits, torch.zeros_like(logits), alpha=0.25, reduction="sum")
    )
    assert math.isclose(float(got["loss_ce"]), all_negative, rel_tol=1e-5)  # divided by max(0, 1)
    assert float(got["loss_bbox"]) == 0.0 and float(got["loss_giou"]) == 0.0


# ----------------------------------------------------------------------------------------- matcher


def _hand_cost(
    logits, pred, gt_labels, gt, whwh, w_cls=2.0, w_l1=5.0, w_giou=2.0, alpha=0.25, gamma=2.0
):
    """The documented DiffusionDet cost in float64 (reference §3), written out term by term."""
    p = torch.sigmoid(logits.double())[:, gt_labels]
    pos = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8)
    neg = (1 - alpha) * p**gamma * -torch.log(1 - p + 1e-8)
    pred, gt, whwh = pred.double(), gt.double(), whwh.double()
    l1 = (pred[:, None, :] / whwh - gt[None, :, :] / whwh).abs().sum(-1)
    giou = generalized_box_iou(pred, gt)
    cx, cy = ((pred[:, 0] + pred[:, 2]) / 2)[:, None], ((pred[:, 1] + pred[:, 3]) / 2)[:, None]
    in_box = (cx > gt[:, 0]) & (cx < gt[:, 2]) & (cy > gt[:, 1]) & (cy < gt[:, 3])
    gcx, gcy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    rw, rh = 2.5 * (gt[:, 2] - gt[:, 0]), 2.5 * (gt[:, 3] - gt[:, 1])
    in_ctr = ((cx - gcx).abs() < rw) & ((cy - gcy).abs() < rh)
    cost = w_cls * (pos - neg) + w_l1 * l1 - w_giou * giou + 100.0 * ~(in_box & in_ctr)
    cost[~(in_box | in_ctr).any(1)] += 10000.0
    return cost


def _single_gt_trial(seed: int):
    g = torch.Generator().manual_seed(seed)
    whwh = torch.tensor([120.0, 80, 120, 80])
    gt = torch.tensor([[30.0, 20, 90, 50]])
    n = 12
    ctr = torch.tensor([60.0, 35]) + (torch.rand(n, 2, generator=g) - 0.5) * torch.tensor(
        [100.0, 70]
    )
    half = (0.3 + torch.rand(n, 2, generator=g)) * torch.tensor([30.0, 15])
    pred = torch.cat([ctr - half, ctr + half], 1)
    logits = torch.randn(n, 4, generator=g) * 3
    return logits, pred, torch.tensor([2]), gt, whwh


def _expected_single_gt(logits, pred, labels, gt, whwh, **weights):
    """One GT: its k = max(1, int(sum of top-5 IoUs)) lowest-cost proposals."""
    cost = _hand_cost(logits, pred, labels, gt, whwh, **weights)[:, 0]
    ious = box_iou(pred.double(), gt.double())[:, 0]
    k = max(1, int(float(ious.topk(5).values.sum())))
    return set(cost.argsort()[:k].tolist())


def test_matcher_takes_the_k_lowest_documented_costs() -> None:
    matcher = SimOTAMatcher()  # defaults: weights 2 / 5 / 2, alpha 0.25, gamma 2, ota_k 5
    sensitive = {"cls": 0, "l1": 0, "giou": 0}
    for seed in range(25):
        logits, pred, labels, gt, whwh = _single_gt_trial(seed)
        fg, gi = matcher.match_image(logits, pred, labels, gt, whwh)
        want = _expected_single_gt(logits, pred, labels, gt, whwh)
        assert set(torch.nonzero(fg).flatten().tolist()) == want, seed
        assert gi.tolist() == [0] * len(want)
        # the trials can tell each weight from a swapped / scaled one (self-check of this test's power)
        sensitive["cls"] += want != _expected_single_gt(logits, pred, labels, gt, whwh, w_cls=5.0)
        sensitive["l1"] += want != _expected_single_gt(logits, pred, labels, gt, whwh, w_l1=2.0)
        sensitive["giou"] += want != _expected_single_gt(logits, pred, labels, gt, whwh, w_giou=5.0)
    assert all(v > 0 for v in sensitive.values()), sensitive


def test_dynamic_k_is_the_floor_of_the_top5_iou_sum() -> None:
    """Hand case: proposals with IoU 0.9, 0.8, 0.7, 0.6, 0.5 (+ small ones): k = int(3.5) = 3."""
    gt = torch.tensor([[0.0, 0, 100, 100]])
    ious = [0.9, 0.8, 0.7, 0.6, 0.5, 0.2, 0.1]
    # concentric boxes inside the GT: IoU = side^2 / 100^2
    pred = torch.tensor(
        [
            [
                50 - 50 * math.sqrt(v),
                50 - 50 * math.sqrt(v),
                50 + 50 * math.sqrt(v),
                50 + 50 * math.sqrt(v),
            ]
            for v in ious
        ]
    )
    # identical class scores; cost then orders by box quality: the best 3 are taken
    logits = torch.zeros(len(ious), 2)
    fg, _ = SimOTAMatcher().match_image(
        logits, pred, torch.tensor([1]), gt, torch.tensor([200.0, 200, 200, 200])
    )
    assert torch.nonzero(fg).flatten().tolist() == [0, 1, 2]


def test_proposal_claimed_by_two_gts_keeps_its_cheaper_gt_and_unmatched_gt_is_forced() -> None:
    gts = torch.tensor([[0.0, 0, 50, 50], [10, 10, 60, 60]])
    pred = torch.tensor(
        [[8.0, 8, 56, 56], [200, 200, 210, 210]]
    )  # only proposal 0 is near either GT
    logits = torch.tensor([[3.0, -3.0], [0.0, 0.0]])  # proposal 0 says class 0 -> cheaper for GT 0
    fg, gi = SimOTAMatcher().match_image(
        logits, pred, torch.tensor([0, 1]), gts, torch.tensor([300.0, 300, 300, 300])
    )
    cost = _hand_cost(logits, pred, torch.tensor([0, 1]), gts, torch.tensor([300.0, 300, 300, 300]))
    assert float(cost[0, 0]) < float(cost[0, 1])
    # proposal 0 keeps GT 0; GT 1 is left unmatched and force-assigned to the other proposal
    assert fg.tolist() == [True, True] and gi.tolist() == [0, 1]


def test_centre_region_is_two_and_a_half_gt_sizes() -> None:
    """Two proposals outside the GT box: A's centre 2 GT widths from the GT centre (inside the +-2.5 w
    centre region: +100), B's 3 widths away (outside every region: +1e4) but with a far better class
    score. A must win; with a narrower region both pay 1e4 and B's class score would decide."""
    gt = torch.tensor([[190.0, 40, 210, 60]])  # 20 x 20, centre (200, 50)
    pred = torch.tensor([[230.0, 40, 250, 60], [250.0, 40, 270, 60]])  # centres at +2 w and +3 w
    logits = torch.tensor([[-4.0], [4.0]])
    fg, _ = SimOTAMatcher().match_image(
        logits, pred, torch.tensor([0]), gt, torch.tensor([400.0, 100, 400, 100])
    )
    assert fg.tolist() == [True, False]
    cost = _hand_cost(logits, pred, torch.tensor([0]), gt, torch.tensor([400.0, 100, 400, 100]))
    assert float(cost[0, 0]) < float(cost[1, 0])


def test_in_box_test_is_strict_on_the_edges() -> None:
    """A proposal whose centre lies exactly on the GT's left edge is NOT in the box (official ``> 0``): it
    pays the +100 and loses to an inside proposal with a worse class score."""
    gt = torch.tensor([[100.0, 40, 140, 80]])
    edge = torch.tensor([[90.0, 50, 110, 70]])  # centre x = 100 = gx1
    inside = torch.tensor([[115.0, 45, 135, 75]])
    pred = torch.cat([edge, inside])
    logits = torch.tensor([[4.0], [-4.0]])
    fg, _ = SimOTAMatcher().match_image(
        logits, pred, torch.tensor([0]), gt, torch.tensor([300.0, 200, 300, 200])
    )
    assert fg.tolist() == [False, True]
