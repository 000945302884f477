"""Detections collected by the detection evaluators (COCO, LVIS): numpy arrays per image, never a Python
object per detection; gathered across ranks and turned straight into :class:`evaluation.coco_data.Results`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evaluation.coco_data import GroundTruth, Results, rle_area
from evaluation.dist import gather_on_main
from evaluation.protocol import check_batch, require_key


@dataclass
class ImageDetections:
    """One image's detections, score-sorted (stable): category ranks, float64 scores and xywh boxes."""

    image_id: Any
    cat: np.ndarray  # (N,) int64 category rank in the GT's sorted category ids
    score: np.ndarray  # (N,) float64
    boxes: np.ndarray  # (N, 4) float64 xywh, original-image pixels
    rles: list | None = None  # segm: compressed RLEs


class DetectionRecords:
    """Converts protocol batches to :class:`ImageDetections` and back to arrays or COCO result dicts.

    Args:
        gt: the indexed ground truth (image ids, category ids, image sizes).
        iou_type: "bbox" or "segm" (segm needs "masks" in the outputs).
        label_to_category_id: contiguous label -> category id; ``None``: labels are category ids.
        max_dets_per_image: keep only the top-scoring detections of each image (``None``: all).
        who: evaluator name for error messages.
    """

    def __init__(
        self,
        gt: GroundTruth,
        *,
        iou_type: str,
        label_to_category_id: Sequence[int] | None,
        max_dets_per_image: int | None,
        who: str,
    ) -> None:
        self.gt, self.iou_type, self.who = gt, iou_type, who
        self.max_dets_per_image = max_dets_per_image
        self._label_map = None
        if label_to_category_id is not None:
            unknown = [c for c in label_to_category_id if c not in gt.cat_rank]
            if unknown:
                raise ValueError(
                    f"{who}: label_to_category_id holds category ids {unknown[:5]} not in {gt.source}"
                )
            self._label_map = np.array([gt.cat_rank[c] for c in label_to_category_id], np.int64)
        self.items: list[ImageDetections] = []

    def add(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        check_batch(inputs, outputs, self.who)
        for inp, out in zip(inputs, outputs):
            self.items.append(
                self._convert(require_key(inp, "image_id", self.who, "an input"), out)
            )

    def _convert(self, image_id: Any, out: dict) -> ImageDetections:
        who = self.who
        if image_id not in self.gt.img_rank:
            raise ValueError(f"{who}.process: unknown image_id {image_id!r}")
        what = f"the output for image {image_id}"
        scores = torch.as_tensor(require_key(out, "scores", who, what)).detach()
        scores = scores.to("cpu", torch.float64).reshape(-1)
        boxes = torch.as_tensor(require_key(out, "boxes", who, what)).detach()
        boxes = boxes.to("cpu", torch.float64).reshape(-1, 4)
        labels = torch.as_tensor(require_key(out, "labels", who, what)).detach().to("cpu").long()
        labels = labels.reshape(-1)
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(
                f"{who}.process: {what} has {len(scores)} scores, {len(boxes)} boxes and "
                f"{len(labels)} labels"
            )
        order = torch.sort(scores, descending=True, stable=True).indices
        if self.max_dets_per_image is not None:
            order = order[: self.max_dets_per_image]
        boxes, labels = boxes[order].numpy(), labels[order].numpy()
        score = scores[order].numpy()
        if not np.isfinite(score).all():
            raise ValueError(f"{who}.process: {what} has NaN or infinite scores")
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        if self.iou_type == "bbox" and (not np.isfinite(xywh).all() or (xywh[:, 2:] < 0).any()):
            raise ValueError(f"{who}.process: {what} has a non-finite box or x2 < x1 / y2 < y1")
        cat = self._category_ranks(labels, what)
        rles = None
        if self.iou_type == "segm":
            masks = require_key(out, "masks", who, f"the segm output for image {image_id}")
            rles = encode_masks(masks[order], self.gt.img_size[image_id], image_id, who)
        return ImageDetections(image_id, cat, score, xywh, rles)

    def _category_ranks(self, labels: np.ndarray, what: str) -> np.ndarray:
        """Labels -> category ranks: through ``label_to_category_id``, else labels are category ids."""
        if self._label_map is not None:
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self._label_map)):
                raise ValueError(
                    f"{self.who}.process: {what} has labels outside 0..{len(self._label_map) - 1}"
                )
            return self._label_map[labels]
        known = [self.gt.cat_rank.get(c) for c in labels.tolist()]
        if None in known:
            bad = labels[known.index(None)]
            raise ValueError(f"{self.who}.process: {what} has unknown category id {bad}")
        return np.array(known, dtype=np.int64)

    def gathered(self) -> list[ImageDetections] | None:
        """Every rank's detections in rank order on rank 0; None on the other ranks."""
        parts = gather_on_main(self.items)
        return None if parts is None else [d for part in parts for d in part]

    def to_results(self, items: Sequence[ImageDetections]) -> Results:
        """Arrays for the matcher, in processing order (area per pycocotools ``loadRes``)."""
        n = [len(d.score) for d in items]
        img = np.repeat([self.gt.img_rank[d.image_id] for d in items], n).astype(np.int64)
        cat = np.concatenate([d.cat for d in items]) if items else np.zeros(0, np.int64)
        score = np.concatenate([d.score for d in items]) if items else np.zeros(0)
        boxes = np.concatenate([d.boxes for d in items]) if items else np.zeros((0, 4))
        if self.iou_type == "segm":
            rles = [r for d in items for r in d.rles]
            return Results(img, cat, score, boxes, rle_area(rles).astype(np.float64), rles)
        return Results(img, cat, score, boxes, boxes[:, 2] * boxes[:, 3])

    def results_json(self) -> list[dict[str, Any]]:
        """COCO results-file records of this rank (bbox xywh; segm records carry RLE, no bbox)."""
        cat_ids = self.gt.cat_ids
        recs = []
        for d in self.items:
            for i, (c, s) in enumerate(zip(d.cat.tolist(), d.score.tolist())):
                rec = {"image_id": d.image_id, "category_id": cat_ids[c], "score": s}
                if self.iou_type == "segm":
                    rle = d.rles[i]
                    rec["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:
                    rec["bbox"] = d.boxes[i].tolist()
                recs.append(rec)
        return recs


def encode_masks(masks: Any, size: tuple, image_id: Any, who: str) -> list[dict]:
    """(N, H, W) bool / probability masks -> compressed RLEs (probabilities thresholded at 0.5)."""
    from pycocotools import mask as mask_utils

    m = torch.as_tensor(masks).detach().to("cpu")
    if m.dtype != torch.bool:
        m = m >= 0.5
    if m.ndim == 4:
        m = m[:, 0]
    if m.shape[0] and tuple(m.shape[1:]) != tuple(size):
        raise ValueError(
            f"{who}.process: masks for image {image_id} are {tuple(m.shape[1:])}, image is {tuple(size)}"
        )
    arr = np.asfortranarray(m.permute(1, 2, 0).numpy().astype(np.uint8))
    return mask_utils.encode(arr) if arr.shape[2] else []
