"""COCO-format ground truth and results: loading, validation, and conversion to engine tables.

Conventions (the same values reach the official tools in the parity tests):
* boxes are ``xywh`` absolute pixels, float64 (Python floats parsed from JSON, or float32 model outputs widened
  losslessly);
* a detection's ``area`` follows pycocotools ``loadRes``: the box area ``w*h`` when the *first* result carries a
  non-empty ``bbox``, otherwise the RLE mask area;
* GT ``area`` is the annotation's field, read verbatim (also for bbox evaluation).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from evaluation.engine import DtTable, GtTable
from evaluation.rle import intervals, pair_intersections

logger = logging.getLogger(__name__)


def load_json(obj: str | Path | dict | list, what: str) -> Any:
    """Return ``obj`` itself, or the parsed JSON file it names."""
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"{what}: file {path} does not exist")
        with open(path) as f:
            return json.load(f)
    return obj


def rle_area(rles: list) -> np.ndarray:
    """int64 areas of RLEs (pycocotools' ``area`` overflows on lists longer than 255: chunk them)."""
    out = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def _rank_map(ids: Sequence) -> dict:
    return {v: i for i, v in enumerate(ids)}


@dataclass
class GroundTruth:
    """Indexed COCO ground truth. Use :meth:`from_dataset`.

    Attributes:
        img_ids: sorted image ids (the evaluation's image axis order).
        cat_ids: sorted category ids (the K axis of precision / recall).
        anns: annotation dicts in file order.
    """

    dataset: dict
    img_ids: list
    cat_ids: list
    img_rank: dict
    cat_rank: dict
    img_size: dict  # image id -> (height, width)
    anns: list
    ann_img: np.ndarray  # (G,) image rank
    ann_cat: np.ndarray  # (G,) category rank
    source: str = "ground truth"
    _rles: list | None = field(default=None, repr=False)
    _tables: dict = field(default_factory=dict, repr=False)
    _boxes: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_dataset(
        cls, gt: str | Path | dict, *, require: Sequence[str] = ("area",)
    ) -> GroundTruth:
        """Index a COCO/LVIS GT json path or dict; raises ValueError naming bad entries."""
        source = str(gt) if isinstance(gt, (str, Path)) else "ground-truth dict"
        data = load_json(gt, "ground truth")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{source}: missing top-level key '{key}'")
        img_ids = sorted({im["id"] for im in data["images"]})
        cat_ids = sorted({c["id"] for c in data["categories"]})
        img_rank, cat_rank = _rank_map(img_ids), _rank_map(cat_ids)
        img_size = {im["id"]: (im.get("height"), im.get("width")) for im in data["images"]}
        anns = data["annotations"]
        seen: set = set()
        for i, a in enumerate(anns):
            for key in ("id", "image_id", "category_id", *require):
                if key not in a:
                    raise ValueError(f"{source}: annotation #{i} (id={a.get('id')}) has no '{key}'")
            if a["image_id"] not in img_rank:
                raise ValueError(
                    f"{source}: annotation id={a['id']} has unknown image_id {a['image_id']}"
                )
            if a["category_id"] not in cat_rank:
                raise ValueError(
                    f"{source}: annotation id={a['id']} has unknown category_id {a['category_id']}"
                )
            if a["id"] in seen:
                raise ValueError(f"{source}: duplicate annotation id {a['id']}")
            seen.add(a["id"])
        if 0 in seen:
            logger.warning(
                "%s: annotation id 0 is never counted as matched (pycocotools quirk)", source
            )
        ann_img = np.array([img_rank[a["image_id"]] for a in anns], dtype=np.int64)
        ann_cat = np.array([cat_rank[a["category_id"]] for a in anns], dtype=np.int64)
        return cls(
            data, img_ids, cat_ids, img_rank, cat_rank, img_size, anns, ann_img, ann_cat, source
        )

    @property
    def cat_names(self) -> list[str]:
        names = {c["id"]: c.get("name", str(c["id"])) for c in self.dataset["categories"]}
        return [names[c] for c in self.cat_ids]

    def table(self, device: torch.device, *, crowd_is_ignore: bool = True) -> GtTable:
        """Engine table (COCO semantics by default: ignore = crowd = iscrowd), cached per device."""
        key = (str(device), crowd_is_ignore)
        if key not in self._tables:
            self._tables[key] = self._build_table(device, crowd_is_ignore)
        return self._tables[key]

    def _build_table(self, device: torch.device, crowd_is_ignore: bool) -> GtTable:
        anns = self.anns
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        if crowd_is_ignore:
            ignore = crowd
        else:  # LVIS: no crowd, honour the 'ignore' field
            ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
            crowd = np.zeros(len(anns), dtype=bool)
        return GtTable(
            img=torch.as_tensor(self.ann_img, device=device),
            cat=torch.as_tensor(self.ann_cat, device=device),
            area=torch.tensor([float(a["area"]) for a in anns], dtype=torch.float64, device=device),
            ignore=torch.as_tensor(ignore, device=device),
            crowd=torch.as_tensor(crowd, device=device),
            id_nonzero=torch.tensor([a["id"] != 0 for a in anns], dtype=torch.bool, device=device),
        )

    def boxes(self) -> np.ndarray:
        """(G, 4) float64 xywh GT boxes."""
        if self._boxes is not None:
            return self._boxes
        try:
            out = np.array([a["bbox"] for a in self.anns], dtype=np.float64).reshape(-1, 4)
        except (KeyError, ValueError) as e:
            bad = next(i for i, a in enumerate(self.anns) if len(a.get("bbox", ())) != 4)
            raise ValueError(
                f"{self.source}: annotation id={self.anns[bad].get('id')} has no valid bbox"
            ) from e
        self._boxes = out
        return out

    def rles(self) -> list:
        """Compressed RLE of every annotation (polygons / uncompressed RLE rasterised by pycocotools)."""
        if self._rles is None:
            self._rles = [
                self.to_rle(a["segmentation"], a["image_id"], f"annotation id={a['id']}")
                for a in self.anns
            ]
        return self._rles

    def to_rle(self, segm: Any, image_id: Any, what: str) -> dict:
        """pycocotools ``annToRLE`` for one segmentation, with a size check."""
        h, w = self.img_size[image_id]
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, h, w)
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            rle = segm
        else:
            raise ValueError(f"{self.source}: {what} has an unreadable segmentation")
        if list(rle["size"]) != [h, w]:
            raise ValueError(
                f"{what}: mask size {list(rle['size'])} differs from image {image_id} size {[h, w]}"
            )
        return rle


