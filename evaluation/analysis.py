"""Analysis on top of the COCO evaluation: precision-recall curves (PNG), a per-class AP table, and a
TIDE-style error breakdown.

* :func:`plot_pr_curves` draws, per area range, the interpolated precision at the 101 recall thresholds
  (mean over categories, exactly the cells the AP averages) at IoU 0.50, 0.75 and averaged over
  0.50:0.95. Needs matplotlib (the ``plots`` extra).
* :func:`per_class_table` gives AP, AP50, AP75, APs, APm, APl per category from the ``precision`` array
  (pycocotools' means over cells > -1).
* :func:`error_breakdown` classifies every false positive at IoU 0.5 (TIDE, Bolya et al. 2020), with
  ``t_f = 0.5`` and ``t_b = 0.1`` and this precedence for an unmatched detection whose best IoU with a
  same-class GT is ``s`` and with another-class GT is ``o``: duplicate (``s >= t_f``, that GT already
  taken), classification (``o >= t_f``), localisation (``s >= t_b``), both (``o >= t_b``), background;
  a GT that is neither matched nor the target of a classification / localisation error is missed.
  ``dAP`` is the gain in AP50 when every error of one type is fixed (TIDE's oracles: a fixed cls / loc
  error becomes the true positive of its GT when that GT is still free and is dropped otherwise; both /
  duplicate / background detections are dropped; missed GTs are removed). The AP50 here is TIDE's own
  (greedy matching per image and class at 0.5, 101-point interpolation, crowd GTs absorb detections);
  it is close to, not bit-equal with, COCOeval's AP50.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.coco_data import GroundTruth, load_json

try:  # the matching kernel (engine.py was renamed matching.py)
    from evaluation.matching import coco_rec_thrs
except ImportError:  # pragma: no cover
    from evaluation.engine import coco_rec_thrs  # type: ignore[no-redef]

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
_AREAS = ("all", "small", "medium", "large")


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return float(np.mean(v)) if v.size else float("nan")


def per_class_table(
    precision: np.ndarray, class_names: Sequence[str], *, area_labels: Sequence[str] = _AREAS
) -> tuple[dict[str, dict[str, float]], str]:
    """Per-class AP from a (T, R, K, A, M) ``precision`` array (last maxDets).

    Returns:
        ({name: {"AP", "AP50", "AP75", "APs", "APm", "APl"}}, the table as text). NaN: no GT.
    """
    rows: dict[str, dict[str, float]] = {}
    for k, name in enumerate(class_names):
        p = precision[:, :, k, :, -1]
        r = {
            "AP": _mean_valid(p[:, :, 0]),
            "AP50": _mean_valid(p[0, :, 0]),
            "AP75": _mean_valid(p[5, :, 0]),
        }
        for a, lbl in enumerate(area_labels):
            if lbl != "all":
                r["AP" + lbl[0]] = _mean_valid(p[:, :, a])
        rows[name] = r
    cols = list(next(iter(rows.values())).keys()) if rows else []
    width = max([len(n) for n in class_names] + [8])
    lines = [f"{'category':<{width}}" + "".join(f"{c:>8}" for c in cols)]
    for name, r in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{100 * r[c]:>8.1f}" for c in cols))
    return rows, "\n".join(lines)


def plot_pr_curves(
    precision: np.ndarray,
    out_dir: str | Path,
    *,
    rec_thrs: np.ndarray | None = None,
    area_labels: Sequence[str] = _AREAS,
    title: str = "",
) -> list[Path]:
    """Write ``pr_<area>.png`` per area range: precision vs recall at IoU .50, .75 and .50:.95 (mean
    over categories with GT). Returns the written paths. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = coco_rec_thrs() if rec_thrs is None else rec_thrs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for a, lbl in enumerate(area_labels):
        fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
        curves = {"IoU=.50": precision[0:1], "IoU=.75": precision[5:6], "IoU=.50:.95": precision}
        for name, p in curves.items():
            cells = p[:, :, :, a, -1]  # (t, R, K)
            valid = (cells > -1).all(axis=(0, 1))
            if not valid.any():
                continue
            curve = cells[:, :, valid].mean(axis=(0, 2))
            ax.plot(rec, curve, label=f"{name} (AP {100 * _mean_valid(cells):.1f})")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} area={lbl}".strip())
        if ax.lines:
            ax.legend(loc="lower left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no ground truth in this range", ha="center", va="center")
        path = out / f"pr_{lbl}.png"
        tmp = path.with_suffix(".png.tmp")
        fig.savefig(tmp, format="png")
        plt.close(fig)
        tmp.replace(path)  # atomic
        paths.append(path)
    return paths


