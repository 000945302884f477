"""LVIS federated evaluation (v0.5 and v1 JSON), equal to lvis-api 0.5.3 ``LVISEval``.

Differences from COCO that are reproduced: at most 300 detections per image (top scores, stable) applied at
load time; a detection of category c in image I is evaluated only if c is in I's GT categories or in
``neg_category_ids``; unmatched detections of categories in ``not_exhaustive_category_ids`` are ignored;
no crowd handling (plain IoU) and the GT ``ignore`` field is honoured; annotations and detections whose
area is not strictly inside (0, inf) are dropped (lvis-api's ``get_ann_ids`` filter); APr/APc/APf over the
categories' ``frequency`` groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation import engine
from evaluation.coco import COCOEvaluator, resolve_device
from evaluation.coco_data import GroundTruth, Results, bbox_pair_iou, mask_pair_iou, parse_results
from evaluation.dist import gather_on_main

MAX_DETS = 300
FREQ_LABELS = ("r", "c", "f")
RESULT_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "APr",
    "APc",
    "APf",
    "AR@300",
    "ARs@300",
    "ARm@300",
    "ARl@300",
)


def _limit_per_image(res: Results, max_dets: int) -> np.ndarray:
    """Indices kept by ``LVISResults.limit_dets_per_image``: top ``max_dets`` scores per image, stable."""
    order = np.argsort(-res.score, kind="stable")
    order = order[np.argsort(res.img[order], kind="stable")]
    img = res.img[order]
    starts = np.r_[0, np.flatnonzero(np.diff(img)) + 1]
    rank = np.arange(len(img)) - np.repeat(starts, np.diff(np.r_[starts, len(img)]))
    return np.sort(order[rank < max_dets])  # back to result order (ties keep their input order)


def _federated_mask(
    gt: GroundTruth, res: Results, gt_keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated?, not-exhaustive?) per detection."""
    imgs = gt.dataset["images"]
    n_img, n_cat = len(gt.img_ids), len(gt.cat_ids)
    allowed = np.zeros((n_img, n_cat), dtype=bool)
    not_exh = np.zeros((n_img, n_cat), dtype=bool)
    allowed[gt.ann_img[gt_keep], gt.ann_cat[gt_keep]] = True
    for im in imgs:
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in im:
                raise ValueError(
                    f"{gt.source}: image id={im['id']} has no '{key}' (not an LVIS file?)"
                )
        r = gt.img_rank[im["id"]]
        for key, arr in (("neg_category_ids", allowed), ("not_exhaustive_category_ids", not_exh)):
            ids = [gt.cat_rank[c] for c in im[key] if c in gt.cat_rank]
            arr[r, ids] = True
    return allowed[res.img, res.cat], not_exh[res.img, res.cat]


def _summarize(
    precision: np.ndarray, recall: np.ndarray, freq_groups: list[list[int]]
) -> dict[str, float]:
    """lvis-api ``summarize()`` with its exact numpy indexing (the mean's summation order depends on it)."""
    iou_thrs = engine.coco_iou_thrs()
    labels = list(engine.AREA_LABELS)

    def one(kind: str, iou_thr=None, area="all", freq=None) -> float:
        aidx = [i for i, a in enumerate(labels) if a == area]
        s = precision if kind == "ap" else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == iou_thrs)[0]]
        if kind == "ap":
            s = s[:, :, freq_groups[freq], aidx] if freq is not None else s[:, :, :, aidx]
        else:
            s = s[:, :, aidx]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    vals = [
        one("ap"),
        one("ap", 0.5),
        one("ap", 0.75),
        one("ap", area="small"),
        one("ap", area="medium"),
        one("ap", area="large"),
        one("ap", freq=0),
        one("ap", freq=1),
        one("ap", freq=2),
        one("ar"),
        one("ar", area="small"),
        one("ar", area="medium"),
        one("ar", area="large"),
    ]
    return dict(zip(RESULT_KEYS, vals))


