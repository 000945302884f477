"""COCO bbox / segm evaluation, bit-equal to pycocotools 2.0.11, with matching and accumulation in torch.

``evaluate(gt, detections)`` is the one-shot API; :class:`COCOEvaluator` is the streaming
``reset / process / evaluate`` API for training loops (gathers across ranks, evaluates on rank 0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation import engine
from evaluation.coco_data import (
    GroundTruth,
    Results,
    bbox_pair_iou,
    mask_pair_iou,
    parse_results,
    rle_area,
)
from evaluation.dist import gather_on_main

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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def summarize(precision: np.ndarray, recall: np.ndarray, max_dets: Sequence[int]) -> list[float]:
    """The 12 pycocotools stats, with numpy's pairwise mean over ``s[s > -1]`` exactly as ``_summarize``."""
    iou_thrs = engine.coco_iou_thrs()
    max_dets = list(max_dets)
    stats = []
    for ap, iou_thr, area, md in _SUMMARY:
        md_val = 100 if md == "lit100" else max_dets[md]
        aind = [i for i, lbl in enumerate(engine.AREA_LABELS) if lbl == area]
        mind = [i for i, m in enumerate(max_dets) if m == md_val]
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == iou_thrs)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        stats.append(-1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1])))
    return stats


def format_stats(
    stats: Sequence[float], iou_type: str = "bbox", max_dets: Sequence[int] = (1, 10, 100)
) -> str:
    """The familiar 12-line pycocotools summary table."""
    del iou_type  # same table for bbox and segm
    lines = []
    for (ap, iou_thr, area, md), v in zip(_SUMMARY, stats):
        md_val = 100 if md == "lit100" else list(max_dets)[md]
        title, typ = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou = "0.50:0.95" if iou_thr is None else f"{iou_thr:0.2f}"
        lines.append(
            f" {title:<18} {typ} @[ IoU={iou:<9} | area={area:>6s} | maxDets={md_val:>3d} ] = {v:0.3f}"
        )
    return "\n".join(lines)