def _iou_matrix(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes (crowd GTs: intersection over detection area), pycocotools' rule."""
    if dt.size == 0 or gt.size == 0:
        return np.zeros((len(dt), len(gt)))
    from pycocotools import mask as mask_utils

    return np.asarray(mask_utils.iou(dt.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist()))


def _ap50(
    det_cat: np.ndarray,
    det_score: np.ndarray,
    det_tp: np.ndarray,
    det_keep: np.ndarray,
    npos: np.ndarray,
) -> float:
    """Mean over categories with npos > 0 of 101-point interpolated AP (detections in file order)."""
    rec_thrs = coco_rec_thrs()
    aps = []
    for k in np.nonzero(npos > 0)[0]:
        sel = np.nonzero((det_cat == k) & det_keep)[0]
        order = sel[np.argsort(-det_score[sel], kind="mergesort")]
        tp = np.cumsum(det_tp[order])
        fp = np.cumsum(~det_tp[order])
        if order.size == 0:
            aps.append(0.0)
            continue
        rc = tp / npos[k]
        pr = tp / (tp + fp + np.spacing(1))
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        idx = np.searchsorted(rc, rec_thrs, side="left")
        q = np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0)
        aps.append(float(q.mean()))
    return float(np.mean(aps)) if aps else float("nan")