@dataclass
class Results:
    """Parsed detections (in result order): ranks, float64 scores/boxes/areas, RLEs for segm."""

    img: np.ndarray
    cat: np.ndarray
    score: np.ndarray
    boxes: np.ndarray | None  # (N, 4) xywh
    area: np.ndarray
    rles: list | None = None

    def __len__(self) -> int:
        return int(self.img.shape[0])

    def table(self, device: torch.device) -> DtTable:
        return DtTable(
            img=torch.as_tensor(self.img, device=device),
            cat=torch.as_tensor(self.cat, device=device),
            score=torch.as_tensor(self.score, dtype=torch.float64, device=device),
            area=torch.as_tensor(self.area, dtype=torch.float64, device=device),
        )

    def subset(self, idx: np.ndarray) -> Results:
        rles = [self.rles[i] for i in idx] if self.rles is not None else None
        boxes = self.boxes[idx] if self.boxes is not None else None
        return Results(self.img[idx], self.cat[idx], self.score[idx], boxes, self.area[idx], rles)


def _bad_entry(dets: list, gt: GroundTruth, need: Sequence[str], source: str) -> ValueError:
    """Scan the results for the first malformed entry and describe it."""
    for i, d in enumerate(dets):
        if not isinstance(d, dict):
            return ValueError(f"{source}: result #{i} is not a dict")
        for key in need:
            if key not in d:
                return ValueError(
                    f"{source}: result #{i} (image_id={d.get('image_id')}) has no '{key}'"
                )
        if d["image_id"] not in gt.img_rank:
            return ValueError(f"{source}: result #{i} has unknown image_id {d['image_id']}")
        if d["category_id"] not in gt.cat_rank:
            return ValueError(f"{source}: result #{i} has unknown category_id {d['category_id']}")
        s = d["score"]
        if not isinstance(s, (int, float, np.floating, np.integer)) or not math.isfinite(float(s)):
            return ValueError(f"{source}: result #{i} (image_id={d['image_id']}) has score {s!r}")
        if "bbox" in d and d["bbox"] != []:
            b = d["bbox"]
            if len(b) != 4 or not all(math.isfinite(float(v)) for v in b):
                return ValueError(
                    f"{source}: result #{i} (image_id={d['image_id']}) has bbox {b!r}"
                )
            if b[2] < 0 or b[3] < 0:
                return ValueError(
                    f"{source}: result #{i} (image_id={d['image_id']}) has negative box size {b!r}"
                )
    return ValueError(f"{source}: malformed results")


