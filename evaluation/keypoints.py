"""COCO keypoint evaluation (OKS), bit-equal to pycocotools 2.0.11 ``COCOeval(iouType="keypoints")``.

OKS follows ``COCOeval.computeOks`` operation by operation in float64 numpy (the exponential and the
pairwise sum over visible keypoints are numpy's, so the values are the oracle's bits); matching and
accumulation run in the shared torch engine on CPU or CUDA. Keypoints are ``[x1, y1, v1, x2, y2, v2, ...]``
in absolute pixels of the original image; GT visibility ``v`` is 0 (not labelled), 1 (labelled, hidden)
or 2 (visible); a detection's third value is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.coco_data import GroundTruth, load_json

try:  # the matching kernel (engine.py was renamed matching.py)
    from evaluation import matching as engine
except ImportError:  # pragma: no cover
    from evaluation import engine  # type: ignore[no-redef]

# pycocotools Params.setKpParams: the /10.0 is a separate rounding step (5 sigmas differ from the literal)
COCO_SIGMAS = (
    np.array(
        [
            0.26,
            0.25,
            0.25,
            0.35,
            0.35,
            0.79,
            0.79,
            0.72,
            0.72,
            0.62,
            0.62,
            1.07,
            1.07,
            0.87,
            0.87,
            0.89,
            0.89,
        ]
    )
    / 10.0
)
KP_AREA_RANGES = np.array([[0**2, 1e5**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
KP_AREA_LABELS = ("all", "medium", "large")
KP_MAX_DETS = (20,)
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# (ap?, iouThr, area label) at maxDets=20, the order of COCOeval._summarizeKps
_SUMMARY = (
    (1, None, "all"),
    (1, 0.5, "all"),
    (1, 0.75, "all"),
    (1, None, "medium"),
    (1, None, "large"),
    (0, None, "all"),
    (0, 0.5, "all"),
    (0, 0.75, "all"),
    (0, None, "medium"),
    (0, None, "large"),
)


def _kp_array(values: Any, k: int, what: str) -> np.ndarray:
    """(K, 3) float64 from a flat ``[x, y, v] * K`` list; ValueError naming ``what`` otherwise."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what}: keypoints are not numbers") from e
    if arr.ndim != 1 or arr.size != 3 * k:
        raise ValueError(
            f"{what}: {arr.size} keypoint values, expected {3 * k} ({k} keypoints x [x, y, v])"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: keypoints hold NaN or infinity")
    return arr.reshape(k, 3)


def gt_keypoints(gt: GroundTruth, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GT keypoints (G, K, 3), boxes (G, 4) xywh and the keypoint ignore flag (G,) bool.

    The ignore flag is pycocotools' ``iscrowd or num_keypoints == 0``; a missing ``num_keypoints`` is
    counted from the visibility flags.
    """
    n = len(gt.anns)
    kps = np.zeros((n, k, 3), np.float64)
    ignore = np.zeros(n, bool)
    for i, a in enumerate(gt.anns):
        what = f"{gt.source}: annotation id={a['id']}"
        kps[i] = _kp_array(a["keypoints"], k, what)
        nk = a.get("num_keypoints", int(np.count_nonzero(kps[i, :, 2] > 0)))
        ignore[i] = bool(a.get("iscrowd", 0)) or nk == 0
    return kps, gt.boxes(), ignore


def parse_keypoint_results(
    dets: str | Path | list, gt: GroundTruth, k: int, *, source: str | None = None
) -> dict[str, np.ndarray]:
    """Validate a keypoint results list; area = keypoint extent ``(x1-x0)*(y1-y0)`` as ``loadRes``.

    Returns:
        dict of "img", "cat" (N,) int64 ranks, "score" (N,), "area" (N,) float64, "kps" (N, K, 3).
    """
    source = source or (str(dets) if isinstance(dets, (str, Path)) else "results")
    dets = load_json(dets, "results")
    if not isinstance(dets, list):
        raise ValueError(f"{source}: results must be a list of dicts")
    n = len(dets)
    out = {
        "img": np.zeros(n, np.int64),
        "cat": np.zeros(n, np.int64),
        "score": np.zeros(n, np.float64),
        "area": np.zeros(n, np.float64),
        "kps": np.zeros((n, k, 3), np.float64),
    }
    for i, d in enumerate(dets):
        what = (
            f"{source}: result #{i} (image_id={d.get('image_id') if isinstance(d, dict) else '?'})"
        )
        if not isinstance(d, dict):
            raise ValueError(f"{source}: result #{i} is not a dict")
        for key in ("image_id", "category_id", "score", "keypoints"):
            if key not in d:
                raise ValueError(f"{what} has no '{key}'")
        if d["image_id"] not in gt.img_rank:
            raise ValueError(f"{what}: unknown image_id")
        if d["category_id"] not in gt.cat_rank:
            raise ValueError(f"{what}: unknown category_id {d['category_id']}")
        s = d["score"]
        if (
            isinstance(s, bool)
            or not isinstance(s, (int, float, np.number))
            or not math.isfinite(s)
        ):
            raise ValueError(f"{what}: score {s!r} is not a finite number")
        kp = _kp_array(d["keypoints"], k, what)
        x, y = kp[:, 0], kp[:, 1]
        out["area"][i] = (np.max(x) - np.min(x)) * (np.max(y) - np.min(y))
        out["img"][i] = gt.img_rank[d["image_id"]]
        out["cat"][i] = gt.cat_rank[d["category_id"]]
        out["score"][i] = float(s)
        out["kps"][i] = kp
    return out


def _masked_pairwise_sum(vals: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: numpy's ``np.sum(vals[row][mask[row]])`` (pairwise summation, same bits) and the count.

    Rows are compacted to the left and summed in groups of equal length, so each group is one
    contiguous ``np.sum(axis=1)`` call with the same per-row reduction as the 1-D sum.
    """
    order = np.argsort(~mask, axis=1, kind="stable")
    packed = np.take_along_axis(vals, order, axis=1)
    cnt = mask.sum(1)
    out = np.zeros(vals.shape[0], np.float64)
    for c in np.unique(cnt).tolist():
        rows = np.nonzero(cnt == c)[0]
        out[rows] = np.sum(np.ascontiguousarray(packed[rows, :c]), axis=1)
    return out, cnt


def oks_pairs(
    dt_kps: np.ndarray,
    gt_kps: np.ndarray,
    gt_boxes: np.ndarray,
    gt_area: np.ndarray,
    sigmas: np.ndarray = COCO_SIGMAS,
) -> np.ndarray:
    """OKS of P (detection, GT) pairs, pycocotools ``computeOks`` bit for bit.

    Args:
        dt_kps, gt_kps: (P, K, 3) keypoints (absolute pixels), gt_boxes: (P, 4) xywh, gt_area: (P,).
    Returns:
        (P,) float64. A GT without labelled keypoints uses the distance to its box enlarged by 2x.
    """
    p, k = dt_kps.shape[0], len(sigmas)
    if p == 0:
        return np.zeros(0, np.float64)
    var = (sigmas * 2) ** 2
    xg, yg, vg = gt_kps[:, :, 0], gt_kps[:, :, 1], gt_kps[:, :, 2]
    xd, yd = dt_kps[:, :, 0], dt_kps[:, :, 1]
    vis = vg > 0
    has = vis.any(1)
    bb = gt_boxes
    x0, x1 = (bb[:, 0] - bb[:, 2])[:, None], (bb[:, 0] + bb[:, 2] * 2)[:, None]
    y0, y1 = (bb[:, 1] - bb[:, 3])[:, None], (bb[:, 1] + bb[:, 3] * 2)[:, None]
    z = np.zeros((p, k))
    dx_box = np.maximum(z, x0 - xd) + np.maximum(z, xd - x1)
    dy_box = np.maximum(z, y0 - yd) + np.maximum(z, yd - y1)
    dx = np.where(has[:, None], xd - xg, dx_box)
    dy = np.where(has[:, None], yd - yg, dy_box)
    e = (dx**2 + dy**2) / var / (gt_area + np.spacing(1))[:, None] / 2
    mask = np.where(has[:, None], vis, True)
    ex = np.exp(-e)
    total, cnt = _masked_pairwise_sum(ex, mask)
    return total / cnt


def _summarize(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """The 10 keypoint stats exactly as ``COCOeval._summarizeKps`` (numpy mean over ``s > -1``)."""
    iou_thrs = engine.coco_iou_thrs()
    stats = []
    for ap, thr, area in _SUMMARY:
        a = KP_AREA_LABELS.index(area)
        s = precision if ap else recall
        if thr is not None:
            s = s[np.where(thr == iou_thrs)[0]]
        s = s[:, :, :, [a], [0]] if ap else s[:, :, [a], [0]]
        stats.append(-1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1])))
    return stats


