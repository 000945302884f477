"""Cityscapes pixel-level semantic labeling metrics, equal to cityscapesscripts 2.3.0.

Reproduces ``evalPixelLevelSemanticLabeling``: a 34x34 labelId confusion matrix, class IoU (FP only over
non-ignored GT rows, NaN when the denominator is 0), instance-weighted iIoU with the official average class
sizes, category IoU / iIoU, and ``getScoreAverage`` (left-to-right sum over non-NaN scores). Counting runs
in torch (bincount) on any device; the few float sums that must follow the official order run on the host.

Predictions may hold labelIds (the official format) or trainIds (mapped to labelIds; 255 -> unlabeled).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation import pixel_counts
from evaluation.devices import resolve_device, single_thread_on_cpu
from evaluation.dist import gather_on_main
from evaluation.png import read_png
from evaluation.protocol import check_batch, require_key
from evaluation.semseg import sequential_nanmean

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CsLabel:
    name: str
    id: int
    train_id: int
    category: str
    has_instances: bool
    ignore_in_eval: bool


_L = CsLabel
LABELS: tuple[CsLabel, ...] = (
    _L("unlabeled", 0, 255, "void", False, True),
    _L("ego vehicle", 1, 255, "void", False, True),
    _L("rectification border", 2, 255, "void", False, True),
    _L("out of roi", 3, 255, "void", False, True),
    _L("static", 4, 255, "void", False, True),
    _L("dynamic", 5, 255, "void", False, True),
    _L("ground", 6, 255, "void", False, True),
    _L("road", 7, 0, "flat", False, False),
    _L("sidewalk", 8, 1, "flat", False, False),
    _L("parking", 9, 255, "flat", False, True),
    _L("rail track", 10, 255, "flat", False, True),
    _L("building", 11, 2, "construction", False, False),
    _L("wall", 12, 3, "construction", False, False),
    _L("fence", 13, 4, "construction", False, False),
    _L("guard rail", 14, 255, "construction", False, True),
    _L("bridge", 15, 255, "construction", False, True),
    _L("tunnel", 16, 255, "construction", False, True),
    _L("pole", 17, 5, "object", False, False),
    _L("polegroup", 18, 255, "object", False, True),
    _L("traffic light", 19, 6, "object", False, False),
    _L("traffic sign", 20, 7, "object", False, False),
    _L("vegetation", 21, 8, "nature", False, False),
    _L("terrain", 22, 9, "nature", False, False),
    _L("sky", 23, 10, "sky", False, False),
    _L("person", 24, 11, "human", True, False),
    _L("rider", 25, 12, "human", True, False),
    _L("car", 26, 13, "vehicle", True, False),
    _L("truck", 27, 14, "vehicle", True, False),
    _L("bus", 28, 15, "vehicle", True, False),
    _L("caravan", 29, 255, "vehicle", True, True),
    _L("trailer", 30, 255, "vehicle", True, True),
    _L("train", 31, 16, "vehicle", True, False),
    _L("motorcycle", 32, 17, "vehicle", True, False),
    _L("bicycle", 33, 18, "vehicle", True, False),
    _L("license plate", -1, -1, "vehicle", False, True),
)
AVG_CLASS_SIZE = {  # cityscapesScripts' average instance sizes (pixels) for iIoU weights
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}
NUM_IDS = 34  # labelIds 0..33 (license plate, id -1, is never drawn)
ID2LABEL = {lb.id: lb for lb in LABELS if lb.id >= 0}
EVAL_IDS = [lb.id for lb in LABELS if lb.id >= 0 and not lb.ignore_in_eval]  # the 19 classes
CATEGORIES = list(dict.fromkeys(lb.category for lb in LABELS))
# categories whose labels (id >= 0) all have instances -> category iIoU (human, vehicle)
INST_CATEGORIES = {
    c: [lb.id for lb in LABELS if lb.category == c and lb.id >= 0]
    for c in CATEGORIES
    if all(lb.has_instances for lb in LABELS if lb.category == c and lb.id >= 0)
}
TRAIN_TO_LABEL = np.zeros(
    256, dtype=np.int64
)  # trainId -> labelId; 255 and unknown -> 0 (unlabeled)
for _lb in LABELS:
    if 0 <= _lb.train_id < 255:
        TRAIN_TO_LABEL[_lb.train_id] = _lb.id
TRAIN_TO_LABEL_U8 = TRAIN_TO_LABEL.astype(np.uint8)  # (labelIds fit a byte: the fast counting path)
FRAME_RE = re.compile(r"([a-z_]+)_(\d{6})_(\d{6})")


def _inst_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(34,) category index per labelId (-1: none) and (C, 34) bool labelId membership of INST_CATEGORIES."""
    cats = list(INST_CATEGORIES)
    cat_of = torch.full((NUM_IDS,), -1, dtype=torch.long)
    member = torch.zeros((max(len(cats), 1), NUM_IDS), dtype=torch.bool)
    for ci, c in enumerate(cats):
        member[ci, INST_CATEGORIES[c]] = True
        for i in INST_CATEGORIES[c]:
            cat_of[i] = ci
    return cat_of.to(device), member.to(device)


