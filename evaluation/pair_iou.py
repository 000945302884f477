"""Pair-IoU functions: (detection index, GT index) tensors -> float64 IoU per pair, with pycocotools' rules.

Boxes: ``bbIou``'s operation order (crowd GT: intersection over the detection's area). Masks: exact integer
intersections of compressed RLEs (:mod:`evaluation.rle`), ``float64(i) / float64(u)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils

from evaluation.coco_data import GroundTruth, Results, rle_area
from evaluation.rle import intervals, pair_intersections

PairIoU = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BoxPairIoU:
    """Pair IoU of xywh float64 boxes in the operation order of pycocotools' ``bbIou`` (crowd GT: IoA).

    Called with (det index, GT index) tensors it runs torch ops on the boxes' device; :meth:`numpy_pairs`
    runs the same arithmetic compiled (the CPU kernel uses it).
    """

    def __init__(
        self, dt_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_crowd: torch.Tensor
    ) -> None:
        self.dt_boxes, self.gt_boxes, self.gt_crowd = dt_boxes, gt_boxes, gt_crowd

    def __call__(self, di: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        d, g = self.dt_boxes[di], self.gt_boxes[gi]
        w = torch.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - torch.maximum(d[:, 0], g[:, 0])
        h = torch.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - torch.maximum(d[:, 1], g[:, 1])
        inter = w * h
        da, ga = d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]
        union = torch.where(self.gt_crowd[gi], da, da + ga - inter)
        iou = inter / union
        return torch.where((w <= 0) | (h <= 0), torch.zeros_like(iou), iou)

    def numpy_pairs(self, di: np.ndarray, gi: np.ndarray) -> np.ndarray:
        from evaluation.matching_cpu import box_pair_iou

        return box_pair_iou(
            di,
            gi,
            self.dt_boxes.cpu().numpy(),
            self.gt_boxes.cpu().numpy(),
            self.gt_crowd.cpu().numpy(),
        )


def bbox_pair_iou(
    dt_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_crowd: torch.Tensor
) -> BoxPairIoU:
    """Pair-IoU function for xywh float64 boxes (see :class:`BoxPairIoU`)."""
    return BoxPairIoU(dt_boxes, gt_boxes, gt_crowd)


class MaskPairIoU:
    """Pair IoU of compressed RLE masks with exact integer intersections, ``float64(i) / float64(u)`` with
    pycocotools' rules (i == 0 -> 0, crowd: u = area(dt)); only pairs whose mask boxes overlap are
    intersected (pycocotools gates on the box IoU too).

    Called with index tensors it runs torch ops on ``device`` (:mod:`evaluation.rle` intervals);
    :meth:`numpy_pairs` walks the two run-length sequences of each pair in compiled code (CPU).
    """

    def __init__(
        self, dt_rles: list, gt_rles: list, gt_crowd: torch.Tensor, device: torch.device
    ) -> None:
        self.dt_rles, self.gt_rles, self.gt_crowd, self.device = dt_rles, gt_rles, gt_crowd, device
        self._intervals = None

    def _boxes_areas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        to_box = lambda r: mask_utils.toBbox(r).reshape(-1, 4) if r else np.zeros((0, 4))  # noqa: E731
        return (
            to_box(self.dt_rles),
            to_box(self.gt_rles),
            rle_area(self.dt_rles),
            rle_area(self.gt_rles),
        )

    def __call__(self, di: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        dev = self.device
        if self._intervals is None:
            self._intervals = (intervals(self.dt_rles, dev), intervals(self.gt_rles, dev))
        dt_iv, gt_iv = self._intervals
        t = lambda a: torch.as_tensor(a, device=dev)  # noqa: E731
        dt_bb, gt_bb, dt_area, gt_area = self._boxes_areas()
        d, g = t(dt_bb)[di], t(gt_bb)[gi]
        w = torch.minimum(d[:, 0] + d[:, 2], g[:, 0] + g[:, 2]) - torch.maximum(d[:, 0], g[:, 0])
        h = torch.minimum(d[:, 1] + d[:, 3], g[:, 1] + g[:, 3]) - torch.maximum(d[:, 1], g[:, 1])
        near = torch.nonzero((w > 0) & (h > 0)).squeeze(1)
        inter = torch.zeros(di.numel(), dtype=torch.long, device=dev)
        inter[near] = pair_intersections(dt_iv, gt_iv, di[near], gi[near])
        da, ga = t(dt_area)[di], t(gt_area)[gi]
        union = torch.where(self.gt_crowd[gi], da, da + ga - inter)
        iou = inter.double() / union.clamp(min=1).double()
        return torch.where(inter == 0, torch.zeros_like(iou), iou)

    def numpy_pairs(self, di: np.ndarray, gi: np.ndarray) -> np.ndarray:
        from evaluation.matching_cpu import mask_pair_iou_runs, runs_area_bbox
        from evaluation.rle import decode_runs

        args = []
        for rles in (self.dt_rles, self.gt_rles):
            counts, first = decode_runs(rles)
            heights = np.array([r["size"][0] for r in rles], dtype=np.int64)
            area, bbox = runs_area_bbox(counts, first, heights)
            args.append((counts, first, bbox, area))
        (dc, df, dbb, da), (gc, gf, gbb, ga) = args
        return mask_pair_iou_runs(
            di, gi, dc, df, gc, gf, dbb, gbb, da, ga, self.gt_crowd.cpu().numpy()
        )


def mask_pair_iou(
    dt_rles: list, gt_rles: list, gt_crowd: torch.Tensor, device: torch.device
) -> MaskPairIoU:
    """Pair-IoU function for compressed RLE masks (see :class:`MaskPairIoU`)."""
    return MaskPairIoU(dt_rles, gt_rles, gt_crowd, device)


def pair_iou_for(
    gt: GroundTruth,
    res: Results,
    iou_type: str,
    gt_crowd: torch.Tensor,
    device: torch.device,
    gt_index: np.ndarray | None = None,
) -> PairIoU:
    """The pair-IoU function of an evaluation: boxes for "bbox", masks for "segm".

    Args:
        gt_crowd: (G,) bool crowd flag of the evaluated GTs (IoA denominator).
        gt_index: the evaluated GTs as indices into ``gt.anns`` (None: all, in file order).
    """
    if iou_type == "bbox":
        boxes = gt.boxes() if gt_index is None else gt.boxes()[gt_index]
        return bbox_pair_iou(
            torch.as_tensor(res.boxes, dtype=torch.float64, device=device).reshape(-1, 4),
            torch.as_tensor(boxes, dtype=torch.float64, device=device),
            gt_crowd,
        )
    rles = gt.rles() if gt_index is None else [gt.rles()[i] for i in gt_index.tolist()]
    return mask_pair_iou(res.rles, rles, gt_crowd, device)
