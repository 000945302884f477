"""COCO-format ground truth and results: loading, validation, and conversion to matching tables.

Conventions (the same values reach the official tools in the parity tests):
* boxes are ``xywh`` absolute pixels, float64 (Python floats parsed from JSON, or float32 model outputs widened
  losslessly);
* a detection's ``area`` follows pycocotools ``loadRes``: the box area ``w*h`` when the *first* result carries a
  non-empty ``bbox``, otherwise the RLE mask area;
* GT ``area`` is the annotation's field, read verbatim (also for bbox evaluation).
"""

from __future__ import annotations

import gc
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from pycocotools import mask as mask_utils

from evaluation.matching import DtTable, GtTable

logger = logging.getLogger(__name__)


def read_json_bytes(data: bytes, source: str) -> Any:
    """Parse JSON bytes: msgspec (fast, strict JSON) first; the standard library when msgspec refuses (it
    also reads the ``NaN`` / ``Infinity`` tokens Python writes, so the checks can name such entries)."""
    gc_was_on = gc.isenabled()
    gc.disable()  # hundreds of thousands of small containers: the cyclic GC would rescan them repeatedly
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        pass
    finally:
        if gc_was_on:
            gc.enable()
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{source}: not valid JSON ({e})") from e


def load_json(obj: str | Path | dict | list, what: str) -> Any:
    """Return ``obj`` itself, or the parsed JSON file it names (errors name the file)."""
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise ValueError(f"{what}: file {path} does not exist")
        return read_json_bytes(path.read_bytes(), str(path))
    return obj