def _check_range(x: torch.Tensor, lo: int, hi: int, what: str) -> torch.Tensor:
    """``x`` as an integer tensor after checking its values lie in lo..hi (floats must be whole numbers:
    fractional labels are refused, never truncated). ``what`` starts with the frame / file name."""
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{what}: holds NaN or infinity (labels must be whole numbers)")
        frac = x != torch.round(x)
        if bool(frac.any()):
            v = float(x[frac].reshape(-1)[0])
            raise ValueError(
                f"{what}: holds fractional labels (e.g. {v!r}); pass integer label maps, not scores"
            )
        x = x.to(torch.int64)
    elif x.dtype in (torch.uint16, torch.uint32, torch.bool):  # aminmax has no kernel for these
        x = x.to(torch.int32)
    mn, mx = torch.aminmax(x)
    if int(mn) < lo or int(mx) > hi:
        raise ValueError(f"{what}: value {int(mx) if int(mx) > hi else int(mn)} outside {lo}..{hi}")
    return x


def frame_stats(
    pred: torch.Tensor, gt: torch.Tensor, inst: torch.Tensor | None, name: str = "frame"
):
    """Counts of one frame (all labelIds, same shape (H, W), on any device; CPU tensors take a numpy path
    with 16-bit codes, several times faster, same integers).

    Returns:
        (confusion (34, 34) int64, instance stats (n, 4) int64 rows [labelId, size, tp, category tp] for the
        non-ignored instances in ascending instance-id order, or None without an instance map).
    """
    if pred.shape != gt.shape:
        raise ValueError(
            f"{name}: prediction size {tuple(pred.shape)} != GT size {tuple(gt.shape)}"
        )
    if inst is not None and inst.shape != gt.shape:
        raise ValueError(
            f"{name}: instance map size {tuple(inst.shape)} != GT size {tuple(gt.shape)}"
        )
    if pred.device.type == "cpu" and gt.device.type == "cpu":
        arrs = (pred.numpy(), gt.numpy(), None if inst is None else inst.cpu().numpy())
        if pixel_counts.count_frame is not None and all(
            a is None or a.dtype.kind in "iu" for a in arrs
        ):
            status, conf, ids, hist = pixel_counts.count_frame(*arrs)
            if status == 0:  # otherwise the checks below raise the named error
                rows = None
                if inst is not None:
                    rows = _instance_rows(torch.from_numpy(hist), 1001, torch.from_numpy(ids))
                return torch.from_numpy(conf), rows
        return _frame_stats_cpu(
            _check_host(pred.numpy(), NUM_IDS - 1, f"{name}: prediction outside labelIds 0..33"),
            _check_host(gt.numpy(), NUM_IDS - 1, f"{name}: GT holds an unknown labelId"),
            None
            if inst is None
            else _check_host(inst.cpu().numpy(), 2**31 - 1, f"{name}: instance map"),
            name,
        )
    return _frame_stats_torch(pred, gt, inst, name)


