"""Cityscapes instance-level AP, equal to cityscapesscripts 2.3.0 ``evalInstanceLevelSemanticLabeling``.

Rules reproduced (no distance information: one minimum region size, 100 pixels):

* GT instances come from ``*_gtFine_instanceIds.png``: id >= 1000 is an instance of labelId ``id // 1000``,
  a smaller id is a group region of that labelId; only the 8 evaluated instance classes count;
* a prediction (binary mask, labelId, confidence) is intersected with every GT region of its class;
  ``overlap = inter / (gt + pred - inter)`` must be **strictly** above the threshold
  (``np.arange(0.5, 1.0, 0.05)``);
* a GT instance needs id >= 1000 and >= 100 pixels; several predictions above the threshold on one GT:
  the best score is the TP, the others are FPs with their scores;
* an unmatched prediction is an FP unless the share of its pixels on void labels, group regions and
  too-small instances (counted once per reason, as the official code does) exceeds the threshold;
* AP per (class, threshold): precision / recall at every distinct score plus an artificial (r=0, p=1)
  point, step-integrated with ``np.convolve`` / ``np.dot`` exactly as the official code; "AP" is the
  ``np.nanmean`` over classes x thresholds, "AP50" over classes at 0.5; a class with GT but no
  prediction gets 0, one with neither NaN.

Pixel counting (the cost) is one bincount per image over (prediction, GT region) pairs, in torch on CPU
or CUDA; the AP arithmetic runs in numpy with the official operations, so the results are the same bits.
Where the official script crashes (a class whose only predictions are all ignored) the AP here is 0.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.cityscapes import FRAME_RE, ID2LABEL, LABELS
from evaluation.png import png_header, read_png

INST_LABELS = [lb.name for lb in LABELS if lb.has_instances and not lb.ignore_in_eval]
INST_LABEL_IDS = [lb.id for lb in LABELS if lb.has_instances and not lb.ignore_in_eval]
VOID_IDS = [lb.id for lb in LABELS if lb.ignore_in_eval]
OVERLAPS = np.arange(0.5, 1.0, 0.05)
MIN_REGION_SIZE = 100


@dataclass
class FrameMatches:
    """One image: GT regions and predictions with their intersections (all counts Python ints).

    ``gt``: label name -> list of (instance id, pixel count), ascending id (every region of the class);
    ``pred``: label name -> list of (pixel count, confidence, void pixels, {gt instance id: intersection}).
    """

    gt: dict[str, list[tuple[int, int]]]
    pred: dict[str, list[tuple[int, float, int, dict[int, int]]]]


def label_of_instance(inst_id: int) -> int:
    return inst_id if inst_id < 1000 else inst_id // 1000


def match_frame(
    inst: torch.Tensor,
    masks: torch.Tensor,
    label_ids: Sequence[int],
    scores: Sequence[float],
    *,
    what: str = "frame",
) -> FrameMatches:
    """Counts of one frame.

    Args:
        inst: (H, W) GT instanceIds (any integer dtype, any device).
        masks: (N, H, W) bool prediction masks on the same device.
        label_ids: (N,) Cityscapes labelIds of the predictions; scores: (N,) confidences.
        what: names the frame in errors.
    """
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(inst.shape):
        raise ValueError(
            f"{what}: masks {tuple(masks.shape)} do not match the GT size {tuple(inst.shape)}"
        )
    if len(label_ids) != masks.shape[0] or len(scores) != masks.shape[0]:
        raise ValueError(
            f"{what}: {masks.shape[0]} masks, {len(label_ids)} labels, {len(scores)} scores"
        )
    flat = inst.reshape(-1).to(torch.int64)
    if flat.numel() and int(flat.min()) < 0:
        raise ValueError(f"{what}: negative instance id {int(flat.min())}")
    ids, inv, cnt = torch.unique(flat, return_inverse=True, return_counts=True)
    ids_l, cnt_l = ids.tolist(), cnt.tolist()
    for i in ids_l:
        if label_of_instance(i) not in ID2LABEL:
            raise ValueError(f"{what}: instance id {i} has unknown labelId {label_of_instance(i)}")
    gt: dict[str, list[tuple[int, int]]] = {n: [] for n in INST_LABELS}
    for i, c in zip(ids_l, cnt_l):
        name = ID2LABEL[label_of_instance(i)].name
        if name in gt:
            gt[name].append((i, c))
    n_u = len(ids_l)
    m = masks.reshape(masks.shape[0], -1).bool()
    nz = torch.nonzero(m)
    counts = torch.bincount(nz[:, 0] * n_u + inv[nz[:, 1]], minlength=masks.shape[0] * n_u)
    counts = counts.view(masks.shape[0], n_u).cpu().numpy()
    is_void = np.isin(np.asarray(ids_l, dtype=np.int64), VOID_IDS)
    pred: dict[str, list] = {n: [] for n in INST_LABELS}
    for k, (lid, conf) in enumerate(zip(label_ids, scores)):
        lid = int(lid)
        if lid not in ID2LABEL:
            raise ValueError(f"{what}: prediction #{k} has unknown labelId {lid}")
        name = ID2LABEL[lid].name
        if name not in pred:
            continue
        row = counts[k]
        size = int(row.sum())
        if size == 0:
            continue
        inter = {
            ids_l[u]: int(row[u])
            for u in np.nonzero(row)[0].tolist()
            if ID2LABEL[label_of_instance(ids_l[u])].name == name
        }
        pred[name].append((size, float(conf), int(row[is_void].sum()), inter))
    return FrameMatches(gt, pred)


def _events(frame: FrameMatches, name: str, th: float) -> tuple[list, list, int, bool, bool]:
    """(y_true, y_score, hard FNs, have GT, have predictions) of one frame, class and threshold."""
    gts = [(i, c) for i, c in frame.gt[name] if i >= 1000 and c >= MIN_REGION_SIZE]
    gt_size = dict(frame.gt[name])
    preds = frame.pred[name]
    y_true: list[float] = []
    y_score: list[float] = []
    hard_fn = 0
    for gid, gsize in gts:
        best = None
        for psize, conf, _void, inter in preds:
            i = inter.get(gid, 0)
            if i > 0 and float(i) / (gsize + psize - i) > th:
                if best is None:
                    best = conf
                else:  # a duplicate: the lower score is an FP
                    y_true.append(0.0)
                    y_score.append(min(best, conf))
                    best = max(best, conf)
        if best is None:
            hard_fn += 1
        else:
            y_true.append(1.0)
            y_score.append(best)
    for psize, conf, void, inter in preds:
        if any(float(i) / (gt_size[g] + psize - i) > th for g, i in inter.items()):
            continue
        ignore = void
        for g, i in inter.items():
            if g < 1000:
                ignore += i
            if gt_size[g] < MIN_REGION_SIZE:
                ignore += i
        if float(ignore) / psize <= th:
            y_true.append(0.0)
            y_score.append(conf)
    return y_true, y_score, hard_fn, bool(gts), bool(preds)


def _average_precision(y_true: np.ndarray, y_score: np.ndarray, hard_fn: int) -> float:
    """The official step integration of the precision / recall curve (same numpy operations)."""
    if y_score.size == 0:
        return 0.0
    order = np.argsort(y_score)
    s_sorted, t_sorted = y_score[order], y_true[order]
    cum = np.cumsum(t_sorted)
    _, first = np.unique(s_sorted, return_index=True)
    n_pr = len(first) + 1
    n_ex, n_true = len(s_sorted), cum[-1]
    precision, recall = np.zeros(n_pr), np.zeros(n_pr)
    cum = np.append(cum, 0)
    below = cum[first - 1]
    tp = n_true - below
    fp = n_ex - first - tp
    fn = below + hard_fn
    precision[:-1] = tp / (tp + fp)
    recall[:-1] = tp / (tp + fn)
    precision[-1], recall[-1] = 1.0, 0.0
    conv = np.append(np.append(recall[0], recall), 0.0)
    steps = np.convolve(conv, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, steps))


def ap_matrix(frames: Sequence[FrameMatches]) -> np.ndarray:
    """(1, 8, 10) AP per (class, overlap threshold), the official ``resultApMatrix``."""
    aps = np.zeros((1, len(INST_LABELS), len(OVERLAPS)), float)
    for oi, th in enumerate(OVERLAPS):
        for li, name in enumerate(INST_LABELS):
            yt: list[float] = []
            ys: list[float] = []
            hard, have_gt, have_pred = 0, False, False
            for fr in frames:
                t, s, h, g, p = _events(fr, name, th)
                yt += t
                ys += s
                hard += h
                have_gt |= g
                have_pred |= p
            if have_gt and have_pred:
                aps[0, li, oi] = _average_precision(np.array(yt), np.array(ys), hard)
            else:
                aps[0, li, oi] = 0.0 if have_gt else float("nan")
    return aps


def summarize(aps: np.ndarray) -> dict[str, Any]:
    """Official averages (``np.nanmean`` / ``np.average`` as ``computeAverages``) plus protocol keys."""
    o50 = np.where(np.isclose(OVERLAPS, 0.5))
    with np.errstate(all="ignore"), _quiet_nanmean():
        ap = float(np.nanmean(aps[0, :, :]))
        ap50 = float(np.nanmean(aps[0, :, o50]))
    per_class = {n: float(np.average(aps[0, i, :])) for i, n in enumerate(INST_LABELS)}
    per_class50 = {n: float(np.average(aps[0, i, o50])) for i, n in enumerate(INST_LABELS)}
    return {
        "AP": ap,
        "AP50": ap50,
        "per_class": per_class,
        "per_class_AP50": per_class50,
        "per_class_by_overlap": {n: aps[0, i].tolist() for i, n in enumerate(INST_LABELS)},
    }


class _quiet_nanmean:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def format_table(result: dict[str, Any]) -> str:
    """The official table: AP and AP_50% per class, then the average."""
    lines = [f"{'what':<15}{'AP':>15}{'AP_50%':>15}", "#" * 45]
    for n in INST_LABELS:
        lines.append(f"{n:<15}{result['per_class'][n]:>15.3f}{result['per_class_AP50'][n]:>15.3f}")
    lines.append("-" * 45)
    lines.append(f"{'average':<15}{result['AP']:>15.3f}{result['AP50']:>15.3f}")
    return "\n".join(lines)


def read_prediction_txt(txt: Path, what_root: Path) -> list[tuple[Path, int, float]]:
    """Lines ``relative/mask.png labelId confidence``; paths must stay inside ``what_root``."""
    out: dict[Path, tuple[int, float]] = {}
    root = what_root.resolve()
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        parts = line.split(" ")
        if line.strip() == "":
            continue
        if len(parts) != 3:
            raise ValueError(
                f"{txt}:{n}: expected 'relPathPrediction labelID confidence', got {line!r}"
            )
        if os.path.isabs(parts[0]):
            raise ValueError(f"{txt}:{n}: mask path {parts[0]!r} must be relative")
        path = (txt.parent / parts[0]).resolve()
        if os.path.commonpath([path, root]) != str(root):
            raise ValueError(f"{txt}:{n}: mask {parts[0]!r} points outside the prediction folder")
        try:
            out[path] = (int(float(parts[1])), float(parts[2]))
        except ValueError as e:
            raise ValueError(f"{txt}:{n}: bad labelID / confidence in {line!r}") from e
    return [(p, lid, conf) for p, (lid, conf) in out.items()]


def _mask(path: Path) -> np.ndarray:
    """The official ``np.array(Image.open(p).convert("L")) != 0`` (fast path for 8-bit grey PNGs)."""
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    _h, _w, depth, ctype = png_header(data, path)
    if ctype == 0 and depth == 8:  # grey: "L" conversion is the identity
        return read_png(path, data=data) != 0
    from PIL import Image  # palette / colour / 16-bit masks: Pillow's own conversion to "L"

    with Image.open(path) as im:
        return np.array(im.convert("L")) != 0


def find_instance_frames(gt_dir: str | Path, pred_dir: str | Path) -> list[tuple[Path, Path]]:
    """(GT instanceIds PNG, prediction txt) pairs: ``{city}_{seq}_{frame}*.txt`` anywhere under pred_dir."""
    gts = sorted(Path(gt_dir).rglob("*_gtFine_instanceIds.png"))
    if not gts:
        raise ValueError(f"no *_gtFine_instanceIds.png under {gt_dir}")
    txts = [Path(r) / f for r, _d, fs in os.walk(pred_dir) for f in fs if f.endswith(".txt")]
    out = []
    for g in gts:
        key = FRAME_RE.search(g.name).group(0)
        cand = [t for t in txts if fnmatch.fnmatch(t.name, f"{key}*.txt")]
        if len(cand) != 1:
            what = "no prediction txt" if not cand else f"{len(cand)} prediction txt files"
            raise ValueError(f"{what} for frame {key} (GT {g}) under {pred_dir}")
        out.append((g, cand[0]))
    return out


def evaluate_dirs(
    gt_dir: str | Path, pred_dir: str | Path, *, device: str | torch.device | None = None
) -> dict[str, Any]:
    """The whole job from files (official layout: per frame a txt of mask PNG / labelId / confidence)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    frames = []
    for g, txt in find_instance_frames(gt_dir, pred_dir):
        entries = read_prediction_txt(txt, Path(pred_dir))
        inst = torch.from_numpy(read_png(g).astype(np.int64)).to(dev)
        keep = [
            (p, lid, c)
            for p, lid, c in entries
            if lid in ID2LABEL and ID2LABEL[lid].name in INST_LABELS
        ]
        for _p, lid, _c in entries:
            if lid not in ID2LABEL:
                raise ValueError(f"{txt}: unknown labelId {lid}")
        if keep:
            masks = torch.from_numpy(np.stack([_mask(p) for p, _l, _c in keep])).to(dev)
        else:
            masks = torch.zeros((0, *inst.shape), dtype=torch.bool, device=dev)
        frames.append(
            match_frame(inst, masks, [k[1] for k in keep], [k[2] for k in keep], what=str(txt))
        )
    return summarize(ap_matrix(frames))