def parse_results(
    dets: str | Path | list, gt: GroundTruth, iou_type: str, *, source: str | None = None
) -> Results:
    """Validate a COCO results list and convert it to arrays (area per pycocotools ``loadRes``)."""
    source = source or (str(dets) if isinstance(dets, (str, Path)) else "results")
    dets = load_json(dets, "results")
    if not isinstance(dets, list):
        raise ValueError(f"{source}: results must be a list of dicts")
    n = len(dets)
    if n == 0:
        return Results(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0),
            np.zeros((0, 4)),
            np.zeros(0),
            [] if iou_type == "segm" else None,
        )
    box_area = "bbox" in dets[0] and dets[0]["bbox"] != []
    need = ["image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox"]
    if iou_type == "bbox" and not box_area and "segmentation" in dets[0]:
        need[-1] = "segmentation"
    try:
        img = np.fromiter((gt.img_rank[d["image_id"]] for d in dets), np.int64, n)
        cat = np.fromiter((gt.cat_rank[d["category_id"]] for d in dets), np.int64, n)
        score = np.fromiter((d["score"] for d in dets), np.float64, n)
        for d in dets:
            d[need[-1]]
    except (KeyError, TypeError, ValueError) as e:
        raise _bad_entry(dets, gt, need, source) from e
    if not np.isfinite(score).all():
        raise _bad_entry(dets, gt, need, source)
    boxes = None
    if "bbox" in need or box_area:
        try:
            boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(n, 4)
        except (KeyError, ValueError) as e:
            raise _bad_entry(dets, gt, [*need, "bbox"], source) from e
        if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
            raise _bad_entry(dets, gt, [*need, "bbox"], source)
    rles = None
    if iou_type == "segm" or not box_area:
        rles = [
            gt.to_rle(d["segmentation"], d["image_id"], f"{source}: result #{i}")
            for i, d in enumerate(dets)
        ]
    if box_area:
        area = boxes[:, 2] * boxes[:, 3]
    else:
        area = rle_area(rles).astype(np.float64)
        if boxes is None and iou_type == "bbox":
            boxes = np.array(
                [d["bbox"] if "bbox" in d else mask_utils.toBbox(r) for d, r in zip(dets, rles)],
                dtype=np.float64,
            ).reshape(n, 4)
    return Results(img, cat, score, boxes, area, rles)


def bbox_pair_iou(dt_boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_crowd: torch.Tensor):
    """Pair IoU for xywh float64 boxes in the operation order of pycocotools' ``bbIou`` (crowd: IoA)."""

    def pair_iou(di: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        d, g = dt_boxes[di], gt_boxes[gi]
        w = torch.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - torch.maximum(d[:, 0], g[:, 0])
        h = torch.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - torch.maximum(d[:, 1], g[:, 1])
        inter = w * h
        da, ga = d[:, 2] * d[:, 3], g[:, 2] * g[:, 3]
        union = torch.where(gt_crowd[gi], da, da + ga - inter)
        iou = inter / union
        return torch.where((w <= 0) | (h <= 0), torch.zeros_like(iou), iou)

    return pair_iou


def mask_pair_iou(dt_rles: list, gt_rles: list, gt_crowd: torch.Tensor, device: torch.device):
    """Pair IoU of compressed RLE masks with exact integer intersections (see :mod:`evaluation.rle`);
    ``float64(i) / float64(u)`` with pycocotools' rules (i == 0 -> 0, crowd: u = area(dt))."""
    dt_iv, gt_iv = intervals(dt_rles, device), intervals(gt_rles, device)
    to_box = lambda r: torch.as_tensor(  # noqa: E731
        mask_utils.toBbox(r).reshape(-1, 4) if r else np.zeros((0, 4)),
        dtype=torch.float64,
        device=device,
    )
    dt_bb, gt_bb = to_box(dt_rles), to_box(gt_rles)
    dt_area = torch.as_tensor(rle_area(dt_rles), device=device)
    gt_area = torch.as_tensor(rle_area(gt_rles), device=device)

    def pair_iou(di: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        # only pairs whose mask boxes overlap can intersect (pycocotools gates on the box IoU too)
        d, g = dt_bb[di], gt_bb[gi]
        w = torch.minimum(d[:, 0] + d[:, 2], g[:, 0] + g[:, 2]) - torch.maximum(d[:, 0], g[:, 0])
        h = torch.minimum(d[:, 1] + d[:, 3], g[:, 1] + g[:, 3]) - torch.maximum(d[:, 1], g[:, 1])
        near = torch.nonzero((w > 0) & (h > 0)).squeeze(1)
        inter = torch.zeros(di.numel(), dtype=torch.long, device=device)
        inter[near] = pair_intersections(dt_iv, gt_iv, di[near], gi[near])
        da, ga = dt_area[di], gt_area[gi]
        union = torch.where(gt_crowd[gi], da, da + ga - inter)
        iou = inter.double() / union.clamp(min=1).double()
        return torch.where(inter == 0, torch.zeros_like(iou), iou)

    return pair_iou
