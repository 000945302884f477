"""COCO-style matching and accumulation: the entry point :func:`run` and its torch path (CUDA).

:func:`run` sends CPU tables to the compiled loops of :mod:`evaluation.matching_cpu` and runs the torch
path below on CUDA (or on the CPU with ``kernel="torch"``, which the tests compare with the official tools
too). It serves :mod:`evaluation.coco`, :mod:`evaluation.lvis` and :mod:`evaluation.keypoints`. The torch
path reproduces
pycocotools 2.0.11 ``COCOeval.evaluate()`` + ``accumulate()`` (and lvis-api 0.5.3 ``LVISEval``) cell for
cell, without a Python loop over (image, category) pairs:

* detections are sorted once by ``(cell, -score, input order)`` with stable sorts (cell = image x category);
* IoUs are computed for the (detection, GT) pairs of cells that hold both;
* the greedy matcher runs one detection rank at a time for *all* cells, area ranges and IoU thresholds at
  once (cells bucketed by GT count to limit padding);
* accumulation works on the TP events of each (threshold, category) segment: precision at a recall
  threshold is a suffix maximum over those events, which is exactly pycocotools' right-to-left envelope
  followed by ``searchsorted(side='left')``.

All floating point work is float64 in the operation order of the official code, so the precision / recall /
scores arrays are equal to the official ones byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from evaluation.devices import single_thread_on_cpu

try:  # the compiled CPU kernel needs numba; without it the torch path serves the CPU too
    import numba  # noqa: F401

    NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a bare install working
    NUMBA = False

EPS = float(np.spacing(1))  # pycocotools adds np.spacing(1) to the precision denominator

# IoU function: (det_index, gt_index) -> float64 IoU per pair (crowd handled by the callee).
PairIoU = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def coco_iou_thrs() -> np.ndarray:
    """The ten IoU thresholds exactly as pycocotools builds them (np.linspace, not torch.linspace)."""
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def coco_rec_thrs() -> np.ndarray:
    """The 101 recall thresholds exactly as pycocotools builds them."""
    return np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


AREA_RANGES = np.array(
    [[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64
)
AREA_LABELS = ("all", "small", "medium", "large")


@dataclass
class GtTable:
    """Ground-truth annotations, one entry per annotation, in annotation-file order.

    Attributes:
        img: (G,) int64 image rank in the sorted image-id list.
        cat: (G,) int64 category rank in the sorted category-id list (0 everywhere when use_cats=False).
        area: (G,) float64 annotation ``area`` field.
        ignore: (G,) bool base ignore flag (COCO: iscrowd; LVIS: the ``ignore`` field).
        crowd: (G,) bool crowd flag: IoA denominator and may absorb several detections.
        id_nonzero: (G,) bool ``id != 0`` (pycocotools stores match ids, so id 0 never counts as matched).
    """

    img: torch.Tensor
    cat: torch.Tensor
    area: torch.Tensor
    ignore: torch.Tensor
    crowd: torch.Tensor
    id_nonzero: torch.Tensor

    def subset(self, idx: torch.Tensor) -> GtTable:
        """Rows ``idx`` (in that order)."""
        return GtTable(*(getattr(self, f.name)[idx] for f in fields(self)))


@dataclass
class DtTable:
    """Detections in result-file order (the order breaks score ties).

    Attributes:
        img, cat: (N,) int64 image / category ranks.
        score: (N,) float64 scores (finite).
        area: (N,) float64 detection area as the official loader computes it.
        ignore_unmatched: (N,) bool or None; LVIS not-exhaustive flag: unmatched detections are ignored.
    """

    img: torch.Tensor
    cat: torch.Tensor
    score: torch.Tensor
    area: torch.Tensor
    ignore_unmatched: torch.Tensor | None = None

    def subset(self, idx: torch.Tensor) -> DtTable:
        """Rows ``idx`` (in that order)."""
        return DtTable(
            *(None if (v := getattr(self, f.name)) is None else v[idx] for f in fields(self))
        )


@dataclass
class EvalResult:
    """precision (T,R,K,A,M), recall (T,K,A,M), scores (T,R,K,A,M) as float64 numpy arrays."""

    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray


def _segment_starts(sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a sorted key vector return (segment id per element, rank within its segment)."""
    n = sorted_keys.numel()
    is_start = torch.ones(n, dtype=torch.bool, device=sorted_keys.device)
    if n > 1:
        is_start[1:] = sorted_keys[1:] != sorted_keys[:-1]
    seg = torch.cumsum(is_start.long(), 0) - 1
    starts = torch.nonzero(is_start).squeeze(1)
    rank = torch.arange(n, device=sorted_keys.device) - starts[seg]
    return seg, rank