def _resolve(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def evaluate(
    gt: str | Path | dict | GroundTruth,
    detections: str | Path | list,
    *,
    device: str | torch.device | None = None,
    sigmas: Sequence[float] | np.ndarray | None = None,
    max_dets: int = 20,
) -> dict[str, Any]:
    """COCO keypoint AP equal to pycocotools ``COCOeval(gt, dt, "keypoints")``.

    Args:
        gt: person-keypoints annotation json path / dict (annotations need ``keypoints``, ``bbox``, ``area``).
        detections: results json path / list (``image_id``, ``category_id``, ``keypoints``, ``score``).
        device: device of matching / accumulation (default CUDA when available); results are identical.
        sigmas: per-keypoint OKS sigmas (default: the 17 COCO sigmas, exactly as pycocotools builds them).
        max_dets: detections kept per (image, category) (pycocotools ``maxDets=[20]``).

    Returns:
        dict: "stats" (10 floats, pycocotools order), "precision" (T,R,K,A,1), "recall" (T,K,A,1),
        "scores", "per_class" (name -> AP .50:.95, area all; NaN without GT), and the 10 stats under
        their names ("AP", ..., "ARl"), all fractions.
    """
    dev = _resolve(device)
    sig = COCO_SIGMAS if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    k = len(sig)
    if not isinstance(gt, GroundTruth):
        gt = GroundTruth.from_dataset(gt, require=("area", "bbox", "keypoints"))
    gt_kps, gt_boxes, ignore = gt_keypoints(gt, k)
    res = parse_keypoint_results(detections, gt, k)
    gtt = gt.table(dev)
    gtt = engine.GtTable(
        img=gtt.img,
        cat=gtt.cat,
        area=gtt.area,
        crowd=gtt.crowd,
        id_nonzero=gtt.id_nonzero,
        ignore=torch.as_tensor(ignore, device=dev),
    )
    dtt = engine.DtTable(
        img=torch.as_tensor(res["img"], device=dev),
        cat=torch.as_tensor(res["cat"], device=dev),
        score=torch.as_tensor(res["score"], dtype=torch.float64, device=dev),
        area=torch.as_tensor(res["area"], dtype=torch.float64, device=dev),
    )
    gt_area = np.array([float(a["area"]) for a in gt.anns], dtype=np.float64)

    def pair_iou(di: torch.Tensor, gi: torch.Tensor) -> torch.Tensor:
        d, g = di.cpu().numpy(), gi.cpu().numpy()
        oks = oks_pairs(res["kps"][d], gt_kps[g], gt_boxes[g], gt_area[g], sig)
        return torch.as_tensor(oks, dtype=torch.float64, device=di.device)

    out = engine.run(
        gtt,
        dtt,
        num_cats=len(gt.cat_ids),
        pair_iou=pair_iou,
        max_dets=[max_dets],
        per_cell_cap=max_dets,
        iou_thrs=engine.coco_iou_thrs(),
        rec_thrs=engine.coco_rec_thrs(),
        area_rngs=KP_AREA_RANGES,
    )
    per_cat = {}
    for ki, name in enumerate(gt.cat_names):
        p = out.precision[:, :, ki, 0, -1]
        p = p[p > -1]
        per_cat[name] = float(np.mean(p)) if p.size else float("nan")
    stats = _summarize(out.precision, out.recall)
    return {
        "stats": stats,
        "precision": out.precision,
        "recall": out.recall,
        "scores": out.scores,
        "per_class": per_cat,
        **dict(zip(STAT_NAMES, stats)),
    }


def format_table(result: dict[str, Any]) -> str:
    """pycocotools' 10-line keypoint summary from ``evaluate()`` or ``KeypointEvaluator.evaluate()``."""
    stats = result["stats"] if "stats" in result else [result[n] for n in STAT_NAMES]
    if isinstance(stats, dict):
        stats = [stats[n] for n in STAT_NAMES]
    lines = []
    for (ap, thr, area), v in zip(_SUMMARY, stats):
        title, typ = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou = "0.50:0.95" if thr is None else f"{thr:0.2f}"
        lines.append(
            f" {title:<18} {typ} @[ IoU={iou:<9} | area={area:>6s} | maxDets={20:>3d} ] = {v:0.3f}"
        )
    return "\n".join(lines)


class KeypointEvaluator:
    """Streaming keypoint evaluator (``reset / process / evaluate``).

    ``inputs[i]["image_id"]``; ``outputs[i]`` = {"keypoints" (N, K, 3) or (N, K, 2) absolute pixels of
    the original image, "scores" (N,), "labels" (N,) contiguous 0..C-1 (optional: default category 0)}.
    ``evaluate()`` returns fractions under "AP", "AP50", ..., "ARl" and "per_class".
    """

    def __init__(
        self,
        gt: str | Path | dict,
        *,
        label_to_category_id: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        self.gt = GroundTruth.from_dataset(gt, require=("area", "bbox", "keypoints"))
        self.label_map = (
            list(label_to_category_id) if label_to_category_id else list(self.gt.cat_ids)
        )
        self.device = device
        self.sigmas = sigmas
        self.reset()

    def reset(self) -> None:
        self._dets: list[dict] = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"process(): {len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            kps = torch.as_tensor(out["keypoints"]).detach().to("cpu", torch.float64)
            if kps.ndim != 3 or kps.shape[-1] not in (2, 3):
                raise ValueError(
                    f"image {inp['image_id']}: keypoints shape {tuple(kps.shape)}, expected (N, K, 3)"
                )
            if kps.shape[-1] == 2:
                kps = torch.cat([kps, torch.ones_like(kps[..., :1])], -1)
            scores = torch.as_tensor(out["scores"]).detach().to("cpu", torch.float64).tolist()
            labels = out.get("labels")
            labels = [0] * len(scores) if labels is None else torch.as_tensor(labels).tolist()
            for kp, s, lb in zip(kps.reshape(len(scores), -1).tolist(), scores, labels):
                if not 0 <= int(lb) < len(self.label_map):
                    raise ValueError(
                        f"image {inp['image_id']}: label {lb} outside 0..{len(self.label_map) - 1}"
                    )
                self._dets.append(
                    {
                        "image_id": inp["image_id"],
                        "category_id": self.label_map[int(lb)],
                        "keypoints": kp,
                        "score": s,
                    }
                )

    def evaluate(self) -> dict[str, Any]:
        from evaluation.dist import gather_on_main

        parts = gather_on_main(self._dets)
        if parts is None:
            return {}
        dets = [d for p in parts for d in p]
        out = evaluate(self.gt, dets, device=self.device, sigmas=self.sigmas)
        res: dict[str, Any] = dict(zip(STAT_NAMES, out["stats"]))
        res["per_class"] = out["per_class"]
        return res
