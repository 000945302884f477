"""COCO bbox / segm evaluation, bit-equal to pycocotools 2.0.11.

``evaluate(gt, detections)`` is the one-shot API (files, lists or parsed arrays); :class:`COCOEvaluator`
follows the evaluator protocol (:mod:`evaluation.protocol`) for training loops; :func:`format_table` prints
pycocotools' 12-line summary. Matching and accumulation run in the compiled CPU kernel
(:mod:`evaluation.matching_cpu`) or in torch on CUDA (:mod:`evaluation.matching`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation import matching
from evaluation.coco_data import GroundTruth, Results, load_ground_truth, parse_results
from evaluation.detections import DetectionRecords
from evaluation.devices import resolve_device
from evaluation.pair_iou import pair_iou_for

logger = logging.getLogger(__name__)

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
# (ap?, iouThr, area label, which maxDets: index into max_dets or the literal 100)
_SUMMARY = (
    (1, None, "all", "lit100"),
    (1, 0.5, "all", 2),
    (1, 0.75, "all", 2),
    (1, None, "small", 2),
    (1, None, "medium", 2),
    (1, None, "large", 2),
    (0, None, "all", 0),
    (0, None, "all", 1),
    (0, None, "all", 2),
    (0, None, "small", 2),
    (0, None, "medium", 2),
    (0, None, "large", 2),
)


def summarize(precision: np.ndarray, recall: np.ndarray, max_dets: Sequence[int]) -> list[float]:
    """The 12 pycocotools stats, with numpy's pairwise mean over ``s[s > -1]`` exactly as ``_summarize``."""
    iou_thrs = matching.coco_iou_thrs()
    max_dets = list(max_dets)
    stats = []
    for ap, iou_thr, area, md in _SUMMARY:
        md_val = 100 if md == "lit100" else max_dets[md]
        aind = [i for i, lbl in enumerate(matching.AREA_LABELS) if lbl == area]
        mind = [i for i, m in enumerate(max_dets) if m == md_val]
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == iou_thrs)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        stats.append(-1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1])))
    return stats


def format_table(result: dict[str, Any], max_dets: Sequence[int] = (1, 10, 100)) -> str:
    """pycocotools' 12-line summary of a result (its "AP", ..., "ARl" fractions)."""
    lines = []
    for (ap, iou_thr, area, md), name in zip(_SUMMARY, STAT_NAMES):
        md_val = 100 if md == "lit100" else list(max_dets)[md]
        title, typ = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou = "0.50:0.95" if iou_thr is None else f"{iou_thr:0.2f}"
        lines.append(
            f" {title:<18} {typ} @[ IoU={iou:<9} | area={area:>6s} | maxDets={md_val:>3d} ]"
            f" = {result[name]:0.3f}"
        )
    return "\n".join(lines)


