"""CPU matching and accumulation: pycocotools' loops compiled with numba, over all images at once.

The same semantics as the torch path in :mod:`evaluation.matching` (which serves CUDA), written the way
pycocotools writes them, so that each step can be read against ``COCOeval.evaluateImg`` / ``accumulate``:

1. numpy: detections sorted by (cell, -score, input order), cell = image x category, truncated per cell;
   GTs grouped by cell in file order; the (detection, GT) pairs of each cell and their IoUs (float64, in the
   official operation order, computed by the caller's pair-IoU function).
2. :func:`_match_cells` (numba): per cell and area range, GTs stable-sorted non-ignored first, then the greedy
   loop of ``evaluateImg`` for every IoU threshold (crowd GTs absorb many detections, the last equal-IoU GT
   wins, ``min(t, 1 - 1e-10)``).
3. :func:`_accumulate` (numba): per category, detections in (-score, image, rank) order; for each area range
   and maxDet the float64 cumulative TP / FP counts, ``tp / (fp + tp + eps)``, the right-to-left envelope and
   ``searchsorted(side='left')`` over the recall thresholds.

Names follow pycocotools: T IoU thresholds, R recall thresholds, K categories, A area ranges, M maxDets;
``npig`` = number of non-ignored GTs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from numba import njit, prange

EPS = float(np.spacing(1))  # pycocotools adds np.spacing(1) to the precision denominator


@njit(cache=True, parallel=True)
def _match_cells(
    cell_bounds,
    pair_off,
    g_cnt,
    g_first,
    ious,
    gt_order,
    ign,
    crowd,
    id_nonzero,
    thrs,
    skip_unmatched,
):
    """Greedy matching of every cell. Detections ``j`` of cell ``c`` are ``cell_bounds[c]:cell_bounds[c+1]``
    (score order); their IoUs with the cell's GTs ``gt_order[g_first[j] + q]`` are ``ious[pair_off[j] + q]``.

    Returns:
        state (N, A, T) uint8: 1 = true positive (matched to a non-ignored GT with id != 0), 2 = ignored
        (matched to an ignored GT, or unmatched with ``skip_unmatched[j, a]``: outside the area range /
        LVIS not exhaustive), 0 = false positive. A match to a GT with id 0 counts as unmatched (pycocotools
        stores match ids, and 0 means none).
    """
    n_det = g_cnt.shape[0]
    n_area, n_thr = ign.shape[0], thrs.shape[0]
    state = np.zeros((n_det, n_area, n_thr), dtype=np.uint8)
    for c in prange(cell_bounds.shape[0] - 1):
        d0, d1 = cell_bounds[c], cell_bounds[c + 1]
        n_gt = g_cnt[d0]
        code = np.zeros((n_area, d1 - d0, n_thr), dtype=np.uint8)  # 1 tp, 2 ignored match, 0 none
        if n_gt > 0:
            gidx = gt_order[g_first[d0] : g_first[d0] + n_gt]
            n_reach = np.zeros(d1 - d0, dtype=np.int64)  # thresholds the best IoU reaches (sorted)
            for j in range(d0, d1):
                best_iou = ious[pair_off[j] : pair_off[j] + n_gt].max()
                while n_reach[j - d0] < n_thr and thrs[n_reach[j - d0]] <= best_iou:
                    n_reach[j - d0] += 1
            perm = np.empty(n_gt, dtype=np.int64)
            matched = np.zeros((n_thr, n_gt), dtype=np.bool_)
            for a in range(n_area):
                same = -1  # an earlier area range with the same GT ignore flags matches identically
                for b in range(a):
                    eq = True
                    for q in range(n_gt):
                        if ign[a, gidx[q]] != ign[b, gidx[q]]:
                            eq = False
                            break
                    if eq:
                        same = b
                        break
                if same >= 0:
                    code[a] = code[same]
                    continue
                k = 0  # stable sort by ignore flag: non-ignored GTs first, file order inside
                for q in range(n_gt):
                    if not ign[a, gidx[q]]:
                        perm[k] = q
                        k += 1
                for q in range(n_gt):
                    if ign[a, gidx[q]]:
                        perm[k] = q
                        k += 1
                matched[:] = False
                for j in range(d0, d1):
                    row = ious[pair_off[j] : pair_off[j] + n_gt]
                    for t in range(
                        n_reach[j - d0]
                    ):  # above its best IoU a detection matches nothing
                        best = thrs[t]
                        m = -1
                        for p in range(n_gt):
                            q = perm[p]
                            g = gidx[q]
                            if matched[t, q] and not crowd[g]:
                                continue
                            if m > -1 and not ign[a, gidx[m]] and ign[a, g]:
                                break
                            if row[q] < best:
                                continue
                            best = row[q]
                            m = q
                        if m > -1:
                            matched[t, m] = True
                            g = gidx[m]
                            if ign[a, g]:
                                code[a, j - d0, t] = 2
                            elif id_nonzero[g]:
                                code[a, j - d0, t] = 1
        for j in range(d0, d1):
            for a in range(n_area):
                for t in range(n_thr):
                    v = code[a, j - d0, t]
                    state[j, a, t] = v if v else (2 if skip_unmatched[j, a] else 0)
    return state


@njit(cache=True, parallel=True)
def _accumulate(cat_bounds, acc, rank, score, state, npig, max_dets, rec_thrs, eps, with_scores):
    """pycocotools ``accumulate`` for every (category, area, maxDet, threshold).

    ``acc`` lists the matched detections by (category, -score, image, rank-in-cell); category k owns
    ``acc[cat_bounds[k]:cat_bounds[k+1]]``; ``rank``, ``score``, ``state`` (from :func:`_match_cells`) are
    indexed by detection. Returns precision (T,R,K,A,M), recall (T,K,A,M), scores (T,R,K,A,M).

    One pass per (category, maxDet) over the detections updates every (area, threshold) at once.
    Precision is needed at the true positives only: recall grows only there, so every
    ``searchsorted(rc, thr, 'left')`` index > 0 is a true positive, and the right-to-left envelope's maximum
    over a suffix starting at a true positive is attained at a true positive. Index 0 (recall threshold 0)
    takes the maximum over all true positives, or 0 without one.
    """
    n_area, n_thr = state.shape[1], state.shape[2]
    n_cat, n_md, n_rec = npig.shape[0], max_dets.shape[0], rec_thrs.shape[0]
    # every cell is written once below: -1 where the category has no non-ignored GT in the area range
    precision = np.empty((n_thr, n_rec, n_cat, n_area, n_md))
    recall = np.empty((n_thr, n_cat, n_area, n_md))
    scores = np.empty((n_thr, n_rec, n_cat, n_area, n_md) if with_scores else (1, 1, 1, 1, 1))
    for k in prange(n_cat):
        s0, s1 = cat_bounds[k], cat_bounds[k + 1]
        ev_pr = np.empty((n_area, n_thr, s1 - s0))  # precision at the j-th true positive
        ev_pos = np.empty((n_area, n_thr, s1 - s0), dtype=np.int64)  # its index among included dets
        inc_score = np.empty(s1 - s0)
        n_tp = np.zeros((n_area, n_thr), dtype=np.int64)
        n_fp = np.zeros((n_area, n_thr), dtype=np.int64)
        for mi in range(n_md):
            n_tp[:] = 0
            n_fp[:] = 0
            nd = 0
            for i in range(s0, s1):
                d = acc[i]
                if rank[d] >= max_dets[mi]:
                    continue
                for a in range(n_area):
                    for t in range(n_thr):
                        st = state[d, a, t]
                        if st == 1:
                            j = n_tp[a, t]
                            tpf = np.float64(j + 1)
                            ev_pr[a, t, j] = tpf / (np.float64(n_fp[a, t]) + tpf + eps)
                            ev_pos[a, t, j] = nd
                            n_tp[a, t] = j + 1
                        elif st == 0:
                            n_fp[a, t] += 1
                inc_score[nd] = score[d]
                nd += 1
            for a in range(n_area):
                if npig[k, a] == 0:
                    precision[:, :, k, a, mi] = -1.0
                    recall[:, k, a, mi] = -1.0
                    if with_scores:
                        scores[:, :, k, a, mi] = -1.0
                    continue
                n_pos = np.float64(npig[k, a])
                for t in range(n_thr):
                    ntp = n_tp[a, t]
                    pr = ev_pr[a, t]
                    recall[t, k, a, mi] = np.float64(ntp) / n_pos if nd else 0.0
                    for j in range(ntp - 1, 0, -1):  # right-to-left envelope
                        if pr[j] > pr[j - 1]:
                            pr[j - 1] = pr[j]
                    j = 0
                    for r in range(n_rec):
                        if nd and rec_thrs[r] <= 0.0:  # rc[0] >= thr: index 0
                            precision[t, r, k, a, mi] = pr[0] if ntp else 0.0
                            if with_scores:
                                scores[t, r, k, a, mi] = inc_score[0]
                            continue
                        while j < ntp and np.float64(j + 1) / n_pos < rec_thrs[r]:
                            j += 1
                        if j < ntp:
                            precision[t, r, k, a, mi] = pr[j]
                            if with_scores:
                                scores[t, r, k, a, mi] = inc_score[ev_pos[a, t, j]]
                        else:
                            precision[t, r, k, a, mi] = 0.0
                            if with_scores:
                                scores[t, r, k, a, mi] = 0.0
    return precision, recall, scores


@njit(cache=True, parallel=True)
def stable_order(group, n_groups, sub_key, use_sub_key, score):
    """Indices ordering the entries by (group, sub_key, -score, input order); stable sorts only.

    ``group`` in [0, n_groups) is counting-sorted; inside a group, entries are insertion-sorted when few
    (a cell holds tens) and merge-sorted by -score then ``sub_key`` otherwise.
    """
    n = group.shape[0]
    counts = np.zeros(n_groups + 1, dtype=np.int64)
    for i in range(n):
        counts[group[i] + 1] += 1
    bounds = np.cumsum(counts)
    fill = bounds[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[fill[group[i]]] = i
        fill[group[i]] += 1
    for gi in prange(n_groups):
        g0, g1 = bounds[gi], bounds[gi + 1]
        if g1 - g0 <= 64:
            for i in range(g0 + 1, g1):
                x = order[i]
                j = i - 1
                while j >= g0:
                    y = order[j]
                    later = score[y] < score[x]
                    if use_sub_key:
                        later = sub_key[y] > sub_key[x] or (sub_key[y] == sub_key[x] and later)
                    if not later:
                        break
                    order[j + 1] = y
                    j -= 1
                order[j + 1] = x
        else:
            seg = order[g0:g1].copy()
            seg = seg[np.argsort(-score[seg], kind="mergesort")]
            if use_sub_key:
                seg = seg[np.argsort(sub_key[seg], kind="mergesort")]
            order[g0:g1] = seg
    return order


@njit(cache=True)
def _pairs(order, cell, cap, g_sorted, gt_order):
    """Truncate each cell of the ordered detections to ``cap`` and list the (detection, GT) pairs of every
    cell. Returns kept positions, rank in cell, cell bounds over the kept list, and per kept detection its
    GT count, first GT slot, pair offset, plus the pairs' (detection, GT) indices."""
    n = order.shape[0]
    rank = np.empty(n, dtype=np.int64)
    n_keep, n_cells = 0, 0
    for i in range(n):
        new = i == 0 or cell[order[i]] != cell[order[i - 1]]
        rank[i] = 0 if new else rank[i - 1] + 1
        n_cells += new
        n_keep += rank[i] < cap
    det = np.empty(n_keep, dtype=np.int64)
    d_rank = np.empty(n_keep, dtype=np.int64)
    g_first = np.empty(n_keep, dtype=np.int64)
    g_cnt = np.empty(n_keep, dtype=np.int64)
    pair_off = np.empty(n_keep, dtype=np.int64)
    bounds = np.empty(n_cells + 1, dtype=np.int64)
    k, c, n_pairs, gf, gc = 0, 0, 0, 0, 0
    for i in range(n):
        if rank[i] >= cap:
            continue
        d = order[i]
        if rank[i] == 0:
            bounds[c] = k
            c += 1
            gf = np.searchsorted(g_sorted, cell[d], side="left")
            gc = np.searchsorted(g_sorted, cell[d], side="right") - gf
        det[k], d_rank[k], g_first[k], g_cnt[k], pair_off[k] = d, rank[i], gf, gc, n_pairs
        n_pairs += gc
        k += 1
    bounds[c] = k
    pair_det = np.empty(n_pairs, dtype=np.int64)
    pair_gt = np.empty(n_pairs, dtype=np.int64)
    for k in range(n_keep):
        for q in range(g_cnt[k]):
            pair_det[pair_off[k] + q] = det[k]
            pair_gt[pair_off[k] + q] = gt_order[g_first[k] + q]
    return det, d_rank, bounds, g_cnt, g_first, pair_off, pair_det, pair_gt