def _frame_stats_torch(pred: torch.Tensor, gt: torch.Tensor, inst: torch.Tensor | None, name: str):
    """:func:`frame_stats` in torch ops on the tensors' device (the CUDA path; same integers)."""
    gt = _check_range(gt, 0, NUM_IDS - 1, f"{name}: GT holds an unknown labelId")
    pred = _check_range(pred, 0, NUM_IDS - 1, f"{name}: prediction outside labelIds 0..33")
    if inst is not None:
        inst = _check_range(inst, 0, 2**31 - 1, f"{name}: instance map")
    # int32 codes built in place: several times faster than int64 arithmetic
    p = pred.reshape(-1).to(torch.int32)
    code = gt.reshape(-1).to(torch.int32, copy=True).mul_(NUM_IDS).add_(p)
    conf = torch.bincount(code, minlength=NUM_IDS * NUM_IDS).view(NUM_IDS, NUM_IDS)
    if inst is None:
        return conf, None
    code = inst.reshape(-1).to(torch.int32, copy=True)  # (PNG instance maps are uint16)
    n_ids = int(code.max()) + 1
    if n_ids <= 1001:
        return conf, torch.zeros((0, 4), dtype=torch.long)
    if n_ids > NUM_IDS * 1000:
        raise ValueError(f"{name}: instance id {n_ids - 1} has unknown labelId")
    code.mul_(NUM_IDS).add_(p)
    hist = torch.bincount(code, minlength=n_ids * NUM_IDS).view(n_ids, NUM_IDS)[1001:]
    return conf, _instance_rows(hist, first_id=1001)


def _check_host(x: np.ndarray, hi: int, what: str) -> np.ndarray:
    """:func:`_check_range` (lower bound 0) for host arrays, with numpy reductions (no dtype copies for
    the uint8 / uint16 maps PNGs decode to)."""
    if x.dtype.kind in "ub" and x.dtype.itemsize <= 2:
        if x.size and int(x.max()) > hi:
            raise ValueError(f"{what}: value {int(x.max())} outside 0..{hi}")
        return x
    return _check_range(torch.from_numpy(np.ascontiguousarray(x)), 0, hi, what).numpy()