def is_number(v: Any) -> bool:
    """The one rule for numeric fields: a JSON number (int or float, numpy scalars too); strings holding
    digits, booleans and None are refused everywhere."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def first_non_number(values: Sequence) -> int | None:
    """Index of the first value breaking :func:`is_number`, or None (a C-speed type scan first)."""
    if set(map(type, values)) <= {int, float}:
        return None
    return next((i for i, v in enumerate(values) if not is_number(v)), None)


def rle_area(rles: list) -> np.ndarray:
    """int64 areas of RLEs (pycocotools' ``area`` overflows on lists longer than 255: chunk them)."""
    out = [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def _rank_map(ids: Sequence) -> dict:
    return {v: i for i, v in enumerate(ids)}


def _check_gt_numbers(anns: list, require: Sequence[str], source: str) -> None:
    """``area`` a finite number, ``bbox`` four finite numbers (when required); raises naming the first bad
    annotation. A C-speed type scan of all values first; the per-entry loop runs only to name a bad one."""
    ok = True
    if "area" in require:
        areas = [a["area"] for a in anns]
        ok = first_non_number(areas) is None and bool(np.isfinite(np.array(areas, float)).all())
    if ok and "bbox" in require:
        boxes = [a["bbox"] for a in anns]
        ok = not (set(map(type, boxes)) - {list, tuple}) and set(map(len, boxes)) <= {4}
        flat = list(chain.from_iterable(boxes)) if ok else []
        ok = (
            ok and first_non_number(flat) is None and bool(np.isfinite(np.array(flat, float)).all())
        )
    if ok:
        return
    for i, ann in enumerate(anns):
        what = f"{source}: annotation #{i} (id={ann.get('id')})"
        if "area" in require and not (is_number(ann["area"]) and math.isfinite(ann["area"])):
            raise ValueError(f"{what} has area {ann['area']!r}; expected a finite number")
        if "bbox" in require:
            b = ann["bbox"]
            if not isinstance(b, (list, tuple)) or len(b) != 4:
                raise ValueError(f"{what} has bbox {b!r}; expected [x, y, w, h]")
            if not all(is_number(v) and math.isfinite(v) for v in b):
                raise ValueError(f"{what} has bbox {b!r}; expected four finite numbers")


def _bad_annotation(
    anns: list, img_rank: dict, cat_rank: dict, require: Sequence[str], source: str
) -> None:
    """Raise ValueError naming the first annotation with a missing key, an unknown image / category id,
    or a duplicate id."""
    seen: set = set()
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise ValueError(f"{source}: annotation #{i} is not a dict")
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
    raise ValueError(f"{source}: malformed annotations")


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
        try:  # C-speed pass over the annotations; the per-entry scan below only names a bad one
            ids = list(map(itemgetter("id"), anns))
            ann_img = np.fromiter(
                map(img_rank.__getitem__, map(itemgetter("image_id"), anns)), np.int64, len(anns)
            )
            ann_cat = np.fromiter(
                map(cat_rank.__getitem__, map(itemgetter("category_id"), anns)), np.int64, len(anns)
            )
            for key in require:
                list(map(itemgetter(key), anns))
            ok = len(set(ids)) == len(ids)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            _bad_annotation(anns, img_rank, cat_rank, require, source)
        _check_gt_numbers(anns, require, source)
        if 0 in set(ids):
            logger.warning(
                "%s: annotation id 0 is never counted as matched (pycocotools quirk)", source
            )
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
            rles: list = [None] * len(self.anns)
            self._single_polygons(rles)
            for i, a in enumerate(self.anns):
                if rles[i] is None:
                    rles[i] = self.to_rle(
                        a["segmentation"], a["image_id"], f"annotation id={a['id']}"
                    )
            self._rles = rles
        return self._rles

    def _single_polygons(self, rles: list) -> None:
        """Rasterise the one-polygon annotations with one pycocotools call per image size (the same
        ``frPyObjects`` per polygon; merging a single RLE is the identity), filling ``rles`` in place."""
        groups: dict = {}
        for i, a in enumerate(self.anns):
            seg = a.get("segmentation")
            if (
                isinstance(seg, list)
                and len(seg) == 1
                and isinstance(seg[0], list)
                and len(seg[0]) > 4
            ):
                groups.setdefault(self.img_size.get(a["image_id"]), []).append(i)
        for (h, w), idx in groups.items():
            if not (isinstance(h, int) and isinstance(w, int)):
                continue  # the per-annotation path names the bad image size
            polys = [self.anns[i]["segmentation"][0] for i in idx]
            for i, rle in zip(idx, mask_utils.frPyObjects(polys, h, w)):
                rles[i] = rle

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
    """Scan the results for the first malformed entry and describe it (numbers must be JSON numbers)."""
    for i, d in enumerate(dets):
        if not isinstance(d, dict):
            return ValueError(f"{source}: result #{i} is not a dict")
        for key in need:
            if key not in d:
                return ValueError(
                    f"{source}: result #{i} (image_id={d.get('image_id')}) has no '{key}'"
                )
        what = f"{source}: result #{i} (image_id={d['image_id']})"
        if d["image_id"] not in gt.img_rank:
            return ValueError(f"{source}: result #{i} has unknown image_id {d['image_id']!r}")
        if d["category_id"] not in gt.cat_rank:
            return ValueError(f"{source}: result #{i} has unknown category_id {d['category_id']!r}")
        s = d["score"]
        if not is_number(s) or not math.isfinite(s):
            return ValueError(f"{what} has score {s!r}; expected a finite number")
        if "bbox" in need:
            b = d["bbox"]
            if not isinstance(b, (list, tuple)) or len(b) != 4:
                return ValueError(f"{what} has bbox {b!r}; expected [x, y, w, h]")
            if not all(is_number(v) and math.isfinite(v) for v in b):
                return ValueError(f"{what} has bbox {b!r}; expected four finite numbers")
            if b[2] < 0 or b[3] < 0:
                return ValueError(f"{what} has negative box size {b!r}")
    return ValueError(f"{source}: malformed results")


def _empty_results(iou_type: str) -> Results:
    return Results(
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0),
        np.zeros((0, 4)),
        np.zeros(0),
        [] if iou_type == "segm" else None,
    )


def _ranks(ids: np.ndarray, sorted_ids: list) -> np.ndarray | None:
    """Ranks of integer ids in the sorted GT id list; None if any id is unknown (or GT ids aren't ints)."""
    if not all(type(v) is int for v in sorted_ids[:1]):
        return None
    ref = np.asarray(sorted_ids, dtype=np.int64)
    pos = np.searchsorted(ref, ids).clip(max=max(len(ref) - 1, 0))
    return pos if len(ref) and (ref[pos] == ids).all() else None


def _results_from_bytes(data: bytes, gt: GroundTruth) -> Results | None:
    """The flat bbox results schema decoded straight into arrays; None when the file needs the general
    path (other schema, or a bad entry that the general path will name)."""
    from evaluation.matching import NUMBA

    if not NUMBA:
        return None
    from evaluation.results_json import decode_bbox_results

    out = decode_bbox_results(data)
    if out is None:
        return None
    img_id, cat_id, score, boxes = out
    if score.size == 0:
        return _empty_results("bbox")
    img, cat = _ranks(img_id, gt.img_ids), _ranks(cat_id, gt.cat_ids)
    if img is None or cat is None or not np.isfinite(score).all():
        return None
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
        return None
    return Results(img, cat, score, boxes, boxes[:, 2] * boxes[:, 3])


def _compressed_rles(dets: list, gt: GroundTruth, img: np.ndarray) -> list | None:
    """The segmentations when all are compressed RLE dicts of their image's size (checked with C-speed
    scans); None otherwise (the per-entry path then converts polygons and names a bad entry)."""
    segs = list(map(itemgetter("segmentation"), dets))
    if set(map(type, segs)) != {dict} or not all(
        map(dict.__contains__, segs, ["size"] * len(segs))
    ):
        return None
    counts = list(map(dict.get, segs, ["counts"] * len(segs)))
    if not set(map(type, counts)) <= {str, bytes}:
        return None
    try:
        sizes = np.array(list(map(itemgetter("size"), segs)), dtype=np.int64).reshape(-1, 2)
    except (TypeError, ValueError):
        return None
    try:
        hw = np.array([gt.img_size[i] for i in gt.img_ids], dtype=np.float64)[img]
    except (TypeError, ValueError):
        return None
    return segs if np.array_equal(sizes, hw) else None


def parse_results(
    dets: str | Path | list, gt: GroundTruth, iou_type: str, *, source: str | None = None
) -> Results:
    """Validate a COCO results file or list and convert it to arrays (area per pycocotools ``loadRes``).

    A bbox results file in the flat schema is decoded straight into arrays
    (:mod:`evaluation.results_json`); anything else is parsed to Python objects and checked entry by entry.
    Raises ValueError naming the file and the first bad entry.
    """
    source = source or (str(dets) if isinstance(dets, (str, Path)) else "results")
    if isinstance(dets, (str, Path)):
        if not Path(dets).is_file():
            raise ValueError(f"results: file {dets} does not exist")
        data = Path(dets).read_bytes()
        fast = _results_from_bytes(data, gt) if iou_type == "bbox" else None
        if fast is not None:
            return fast
        dets = read_json_bytes(data, source)
    if not isinstance(dets, list):
        raise ValueError(f"{source}: results must be a list of dicts")
    n = len(dets)
    if n == 0:
        return _empty_results(iou_type)
    box_area = isinstance(dets[0], dict) and "bbox" in dets[0] and dets[0]["bbox"] != []
    need = ["image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox"]
    if (
        iou_type == "bbox"
        and not box_area
        and isinstance(dets[0], dict)
        and "segmentation" in dets[0]
    ):
        need[-1] = "segmentation"
    if box_area and "bbox" not in need:
        need.append("bbox")
    try:
        img = np.fromiter(
            map(gt.img_rank.__getitem__, map(itemgetter("image_id"), dets)), np.int64, n
        )
        cat = np.fromiter(
            map(gt.cat_rank.__getitem__, map(itemgetter("category_id"), dets)), np.int64, n
        )
        scores = list(map(itemgetter("score"), dets))
        geometry = list(map(itemgetter(need[-1]), dets))
        boxes = None
        if "bbox" in need:
            box_lists = geometry if need[-1] == "bbox" else list(map(itemgetter("bbox"), dets))
            if set(map(type, box_lists)) - {list, tuple, np.ndarray} or set(
                map(len, box_lists)
            ) != {4}:
                raise ValueError("bbox")
            flat = list(chain.from_iterable(box_lists))
            if first_non_number(flat) is not None:
                raise ValueError("bbox")
            boxes = np.array(flat, dtype=np.float64).reshape(n, 4)
            if not np.isfinite(boxes).all() or (boxes[:, 2:] < 0).any():
                raise ValueError("bbox")
        if first_non_number(scores) is not None:
            raise ValueError("score")
        score = np.array(scores, dtype=np.float64)
        if not np.isfinite(score).all():
            raise ValueError("score")
    except (KeyError, TypeError, ValueError) as e:
        raise _bad_entry(dets, gt, need, source) from e
    rles = None
    if iou_type == "segm" or not box_area:
        rles = _compressed_rles(dets, gt, img) or [
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


IOU_TYPES = ("bbox", "segm")


def check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")


def load_ground_truth(gt: str | Path | dict | GroundTruth, iou_type: str) -> GroundTruth:
    """Check ``iou_type`` and index the ground truth (path, dict, or an already indexed one) with the
    fields that type needs ("area" and "bbox", or "area" and "segmentation")."""
    check_iou_type(iou_type)
    if isinstance(gt, GroundTruth):
        return gt
    return GroundTruth.from_dataset(
        gt, require=("area", "bbox" if iou_type == "bbox" else "segmentation")
    )