@njit(cache=True)
def runs_area_bbox(counts, first, heights):
    """Area (pixels) and xywh bounding box of RLE masks from their run lengths (column-major, zeros first;
    an empty mask gets a zero box). Exact integers, so usable for pycocotools' box gate."""
    n = first.shape[0] - 1
    area = np.zeros(n, dtype=np.int64)
    bbox = np.zeros((n, 4))
    for m in range(n):
        h = heights[m]
        pos, on = 0, False
        x0, y0, x1, y1 = 1 << 62, 1 << 62, -1, -1
        for i in range(first[m], first[m + 1]):
            c = counts[i]
            if on and c > 0:
                area[m] += c
                s, e = pos, pos + c - 1
                x0, x1 = min(x0, s // h), max(x1, e // h)
                if s // h != e // h:
                    y0, y1 = 0, h - 1
                else:
                    y0, y1 = min(y0, s % h), max(y1, e % h)
            pos += c
            on = not on
        if x1 >= 0:
            bbox[m, 0], bbox[m, 1] = x0, y0
            bbox[m, 2], bbox[m, 3] = x1 - x0 + 1, y1 - y0 + 1
    return area, bbox


@njit(cache=True)
def mask_pair_iou_runs(
    di, gi, dt_counts, dt_first, gt_counts, gt_first, dt_bb, gt_bb, dt_area, gt_area, gt_crowd
):
    """(P,) float64 IoU of RLE masks ``di[p]``, ``gi[p]`` (run lengths ``counts[first[m]:first[m+1]]``,
    zeros first): exact integer intersection by walking both run sequences, only where the mask boxes
    (xywh) overlap; IoU = i / u with u = area(dt) for a crowd GT, 0 when i == 0."""
    out = np.zeros(di.shape[0])
    for p in range(di.shape[0]):
        d, g = di[p], gi[p]
        bd, bg = dt_bb[d], gt_bb[g]
        w = min(bd[0] + bd[2], bg[0] + bg[2]) - max(bd[0], bg[0])
        h = min(bd[1] + bd[3], bg[1] + bg[3]) - max(bd[1], bg[1])
        if w <= 0 or h <= 0:
            continue
        i, i_end, j, j_end = dt_first[d], dt_first[d + 1], gt_first[g], gt_first[g + 1]
        if i == i_end or j == j_end:
            continue
        ca, cb, on_a, on_b, inter = dt_counts[i], gt_counts[j], False, False, 0
        while True:
            c = min(ca, cb)
            if on_a and on_b:
                inter += c
            ca -= c
            cb -= c
            if ca == 0:
                i += 1
                if i == i_end:
                    break
                ca, on_a = dt_counts[i], not on_a
            if cb == 0:
                j += 1
                if j == j_end:
                    break
                cb, on_b = gt_counts[j], not on_b
        if inter == 0:
            continue
        union = dt_area[d] if gt_crowd[g] else dt_area[d] + gt_area[g] - inter
        out[p] = np.float64(inter) / np.float64(max(union, 1))
    return out


@njit(cache=True)
def box_pair_iou(di, gi, dt_boxes, gt_boxes, gt_crowd):
    """(P,) float64 IoU of xywh boxes ``dt_boxes[di[p]]``, ``gt_boxes[gi[p]]``, in the operation order of
    pycocotools' ``bbIou`` (no fused multiply-add: numba does not contract without fastmath)."""
    out = np.zeros(di.shape[0])
    for p in range(di.shape[0]):
        d, g = dt_boxes[di[p]], gt_boxes[gi[p]]
        w = min(d[2] + d[0], g[2] + g[0]) - max(d[0], g[0])
        if w <= 0:
            continue
        h = min(d[3] + d[1], g[3] + g[1]) - max(d[1], g[1])
        if h <= 0:
            continue
        inter = w * h
        da = d[2] * d[3]
        union = da if gt_crowd[gi[p]] else da + g[2] * g[3] - inter
        out[p] = inter / union
    return out


def run(
    gt: dict[str, np.ndarray],
    dt: dict[str, np.ndarray],
    *,
    num_cats: int,
    pair_iou: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_dets: Sequence[int],
    per_cell_cap: int | None,
    iou_thrs: np.ndarray,
    rec_thrs: np.ndarray,
    area_rngs: np.ndarray,
    with_scores: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort, truncate per (image, category) to ``per_cell_cap``, match and accumulate on the CPU.

    Args:
        gt: numpy arrays "img", "cat" (ranks), "area" (float64), "ignore", "crowd", "id_nonzero" (bool), (G,).
        dt: "img", "cat", "score", "area" (N,), optional "ignore_unmatched" (N,) bool (LVIS not-exhaustive).
        pair_iou: (det index, GT index) tensors -> float64 IoU per pair (crowd rule inside).

    Returns:
        precision (T,R,K,A,M), recall (T,K,A,M), scores (T,R,K,A,M; a (1,1,1,1,1) placeholder when
        ``with_scores`` is False), float64.
    """
    if np.any(np.diff(iou_thrs) < 0):
        raise ValueError("matching_cpu.run: iou_thrs must be ascending")
    score = dt["score"]
    cell = dt["img"] * num_cats + dt["cat"]
    n_img = int(max(dt["img"].max(initial=-1), gt["img"].max(initial=-1))) + 1
    if n_img * num_cats <= 1 << 23:  # counting sort straight by cell
        order = stable_order(cell, n_img * num_cats, cell, False, score)
    else:
        order = stable_order(dt["img"], n_img, dt["cat"], True, score)
    g_cell = gt["img"] * num_cats + gt["cat"]
    gt_order = np.argsort(g_cell, kind="stable")
    cap = per_cell_cap if per_cell_cap is not None else np.iinfo(np.int64).max
    det, d_rank, cell_bounds, g_cnt, g_first, pair_off, pair_det, pair_gt = _pairs(
        order, cell, cap, g_cell[gt_order], gt_order
    )
    if pair_det.size and hasattr(pair_iou, "numpy_pairs"):
        ious = pair_iou.numpy_pairs(pair_det, pair_gt)
    elif pair_det.size:
        ious = pair_iou(torch.from_numpy(pair_det), torch.from_numpy(pair_gt)).numpy()
    else:
        ious = np.zeros(0)
    lo, hi = area_rngs[:, 0:1], area_rngs[:, 1:2]
    ign = gt["ignore"][None, :] | (gt["area"][None, :] < lo) | (gt["area"][None, :] > hi)  # (A, G)
    d_area = dt["area"][det]
    skip_unmatched = (d_area[:, None] < area_rngs[None, :, 0]) | (
        d_area[:, None] > area_rngs[None, :, 1]
    )
    if dt.get("ignore_unmatched") is not None:
        skip_unmatched |= dt["ignore_unmatched"][det][:, None]
    state = _match_cells(
        cell_bounds,
        pair_off,
        g_cnt,
        g_first,
        ious,
        gt_order,
        ign,
        gt["crowd"],
        gt["id_nonzero"],
        np.minimum(iou_thrs, 1 - 1e-10),
        skip_unmatched,
    )
    # accumulation order: (category, -score, image, rank); det is already (image, category, rank)-ordered
    d_score, d_cat = score[det], dt["cat"][det]
    acc = stable_order(d_cat, num_cats, d_cat, False, d_score)
    cat_bounds = np.searchsorted(d_cat[acc], np.arange(num_cats + 1), side="left")
    npig = np.stack(
        [np.bincount(gt["cat"][~ign[a]], minlength=num_cats) for a in range(ign.shape[0])], 1
    )
    return _accumulate(
        cat_bounds.astype(np.int64),
        acc,
        d_rank,
        d_score,
        state,
        npig.astype(np.int64),
        np.asarray(max_dets, dtype=np.int64),
        rec_thrs,
        EPS,
        with_scores,
    )