def sort_detections(dt: DtTable, num_cats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order detections by (image, category, -score, input order).

    Returns:
        (order, rank): ``order`` indexes the detection table; ``rank`` is the 0-based position of each
        ordered detection inside its (image, category) cell.
    """
    order = torch.sort(dt.score, descending=True, stable=True).indices
    cell = dt.img[order] * num_cats + dt.cat[order]
    by_cell = torch.sort(cell, stable=True).indices
    order = order[by_cell]
    _, rank = _segment_starts(cell[by_cell])
    return order, rank


def _gt_ignore_per_area(gt: GtTable, area_rngs: torch.Tensor) -> torch.Tensor:
    """(A, G) bool: ignore flag of every GT for every area range (bounds inclusive)."""
    lo, hi = area_rngs[:, 0:1], area_rngs[:, 1:2]
    return gt.ignore[None, :] | (gt.area[None, :] < lo) | (gt.area[None, :] > hi)


def _greedy_match_bucket(
    iou: torch.Tensor,
    n_active: list[int],
    ign: torch.Tensor,
    crowd: torch.Tensor,
    thrs: torch.Tensor,
) -> torch.Tensor:
    """Run pycocotools' greedy matcher for a batch of cells.

    Args:
        iou: (C, J, G) float64 IoU of the J candidate detections (score order) with the G GTs (file order)
            of C cells, -1 for padding. Cells are sorted by their number of candidates, descending.
        n_active: n_active[j] = number of cells having a j-th candidate.
        ign: (C, A, G) bool GT ignore flag per area range.
        crowd: (C, G) bool.
        thrs: (T,) float64 effective thresholds ``min(t, 1 - 1e-10)``.

    Returns:
        (C, J, A, T) int64 index of the matched GT inside the cell, -1 when unmatched.
    """
    c, j_max, g = iou.shape
    a, t = ign.shape[1], thrs.numel()
    dev = iou.device
    matched = torch.zeros((c, a, t, g), dtype=torch.bool, device=dev)
    out = torch.full((c, j_max, a, t), -1, dtype=torch.long, device=dev)
    # Preference key: non-ignored GTs beat ignored ones, then larger IoU. The IoU's float64 bit pattern is
    # monotonic for non-negative values and < 2**62, so bit 62 can carry the "non-ignored" preference.
    pref = (~ign).long() << 62  # (C, A, G)
    gpos = torch.arange(g, device=dev)
    free_crowd = crowd[:, None, None, :]
    for j in range(j_max):
        n = n_active[j]
        row = iou[:n, j]  # (n, G)
        elig = (row[:, None, :] >= thrs[None, :, None])[:, None]  # (n, 1, T, G)
        elig = elig & (~matched[:n] | free_crowd[:n])  # (n, A, T, G)
        key = row.view(torch.int64)[:, None, None, :] | pref[:n, :, None, :]
        key = torch.where(elig, key, torch.full_like(key, -1))
        best = key.amax(-1, keepdim=True)
        # ">=" in the official loop: among equal best keys the last GT wins.
        sel = torch.where((key == best) & (best >= 0), gpos, -1).amax(-1)  # (n, A, T)
        out[:n, j] = sel
        hit = sel >= 0
        idx = sel.clamp(min=0)[..., None]
        view = matched[:n]
        view.scatter_(-1, idx, view.gather(-1, idx) | hit[..., None])
    return out


def _bucket_of(g_count: torch.Tensor) -> torch.Tensor:
    """Bucket id for padding: GT counts are rounded up to 4, 16, 64, 256, ..."""
    b = torch.zeros_like(g_count)
    lim = 4
    while True:
        over = g_count > lim
        if not bool(over.any()):
            return b
        b = b + over.long()
        lim *= 4


@dataclass
class _Candidates:
    """Detections that reach the lowest IoU threshold with some GT of their cell, grouped by cell.

    ``cell``/``rank``: per candidate, its cell index and rank inside the cell (score order); ``g0``/``g_cnt``/
    ``j_cnt``: per cell, position of its first GT in ``gt_order``, number of GTs, number of candidates;
    ``p_cand``/``p_q``/``p_iou``: per (candidate, GT) pair, candidate position, GT position in the cell, IoU.
    """

    cell: torch.Tensor
    rank: torch.Tensor
    g0: torch.Tensor
    g_cnt: torch.Tensor
    j_cnt: torch.Tensor
    p_cand: torch.Tensor
    p_q: torch.Tensor
    p_iou: torch.Tensor


@dataclass
class _GtContext:
    order: torch.Tensor  # GT indices sorted by cell (file order inside a cell)
    ign: torch.Tensor  # (A, G) ignore per area range
    crowd: torch.Tensor  # (G,)
    thrs: torch.Tensor  # (T,) effective thresholds min(t, 1 - 1e-10)


def match(
    gt: GtTable,
    dt: DtTable,
    order: torch.Tensor,
    keep: torch.Tensor,
    num_cats: int,
    pair_iou: PairIoU,
    iou_thrs: torch.Tensor,
    area_rngs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match the ordered, truncated detections ``order[keep]`` to GTs.

    Returns:
        (tp, ig): (N, A, T) bool over the N kept ordered detections: ``tp`` = matched to a GT with id != 0
        (pycocotools' ``dtm`` truthiness), ``ig`` = pycocotools' ``dtIgnore``.
    """
    dev = order.device
    det = order[keep]
    n, a, t = det.numel(), area_rngs.shape[0], iou_thrs.numel()
    gt_cell_all = gt.img * num_cats + gt.cat
    ctx = _GtContext(
        order=torch.sort(gt_cell_all, stable=True).indices,
        ign=_gt_ignore_per_area(gt, area_rngs),
        crowd=gt.crowd,
        thrs=torch.clamp(iou_thrs, max=1 - 1e-10),
    )
    gt_cell = gt_cell_all[ctx.order]
    det_cell = dt.img[det] * num_cats + dt.cat[det]
    g_start = torch.searchsorted(gt_cell, det_cell, right=False)
    g_cnt = torch.searchsorted(gt_cell, det_cell, right=True) - g_start
    tp = torch.zeros((n, a, t), dtype=torch.bool, device=dev)
    ig = torch.zeros((n, a, t), dtype=torch.bool, device=dev)
    cand_idx, cands = _candidates(det, det_cell, g_start, g_cnt, ctx, pair_iou)
    if cand_idx.numel():
        sel = torch.full((cand_idx.numel(), a, t), -1, dtype=torch.long, device=dev)
        bucket = _bucket_of(cands.g_cnt)
        for b in torch.unique(bucket).tolist():
            cells = torch.nonzero(bucket == b).squeeze(1)
            cells = cells[torch.sort(cands.j_cnt[cells], descending=True, stable=True).indices]
            _run_bucket(cells, cands, ctx, sel)
        hit = sel >= 0
        gsel = sel.clamp(min=0)  # (C, A, T) global GT index
        tp[cand_idx] = hit & gt.id_nonzero[gsel]
        g_ign = ctx.ign.gather(1, gsel.permute(1, 0, 2).reshape(a, -1)).reshape(a, -1, t)
        ig[cand_idx] = hit & g_ign.permute(1, 0, 2)
    lo, hi = area_rngs[:, 0], area_rngs[:, 1]
    d_area = dt.area[det]
    out_rng = (d_area[:, None] < lo[None, :]) | (d_area[:, None] > hi[None, :])  # (N, A)
    if dt.ignore_unmatched is not None:
        out_rng = out_rng | dt.ignore_unmatched[det][:, None]
    ig = ig | (~tp & out_rng[:, :, None])
    return tp, ig


def _candidates(
    det: torch.Tensor,
    det_cell: torch.Tensor,
    g_start: torch.Tensor,
    g_cnt: torch.Tensor,
    ctx: _GtContext,
    pair_iou: PairIoU,
) -> tuple[torch.Tensor, _Candidates | None]:
    """IoUs of all (detection, GT) pairs in shared cells; keep the detections that can match at all."""
    dev = det.device
    has = torch.nonzero(g_cnt > 0).squeeze(1)
    empty = torch.zeros(0, dtype=torch.long, device=dev)
    if has.numel() == 0:
        return empty, None
    cnt = g_cnt[has]
    pair_det = torch.repeat_interleave(has, cnt)
    offs = torch.cumsum(cnt, 0) - cnt
    pair_q = torch.arange(int(cnt.sum()), device=dev) - torch.repeat_interleave(offs, cnt)
    ious = pair_iou(det[pair_det], ctx.order[g_start[pair_det] + pair_q])
    best = torch.full((det.numel(),), -2.0, dtype=torch.float64, device=dev)
    best.scatter_reduce_(0, pair_det, ious, reduce="amax")
    cidx = torch.nonzero(best >= ctx.thrs.min()).squeeze(1)
    if cidx.numel() == 0:
        return empty, None
    cell, rank = _segment_starts(det_cell[cidx])
    n_cells = int(cell[-1]) + 1
    first = torch.full((n_cells,), -1, dtype=torch.long, device=dev)
    first.scatter_reduce_(0, cell, cidx, reduce="amin", include_self=False)
    pos_of = torch.full((det.numel(),), -1, dtype=torch.long, device=dev)
    pos_of[cidx] = torch.arange(cidx.numel(), device=dev)
    pmask = pos_of[pair_det] >= 0
    cands = _Candidates(
        cell=cell,
        rank=rank,
        g0=g_start[first],
        g_cnt=g_cnt[first],
        j_cnt=torch.bincount(cell, minlength=n_cells),
        p_cand=pos_of[pair_det[pmask]],
        p_q=pair_q[pmask],
        p_iou=ious[pmask],
    )
    return cidx, cands


def _run_bucket(
    cells: torch.Tensor, cands: _Candidates, ctx: _GtContext, sel_out: torch.Tensor
) -> None:
    """Pad a bucket of cells to (cells, candidates, G), match, write global GT indices into ``sel_out``."""
    dev = cells.device
    nb = cells.numel()
    g_cnt, j_cnt = cands.g_cnt[cells], cands.j_cnt[cells]
    g_max, j_max = int(g_cnt.max()), int(j_cnt.max())
    local = torch.full((cands.j_cnt.numel(),), -1, dtype=torch.long, device=dev)
    local[cells] = torch.arange(nb, device=dev)
    p_loc = local[cands.cell[cands.p_cand]]
    mine_p = p_loc >= 0
    iou = torch.full((nb, j_max, g_max), -1.0, dtype=torch.float64, device=dev)
    iou[p_loc[mine_p], cands.rank[cands.p_cand[mine_p]], cands.p_q[mine_p]] = cands.p_iou[mine_p]
    q = torch.arange(g_max, device=dev)
    valid = q[None, :] < g_cnt[:, None]  # (nb, G)
    slot = (cands.g0[cells][:, None] + q[None, :]).clamp(max=ctx.order.numel() - 1)
    gidx = torch.where(valid, ctx.order[slot], 0)  # (nb, G) global GT index
    ign = ctx.ign[:, gidx].permute(1, 0, 2)  # (nb, A, G)
    crowd = ctx.crowd[gidx] & valid
    steps = torch.arange(j_max, device=dev)[:, None]
    n_active = (j_cnt[None, :] > steps).sum(1).tolist()
    sel = _greedy_match_bucket(iou, n_active, ign, crowd, ctx.thrs)  # (nb, J, A, T)
    c_loc = local[cands.cell]
    mine = torch.nonzero(c_loc >= 0).squeeze(1)
    s = sel[c_loc[mine], cands.rank[mine]]  # (m, A, T) index inside the cell
    g_glob = gidx[c_loc[mine]].gather(1, s.clamp(min=0).flatten(1)).view_as(s)
    sel_out[mine] = torch.where(s >= 0, g_glob, -1)


def _segmented_suffix_max(values: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Suffix maximum inside each contiguous segment (Hillis-Steele doubling; exact, selects values)."""
    v = values.clone()
    n = v.numel()
    s = 1
    while s < n:
        same = seg[s:] == seg[:-s]
        nxt = torch.where(same, v[s:], v[:-s])
        v = torch.cat([torch.maximum(v[:-s], nxt), v[-s:]])
        s *= 2
    return v


def _recall_steps(npig: torch.Tensor, rec_thrs: torch.Tensor) -> torch.Tensor:
    """j[k, a, r] = smallest integer j >= 0 with float64(j / npig) >= rec_thr (the searchsorted target)."""
    n = npig.to(torch.float64)[..., None].clamp(min=1)
    j = torch.ceil(rec_thrs * n)
    for _ in range(2):
        j = torch.where((j > 0) & ((j - 1) / n >= rec_thrs), j - 1, j)
        j = torch.where(j / n < rec_thrs, j + 1, j)
    return j.long()


def accumulate(
    gt: GtTable,
    dt: DtTable,
    order: torch.Tensor,
    rank: torch.Tensor,
    tp: torch.Tensor,
    ig: torch.Tensor,
    keep: torch.Tensor,
    num_cats: int,
    max_dets: Sequence[int],
    rec_thrs: torch.Tensor,
    area_rngs: torch.Tensor,
) -> EvalResult:
    """pycocotools ``accumulate()`` on matched detections.

    Args:
        order, rank: from :func:`sort_detections`; keep: bool mask of ``order`` entries that were matched.
        tp, ig: (N, A, T) from :func:`match` over ``order[keep]``.
    """
    dev = order.device
    a_n, t_n = tp.shape[1], tp.shape[2]
    r_n, k_n, m_n = rec_thrs.numel(), num_cats, len(max_dets)
    det = order[keep]
    d_rank = rank[keep]
    score = dt.score[det]
    cat = dt.cat[det]
    # global order: (category, -score, image, rank) == pycocotools' concatenation + mergesort per category
    o = torch.sort(score, descending=True, stable=True).indices
    o = o[torch.sort(cat[o], stable=True).indices]
    gt_ign = _gt_ignore_per_area(gt, area_rngs)
    npig = torch.zeros((k_n, a_n), dtype=torch.long, device=dev)
    for ai in range(a_n):
        npig[:, ai] = torch.bincount(gt.cat[~gt_ign[ai]], minlength=k_n)
    jr = _recall_steps(npig, rec_thrs)  # (K, A, R)
    precision = torch.full((t_n, r_n, k_n, a_n, m_n), -1.0, dtype=torch.float64, device=dev)
    recall = torch.full((t_n, k_n, a_n, m_n), -1.0, dtype=torch.float64, device=dev)
    scores = torch.full_like(precision, -1.0)
    for mi, md in enumerate(max_dets):
        inc = o[d_rank[o] < md]  # included detections in global order
        s_m, c_m = score[inc], cat[inc]
        tp_m, ig_m = tp.index_select(0, inc), ig.index_select(0, inc)  # (Nm, A, T)
        nd = torch.bincount(c_m, minlength=k_n)
        first = torch.zeros(k_n, dtype=torch.float64, device=dev)
        starts = torch.cumsum(nd, 0) - nd
        has_det = nd > 0
        first[has_det] = s_m[starts[has_det]]
        for ai in range(a_n):
            p, r, s = _accumulate_one(
                tp_m[:, ai].T, ig_m[:, ai].T, s_m, c_m, k_n, npig[:, ai], jr[:, ai], first
            )
            valid = npig[:, ai] > 0
            precision[:, :, valid, ai, mi] = p[:, :, valid]
            scores[:, :, valid, ai, mi] = s[:, :, valid]
            recall[:, valid, ai, mi] = r[:, valid]
    return EvalResult(precision.cpu().numpy(), recall.cpu().numpy(), scores.cpu().numpy())


def _accumulate_one(tp, ig, score, cat, k_n, npig, jr, first_score):
    """One (area, maxDet) slice. tp/ig (T, N) over detections sorted by (cat, -score, img, rank)."""
    dev = tp.device
    t_n, n = tp.shape
    if n == 0:
        zeros = torch.zeros((t_n, jr.shape[1], k_n), dtype=torch.float64, device=dev)
        return zeros, torch.zeros((t_n, k_n), dtype=torch.float64, device=dev), zeros.clone()
    fp = ~tp & ~ig
    tpv = tp & ~ig
    # per-category cumulative counts (global cumsum minus the value before the category start)
    nd = torch.bincount(cat, minlength=k_n)
    starts = torch.cumsum(nd, 0) - nd
    cum_fp = torch.cumsum(fp, 1, dtype=torch.int32)
    base_fp = torch.where(starts > 0, cum_fp[:, (starts - 1).clamp(min=0)], 0)  # (T, K)
    t_idx, pos = torch.nonzero(tpv, as_tuple=True)  # sorted by (t, pos) -> (t, cat, pos)
    ev_cat = cat[pos]
    grp = t_idx * k_n + ev_cat
    ntp = torch.bincount(grp, minlength=t_n * k_n)
    g_start = torch.cumsum(ntp, 0) - ntp
    j_ev = torch.arange(grp.numel(), device=dev) - g_start[grp] + 1  # tp count at the event
    fp_ev = cum_fp[t_idx, pos] - base_fp[t_idx, ev_cat]
    tpf, fpf = j_ev.to(torch.float64), fp_ev.to(torch.float64)
    pr = tpf / (fpf + tpf + EPS)
    env = _segmented_suffix_max(pr, grp)
    ev_score = score[pos]
    ntp = ntp.view(t_n, k_n)
    g_start = g_start.view(t_n, k_n)
    recall = ntp.to(torch.float64) / npig.clamp(min=1).to(torch.float64)[None, :]
    j = jr.T[None].expand(t_n, -1, -1)  # (T, R, K)
    ok = (j >= 1) & (j <= ntp[:, None, :])
    idx = (g_start[:, None, :] + j - 1).clamp(min=0, max=max(env.numel() - 1, 0))
    if env.numel():
        q = torch.where(ok, env[idx], 0.0)
        ss = torch.where(ok, ev_score[idx], 0.0)
        # recall threshold 0 -> index 0 of the category: envelope max over all events, first score
        z = j == 0
        any_tp = (ntp > 0)[:, None, :]
        q = torch.where(z & any_tp, env[g_start.clamp(max=env.numel() - 1)][:, None, :], q)
    else:
        q = torch.zeros(j.shape, dtype=torch.float64, device=dev)
        ss = torch.zeros_like(q)
        z = j == 0
    ss = torch.where(z & (nd > 0)[None, None, :], first_score[None, None, :], ss)
    return q, recall, ss


def run(
    gt: GtTable,
    dt: DtTable,
    *,
    num_cats: int,
    pair_iou: PairIoU,
    max_dets: Sequence[int],
    per_cell_cap: int | None,
    iou_thrs: np.ndarray,
    rec_thrs: np.ndarray,
    area_rngs: np.ndarray,
    kernel: str = "auto",
    with_scores: bool = True,
) -> EvalResult:
    """Evaluate: sort, truncate per (image, category) to ``per_cell_cap``, match, accumulate.

    ``kernel``: "auto" runs tables on the CPU in the compiled loops of :mod:`evaluation.matching_cpu` and
    tables on CUDA in the torch path of this module; "torch" forces the torch path (also on the CPU, where
    the tests check it). Both give the same bytes (tested against the official tools). ``with_scores``
    False lets the CPU kernel skip the scores array (LVIS does not report it).
    """
    if kernel not in ("auto", "torch"):
        raise ValueError(f"kernel must be 'auto' or 'torch', got {kernel!r}")
    dev = dt.score.device
    if dev.type == "cpu" and kernel == "auto" and NUMBA:
        from evaluation import matching_cpu

        numpy_of = lambda table: {  # noqa: E731
            f.name: None if (v := getattr(table, f.name)) is None else v.numpy()
            for f in fields(table)
        }
        out = matching_cpu.run(
            numpy_of(gt),
            numpy_of(dt),
            num_cats=num_cats,
            pair_iou=pair_iou,
            max_dets=max_dets,
            per_cell_cap=per_cell_cap,
            iou_thrs=iou_thrs,
            rec_thrs=rec_thrs,
            area_rngs=area_rngs,
            with_scores=with_scores,
        )
        return EvalResult(*out)
    thr = torch.as_tensor(iou_thrs, dtype=torch.float64, device=dev)
    rec = torch.as_tensor(rec_thrs, dtype=torch.float64, device=dev)
    rng = torch.as_tensor(area_rngs, dtype=torch.float64, device=dev)
    with single_thread_on_cpu(dev):
        order, rank = sort_detections(dt, num_cats)
        keep = (
            rank < per_cell_cap
            if per_cell_cap is not None
            else torch.ones_like(rank, dtype=torch.bool)
        )
        tp, ig = match(gt, dt, order, keep, num_cats, pair_iou, thr, rng)
        return accumulate(gt, dt, order, rank, tp, ig, keep, num_cats, max_dets, rec, rng)
