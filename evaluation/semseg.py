"""Semantic segmentation metrics: device confusion matrix (bincount), NaN-skipping mIoU, DDPM-Seg's mIoU.

* :func:`confusion_matrix` / :func:`miou_from_confusion`: the standard protocol (Cityscapes, mmseg, CamVid):
  pixels whose GT is ``ignore_index`` are dropped, IoU = TP / (TP + FP + FN), a class with an empty
  denominator is NaN and skipped by the mean (a left-to-right sum in class order, as cityscapesScripts).
* :func:`ddpmseg_miou`: DDPM-Seg's ``compute_iou`` (Baranchuk et al.), reproduced with its quirks: a class
  absent from GT and predictions scores 0 (not NaN), GT pixels equal to ``ignore_index`` still turn predictions
  into false positives, IoU = I / (1e-8 + U), and the mean is numpy's over the non-ignored class ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from evaluation.dist import gather_on_main
from evaluation.protocol import check_batch, require_key


def _as_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    return t.to(device) if device is not None else t


def confusion_matrix(
    pred: Any, gt: Any, num_classes: int, ignore_index: int | None = 255
) -> torch.Tensor:
    """Confusion matrix of one or many label maps.

    Args:
        pred: (..., H, W) integer class predictions in [0, num_classes).
        gt: same shape; values in [0, num_classes) or ``ignore_index`` (those pixels are skipped).
        num_classes: K.
        ignore_index: GT value to skip (None: none).

    Returns:
        (K, K) int64 tensor on ``gt``'s device, rows = GT class, columns = predicted class.
    """
    gt = _as_tensor(gt)
    pred = _as_tensor(pred, gt.device)
    if pred.shape != gt.shape:
        raise ValueError(
            f"confusion_matrix: prediction shape {tuple(pred.shape)} != GT shape {tuple(gt.shape)}"
        )
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).long()
    if ignore_index is not None:
        keep = gt != ignore_index
        gt, pred = gt[keep], pred[keep]
    if gt.numel():
        lo, hi = torch.aminmax(torch.stack([gt.min(), gt.max(), pred.min(), pred.max()]))
        if int(lo) < 0 or int(hi) >= num_classes:
            bad = "GT" if int(gt.min()) < 0 or int(gt.max()) >= num_classes else "prediction"
            raise ValueError(
                f"confusion_matrix: {bad} holds values outside [0, {num_classes}) "
                f"(GT range [{int(gt.min())}, {int(gt.max())}], prediction range "
                f"[{int(pred.min())}, {int(pred.max())}], ignore_index={ignore_index})"
            )
    return torch.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def sequential_nanmean(values: Sequence[float]) -> float:
    """Mean over non-NaN values with a left-to-right float sum (cityscapesScripts ``getScoreAverage``)."""
    total, n = 0.0, 0
    for v in values:
        if not math.isnan(v):
            total += v
            n += 1
    return total / n if n else float("nan")


def miou_from_confusion(
    cm: torch.Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """IoU / accuracy metrics from a (K, K) confusion matrix (rows GT).

    Returns:
        dict with "miou" (NaN-skipping mean), "iou" (K,) float64 numpy (NaN where TP+FP+FN == 0),
        "acc" (K,) per-class recall (NaN for classes without GT), "mean_acc", "pixel_acc", and
        "per_class" {name: iou} when ``class_names`` is given.
    """
    cm = cm.detach().to("cpu", torch.int64).numpy()
    tp = np.diag(cm)
    fn = cm.sum(1) - tp
    fp = cm.sum(0) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp.astype(np.float64) / denom, np.nan)
        acc = np.where(cm.sum(1) > 0, tp.astype(np.float64) / cm.sum(1), np.nan)
    total = int(cm.sum())
    out: dict[str, Any] = {
        "miou": sequential_nanmean(iou.tolist()),
        "iou": iou,
        "acc": acc,
        "mean_acc": sequential_nanmean(acc.tolist()),
        "pixel_acc": float(tp.sum()) / total if total else float("nan"),
    }
    if class_names is not None:
        out["per_class"] = dict(zip(class_names, iou.tolist()))
    return out


def ddpmseg_counts(pred: Any, gt: Any, num_classes: int) -> torch.Tensor:
    """(3, K) int64 [intersection, |pred == k|, |gt == k|] over all pixels (nothing is masked)."""
    gt = _as_tensor(gt).reshape(-1).long()
    pred = _as_tensor(pred, gt.device).reshape(-1).long()
    k = num_classes
    inter = torch.bincount(gt[(gt == pred) & (gt >= 0) & (gt < k)], minlength=k)[:k]
    p = torch.bincount(pred[(pred >= 0) & (pred < k)], minlength=k)[:k]
    g = torch.bincount(gt[(gt >= 0) & (gt < k)], minlength=k)[:k]
    return torch.stack([inter, p, g])


def ddpmseg_miou_from_counts(counts: torch.Tensor, ignore_index: int | None) -> dict[str, Any]:
    """DDPM-Seg IoU from :func:`ddpmseg_counts` sums: I / (1e-8 + U) with U = P + G - I."""
    inter, p, g = (c.to("cpu", torch.int64).numpy() for c in counts)
    ids = [k for k in range(inter.shape[0]) if k != ignore_index]
    ious = [inter[k] / (1e-8 + (p[k] + g[k] - inter[k])) for k in ids]
    return {
        "miou": float(np.array(ious).mean()),
        "iou": np.array(ious, dtype=np.float64),
        "class_ids": ids,
    }


def ddpmseg_miou(
    preds: Any, gts: Any, num_classes: int, ignore_index: int | None
) -> dict[str, Any]:
    """DDPM-Seg ``compute_iou`` over a whole test set.

    Args:
        preds, gts: sequences of (H, W) label maps (or stacked (N, H, W) tensors / arrays).
        num_classes: the ``number_class`` of the experiment.
        ignore_index: the ``ignore_label`` class id (skipped as a class, NOT masked out of predictions).

    Returns:
        dict with "miou", "iou" (per non-ignored class id), "class_ids".
    """
    total = None
    for pred, gt in zip(preds, gts):
        c = ddpmseg_counts(pred, gt, num_classes)
        total = c if total is None else total + c
    if total is None:
        raise ValueError("ddpmseg_miou: no images")
    return ddpmseg_miou_from_counts(total, ignore_index)


class SemSegEvaluator:
    """Generic K-class evaluator (CamVid, ADE, ...) following :mod:`evaluation.protocol`.

    Args:
        num_classes: K.
        ignore_index: GT value skipped by the standard metric (and the class id DDPM-Seg mode skips).
        class_names: optional K names for "per_class" (default: the class indices as strings).
        mode: "standard" (NaN-skipping mIoU) or "ddpmseg" (DDPM-Seg's compute_iou quirks).
        device: where the bincounts run (default: the inputs' device).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: Sequence[str] | None = None,
        *,
        mode: str = "standard",
        device: str | torch.device | None = None,
    ) -> None:
        if mode not in ("standard", "ddpmseg"):
            raise ValueError(f"SemSegEvaluator: mode must be 'standard' or 'ddpmseg', got {mode!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"SemSegEvaluator: {len(class_names)} class names for {num_classes} classes"
            )
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = (
            list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
        )
        self.mode = mode
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Drop everything processed so far."""
        self._acc: torch.Tensor | None = None

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        """Add one batch: ``inputs[i]["sem_seg"]`` (H, W) integer GT (optional ``"file_name"`` for errors),
        ``outputs[i]["sem_seg"]`` (H, W) integer labels or (C, H, W) scores (argmax over C)."""
        check_batch(inputs, outputs, "SemSegEvaluator")
        for i, (inp, out) in enumerate(zip(inputs, outputs)):
            name = inp.get("file_name", f"inputs[{i}]")
            gt = require_key(inp, "sem_seg", "SemSegEvaluator", f"input {name}")
            pred = _as_tensor(require_key(out, "sem_seg", "SemSegEvaluator", f"output {name}"))
            if pred.ndim == 3:
                pred = pred.argmax(0)
            try:
                self.process_arrays(pred, gt)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e

    def process_arrays(self, preds: Any, gts: Any) -> None:
        """Add label maps directly: ``preds``, ``gts`` (B, H, W) or (H, W) (tensors or arrays)."""
        gt = _as_tensor(gts, self.device)
        pred = _as_tensor(preds, gt.device)
        if self.mode == "standard":
            c = confusion_matrix(pred, gt, self.num_classes, self.ignore_index)
        else:
            if pred.shape != gt.shape:
                raise ValueError(
                    f"SemSegEvaluator: prediction shape {tuple(pred.shape)} != GT {tuple(gt.shape)}"
                )
            c = ddpmseg_counts(pred, gt, self.num_classes)
        self._acc = c if self._acc is None else self._acc + c

    def counts(self) -> torch.Tensor | None:
        """The summed counts over ranks on rank 0 (standard: (K, K) confusion, rows GT; ddpmseg: (3, K)
        [intersection, prediction, GT] pixels); None on other ranks."""
        parts = gather_on_main(None if self._acc is None else self._acc.cpu())
        if parts is None:
            return None
        parts = [p for p in parts if p is not None]
        if not parts:
            raise ValueError("SemSegEvaluator.evaluate: nothing was processed")
        return torch.stack(parts).sum(0)

    def evaluate(self) -> dict[str, Any]:
        """Rank 0: standard mode {"mIoU", "mean_acc", "pixel_acc", "per_class": IoU per class (NaN when a
        class is absent from GT and predictions)}; ddpmseg mode {"mIoU", "per_class"} over the non-ignored
        class ids. ``{}`` on other ranks."""
        total = self.counts()
        if total is None:
            return {}
        if self.mode == "ddpmseg":
            out = ddpmseg_miou_from_counts(total, self.ignore_index)
            names = [self.class_names[k] for k in out["class_ids"]]
            return {"mIoU": out["miou"], "per_class": dict(zip(names, out["iou"].tolist()))}
        out = miou_from_confusion(total, self.class_names)
        return {
            "mIoU": out["miou"],
            "mean_acc": out["mean_acc"],
            "pixel_acc": out["pixel_acc"],
            "per_class": out["per_class"],
        }


def format_table(result: dict[str, Any]) -> str:
    """Per-class IoU lines and the summary of a :class:`SemSegEvaluator` result (percent, 2 decimals)."""
    width = max([len(n) for n in result["per_class"]] + [8])
    lines = [f"{name:<{width}}  {100 * v:6.2f}" for name, v in result["per_class"].items()]
    lines.append("-" * (width + 8))
    for key in ("mIoU", "mean_acc", "pixel_acc"):
        if key in result:
            lines.append(f"{key:<{width}}  {100 * result[key]:6.2f}")
    return "\n".join(lines)