def per_class_mean(values: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Per category, the mean of ``values[..., k]`` (e.g. precision (T, R, K) at one area and maxDet),
    NaN for a category whose cells are -1 (no GT). A category's cells are all -1 or all >= 0, so one
    row-wise mean gives each category exactly ``np.mean(p[p > -1])``."""
    rows = np.ascontiguousarray(values.reshape(-1, values.shape[-1]).T)  # (K, T*R)
    out = np.full(rows.shape[0], np.nan)
    valid = rows[:, 0] > -1 if rows.shape[1] else np.zeros(rows.shape[0], bool)
    out[valid] = np.mean(rows[valid], axis=1)
    return dict(zip(names, out.tolist()))


def per_class_ap(precision: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """AP per category (IoU .50:.95, area all, largest maxDets; NaN for a category without GT)."""
    return per_class_mean(precision[:, :, :, 0, -1], names)


def _run(
    gt: GroundTruth,
    res: Results,
    iou_type: str,
    device: torch.device,
    max_dets: Sequence[int],
    use_cats: bool,
    kernel: str,
) -> matching.EvalResult:
    max_dets = sorted(max_dets)
    gtt = gt.table(device)
    dtt = res.table(device)
    num_cats = len(gt.cat_ids)
    pair_iou = pair_iou_for(gt, res, iou_type, gtt.crowd, device)
    if not use_cats:  # pool categories: ties then break by (category, input order)
        gperm = torch.sort(gtt.cat, stable=True).indices
        dperm = torch.sort(dtt.cat, stable=True).indices
        gtt, dtt = gtt.subset(gperm), dtt.subset(dperm)
        inner = pair_iou
        pair_iou = lambda di, gi: inner(dperm[di], gperm[gi])  # noqa: E731
        gtt.cat = torch.zeros_like(gtt.cat)
        dtt.cat = torch.zeros_like(dtt.cat)
        num_cats = 1
    return matching.run(
        gtt,
        dtt,
        num_cats=num_cats,
        pair_iou=pair_iou,
        max_dets=max_dets,
        per_cell_cap=max_dets[-1],
        iou_thrs=matching.coco_iou_thrs(),
        rec_thrs=matching.coco_rec_thrs(),
        area_rngs=matching.AREA_RANGES,
        kernel=kernel,
    )


def evaluate(
    gt: str | Path | dict | GroundTruth,
    detections: str | Path | list | Results,
    iou_type: str = "bbox",
    device: str | torch.device | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
    use_cats: bool = True,
    kernel: str = "auto",
) -> dict[str, Any]:
    """COCO evaluation equal to pycocotools 2.0.11 ``COCOeval`` (evaluate + accumulate + summarize).

    Args:
        gt: COCO annotation json path, dict, or a :class:`GroundTruth`.
        detections: COCO results json path or list of dicts (``image_id``, ``category_id``, ``score``,
            ``bbox`` xywh absolute pixels and/or ``segmentation`` RLE), or parsed :class:`Results`.
        iou_type: "bbox" or "segm".
        device: "cpu" (compiled kernel) or "cuda" (torch); default: CUDA when available.
        max_dets: detection caps; the largest one truncates each (image, category) cell.
        use_cats: False pools categories (pycocotools ``useCats=0``).
        kernel: "auto", or "torch" to run the torch path on the CPU too (tests compare both).

    Returns:
        The protocol result (the 12 stats as fractions under :data:`STAT_NAMES`, "per_class": AP per
        category name, NaN without GT; empty when ``use_cats`` is False) plus, for comparisons with the
        official tool, "stats" (the same 12 numbers as a list, ``COCOeval.stats`` order) and the arrays
        "precision" (T,R,K,A,M), "recall" (T,K,A,M) and "scores" (T,R,K,A,M), float64.
    """
    dev = resolve_device(device)
    gt = load_ground_truth(gt, iou_type)
    res = detections if isinstance(detections, Results) else parse_results(detections, gt, iou_type)
    out = _run(gt, res, iou_type, dev, max_dets, use_cats, kernel)
    stats = summarize(out.precision, out.recall, sorted(max_dets))
    return {
        **dict(zip(STAT_NAMES, stats)),
        "per_class": per_class_ap(out.precision, gt.cat_names) if use_cats else {},
        "stats": stats,
        "precision": out.precision,
        "recall": out.recall,
        "scores": out.scores,
    }


class COCOEvaluator:
    """COCO evaluator following :mod:`evaluation.protocol` (gathers ranks, evaluates on rank 0).

    Args:
        gt: COCO annotation json path or dict.
        iou_type: "bbox" or "segm" (segm needs "masks" in the outputs).
        label_to_category_id: contiguous label -> COCO category id; ``None`` means labels are category ids.
        device: evaluation device (default: CUDA when available).
        max_dets_per_image: keep only the top-scoring detections of each image (COCO challenge rule);
            ``None`` keeps all (local COCOeval then caps at 100 per image and category).
    """

    def __init__(
        self,
        gt: str | Path | dict,
        *,
        iou_type: str = "bbox",
        label_to_category_id: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        max_dets_per_image: int | None = None,
    ) -> None:
        self.gt = load_ground_truth(gt, iou_type)
        self.iou_type = iou_type
        self.device = resolve_device(device)
        self._records = DetectionRecords(
            self.gt,
            iou_type=iou_type,
            label_to_category_id=label_to_category_id,
            max_dets_per_image=max_dets_per_image,
            who="COCOEvaluator",
        )

    def reset(self) -> None:
        """Drop everything processed so far."""
        self._records.items = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        """Add one batch: ``inputs[i]["image_id"]``; ``outputs[i]`` "boxes" (N, 4) boxes_xyxy in original-image
        pixels, "scores" (N,), "labels" (N,) contiguous 0..K-1, segm: "masks" (N, H, W) bool / probabilities."""
        self._records.add(inputs, outputs)

    def results(self) -> list[dict[str, Any]]:
        """COCO results-file records of this rank (bbox xywh; segm records carry RLE, no bbox)."""
        return self._records.results_json()

    def evaluate(self) -> dict[str, Any]:
        """The 12 COCO stats (fractions, :data:`STAT_NAMES`) and "per_class" AP on rank 0; ``{}`` elsewhere."""
        items = self._records.gathered()
        if items is None:
            return {}
        out = evaluate(
            self.gt, self._records.to_results(items), iou_type=self.iou_type, device=self.device
        )
        return {k: out[k] for k in (*STAT_NAMES, "per_class")}
