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

from evaluation import matching
from evaluation.coco import per_class_mean
from evaluation.coco_data import GroundTruth, Results, load_ground_truth, parse_results
from evaluation.detections import DetectionRecords
from evaluation.devices import resolve_device, single_thread_on_cpu
from evaluation.pair_iou import pair_iou_for

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
    if len(res) == 0:
        return np.zeros(0, np.int64)
    if matching.NUMBA:  # (image, -score, input order) in one compiled pass
        from evaluation.matching_cpu import stable_order

        order = stable_order(res.img, int(res.img.max()) + 1, res.img, False, res.score)
    else:
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
    iou_thrs = matching.coco_iou_thrs()
    labels = list(matching.AREA_LABELS)

    # A (category, area) column is all -1 (no non-ignored GT) or all >= 0, so "s[s > -1]" is the columns
    # of the valid categories, in the same C order: the same values reach np.mean, without the mask pass.
    valid = {"ap": precision[0, 0] > -1, "ar": recall[0] > -1}  # (K, A)

    def one(kind: str, iou_thr=None, area="all", freq=None) -> float:
        a = labels.index(area)
        cats = (
            np.arange(valid[kind].shape[0]) if freq is None else np.asarray(freq_groups[freq], int)
        )
        cats = cats[valid[kind][cats, a]]
        s = precision if kind == "ap" else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == iou_thrs)[0]]
        s = s[:, :, cats, a] if kind == "ap" else s[:, cats, a]
        return -1.0 if s.size == 0 else float(np.mean(s.ravel()))

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
    detections: str | Path | list | Results,
    iou_type: str = "bbox",
    device: str | torch.device | None = None,
    kernel: str = "auto",
) -> dict[str, Any]:
    """LVIS evaluation equal to lvis-api 0.5.3.

    Args:
        gt: LVIS v0.5 / v1 annotation json path, dict, or a :class:`GroundTruth`.
        detections: results json path or list of dicts (``image_id``, ``category_id``, ``score``, ``bbox`` xywh
            or ``segmentation`` RLE), or parsed :class:`Results` (in results-file order).
        iou_type: "bbox" or "segm".
        device: "cpu" (compiled kernel) or "cuda" (torch); default: CUDA when available.
        kernel: "auto", or "torch" to run the torch path on the CPU too.

    Returns:
        The protocol result (the 13 LVIS metrics as fractions under :data:`RESULT_KEYS`, "per_class": AP per
        category name) plus lvis-api's arrays "precision" (T,R,K,A) and "recall" (T,K,A).
    """
    dev = resolve_device(device)
    with single_thread_on_cpu(dev):
        return _evaluate(load_ground_truth(gt, iou_type), detections, iou_type, dev, kernel)


def _evaluate(
    gt: GroundTruth,
    detections: str | Path | list | Results,
    iou_type: str,
    dev: torch.device,
    kernel: str,
) -> dict[str, Any]:
    dets = (
        detections if isinstance(detections, Results) else parse_results(detections, gt, iou_type)
    )
    dets = dets.subset(_limit_per_image(dets, MAX_DETS))
    gt_area = np.array([float(a["area"]) for a in gt.anns], dtype=np.float64)
    gt_keep = (gt_area > 0) & (gt_area < np.inf)
    allowed, not_exh = _federated_mask(gt, dets, gt_keep)
    keep = allowed & (dets.area > 0) & (dets.area < np.inf)
    dets, not_exh = dets.subset(np.flatnonzero(keep)), not_exh[keep]

    gidx = np.flatnonzero(gt_keep)
    gtt = gt.table(dev, crowd_is_ignore=False).subset(torch.as_tensor(gidx, device=dev))
    dtt = dets.table(dev)
    dtt.ignore_unmatched = torch.as_tensor(not_exh, device=dev)
    out = matching.run(
        gtt,
        dtt,
        num_cats=len(gt.cat_ids),
        pair_iou=pair_iou_for(gt, dets, iou_type, gtt.crowd, dev, gt_index=gidx),
        max_dets=[MAX_DETS],
        per_cell_cap=None,
        iou_thrs=matching.coco_iou_thrs(),
        rec_thrs=matching.coco_rec_thrs(),
        area_rngs=matching.AREA_RANGES,
        kernel=kernel,
        with_scores=False,
    )
    precision, recall = out.precision[..., 0], out.recall[..., 0]
    per_class = per_class_mean(precision[:, :, :, 0], gt.cat_names)
    return {
        **_summarize(precision, recall, _freq_groups(gt)),
        "per_class": per_class,
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


def format_table(result: dict[str, Any]) -> str:
    """lvis-api's 13-line summary of a result (its :data:`RESULT_KEYS` fractions)."""
    lines = []
    for key in RESULT_KEYS:
        title, typ = (
            ("Average Precision", "(AP)") if key.startswith("AP") else ("Average Recall", "(AR)")
        )
        iou = f"{float(key[2:]) / 100:0.2f}" if len(key) > 2 and key[2].isdigit() else "0.50:0.95"
        group = key[2] if len(key) > 2 and key[2] in "rcf" else "all"
        area = key[2] if len(key) > 2 and key[2] in "sml" else "all"
        lines.append(
            f" {title:<18} {typ} @[ IoU={iou:<9} | area={area:>6s} | maxDets={MAX_DETS:>3d} "
            f"catIds={group:>3s}] = {result[key]:0.3f}"
        )
    return "\n".join(lines)


class LVISEvaluator:
    """LVIS evaluator following :mod:`evaluation.protocol` (at most 300 detections per image, applied at
    evaluation as lvis-api does; gathers ranks, evaluates on rank 0).

    Args:
        gt: LVIS annotation json path or dict.
        iou_type: "bbox" or "segm" (segm needs "masks" in the outputs).
        label_to_category_id: contiguous label -> LVIS category id; ``None`` means labels are category ids.
        device: evaluation device (default: CUDA when available).
    """

    def __init__(
        self,
        gt: str | Path | dict,
        *,
        iou_type: str = "bbox",
        label_to_category_id: Sequence[int] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.gt = load_ground_truth(gt, iou_type)
        self.iou_type = iou_type
        self.device = resolve_device(device)
        self._records = DetectionRecords(
            self.gt,
            iou_type=iou_type,
            label_to_category_id=label_to_category_id,
            max_dets_per_image=None,
            who="LVISEvaluator",
        )

    def reset(self) -> None:
        """Drop everything processed so far."""
        self._records.items = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        """Add one batch (the detection convention of :mod:`evaluation.protocol`)."""
        self._records.add(inputs, outputs)

    def results(self) -> list[dict[str, Any]]:
        """LVIS results-file records of this rank."""
        return self._records.results_json()

    def evaluate(self) -> dict[str, Any]:
        """The 13 LVIS metrics (fractions, :data:`RESULT_KEYS`) and "per_class" AP on rank 0; ``{}`` elsewhere."""
        items = self._records.gathered()
        if items is None:
            return {}
        out = evaluate(
            self.gt, self._records.to_results(items), iou_type=self.iou_type, device=self.device
        )
        return {k: out[k] for k in (*RESULT_KEYS, "per_class")}
