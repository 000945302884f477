"""Panoptic quality (PQ / SQ / RQ), equal to panopticapi ``pq_compute`` and cityscapesscripts
``evalPanopticSemanticLabeling`` (the same algorithm).

Per image: the (GT segment x predicted segment) intersections come from one bincount over pixel pairs
(torch, CPU or CUDA); the few float operations then follow the official code in its order, in float64:

* a non-crowd GT and a prediction of the same category match when ``inter / union > 0.5`` with
  ``union = area_pred + area_gt(JSON) - inter - (pred pixels on VOID)``; pairs are visited in
  (GT id, prediction id) order and the IoUs summed per category in that order;
* unmatched non-crowd GTs are FN; an unmatched prediction is FP unless more than half of it lies on
  VOID (id 0) plus the crowd region of its category;
* per class ``PQ = iou_sum / (tp + fp/2 + fn/2)``, ``SQ = iou_sum / tp``, ``RQ = tp / (tp + fp/2 + fn/2)``;
  All / Things / Stuff average the classes with ``tp + fp + fn > 0`` (left-to-right sums, category order
  of the GT JSON).

panopticapi sums each category's IoUs per worker process (``np.array_split`` of the images over
``cpu_count()`` processes) and then adds the partial sums; ``chunks`` reproduces that split (default 1:
one sequential sum, the order-independent reading). Segment maps are ``id = R + 256 G + 256^2 B`` PNGs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.png import read_png

VOID = 0


@dataclass
class ImageStats:
    """One image's contribution: ``matches`` = [(category id, iou)] in official order, fp / fn counts."""

    matches: list[tuple[int, float]] = field(default_factory=list)
    fp: dict[int, int] = field(default_factory=dict)
    fn: dict[int, int] = field(default_factory=dict)


