"""mIoU in the two modes the few-shot task reports.

``standard``: dataset-level confusion matrix with ignored GT pixels dropped and classes absent
from both GT and predictions skipped (NaN) in the mean (cityscapesScripts / mmseg convention).
``ddpmseg``: DDPM-Seg's ``compute_iou``: every class id except ``ignore_index`` counts, an absent
class scores 0, and predictions on ignored GT pixels are false positives.

Uses ``evaluation.semseg`` when it is installed in this tree; the fallback below implements the
same two definitions for checkouts where it is not there yet (e.g. the few-shot GPU run).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

try:  # the shared implementation, once the evaluation package provides it
    from evaluation.semseg import confusion_matrix, ddpmseg_miou, miou_from_confusion
except ImportError:  # pragma: no cover - exercised only without evaluation.semseg

    def confusion_matrix(pred: Tensor, gt: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
        """(K, K) int64 counts, rows = GT class, columns = predicted class."""
        keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
        index = gt[keep].long() * num_classes + pred[keep].long().clamp(0, num_classes - 1)
        return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)

    def miou_from_confusion(cm: Tensor) -> dict:
        tp = cm.diag().double()
        union = cm.sum(0).double() + cm.sum(1).double() - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        return {"miou": float(iou.nanmean()), "iou": iou.tolist()}

    def ddpmseg_miou(preds: Sequence[Tensor], gts: Sequence[Tensor], num_classes: int, ignore_index: int) -> float:
        inter = torch.zeros(num_classes, dtype=torch.float64)
        union = torch.zeros(num_classes, dtype=torch.float64)
        for pred, gt in zip(preds, gts):
            for k in range(num_classes):
                if k == ignore_index:
                    continue
                p, g = pred == k, gt == k
                inter[k] += float((p & g).sum())
                union[k] += float((p | g).sum())
        ids = [k for k in range(num_classes) if k != ignore_index]
        return float((inter[ids] / (union[ids] + 1e-8)).mean())


def miou_both(preds: Sequence[Tensor], gts: Sequence[Tensor], num_classes: int, ignore_index: int) -> dict:
    """``{"miou": standard, "iou": per class, "miou_ddpmseg": DDPM-Seg's}``, mIoU as fractions."""
    cm = sum(confusion_matrix(p, g, num_classes, ignore_index) for p, g in zip(preds, gts))
    result = miou_from_confusion(cm)
    out = {"miou": float(result["miou"]), "iou": [float(v) for v in result["iou"]]}
    out["miou_ddpmseg"] = float(ddpmseg_miou(list(preds), list(gts), num_classes, ignore_index))
    return out
