"""DiffusionDet set-prediction loss (official ``SetCriterionDynamicK``, focal path).

Per stage: SimOTA matching (recomputed for every stage), then
- ``loss_ce``: sigmoid focal loss (alpha 0.25, gamma 2) summed over all B x N x K logits, optionally
  masked by the federated-loss class sample (LVIS), divided by the number of matched predictions;
- ``loss_bbox``: L1 between matched predictions and GT in normalised xyxy, divided likewise;
- ``loss_giou``: 1 - GIoU on absolute xyxy (degenerate boxes sanitised, see ``box_codec.sanitize_xyxy``).
The last stage's losses have no suffix; earlier stages get ``_0 .. _{S-2}`` (deep supervision).
All returned values are already multiplied by their weights, so ``sum(losses.values())`` is the total.
Normalisation is by the local (per-process) matched count, as in the official code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from tasks.detect.box_codec import elementwise_giou
from tasks.detect.matcher import SimOTAMatcher


def fed_loss_classes(
    gt_classes: Tensor,
    num_fed_classes: int,
    num_classes: int,
    weight: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Classes kept by the federated loss: the unique ``gt_classes`` (background = ``num_classes``
    included, as in detectron2) plus negatives sampled without replacement with probability ``weight``."""
    unique = torch.unique(gt_classes)
    prob = unique.new_ones(num_classes + 1).float()
    prob[-1] = 0
    if len(unique) >= num_fed_classes:
        return unique
    prob[:num_classes] = weight.float().clone()
    prob[unique] = 0
    num_negatives = min(num_fed_classes - len(unique), int((prob > 0).sum()))
    if num_negatives == 0:
        return unique
    negatives = torch.multinomial(prob, num_negatives, replacement=False, generator=generator)
    return torch.cat([unique, negatives])


class SetCriterion(nn.Module):
    """Weighted DiffusionDet losses over all stages.

    Args:
        num_classes: K.
        matcher: the dynamic-k matcher.
        class_weight, l1_weight, giou_weight: loss weights (2, 5, 2).
        focal_alpha, focal_gamma: focal-loss parameters.
        deep_supervision: supervise every stage (else the last only).
        use_fed_loss: federated loss (LVIS); needs ``fed_loss_cls_weights``.
        fed_loss_num_classes: classes kept per batch by the federated loss (50).
        fed_loss_cls_weights: (K,) sampling weights, e.g. image frequency ** 0.5; may be set later
            with :meth:`set_fed_loss_weights`.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: SimOTAMatcher,
        class_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        deep_supervision: bool = True,
        use_fed_loss: bool = False,
        fed_loss_num_classes: int = 50,
        fed_loss_cls_weights: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_bbox": l1_weight, "loss_giou": giou_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.deep_supervision = deep_supervision
        self.use_fed_loss = use_fed_loss
        self.fed_loss_num_classes = fed_loss_num_classes
        self.register_buffer("fed_loss_cls_weights", torch.ones(num_classes), persistent=False)
        self._has_fed_weights = False
        if fed_loss_cls_weights is not None:
            self.set_fed_loss_weights(fed_loss_cls_weights)

    def set_fed_loss_weights(self, weights: Tensor) -> None:
        """Sets the (K,) federated-loss class sampling weights."""
        weights = torch.as_tensor(weights, dtype=torch.float32)
        if weights.shape != (self.num_classes,):
            raise ValueError(
                f"fed_loss_cls_weights must have shape ({self.num_classes},), "
                f"got {tuple(weights.shape)}"
            )
        self.fed_loss_cls_weights.copy_(weights)
        self._has_fed_weights = True

    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Computes the weighted losses.

        Args:
            pred_logits: (S, B, N, K) per-stage class logits.
            pred_boxes: (S, B, N, 4) per-stage ``boxes_xyxy`` (absolute pixels).
            targets: per image ``labels`` (M,), ``boxes_xyxy`` (M, 4), ``image_whwh`` (4,).

        Returns:
            ``{"loss_ce", "loss_bbox", "loss_giou"}`` for the last stage plus ``*_{s}`` for earlier stages.
        """
        if self.use_fed_loss and not self._has_fed_weights:
            raise ValueError(
                "use_fed_loss=True needs class weights: call set_fed_loss_weights(...)"
            )
        num_stages = pred_logits.shape[0]
        stages = range(num_stages) if self.deep_supervision else [num_stages - 1]
        losses: dict[str, Tensor] = {}
        for s in stages:
            suffix = "" if s == num_stages - 1 else f"_{s}"
            for name, value in self.stage_losses(pred_logits[s], pred_boxes[s], targets).items():
                losses[name + suffix] = value * self.weights[name]
        return losses

    def stage_losses(
        self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Unweighted losses of one stage: logits (B, N, K), boxes (B, N, 4) ``boxes_xyxy``."""
        matches = self.matcher(logits.detach(), boxes.detach(), targets)
        batch_idx, query_idx, gt_labels, gt_boxes, whwh = [], [], [], [], []
        for b, ((fg, gt_index), t) in enumerate(zip(matches, targets)):
            q = torch.nonzero(fg, as_tuple=False).squeeze(1)
            batch_idx.append(torch.full_like(q, b))
            query_idx.append(q)
            gt_labels.append(t["labels"][gt_index])
            gt_boxes.append(t["boxes_xyxy"][gt_index])
            whwh.append(t["image_whwh"].expand(len(q), 4))
        batch_idx, query_idx = torch.cat(batch_idx), torch.cat(query_idx)
        gt_labels, gt_boxes, whwh = (
            torch.cat(gt_labels),
            torch.cat(gt_boxes).float(),
            torch.cat(whwh),
        )
        num_matched = len(query_idx)

        logits = logits.float()
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, gt_labels] = 1.0
        cls_loss = sigmoid_focal_loss(
            logits, onehot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="none"
        )
        if self.use_fed_loss:
            cls_loss = cls_loss * self._fed_mask(batch_idx, query_idx, gt_labels, logits.shape)
        loss_ce = cls_loss.sum() / max(num_matched, 1)

        if num_matched == 0:
            zero = boxes.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_bbox": zero, "loss_giou": zero}
        src = boxes[batch_idx, query_idx].float()
        loss_bbox = (src / whwh - gt_boxes / whwh).abs().sum() / num_matched
        loss_giou = (1.0 - elementwise_giou(src, gt_boxes)).sum() / num_matched
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def _fed_mask(
        self, batch_idx: Tensor, query_idx: Tensor, gt_labels: Tensor, shape: torch.Size
    ) -> Tensor:
        """(1, 1, K) mask of the federated-loss classes for this batch."""
        k = self.num_classes
        gt_classes = torch.full(shape[:2], k, dtype=torch.long, device=gt_labels.device)
        gt_classes[batch_idx, query_idx] = gt_labels
        keep = fed_loss_classes(
            gt_classes.flatten(), self.fed_loss_num_classes, k, self.fed_loss_cls_weights
        )
        mask = torch.zeros(k + 1, device=gt_labels.device)
        mask[keep] = 1.0
        return mask[:k].view(1, 1, k)