def evaluate(
    gt: str | Path | dict | GroundTruth,
    detections: str | Path | list,
    iou_type: str = "bbox",
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """LVIS evaluation equal to lvis-api 0.5.3.

    Args:
        gt: LVIS v0.5 / v1 annotation json path or dict.
        detections: results json path or list of dicts (``image_id``, ``category_id``, ``score``, ``bbox`` xywh
            or ``segmentation`` RLE).
        iou_type: "bbox" or "segm".
        device: torch device (default: CUDA when available).

    Returns:
        dict with "results" (the 13 LVIS metrics, fractions), "precision" (T,R,K,A), "recall" (T,K,A).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    dev = resolve_device(device)
    if not isinstance(gt, GroundTruth):
        gt = GroundTruth.from_dataset(
            gt, require=("area", "bbox") if iou_type == "bbox" else ("area", "segmentation")
        )
    dets = parse_results(detections, gt, iou_type)
    dets = dets.subset(_limit_per_image(dets, MAX_DETS))
    gt_area = np.array([float(a["area"]) for a in gt.anns], dtype=np.float64)
    gt_keep = (gt_area > 0) & (gt_area < np.inf)
    allowed, not_exh = _federated_mask(gt, dets, gt_keep)
    keep = allowed & (dets.area > 0) & (dets.area < np.inf)
    dets, not_exh = dets.subset(np.flatnonzero(keep)), not_exh[keep]

    gtt_full = gt.table(dev, crowd_is_ignore=False)
    gidx = torch.as_tensor(np.flatnonzero(gt_keep), device=dev)
    gtt = gtt_full.subset(gidx)
    dtt = dets.table(dev)
    dtt.ignore_unmatched = torch.as_tensor(not_exh, device=dev)
    if iou_type == "bbox":
        gt_boxes = torch.as_tensor(gt.boxes(), dtype=torch.float64, device=dev)[gidx]
        dt_boxes = torch.as_tensor(dets.boxes, dtype=torch.float64, device=dev).reshape(-1, 4)
        pair_iou = bbox_pair_iou(dt_boxes, gt_boxes, gtt.crowd)
    else:
        rles = gt.rles()
        pair_iou = mask_pair_iou(dets.rles, [rles[i] for i in gidx.tolist()], gtt.crowd, dev)
    out = engine.run(
        gtt,
        dtt,
        num_cats=len(gt.cat_ids),
        pair_iou=pair_iou,
        max_dets=[MAX_DETS],
        per_cell_cap=None,
        iou_thrs=engine.coco_iou_thrs(),
        rec_thrs=engine.coco_rec_thrs(),
        area_rngs=engine.AREA_RANGES,
    )
    precision, recall = out.precision[..., 0], out.recall[..., 0]
    freq_groups = _freq_groups(gt)
    return {
        "results": _summarize(precision, recall, freq_groups),
        "precision": precision,
        "recall": recall,
    }


def _freq_groups(gt: GroundTruth) -> list[list[int]]:
    cats = {c["id"]: c for c in gt.dataset["categories"]}
    groups: list[list[int]] = [[] for _ in FREQ_LABELS]
    for k, cid in enumerate(gt.cat_ids):
        freq = cats[cid].get("frequency")
        if freq not in FREQ_LABELS:
            raise ValueError(
                f"{gt.source}: category id={cid} has frequency {freq!r}, expected r/c/f"
            )
        groups[FREQ_LABELS.index(freq)].append(k)
    return groups


def format_results(results: dict[str, float], iou_type: str = "bbox") -> str:
    """LVIS summary table in lvis-api's print layout."""
    del iou_type
    lines = []
    for key, v in results.items():
        title, typ = (
            ("Average Precision", "(AP)") if key.startswith("AP") else ("Average Recall", "(AR)")
        )
        iou = f"{float(key[2:]) / 100:0.2f}" if len(key) > 2 and key[2].isdigit() else "0.50:0.95"
        group = key[2] if len(key) > 2 and key[2] in "rcf" else "all"
        area = key[2] if len(key) > 2 and key[2] in "sml" else "all"
        lines.append(
            f" {title:<18} {typ} @[ IoU={iou:<9} | area={area:>6s} | maxDets={MAX_DETS:>3d} "
            f"catIds={group:>3s}] = {v:0.3f}"
        )
    return "\n".join(lines)


class LVISEvaluator(COCOEvaluator):
    """Streaming LVIS evaluator: same protocol as :class:`evaluation.coco.COCOEvaluator`, max 300 dets/image.

    ``evaluate()`` returns {"bbox"|"segm": {LVIS metric: percent}, "results": fractions} on rank 0.
    """

    def __init__(
        self,
        gt: str | Path | dict,
        *,
        iou_type: str = "bbox",
        label_to_category_id: Sequence[int] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(
            gt,
            iou_type=iou_type,
            label_to_category_id=label_to_category_id,
            device=device,
            max_dets_per_image=None,
        )

    def evaluate(self) -> dict[str, Any]:
        gathered = gather_on_main(self._records)
        if gathered is None:
            return {}
        saved = self._records
        self._records = [r for part in gathered for r in part]
        try:
            dets = self.results()
        finally:
            self._records = saved
        res = evaluate(self.gt, dets, iou_type=self.iou_type, device=self.device)["results"]
        return {self.iou_type: {k: 100.0 * v for k, v in res.items()}, "results": res}