def error_breakdown(
    gt: str | Path | dict | GroundTruth,
    detections: str | Path | list,
    *,
    t_f: float = 0.5,
    t_b: float = 0.1,
    max_dets: int = 100,
) -> dict[str, Any]:
    """TIDE-style error analysis of COCO bbox detections (see the module docstring).

    Args:
        gt: COCO annotation json path / dict / :class:`GroundTruth`.
        detections: results json path / list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        max_dets: detections kept per image (highest scores).
    Returns:
        {"AP50": TIDE-style AP50 (fraction), "counts": {type: n}, "dAP": {type: AP50 gain (fraction)},
         "num_detections", "num_gt"}.
    """
    from evaluation.coco_data import parse_results

    g = gt if isinstance(gt, GroundTruth) else GroundTruth.from_dataset(gt, require=("bbox",))
    res = parse_results(load_json(detections, "results"), g, "bbox")
    gboxes = g.boxes()
    gcrowd = np.array([bool(a.get("iscrowd", 0)) for a in g.anns])
    k_n = len(g.cat_ids)
    npos = np.bincount(g.ann_cat[~gcrowd], minlength=k_n).astype(np.float64)
    n = len(res)
    tp = np.zeros(n, bool)
    keep = np.ones(n, bool)
    err = np.full(n, "", dtype=object)
    target = np.full(n, -1)  # GT index an error points at (cls / loc fixes)
    gt_taken = np.zeros(len(g.anns), bool)
    for img in range(len(g.img_ids)):
        d_idx = np.nonzero(res.img == img)[0]
        d_idx = d_idx[np.argsort(-res.score[d_idx], kind="mergesort")]
        keep[d_idx[max_dets:]] = False
        d_idx = d_idx[:max_dets]
        g_idx = np.nonzero(g.ann_img == img)[0]
        iou = _iou_matrix(res.boxes[d_idx], gboxes[g_idx], gcrowd[g_idx])
        for j, d in enumerate(d_idx):
            same = g.ann_cat[g_idx] == res.cat[d]
            row = iou[j] if iou.size else np.zeros(len(g_idx))
            cand = np.nonzero(same & ~gcrowd[g_idx] & ~gt_taken[g_idx] & (row >= t_f))[0]
            if cand.size:
                best = cand[np.argmax(row[cand])]
                tp[d] = True
                gt_taken[g_idx[best]] = True
                continue
            if (same & gcrowd[g_idx] & (row >= t_f)).any():
                keep[d] = False  # absorbed by a crowd region: neither TP nor error
                continue
            s_row = np.where(same & ~gcrowd[g_idx], row, -1.0)
            o_row = np.where(~same & ~gcrowd[g_idx], row, -1.0)
            s, o = (s_row.max() if s_row.size else -1.0), (o_row.max() if o_row.size else -1.0)
            if s >= t_f:
                err[d] = "duplicate"
            elif o >= t_f:
                err[d], target[d] = "classification", g_idx[int(np.argmax(o_row))]
            elif s >= t_b:
                err[d], target[d] = "localisation", g_idx[int(np.argmax(s_row))]
            elif o >= t_b:
                err[d] = "both"
            else:
                err[d] = "background"
    explained = np.zeros(len(g.anns), bool)
    explained[target[(target >= 0) & keep]] = True
    missed = ~gt_taken & ~gcrowd & ~explained
    counts = {t: int(((err == t) & keep).sum()) for t in ERROR_TYPES[:5]}
    counts["missed"] = int(missed.sum())
    base = _ap50(res.cat, res.score, tp, keep, npos)
    d_ap = {}
    for t in ERROR_TYPES[:5]:
        tp_f, keep_f, cat_f = tp.copy(), keep.copy(), res.cat.copy()
        sel = np.nonzero((err == t) & keep)[0]
        if t in ("classification", "localisation"):
            taken = gt_taken.copy()
            for d in sel[np.argsort(-res.score[sel], kind="mergesort")]:
                gi = target[d]
                if taken[gi]:
                    keep_f[d] = False
                else:
                    taken[gi], tp_f[d], cat_f[d] = True, True, g.ann_cat[gi]
        else:
            keep_f[sel] = False
        d_ap[t] = _ap50(cat_f, res.score, tp_f, keep_f, npos) - base
    npos_f = npos - np.bincount(g.ann_cat[missed], minlength=k_n)
    d_ap["missed"] = _ap50(res.cat, res.score, tp, keep, npos_f) - base
    return {
        "AP50": base,
        "counts": counts,
        "dAP": d_ap,
        "num_detections": int(keep.sum()),
        "num_gt": int((~gcrowd).sum()),
    }


def format_errors(result: dict[str, Any]) -> str:
    """The breakdown as a small table (dAP in AP points)."""
    lines = [
        f"TIDE-style errors at IoU 0.5 (AP50 {100 * result['AP50']:.1f}, "
        f"{result['num_detections']} detections, {result['num_gt']} GT)",
        f"{'error':<16}{'count':>8}{'dAP50':>8}",
    ]
    for t in ERROR_TYPES:
        lines.append(f"{t:<16}{result['counts'][t]:>8d}{100 * result['dAP'][t]:>8.2f}")
    return "\n".join(lines)


def analyze(
    gt: str | Path | dict,
    detections: str | Path | list,
    *,
    plots_dir: str | Path | None = None,
    errors: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """One call: COCO bbox evaluation + per-class table + (optional) PR-curve PNGs + error breakdown."""
    from evaluation.coco import evaluate

    g = GroundTruth.from_dataset(gt, require=("area", "bbox"))
    dets = load_json(detections, "results")
    out = evaluate(g, dets, iou_type="bbox", device=device)
    rows, table = per_class_table(out["precision"], g.cat_names)
    result: dict[str, Any] = {"stats": out["stats"], "per_class": rows, "per_class_table": table}
    if plots_dir is not None:
        result["plots"] = [str(p) for p in plot_pr_curves(out["precision"], plots_dir)]
    if errors:
        result["errors"] = error_breakdown(g, dets)
    return result