def rgb_to_id(rgb: np.ndarray, what: str = "segment PNG") -> np.ndarray:
    """(H, W, 3+) uint8 colours -> (H, W) int64 segment ids ``R + 256 G + 256^2 B``."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"{what}: expected an RGB segment PNG, got an array of shape {rgb.shape}")
    c = rgb.astype(np.int64)
    return c[:, :, 0] + 256 * c[:, :, 1] + 256 * 256 * c[:, :, 2]


def _segments(
    info: Sequence[dict], categories: dict, what: str, *, need_area: bool = False
) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for j, s in enumerate(info):
        if not isinstance(s, dict) or "id" not in s or "category_id" not in s:
            raise ValueError(f"{what}: segments_info[{j}] needs 'id' and 'category_id'")
        sid = int(s["id"])
        if sid in out:
            raise ValueError(f"{what}: segment id {sid} listed twice in segments_info")
        if s["category_id"] not in categories:
            raise ValueError(f"{what}: segment id {sid} has unknown category_id {s['category_id']}")
        if need_area and not isinstance(s.get("area"), (int, float)):
            raise ValueError(f"{what}: segment id {sid} has no numeric 'area'")
        out[sid] = s
    return out


def image_stats(
    gt_ids: torch.Tensor,
    pred_ids: torch.Tensor,
    gt_info: Sequence[dict],
    pred_info: Sequence[dict],
    categories: dict,
    *,
    what: str = "image",
) -> ImageStats:
    """PQ statistics of one image.

    Args:
        gt_ids, pred_ids: (H, W) integer segment-id maps on one device (0 = VOID).
        gt_info, pred_info: ``segments_info`` lists (``id``, ``category_id``; GT also ``area``, ``iscrowd``).
        categories: category id -> category dict (from the GT JSON).
        what: names the image in errors.
    Raises:
        ValueError for segment ids present in a PNG but not in its JSON (or the reverse, for predictions),
        unknown categories, duplicate ids, a size mismatch.
    """
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(
            f"{what}: prediction size {tuple(pred_ids.shape)} != GT {tuple(gt_ids.shape)}"
        )
    gsegs = _segments(gt_info, categories, f"{what} (ground truth)", need_area=True)
    psegs = _segments(pred_info, categories, f"{what} (prediction)")
    g_u, g_inv = torch.unique(gt_ids.reshape(-1).long(), return_inverse=True)
    p_u, p_inv, p_cnt = torch.unique(
        pred_ids.reshape(-1).long(), return_inverse=True, return_counts=True
    )
    inter = torch.bincount(g_inv * p_u.numel() + p_inv, minlength=g_u.numel() * p_u.numel())
    inter = inter.view(g_u.numel(), p_u.numel()).cpu().numpy()
    g_u, p_u, p_cnt = g_u.cpu().tolist(), p_u.cpu().tolist(), p_cnt.cpu().numpy()
    _check_ids(g_u, gsegs, p_u, psegs, what)
    p_area = dict(zip(p_u, p_cnt.tolist()))
    g_col = {g: i for i, g in enumerate(g_u)}
    p_col = {p: i for i, p in enumerate(p_u)}
    void = inter[g_col[VOID]] if VOID in g_col else np.zeros(len(p_u), np.int64)
    st = ImageStats()
    g_matched, p_matched = set(), set()
    gi_nz, pi_nz = np.nonzero(inter)  # row-major: (GT id, prediction id) ascending, as panopticapi
    for gi, pj in zip(gi_nz.tolist(), pi_nz.tolist()):
        g, p = g_u[gi], p_u[pj]
        if g not in gsegs or p not in psegs or gsegs[g].get("iscrowd", 0) == 1:
            continue
        cat = gsegs[g]["category_id"]
        if cat != psegs[p]["category_id"]:
            continue
        i = int(inter[gi, pj])
        union = p_area[p] + gsegs[g]["area"] - i - int(void[pj])
        if union <= 0:
            raise ValueError(
                f"{what}: GT segment {g} has 'area' {gsegs[g]['area']} below its pixel count"
            )
        iou = float(np.float64(i) / np.float64(union))
        if iou > 0.5:
            st.matches.append((cat, iou))
            g_matched.add(g)
            p_matched.add(p)
    crowd: dict[int, int] = {}
    for g, s in gsegs.items():
        if g in g_matched:
            continue
        if s.get("iscrowd", 0) == 1:
            crowd[s["category_id"]] = g
            continue
        st.fn[s["category_id"]] = st.fn.get(s["category_id"], 0) + 1
    for p, s in psegs.items():
        if p in p_matched:
            continue
        cat = s["category_id"]
        on_void = int(void[p_col[p]])
        if cat in crowd and crowd[cat] in g_col:
            on_void += int(inter[g_col[crowd[cat]], p_col[p]])
        if on_void / p_area[p] > 0.5:
            continue
        st.fp[cat] = st.fp.get(cat, 0) + 1
    return st


def _check_ids(g_u: list, gsegs: dict, p_u: list, psegs: dict, what: str) -> None:
    unknown = [p for p in p_u if p != VOID and p not in psegs]
    if unknown:
        raise ValueError(
            f"{what}: prediction PNG holds segment ids {unknown[:10]} that are not in its segments_info"
        )
    missing = sorted(set(psegs) - set(p_u))
    if missing:
        raise ValueError(
            f"{what}: prediction segments_info lists ids {missing[:10]} that are not in its PNG"
        )
    unknown = [g for g in g_u if g != VOID and g not in gsegs]
    if unknown:
        raise ValueError(
            f"{what}: ground-truth PNG holds segment ids {unknown[:10]} that are not in its segments_info"
        )


def masks_to_ids(masks: torch.Tensor, segment_ids: Sequence[int], what: str) -> torch.Tensor:
    """(N, H, W) bool segment masks -> (H, W) int64 id map (0 elsewhere); overlaps are an error."""
    m = masks.bool()
    cover = m.sum(0)
    if bool((cover > 1).any()):
        y, x = (int(v) for v in torch.nonzero(cover > 1)[0])
        both = [int(segment_ids[k]) for k in torch.nonzero(m[:, y, x]).squeeze(1).tolist()]
        raise ValueError(
            f"{what}: segments {both} overlap (e.g. at pixel y={y}, x={x}); panoptic segments must be disjoint"
        )
    ids = torch.as_tensor(list(segment_ids), dtype=torch.long, device=m.device)
    if len(ids) != m.shape[0]:
        raise ValueError(f"{what}: {m.shape[0]} masks but {len(ids)} segments_info entries")
    return (m.long() * ids[:, None, None]).sum(0)


def accumulate(stats: Sequence[ImageStats], categories: dict, *, chunks: int = 1) -> dict[str, Any]:
    """Sum image statistics (IoU sums in official order, split into ``chunks`` like panopticapi's
    worker processes) and average: ``{"All"|"Things"|"Stuff": {pq, sq, rq, n}, "per_class": {id: ...}}``."""
    tot: dict[int, list] = {c: [0.0, 0, 0, 0] for c in categories}  # iou, tp, fp, fn
    for part in np.array_split(np.arange(len(stats)), max(1, chunks)):
        sub: dict[int, list] = {}
        for i in part.tolist():
            st = stats[i]
            for cat, iou in st.matches:
                s = sub.setdefault(cat, [0.0, 0, 0, 0])
                s[0] += iou
                s[1] += 1
            for cat, n in st.fp.items():
                sub.setdefault(cat, [0.0, 0, 0, 0])[2] += n
            for cat, n in st.fn.items():
                sub.setdefault(cat, [0.0, 0, 0, 0])[3] += n
        for cat, s in sub.items():
            t = tot.setdefault(cat, [0.0, 0, 0, 0])
            for k in range(4):
                t[k] += s[k]
    out: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        out[name], per_class = _average(tot, categories, isthing)
        if name == "All":
            out["per_class"] = per_class
    return out


def _average(tot: dict, categories: dict, isthing: bool | None) -> tuple[dict, dict]:
    pq, sq, rq, n = 0, 0, 0, 0
    per_class = {}
    for cid, info in categories.items():
        if isthing is not None and (info.get("isthing", 0) == 1) != isthing:
            continue
        iou, tp, fp, fn = tot[cid]
        if tp + fp + fn == 0:
            per_class[cid] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
        sq_c = iou / tp if tp != 0 else 0
        rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[cid] = {"pq": pq_c, "sq": sq_c, "rq": rq_c, "tp": tp, "fp": fp, "fn": fn}
        pq += pq_c
        sq += sq_c
        rq += rq_c
    nan = float("nan")  # panopticapi divides by zero here; no class of the kind -> NaN
    avg = {
        "pq": pq / n if n else nan,
        "sq": sq / n if n else nan,
        "rq": rq / n if n else nan,
        "n": n,
    }
    return avg, per_class


def _load(obj: str | Path | dict, what: str) -> dict:
    if isinstance(obj, dict):
        return obj
    path = Path(obj)
    if not path.is_file():
        raise ValueError(f"{what}: file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {path} is not valid JSON ({e})") from e


def _folder(json_path: str | Path | dict, folder: str | Path | None, what: str) -> Path:
    if folder is not None:
        return Path(folder)
    if isinstance(json_path, dict):
        raise ValueError(f"{what}: pass the PNG folder when the JSON is given as a dict")
    return Path(str(json_path)[: -len(".json")] if str(json_path).endswith(".json") else json_path)


def evaluate(
    gt_json: str | Path | dict,
    pred_json: str | Path | dict,
    *,
    gt_folder: str | Path | None = None,
    pred_folder: str | Path | None = None,
    device: str | torch.device | None = None,
    chunks: int = 1,
    decoder: str | None = None,
) -> dict[str, Any]:
    """COCO / Cityscapes panoptic PQ from JSON + PNG folders (panopticapi ``pq_compute`` results dict).

    Folders default to the JSON path without ``.json`` (panopticapi's convention). Every GT image needs a
    prediction (matched by ``image_id``). Returns panopticapi's dict (fractions) plus flat protocol keys
    (see :func:`flat_result`) under "summary".
    """
    gt = _load(gt_json, "panoptic ground truth")
    pred = _load(pred_json, "panoptic predictions")
    gdir = _folder(gt_json, gt_folder, "panoptic ground truth")
    pdir = _folder(pred_json, pred_folder, "panoptic predictions")
    categories = {c["id"]: c for c in gt["categories"]}
    preds = {a["image_id"]: a for a in pred.get("annotations", [])}
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stats = []
    for ann in gt["annotations"]:
        img = ann["image_id"]
        if img not in preds:
            raise ValueError(
                f"no prediction for the image with id {img!r} in {pred_json if not isinstance(pred_json, dict) else 'predictions'}"
            )
        pa = preds[img]
        g = rgb_to_id(
            read_png(gdir / ann["file_name"], decoder=decoder), str(gdir / ann["file_name"])
        )
        p = rgb_to_id(
            read_png(pdir / pa["file_name"], decoder=decoder), str(pdir / pa["file_name"])
        )
        stats.append(
            image_stats(
                torch.from_numpy(g).to(dev),
                torch.from_numpy(p).to(dev),
                ann["segments_info"],
                pa["segments_info"],
                categories,
                what=f"image {img!r} ({pa['file_name']})",
            )
        )
    res = accumulate(stats, categories, chunks=chunks)
    res["summary"] = flat_result(res, categories)
    return res


def flat_result(res: dict[str, Any], categories: dict) -> dict[str, Any]:
    """Protocol keys: "PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st" (fractions)
    and "per_class": {name: PQ} for the classes that occur."""
    out: dict[str, Any] = {}
    for key, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for m in ("pq", "sq", "rq"):
            out[m.upper() + suffix] = float(res[key][m])
    out["per_class"] = {
        categories[c].get("name", str(c)): float(v["pq"])
        for c, v in res["per_class"].items()
        if "tp" in v
    }
    return out


def format_table(result: dict[str, Any], categories: dict | None = None) -> str:
    """panopticapi's table (percent, one decimal): per class when ``categories`` is given, then All /
    Things / Stuff with N; for the flat protocol result, All / Things / Stuff."""
    if "PQ" in result:  # the flat protocol result (PanopticEvaluator.evaluate)
        lines = [f"{'':14s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}"]
        for name, sfx in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            pq, sq, rq = (100 * result[m + sfx] for m in ("PQ", "SQ", "RQ"))
            lines.append(f"{name:14s}| {pq:5.1f}  {sq:5.1f}  {rq:5.1f}")
        return "\n".join(lines)
    lines = []
    if categories is not None:
        lines.append(f"{'Category':14s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}")
        for cid in sorted(result["per_class"]):
            v = result["per_class"][cid]
            lines.append(
                f"{categories[cid].get('name', str(cid)):14s}| {100 * v['pq']:5.1f}  {100 * v['sq']:5.1f}  {100 * v['rq']:5.1f}"
            )
        lines.append("-" * 41)
    lines.append(f"{'':14s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}")
    for name in ("All", "Things", "Stuff"):
        r = result[name]
        lines.append(
            f"{name:14s}| {100 * r['pq']:5.1f}  {100 * r['sq']:5.1f}  {100 * r['rq']:5.1f} {r['n']:5d}"
        )
    return "\n".join(lines)


class PanopticEvaluator:
    """Streaming panoptic evaluator (``reset / process / evaluate``) against a COCO panoptic GT.

    ``inputs[i]["image_id"]``; ``outputs[i]["panoptic_seg"]`` = ``(ids, segments_info)`` with ``ids``
    (H, W) int segment ids (0 = VOID) or (N, H, W) bool masks (one per ``segments_info`` entry; overlaps
    are an error), ``segments_info`` = [{"id", "category_id"}] with dataset category ids.
    ``evaluate()`` returns fractions "PQ", "SQ", "RQ", "PQ_th", ..., "RQ_st" and "per_class" {name: PQ}.
    """

    def __init__(
        self,
        gt_json: str | Path | dict,
        *,
        gt_folder: str | Path | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.gt = _load(gt_json, "panoptic ground truth")
        self.gt_folder = _folder(gt_json, gt_folder, "panoptic ground truth")
        self.categories = {c["id"]: c for c in self.gt["categories"]}
        self.anns = {a["image_id"]: a for a in self.gt["annotations"]}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.reset()

    def reset(self) -> None:
        self._stats: dict[Any, ImageStats] = {}

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"process(): {len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            img = inp["image_id"]
            if img not in self.anns:
                raise ValueError(f"PanopticEvaluator: image_id {img!r} is not in the ground truth")
            ids, info = out["panoptic_seg"]
            what = f"image {img!r}"
            ids = torch.as_tensor(ids, device=self.device)
            if ids.ndim == 3:
                ids = masks_to_ids(ids, [s["id"] for s in info], what)
            ann = self.anns[img]
            g = rgb_to_id(read_png(self.gt_folder / ann["file_name"]), ann["file_name"])
            self._stats[img] = image_stats(
                torch.from_numpy(g).to(self.device),
                ids,
                ann["segments_info"],
                info,
                self.categories,
                what=what,
            )

    def evaluate(self) -> dict[str, Any]:
        from evaluation.dist import gather_on_main

        parts = gather_on_main(self._stats)
        if parts is None:
            return {}
        merged = {k: v for p in parts for k, v in p.items()}
        missing = [a["image_id"] for a in self.gt["annotations"] if a["image_id"] not in merged]
        if missing:
            raise ValueError(
                f"PanopticEvaluator: no prediction for {len(missing)} GT images, e.g. {missing[:5]}"
            )
        stats = [merged[a["image_id"]] for a in self.gt["annotations"]]
        return flat_result(accumulate(stats, self.categories), self.categories)


def cityscapes_categories() -> list[dict]:
    """Cityscapes panoptic categories as ``createPanopticImgs`` writes them (labelIds, isthing)."""
    from evaluation.cityscapes import LABELS

    return [
        {
            "id": lb.id,
            "name": lb.name,
            "supercategory": lb.category,
            "isthing": int(lb.has_instances),
        }
        for lb in LABELS
        if not lb.ignore_in_eval
    ]
