"""SimOTA dynamic-k matcher: hand-made cases, empty GT, and equality with a loop-based reference."""

from __future__ import annotations

import pytest
import torch

from tasks.detect.matcher import SimOTAMatcher, center_prior, dynamic_k_matching

WHWH = torch.tensor([100.0, 100.0, 100.0, 100.0])


def reference_dynamic_k(cost: torch.Tensor, ious: torch.Tensor, ota_k: int):
    """The official algorithm written as loops (per-GT top-k, stale multi-match mask)."""
    cost = cost.clone()
    matching = torch.zeros_like(cost)
    ks = torch.clamp(torch.topk(ious, ota_k, dim=0).values.sum(0).int(), min=1)
    for g in range(cost.shape[1]):
        _, pos = torch.topk(cost[:, g], k=int(ks[g]), largest=False)
        matching[pos, g] = 1.0
    stale = matching.sum(1) > 1
    if stale.any():
        amin = cost[stale].argmin(1)
        matching[stale] = 0
        matching[stale, amin] = 1
    while (matching.sum(0) == 0).any():
        cost[matching.sum(1) > 0] += 100000.0
        for g in torch.nonzero(matching.sum(0) == 0).squeeze(1):
            matching[torch.argmin(cost[:, g]), g] = 1.0
        if (matching.sum(1) > 1).any():
            amin = cost[stale].argmin(1)
            matching[stale] = 0
            matching[stale, amin] = 1
    fg = matching.sum(1) > 0
    return fg, matching[fg].max(1)[1]


def _logits(n: int, k: int, fill: float = -4.0) -> torch.Tensor:
    return torch.full((n, k), fill)


def test_empty_gt_matches_nothing() -> None:
    fg, idx = SimOTAMatcher().match_image(
        _logits(5, 3),
        torch.rand(5, 4) * 50,
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, 4),
        WHWH,
    )
    assert fg.shape == (5,) and not fg.any() and idx.numel() == 0


def test_single_gt_takes_the_exact_proposal() -> None:
    gt = torch.tensor([[10.0, 10.0, 40.0, 40.0]])
    preds = torch.tensor([[10.0, 10, 40, 40], [60, 60, 90, 90], [0, 50, 20, 70], [11, 12, 38, 41]])
    fg, idx = SimOTAMatcher().match_image(_logits(4, 2), preds, torch.tensor([1]), gt, WHWH)
    # top-5 IoU sum = 1 + 0.82 -> k = 1: only the best (exact) proposal is matched
    assert fg.tolist() == [True, False, False, False] and idx.tolist() == [0]


def test_dynamic_k_grows_with_overlapping_proposals() -> None:
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    preds = torch.tensor([[10.0, 10, 50, 50], [10, 10, 50, 51], [10, 10, 51, 50], [70, 70, 90, 90]])
    fg, idx = SimOTAMatcher().match_image(_logits(4, 2), preds, torch.tensor([0]), gt, WHWH)
    assert fg.tolist() == [True, True, False, False]  # sum of IoUs ~2.95 -> k = 2


def test_shared_proposal_keeps_cheapest_gt_and_other_gt_is_force_assigned() -> None:
    gts = torch.tensor([[10.0, 10, 40, 40], [10, 10, 40, 40]])  # identical GTs, different classes
    preds = torch.tensor([[10.0, 10, 40, 40], [12, 12, 42, 42], [60, 60, 90, 90]])
    logits = _logits(3, 2)
    logits[0, 1] = 3.0  # proposal 0 is confident about class 1 -> cheaper for GT 1
    fg, idx = SimOTAMatcher().match_image(logits, preds, torch.tensor([0, 1]), gts, WHWH)
    assert fg.tolist() == [True, True, False]
    assert idx.tolist() == [
        1,
        0,
    ]  # proposal 0 -> GT 1 (argmin cost), GT 0 force-assigned to proposal 1


def test_center_prior_regions() -> None:
    gt = torch.tensor([[40.0, 40, 50, 50]])  # w = h = 10: centre region is +-25 around (45, 45)
    preds = torch.tensor(
        [[44.0, 44, 46, 46], [60, 60, 70, 70], [90, 90, 99, 99]]
    )  # centres 45, 65, 94.5
    fg, both = center_prior(preds, gt)
    assert fg.tolist() == [True, True, False]
    assert both[:, 0].tolist() == [True, False, False]


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_dynamic_k_equals_loop_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, m = 30, 4 + seed
    cost = torch.rand(n, m, generator=g) * 10
    cost[:, : m // 2] -= 5 * (torch.rand(n, 1, generator=g) > 0.7).float()  # shared cheap proposals
    ious = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) > 0.6).float()
    fg, idx = dynamic_k_matching(cost, ious, 5)
    ref_fg, ref_idx = reference_dynamic_k(cost, ious, 5)
    assert torch.equal(fg, ref_fg) and torch.equal(idx, ref_idx)


def test_more_gts_than_proposals_terminates() -> None:
    g = torch.Generator().manual_seed(0)
    gts = torch.tensor([[10.0, 10, 20, 20]]).repeat(8, 1) + torch.rand(8, 1, generator=g) * 30
    preds = torch.rand(3, 2, generator=g).repeat(1, 2) * 30 + torch.tensor([0.0, 0, 10, 10])
    fg, idx = SimOTAMatcher().match_image(
        _logits(3, 2), preds, torch.zeros(8, dtype=torch.long), gts, WHWH
    )
    assert fg.all() and idx.shape == (3,)
