"""SimOTA-style dynamic-k matcher of DiffusionDet (official ``HungarianMatcherDynamicK``; it is not Hungarian).

Per image, with predictions ``boxes_xyxy`` (N, 4) and ground truth (M, 4):
cost = 2 * focal_cost + 5 * L1(normalised xyxy) + 2 * (-GIoU) + 100 * not(in-box and in-center),
plus 1e4 for proposals whose centre lies in no GT box and no GT centre region (±2.5 w/h around the GT
centre). Each GT takes its k lowest-cost proposals, k = max(1, int(sum of its top-5 IoUs)); a proposal
claimed by several GTs keeps its argmin-cost GT; unmatched GTs are then force-assigned.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tasks.detect.box_codec import pairwise_iou_giou, xyxy_to_cxcywh

CENTER_RADIUS = 2.5


def focal_class_cost(prob: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Focal matching cost (N, M) of probabilities ``prob`` (N, K) for GT ``labels`` (M,)."""
    p = prob[:, labels]
    neg = (1 - alpha) * p**gamma * (-(1 - p + 1e-8).log())
    pos = alpha * (1 - p) ** gamma * (-(p + 1e-8).log())
    return pos - neg


def center_prior(pred_xyxy: Tensor, gt_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """Which proposal centres lie in GT boxes / GT centre regions.

    Returns:
        fg_mask (N,): centre inside any GT box or any GT centre region.
        in_box_and_center (N, M): centre inside GT j's box *and* its centre region.
    """
    cx, cy = xyxy_to_cxcywh(pred_xyxy)[:, :2].unbind(-1)
    cx, cy = cx[:, None], cy[:, None]
    gx1, gy1, gx2, gy2 = gt_xyxy.unbind(-1)
    in_box = (cx > gx1) & (cx < gx2) & (cy > gy1) & (cy < gy2)
    gcx, gcy = (gx1 + gx2) / 2, (gy1 + gy2) / 2
    rw, rh = CENTER_RADIUS * (gx2 - gx1), CENTER_RADIUS * (gy2 - gy1)
    in_center = (cx > gcx - rw) & (cx < gcx + rw) & (cy > gcy - rh) & (cy < gcy + rh)
    return in_box.any(1) | in_center.any(1), in_box & in_center


def dynamic_k_matching(cost: Tensor, ious: Tensor, ota_k: int) -> tuple[Tensor, Tensor]:
    """Dynamic-k assignment on a cost matrix (N, M), exactly as the official ``dynamic_k_matching``.

    The official code reuses the multi-match mask computed before its repair loop (a stale mask); we
    keep that behaviour for parity. The repair loop is capped at ``N + M`` rounds (the official loop
    could spin when M > N).

    Returns:
        fg_mask (N,) bool: matched proposals; gt_index (num_fg,) long: their GT.
    """
    n, m = cost.shape
    cost = cost.clone()
    k = min(ota_k, n)
    dynamic_ks = ious.topk(k, dim=0).values.sum(0).int().clamp(min=1)  # (M,)
    kmax = min(int(dynamic_ks.max()), n)
    _, pos = cost.topk(kmax, dim=0, largest=False)  # (kmax, M), ascending cost
    take = (torch.arange(kmax, device=cost.device)[:, None] < dynamic_ks[None, :]).to(cost.dtype)
    matching = torch.zeros_like(cost).scatter_(0, pos, take)

    multi = matching.sum(1) > 1  # computed once; reused below (official quirk)
    if multi.any():
        _resolve(matching, cost, multi)
    for _ in range(n + m):
        unmatched = matching.sum(0) == 0
        if not unmatched.any():
            break
        cost[matching.sum(1) > 0] += 100000.0
        cols = torch.nonzero(unmatched, as_tuple=False).squeeze(1)
        rows = cost[:, cols].argmin(0)
        matching[rows, cols] = 1.0
        if (matching.sum(1) > 1).any() and multi.any():
            _resolve(matching, cost, multi)
    fg_mask = matching.sum(1) > 0
    gt_index = matching[fg_mask].max(1)[1]
    return fg_mask, gt_index


def _resolve(matching: Tensor, cost: Tensor, rows: Tensor) -> None:
    """Keeps only the argmin-cost GT for each proposal in ``rows`` (in place)."""
    argmin = cost[rows].argmin(1)
    matching[rows] = 0.0
    matching[torch.nonzero(rows, as_tuple=False).squeeze(1), argmin] = 1.0


class SimOTAMatcher:
    """Dynamic-k matcher (no parameters; a plain callable).

    Args:
        cost_class, cost_bbox, cost_giou: weights of the focal, L1 and GIoU costs (2, 5, 2).
        ota_k: number of top IoUs summed for dynamic k (5).
        focal_alpha, focal_gamma: focal cost parameters (0.25, 2).
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        ota_k: int = 5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        if ota_k < 1:
            raise ValueError(f"ota_k must be >= 1, got {ota_k}")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.ota_k, self.focal_alpha, self.focal_gamma = ota_k, focal_alpha, focal_gamma

    @torch.no_grad()
    def match_image(
        self,
        logits: Tensor,
        pred_xyxy: Tensor,
        gt_labels: Tensor,
        gt_xyxy: Tensor,
        image_whwh: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Matches one image.

        Args:
            logits: (N, K) class logits. pred_xyxy: (N, 4) predicted ``boxes_xyxy``.
            gt_labels: (M,) int64. gt_xyxy: (M, 4) GT ``boxes_xyxy``. image_whwh: (4,) image (w, h, w, h).

        Returns:
            fg_mask (N,) bool and gt_index (num_fg,) int64; empty GT gives no matches.
        """
        n = logits.shape[0]
        if gt_labels.numel() == 0:
            return (
                torch.zeros(n, dtype=torch.bool, device=logits.device),
                torch.zeros(0, dtype=torch.long, device=logits.device),
            )
        logits, pred_xyxy, gt_xyxy = logits.float(), pred_xyxy.float(), gt_xyxy.float()
        fg_mask, in_box_and_center = center_prior(pred_xyxy, gt_xyxy)
        ious, gious = pairwise_iou_giou(pred_xyxy, gt_xyxy)
        cost_class = focal_class_cost(
            logits.sigmoid(), gt_labels, self.focal_alpha, self.focal_gamma
        )
        cost_bbox = torch.cdist(pred_xyxy / image_whwh, gt_xyxy / image_whwh, p=1)
        cost = (
            self.cost_bbox * cost_bbox
            + self.cost_class * cost_class
            + self.cost_giou * -gious
            + 100.0 * (~in_box_and_center)
        )
        cost[~fg_mask] += 10000.0
        cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
        return dynamic_k_matching(cost, ious, self.ota_k)

    def __call__(
        self, logits: Tensor, pred_xyxy: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Matches a batch: logits (B, N, K), pred_xyxy (B, N, 4), targets with ``labels``,
        ``boxes_xyxy`` and ``image_whwh``. Returns one (fg_mask, gt_index) pair per image."""
        return [
            self.match_image(logits[b], pred_xyxy[b], t["labels"], t["boxes_xyxy"], t["image_whwh"])
            for b, t in enumerate(targets)
        ]
