"""mIoU in the two modes the few-shot task reports, from ``evaluation.semseg``.

``miou``: dataset-level confusion matrix with ignored GT pixels dropped and classes absent from
both GT and predictions skipped (NaN) in the mean (cityscapesScripts / mmseg convention).
``miou_ddpmseg``: DDPM-Seg's ``compute_iou``: every class id except ``ignore_index`` counts, an
absent class scores 0, and predictions on ignored GT pixels are false positives.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from evaluation.semseg import confusion_matrix, ddpmseg_miou, miou_from_confusion


def miou_both(
    preds: Sequence[Tensor], gts: Sequence[Tensor], num_classes: int, ignore_index: int
) -> dict:
    """``{"miou", "iou" (per class), "miou_ddpmseg", "iou_ddpmseg"}``, as fractions in [0, 1]."""
    if not preds:
        raise ValueError("miou_both: no predictions")
    cm = sum(confusion_matrix(p, g, num_classes, ignore_index) for p, g in zip(preds, gts))
    standard = miou_from_confusion(cm)
    ddpmseg = ddpmseg_miou(list(preds), list(gts), num_classes, ignore_index)
    return {
        "miou": float(standard["miou"]),
        "iou": [float(v) for v in standard["iou"]],
        "miou_ddpmseg": float(ddpmseg["miou"]),
        "iou_ddpmseg": [float(v) for v in ddpmseg["iou"]],
    }