def _per_category(precision: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    out = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[name] = float(np.mean(p)) if p.size else float("nan")
    return out


def _run(
    gt: GroundTruth,
    res: Results,
    iou_type: str,
    device: torch.device,
    max_dets: Sequence[int],
    use_cats: bool,
) -> engine.EvalResult:
    max_dets = sorted(max_dets)
    gtt = gt.table(device)
    dtt = res.table(device)
    num_cats = len(gt.cat_ids)
    if iou_type == "bbox":
        gt_boxes = torch.as_tensor(gt.boxes(), dtype=torch.float64, device=device)
        dt_boxes = torch.as_tensor(res.boxes, dtype=torch.float64, device=device).reshape(-1, 4)
        pair_iou = bbox_pair_iou(dt_boxes, gt_boxes, gtt.crowd)
    elif iou_type == "segm":
        pair_iou = mask_pair_iou(res.rles, gt.rles(), gtt.crowd, device)
    else:
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not use_cats:  # pool categories: ties then break by (category, input order)
        gperm = torch.sort(gtt.cat, stable=True).indices
        dperm = torch.sort(dtt.cat, stable=True).indices
        gtt, dtt = gtt.subset(gperm), dtt.subset(dperm)
        inner = pair_iou
        pair_iou = lambda di, gi: inner(dperm[di], gperm[gi])  # noqa: E731
        gtt.cat = torch.zeros_like(gtt.cat)
        dtt.cat = torch.zeros_like(dtt.cat)
        num_cats = 1
    return engine.run(
        gtt,
        dtt,
        num_cats=num_cats,
        pair_iou=pair_iou,
        max_dets=max_dets,
        per_cell_cap=max_dets[-1],
        iou_thrs=engine.coco_iou_thrs(),
        rec_thrs=engine.coco_rec_thrs(),
        area_rngs=engine.AREA_RANGES,
    )


def evaluate(
    gt: str | Path | dict | GroundTruth,
    detections: str | Path | list | Results,
    iou_type: str = "bbox",
    device: str | torch.device | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
    use_cats: bool = True,
) -> dict[str, Any]:
    """COCO evaluation equal to pycocotools 2.0.11 ``COCOeval`` (evaluate + accumulate + summarize).

    Args:
        gt: COCO annotation json path, dict, or a :class:`GroundTruth`.
        detections: COCO results json path or list of dicts (``image_id``, ``category_id``, ``score``,
            ``bbox`` xywh absolute pixels and/or ``segmentation`` RLE), or parsed :class:`Results`.
        iou_type: "bbox" or "segm".
        device: torch device for matching/accumulation (default: CUDA when available).
        max_dets: detection caps; the largest one truncates each (image, category) cell.
        use_cats: False pools categories (pycocotools ``useCats=0``).

    Returns:
        dict with "stats" (12 floats, pycocotools order, fractions), "precision" (T,R,K,A,M) float64,
        "recall" (T,K,A,M), "scores" (T,R,K,A,M), "per_category" (name -> AP over IoU .50:.95, area all,
        largest maxDets; NaN when the category has no GT).
    """
    dev = resolve_device(device)
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if not isinstance(gt, GroundTruth):
        gt = GroundTruth.from_dataset(
            gt, require=("area", "bbox") if iou_type == "bbox" else ("area", "segmentation")
        )
    res = detections if isinstance(detections, Results) else parse_results(detections, gt, iou_type)
    out = _run(gt, res, iou_type, dev, max_dets, use_cats)
    stats = summarize(out.precision, out.recall, sorted(max_dets))
    per_cat = _per_category(out.precision, gt.cat_names) if use_cats else {}
    return {
        "stats": stats,
        "precision": out.precision,
        "recall": out.recall,
        "scores": out.scores,
        "per_category": per_cat,
    }


class COCOEvaluator:
    """Streaming COCO evaluator for training loops (detectron2-style protocol).

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
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        self.gt = GroundTruth.from_dataset(
            gt, require=("area", "bbox") if iou_type == "bbox" else ("area", "segmentation")
        )
        self.iou_type = iou_type
        self.label_map = None if label_to_category_id is None else list(label_to_category_id)
        self.device = resolve_device(device)
        self.max_dets_per_image = max_dets_per_image
        self.reset()

    def reset(self) -> None:
        """Drop everything processed so far."""
        self._records: list[dict[str, Any]] = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        """Add one batch: ``inputs[i]["image_id"]``, ``outputs[i]`` with "boxes" (N,4) xyxy absolute pixels of
        the original image, "scores" (N,), "labels" (N,), optional "masks" (N,H,W) bool / probabilities."""
        if len(inputs) != len(outputs):
            raise ValueError(f"process(): {len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            self._records.append(self._convert(inp["image_id"], out))

    def _convert(self, image_id: Any, out: dict) -> dict[str, Any]:
        if image_id not in self.gt.img_rank:
            raise ValueError(f"COCOEvaluator.process: unknown image_id {image_id}")
        for key in ("boxes", "scores", "labels"):
            if key not in out:
                raise ValueError(
                    f"COCOEvaluator.process: output for image {image_id} has no '{key}'"
                )
        scores = out["scores"].detach().to("cpu", torch.float64)
        order = torch.sort(scores, descending=True, stable=True).indices
        if self.max_dets_per_image is not None:
            order = order[: self.max_dets_per_image]
        boxes = out["boxes"].detach().to("cpu", torch.float64).reshape(-1, 4)[order]
        xywh = torch.stack(
            [boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1
        )
        labels = out["labels"].detach().to("cpu").long()[order].tolist()
        if self.label_map is not None:
            if labels and (min(labels) < 0 or max(labels) >= len(self.label_map)):
                raise ValueError(
                    f"COCOEvaluator.process: image {image_id} has label outside 0..{len(self.label_map) - 1}"
                )
            cats = [self.label_map[lbl] for lbl in labels]
        else:
            cats = labels
        rec = {
            "image_id": image_id,
            "cats": cats,
            "scores": scores[order].tolist(),
            "bbox": xywh.tolist(),
        }
        if self.iou_type == "segm":
            if "masks" not in out:
                raise ValueError(
                    f"COCOEvaluator.process: segm output for image {image_id} has no 'masks'"
                )
            rec["rles"] = _encode_masks(out["masks"][order], self.gt.img_size[image_id], image_id)
        return rec

    def _to_results(self, records: list[dict[str, Any]]) -> Results:
        """Records -> parsed results without building per-detection dicts (same values as ``results()``)."""
        n = [len(r["scores"]) for r in records]
        img = np.repeat([self.gt.img_rank[r["image_id"]] for r in records], n).astype(np.int64)
        try:
            cat = np.array(
                [self.gt.cat_rank[c] for r in records for c in r["cats"]], dtype=np.int64
            )
        except KeyError as e:
            raise ValueError(
                f"COCOEvaluator: detection with unknown category id {e.args[0]}"
            ) from e
        score = np.array([s for r in records for s in r["scores"]], dtype=np.float64)
        if not np.isfinite(score).all():
            raise ValueError("COCOEvaluator: NaN or infinite detection scores")
        boxes = np.array([b for r in records for b in r["bbox"]], dtype=np.float64).reshape(-1, 4)
        if self.iou_type == "segm":
            rles = [m for r in records for m in r["rles"]]
            return Results(img, cat, score, boxes, rle_area(rles).astype(np.float64), rles)
        if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
            raise ValueError("COCOEvaluator: non-finite box or x2 < x1 / y2 < y1 in the outputs")
        return Results(img, cat, score, boxes, boxes[:, 2] * boxes[:, 3])

    def results(self) -> list[dict[str, Any]]:
        """COCO results-json records of this rank (bbox xywh; segm records carry RLE, no bbox)."""
        recs = []
        for r in self._records:
            for i, (c, s) in enumerate(zip(r["cats"], r["scores"])):
                d = {"image_id": r["image_id"], "category_id": c, "score": s}
                if self.iou_type == "segm":
                    rle = r["rles"][i]
                    d["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:
                    d["bbox"] = r["bbox"][i]
                recs.append(d)
        return recs

    def evaluate(self) -> dict[str, Any]:
        """Gather all ranks' detections, evaluate on rank 0; other ranks get ``{}``."""
        gathered = gather_on_main(self._records)
        if gathered is None:
            return {}
        records = [r for part in gathered for r in part]
        out = evaluate(
            self.gt, self._to_results(records), iou_type=self.iou_type, device=self.device
        )
        stats = out["stats"]
        return {
            self.iou_type: {k: 100.0 * v for k, v in zip(STAT_NAMES, stats)},
            "stats": stats,
            "per_category": out["per_category"],
        }


def _encode_masks(masks: torch.Tensor, size: tuple, image_id: Any) -> list[dict]:
    """(N,H,W) bool/float masks -> compressed RLEs (float masks thresholded at 0.5)."""
    from pycocotools import mask as mask_utils

    m = masks.detach().to("cpu")
    if m.dtype != torch.bool:
        m = m >= 0.5
    if m.ndim == 4:
        m = m[:, 0]
    if m.shape[0] and tuple(m.shape[1:]) != tuple(size):
        raise ValueError(
            f"COCOEvaluator.process: masks for image {image_id} are {tuple(m.shape[1:])}, image is {tuple(size)}"
        )
    arr = np.asfortranarray(m.permute(1, 2, 0).numpy().astype(np.uint8))
    return mask_utils.encode(arr) if arr.shape[2] else []