def _instance_rows(
    hist: torch.Tensor, first_id: int, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, 4) CPU rows [labelId, size, tp, category tp] from an instance x prediction histogram (rows x 34)
    whose row r is instance id ``first_id + r`` (or ``ids[r]`` when given); absent and ignored-class
    instances dropped, ascending instance id."""
    dev = hist.device
    if ids is None:
        ids = torch.nonzero(hist.sum(1)).squeeze(1) + first_id
        pos = ids - first_id
    else:
        pos = torch.arange(ids.numel(), device=dev)
    label = ids // 1000
    ignored = torch.tensor([ID2LABEL[i].ignore_in_eval for i in range(NUM_IDS)], device=dev)
    keep = ~ignored[label]
    label, pos = label[keep], pos[keep]
    rows = hist[pos].long()
    cat_of, member = _inst_tables(dev)
    tp = rows.gather(1, label[:, None]).squeeze(1)
    cat_idx = cat_of[label]
    cat_tp = (rows * member[cat_idx.clamp(min=0)]).sum(1)
    cat_tp = torch.where(cat_idx >= 0, cat_tp, 0)
    return torch.stack([label, rows.sum(1), tp, cat_tp], 1).cpu()


def _frame_stats_cpu(pred: np.ndarray, gt: np.ndarray, inst: np.ndarray | None, name: str):
    """:func:`frame_stats` on checked host arrays: uint16 codes, and the instance histogram only over
    instance pixels (id > 1000). numpy ufuncs and torch.bincount release the GIL (decode threads overlap)."""
    code = np.multiply(gt, NUM_IDS, dtype=np.uint16)
    np.add(code, pred, out=code, dtype=np.uint16, casting="unsafe")
    flat = torch.from_numpy(code.reshape(-1).view(np.int16))
    conf = torch.bincount(flat, minlength=NUM_IDS * NUM_IDS).view(NUM_IDS, NUM_IDS)
    if inst is None:
        return conf, None
    m = inst > 1000
    ii = inst[m]
    if ii.size == 0:
        return conf, torch.zeros((0, 4), dtype=torch.long)
    top = int(ii.max())
    if top >= NUM_IDS * 1000:
        raise ValueError(f"{name}: instance id {top} has unknown labelId")
    icode = np.subtract(ii, 1001, dtype=np.int32)
    icode *= NUM_IDS
    icode += pred[m]
    hist = torch.bincount(torch.from_numpy(icode), minlength=(top - 1000) * NUM_IDS)
    return conf, _instance_rows(hist.view(-1, NUM_IDS), first_id=1001)


def _label_iou(conf: np.ndarray, ids: Sequence[int], fp_rows: Sequence[int], cols: Sequence[int]):
    """tp, fn, fp as int64 for a set of labelIds (cityscapesScripts' class / category definitions)."""
    tp = np.longlong(conf[np.ix_(ids, ids)].sum())
    fn = np.longlong(conf[ids, :].sum()) - tp
    fp = np.longlong(conf[np.ix_(fp_rows, cols)].sum())
    return tp, fn, fp


def scores_from_counts(conf: np.ndarray, inst_rows: np.ndarray) -> dict[str, Any]:
    """Official result dict from the summed confusion and the ordered instance rows."""
    ids = list(range(NUM_IDS))
    not_ign = [i for i in ids if not ID2LABEL[i].ignore_in_eval]
    class_scores, class_inst = {}, {}
    weighted = _weighted_instance_sums(inst_rows)
    for i in ids:
        lb = ID2LABEL[i]
        if lb.ignore_in_eval:
            class_scores[lb.name] = class_inst[lb.name] = float("nan")
            continue
        tp, fn, fp = _label_iou(conf, [i], [j for j in not_ign if j != i], [i])
        denom = tp + fp + fn
        class_scores[lb.name] = float(tp) / denom if denom != 0 else float("nan")
        if lb.has_instances:
            tpw, fnw = weighted["classes"].get(i, (0.0, 0.0))
            d = tpw + fp + fnw
            class_inst[lb.name] = float(float(tpw) / d) if d != 0 else float("nan")
        else:
            class_inst[lb.name] = float("nan")
    cat_scores, cat_inst = {}, {}
    for c in CATEGORIES:
        lids = [lb.id for lb in LABELS if lb.category == c and not lb.ignore_in_eval and lb.id >= 0]
        rows = [j for j in not_ign if ID2LABEL[j].category != c]
        if lids:
            tp, fn, fp = _label_iou(conf, lids, rows, lids)
            denom = tp + fp + fn
            cat_scores[c] = float(tp) / denom if denom != 0 else float("nan")
        else:
            cat_scores[c] = float("nan")
        if c in INST_CATEGORIES:
            cl = INST_CATEGORIES[c]
            fp = np.longlong(conf[np.ix_(rows, cl)].sum())
            tpw, fnw = weighted["categories"].get(c, (0.0, 0.0))
            d = tpw + fp + fnw
            cat_inst[c] = float(float(tpw) / d) if d != 0 else float("nan")
        else:
            cat_inst[c] = float("nan")
    return {
        "classScores": {k: float(v) for k, v in class_scores.items()},
        "classInstScores": class_inst,
        "categoryScores": {k: float(v) for k, v in cat_scores.items()},
        "categoryInstScores": cat_inst,
        "averageScoreClasses": sequential_nanmean([float(v) for v in class_scores.values()]),
        "averageScoreInstClasses": sequential_nanmean(list(class_inst.values())),
        "averageScoreCategories": sequential_nanmean([float(v) for v in cat_scores.values()]),
        "averageScoreInstCategories": sequential_nanmean(list(cat_inst.values())),
        "confMatrix": conf.tolist(),
    }


def _weighted_instance_sums(rows: np.ndarray) -> dict[str, dict]:
    """Sequential float sums of tp*w and fn*w (w = avgClassSize / size) in instance order, per class and
    per category (np.cumsum is a left fold, like the official ``+=``)."""
    out: dict[str, dict] = {"classes": {}, "categories": {}}
    if rows.size == 0:
        return out
    label, size, tp, cat_tp = (rows[:, i] for i in range(4))
    avg = np.array([AVG_CLASS_SIZE.get(ID2LABEL[i].name, np.nan) for i in range(NUM_IDS)])
    weight = avg[label] / size.astype(np.float64)
    tpw, fnw = tp.astype(np.float64) * weight, (size - tp).astype(np.float64) * weight
    ctpw, cfnw = cat_tp.astype(np.float64) * weight, (size - cat_tp).astype(np.float64) * weight
    for lid in np.unique(label).tolist():
        m = label == lid
        out["classes"][lid] = (float(np.cumsum(tpw[m])[-1]), float(np.cumsum(fnw[m])[-1]))
    for c, lids in INST_CATEGORIES.items():
        m = np.isin(label, lids)
        if m.any():
            out["categories"][c] = (float(np.cumsum(ctpw[m])[-1]), float(np.cumsum(cfnw[m])[-1]))
    return out


class CityscapesEvaluator:
    """Streaming Cityscapes evaluator: process frames in order, evaluate once (gathers ranks in rank order).

    Args:
        pred_ids: "label" (labelIds 0..33, the official format) or "train" (trainIds 0..18, 255 = void).
        device: where the bincounts run (default: CUDA when available).
    """

    def __init__(
        self, *, pred_ids: str = "label", device: str | torch.device | None = None
    ) -> None:
        if pred_ids not in ("label", "train"):
            raise ValueError(
                f"CityscapesEvaluator: pred_ids must be 'label' or 'train', got {pred_ids!r}"
            )
        self.pred_ids = pred_ids
        self.device = resolve_device(device)
        self._lut = torch.as_tensor(TRAIN_TO_LABEL, device=self.device)
        self.reset()

    def reset(self) -> None:
        self._conf = torch.zeros((NUM_IDS, NUM_IDS), dtype=torch.long, device=self.device)
        self._inst: list[torch.Tensor] = []
        self.num_frames = 0

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        """Add one batch (:mod:`evaluation.protocol`): ``inputs[i]["sem_seg"]`` labelIds GT (H, W), optional
        ``"instances"`` instanceIds (H, W) and ``"file_name"``; ``outputs[i]["sem_seg"]`` (H, W) labelIds or
        trainIds (per ``pred_ids``), or (C, H, W) scores (argmax over C)."""
        check_batch(inputs, outputs, "CityscapesEvaluator")
        for inp, out in zip(inputs, outputs):
            name = inp.get("file_name") or f"frame #{self.num_frames}"
            gt = require_key(inp, "sem_seg", "CityscapesEvaluator", f"input {name}")
            pred = require_key(out, "sem_seg", "CityscapesEvaluator", f"output {name}")
            if pred.ndim == 3:
                pred = torch.as_tensor(pred).argmax(0)
            self.process_frame(pred, gt, inp.get("instances"), name=str(name))

    def process_frame(
        self, pred: Any, gt: Any, instances: Any = None, name: str | None = None
    ) -> None:
        """Add one frame: ``pred`` (H, W), ``gt`` labelIds (H, W), ``instances`` instanceIds (H, W) or None."""
        name = name or f"frame #{self.num_frames}"

        def to(x: Any) -> torch.Tensor:
            return (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).to(
                self.device
            )

        p = to(pred)
        if self.pred_ids == "train":
            p = self._lut[_check_range(p, 0, 255, f"{name}: trainId prediction").long()]
        with single_thread_on_cpu(self.device):
            conf, rows = frame_stats(p, to(gt), None if instances is None else to(instances), name)
        self._conf += conf
        if rows is not None:
            self._inst.append(rows)
        self.num_frames += 1

    def official(self) -> dict[str, Any]:
        """cityscapesScripts' result dict (camelCase keys; rank 0; {} on other ranks)."""
        parts = gather_on_main((self._conf.cpu(), self._inst))
        if parts is None:
            return {}
        conf = sum(p[0] for p in parts).numpy().astype(np.uint64).astype(np.int64)
        rows = [r for p in parts for r in p[1]]
        inst = torch.cat(rows).numpy() if rows else np.zeros((0, 4), np.int64)
        return scores_from_counts(conf, inst)

    def evaluate(self) -> dict[str, Any]:
        """The protocol result (:func:`to_result` of :meth:`official`; rank 0; {} on other ranks)."""
        out = self.official()
        return to_result(out) if out else {}


def to_result(official: dict[str, Any]) -> dict[str, Any]:
    """cityscapesScripts' dict -> the protocol result: "mIoU", "iIoU" (class averages), "mIoU_category",
    "iIoU_category", "per_class" / "per_class_iIoU" (the 19 evaluated classes) and "per_category" /
    "per_category_iIoU" (void left out), all fractions (NaN where cityscapesScripts gives NaN)."""
    classes = [lb.name for _i, lb in sorted(ID2LABEL.items()) if not lb.ignore_in_eval]
    cats = [c for c in official["categoryScores"] if c != "void"]
    return {
        "mIoU": official["averageScoreClasses"],
        "iIoU": official["averageScoreInstClasses"],
        "mIoU_category": official["averageScoreCategories"],
        "iIoU_category": official["averageScoreInstCategories"],
        "per_class": {c: official["classScores"][c] for c in classes},
        "per_class_iIoU": {c: official["classInstScores"][c] for c in classes},
        "per_category": {c: official["categoryScores"][c] for c in cats},
        "per_category_iIoU": {c: official["categoryInstScores"][c] for c in cats},
    }


def format_table(result: dict[str, Any]) -> str:
    """cityscapesScripts' class and category tables (IoU, nIoU) of a :func:`to_result` result."""
    rule = "--------------------------------"
    lines = ["classes          IoU      nIoU", rule]
    for c, v in result["per_class"].items():
        lines.append(f"{c:<14}: {v:>5.3f}    {result['per_class_iIoU'][c]:>5.3f}")
    lines += [rule, f"Score Average : {result['mIoU']:5.3f}    {result['iIoU']:5.3f}", ""]
    lines += ["categories       IoU      nIoU", rule]
    for c, v in result["per_category"].items():
        lines.append(f"{c:<14}: {v:>5.3f}    {result['per_category_iIoU'][c]:>5.3f}")
    lines += [
        rule,
        f"Score Average : {result['mIoU_category']:5.3f}    {result['iIoU_category']:5.3f}",
    ]
    return "\n".join(lines)


def find_frames(gt_dir: str | Path, pred_dir: str | Path) -> list[tuple[Path, Path, Path]]:
    """(prediction, GT labelIds, GT instanceIds) per frame, matched by ``city_seq_frame`` (sorted by GT path)."""
    gts = sorted(Path(gt_dir).rglob("*_gtFine_labelIds.png"))
    if not gts:
        raise ValueError(f"no *_gtFine_labelIds.png under {gt_dir}")
    preds: dict[str, list[Path]] = {}
    for p in Path(pred_dir).rglob("*.png"):
        m = FRAME_RE.search(p.name)
        if m:
            preds.setdefault(m.group(0), []).append(p)
    out = []
    for g in gts:
        key = FRAME_RE.search(g.name).group(0)
        cand = preds.get(key, [])
        if len(cand) != 1:
            what = "no prediction PNG" if not cand else f"{len(cand)} prediction PNGs"
            raise ValueError(f"{what} for frame {key} (GT {g}) in {pred_dir}")
        out.append((cand[0], g, g.with_name(g.name.replace("labelIds", "instanceIds"))))
    return out


def _prefetch(pool: ThreadPoolExecutor, fn, items: Sequence, depth: int):
    """Yield (item, fn(item)) in order with at most ``depth`` decodes in flight (bounded memory)."""
    it = iter(items)
    queue: deque = deque()
    for x in islice(it, depth):
        queue.append((x, pool.submit(fn, x)))
    while queue:
        x, fut = queue.popleft()
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(fn, nxt)))
        yield x, fut.result()