class CityscapesInstanceEvaluator:
    """Streaming instance AP (``reset / process / evaluate``).

    ``inputs[i]["instances"]``: (H, W) GT instanceIds (or ``inputs[i]["file_name"]`` of the instanceIds
    PNG); ``outputs[i]``: "masks" (N, H, W) bool / probabilities (>= 0.5), "scores" (N,), "labels" (N,)
    contiguous 0..7 over ``INST_LABEL_IDS`` (or Cityscapes labelIds with ``labels_are_label_ids=True``).
    ``evaluate()`` returns "AP", "AP50" (fractions) and "per_class".
    """

    def __init__(
        self, *, device: str | torch.device | None = None, labels_are_label_ids: bool = False
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.labels_are_label_ids = labels_are_label_ids
        self.reset()

    def reset(self) -> None:
        self._frames: list[FrameMatches] = []

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"process(): {len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            what = str(inp.get("file_name", f"frame #{len(self._frames)}"))
            inst = inp["instances"] if "instances" in inp else read_png(inp["file_name"])
            inst = torch.as_tensor(np.asarray(inst) if not torch.is_tensor(inst) else inst).to(
                self.device
            )
            masks = torch.as_tensor(out["masks"]).to(self.device)
            if masks.ndim == 4:
                masks = masks[:, 0]
            masks = masks if masks.dtype == torch.bool else masks >= 0.5
            labels = torch.as_tensor(out["labels"]).tolist()
            if not self.labels_are_label_ids:
                bad = [x for x in labels if not 0 <= int(x) < len(INST_LABEL_IDS)]
                if bad:
                    raise ValueError(
                        f"{what}: labels {bad[:5]} outside 0..{len(INST_LABEL_IDS) - 1}"
                    )
                labels = [INST_LABEL_IDS[int(x)] for x in labels]
            scores = torch.as_tensor(out["scores"]).double().tolist()
            self._frames.append(match_frame(inst, masks, labels, scores, what=what))

    def evaluate(self) -> dict[str, Any]:
        from evaluation.dist import gather_on_main

        parts = gather_on_main(self._frames)
        if parts is None:
            return {}
        return summarize(ap_matrix([f for p in parts for f in p]))