def evaluate_dirs(
    gt_dir: str | Path,
    pred_dir: str | Path,
    *,
    pred_ids: str = "label",
    workers: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    decoder: str | None = None,
) -> dict[str, Any]:
    """The whole job from PNG files: frames matched by ``city_seq_frame`` and evaluated in GT-path order.

    PNGs are decoded by ``workers`` threads (:func:`evaluation.png.read_png`: torchvision by default,
    measured fastest on the whole job, arrays identical to Pillow's). On the CPU each thread also
    counts its frame (the numba one-pass kernel of :mod:`evaluation.pixel_counts` when numba is
    installed, else numpy ufuncs + torch.bincount; all release the GIL), so decoding and counting overlap
    on all cores; on CUDA the main thread counts on the device while the threads decode ahead.

    Args:
        decoder: "auto", "spng", "cv2", "torchvision" or "pil" (all give equal arrays).
    Raises:
        ValueError naming the file for a missing, truncated or corrupt PNG or an out-of-range label.
    """
    from tqdm import tqdm

    frames = find_frames(gt_dir, pred_dir)
    ev = CityscapesEvaluator(pred_ids=pred_ids, device=device)

    def load(f: tuple[Path, Path, Path]):
        inst = read_png(f[2], decoder=decoder) if f[2].is_file() else None
        pred = read_png(f[0], decoder=decoder)
        if pred.ndim != 2:
            raise ValueError(
                f"{f[0]}: prediction has {pred.shape[2]} channels, expected a single-channel PNG"
            )
        return pred, read_png(f[1], decoder=decoder), inst

    on_cpu = ev.device.type == "cpu"

    def load_and_count(f: tuple[Path, Path, Path]):
        p, g, i = load(f)
        if pred_ids == "train":
            what = f"{f[0]}: trainId prediction"
            p = TRAIN_TO_LABEL_U8[_check_range(torch.from_numpy(p), 0, 255, what).numpy()]
        return frame_stats(
            torch.from_numpy(p),
            torch.from_numpy(g),
            None if i is None else torch.from_numpy(i),
            str(f[0]),
        )

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, single_thread_on_cpu(ev.device):
        if on_cpu:
            conf = torch.zeros((NUM_IDS, NUM_IDS), dtype=torch.long)
            rows = []
            done = _prefetch(pool, load_and_count, frames, depth=2 * workers)
            for _f, (c, r) in tqdm(
                done, total=len(frames), disable=not progress, desc="cityscapes"
            ):
                conf += c
                if r is not None:
                    rows.append(r)
            inst = torch.cat(rows).numpy() if rows else np.zeros((0, 4), np.int64)
            return scores_from_counts(conf.numpy(), inst)
        loaded = _prefetch(pool, load, frames, depth=2 * workers)
        for f, (p, g, i) in tqdm(
            loaded, total=len(frames), disable=not progress, desc="cityscapes"
        ):
            ev.process_frame(p, g, i, name=str(f[0]))
    return ev.official()
