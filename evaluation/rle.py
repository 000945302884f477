"""COCO compressed-RLE strings -> run intervals, and exact mask intersections on intervals (torch).

A mask is stored as on-intervals ``[start, end)`` of its column-major flattened pixels. The intersection of
masks A and B is ``sum_i F_B(end_i) - F_B(start_i)`` over A's intervals, where ``F_B(x)`` = number of B pixels
before ``x``: one batched ``searchsorted`` for all pairs, integer arithmetic only (exact on any device).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

try:
    from numba import njit
except (
    ImportError
):  # pragma: no cover - without numba the CPU path uses the torch kernels (no runs)

    def njit(*args, **kwargs):
        return lambda f: f


def decode_counts(rles: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of many compressed RLEs (pycocotools' ``rleFrString``, vectorised over all strings).

    Returns:
        (counts, mask_of_count): int64 run lengths (zeros run first, alternating) and the mask index of each.
    """
    strs = [r["counts"] if isinstance(r["counts"], bytes) else r["counts"].encode() for r in rles]
    lens = np.fromiter((len(s) for s in strs), np.int64, len(strs))
    c = np.frombuffer(b"".join(strs), dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    end = (c & 0x20) == 0  # last 5-bit chunk of a value
    tok_start = np.r_[0, np.flatnonzero(end)[:-1] + 1]
    tok_of = np.cumsum(np.r_[0, end[:-1]])  # token index per byte
    k = np.arange(c.size) - tok_start[tok_of]  # chunk index inside the token
    x = np.add.reduceat((c & 0x1F) << (5 * k), tok_start)
    nchunks = np.diff(np.r_[tok_start, c.size])
    neg = (c[np.flatnonzero(end)] & 0x10) != 0
    x = np.where(neg, x - (np.int64(1) << (5 * nchunks)), x)
    # mask index and position m of each value inside its mask
    byte_mask = np.repeat(np.arange(len(strs)), lens)
    mask_of = byte_mask[tok_start]
    first = np.r_[0, np.flatnonzero(np.diff(mask_of)) + 1]
    m = np.arange(x.size) - np.repeat(first, np.diff(np.r_[first, x.size]))
    # delta coding: cnts[m] = x[m] + cnts[m-2] for m > 2 -> cumulative sums along each parity chain
    chain = np.where(
        m == 0, -1, mask_of * 2 + (m % 2)
    )  # m == 0 stands alone; m = 2 starts the even chain
    out = x.copy()
    sel = np.flatnonzero(chain >= 0)
    o = sel[np.argsort(chain[sel], kind="stable")]
    cs = np.cumsum(x[o])
    ch = chain[o]
    starts = np.r_[0, np.flatnonzero(np.diff(ch)) + 1]
    base = np.repeat(np.r_[0, cs[starts[1:] - 1]], np.diff(np.r_[starts, o.size]))
    out[o] = cs - base
    return out, mask_of


@njit(cache=True)
def _runs_from_strings(buf, offsets):
    """pycocotools ``rleFrString`` over many strings: 5-bit chunks with a continuation bit and a sign bit,
    then ``cnts[m] += cnts[m - 2]`` for m > 2. Returns (counts int64, first: mask m owns
    ``counts[first[m]:first[m + 1]]``)."""
    n = offsets.shape[0] - 1
    counts = np.empty(buf.shape[0], dtype=np.int64)
    first = np.empty(n + 1, dtype=np.int64)
    out = 0
    for i in range(n):
        first[i] = out
        p, m = offsets[i], 0
        while p < offsets[i + 1]:
            x, k, more = 0, 0, True
            while more and p < offsets[i + 1]:
                c = np.int64(buf[p]) - 48
                x |= (c & 0x1F) << (5 * k)
                more = (c & 0x20) != 0
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= np.int64(-1) << (5 * k)
            if m > 2:
                x += counts[out - 2]
            counts[out] = x & 0xFFFFFFFF  # stored as uint32 by pycocotools
            out += 1
            m += 1
    first[n] = out
    return counts[:out], first


def decode_runs(rles: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of many compressed RLEs (compiled): (counts, first) with mask m's runs (zeros first)
    at ``counts[first[m]:first[m + 1]]``."""
    strs = [r["counts"] if isinstance(r["counts"], bytes) else r["counts"].encode() for r in rles]
    offsets = np.zeros(len(strs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in strs], out=offsets[1:])
    return _runs_from_strings(np.frombuffer(b"".join(strs), dtype=np.uint8), offsets)


@dataclass
class Intervals:
    """On-intervals of N masks, sorted by (mask, start). ``before`` = on-pixels of the mask before each."""

    mask: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    before: torch.Tensor


def intervals(rles: list[dict], device: torch.device) -> Intervals:
    counts, mask_of = decode_counts(rles)
    first = np.r_[0, np.flatnonzero(np.diff(mask_of)) + 1] if counts.size else np.zeros(0, np.int64)
    seg = np.repeat(np.arange(first.size), np.diff(np.r_[first, counts.size]))
    pos_end = np.cumsum(counts)
    pos_end -= np.r_[0, pos_end[first[1:] - 1]][seg] if counts.size else 0
    m = np.arange(counts.size) - first[seg] if counts.size else np.zeros(0, np.int64)
    on = (m % 2 == 1) & (counts > 0)
    start, end, mk = pos_end[on] - counts[on], pos_end[on], mask_of[on]
    length = end - start
    csum = np.cumsum(length)
    mfirst = np.r_[0, np.flatnonzero(np.diff(mk)) + 1] if mk.size else np.zeros(0, np.int64)
    before = csum - length
    if mk.size:
        before -= np.repeat(np.r_[0, csum[mfirst[1:] - 1]], np.diff(np.r_[mfirst, mk.size]))
    t = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
    return Intervals(t(mk), t(start), t(end), t(before))


def pair_intersections(
    a: Intervals, b: Intervals, pa: torch.Tensor, pb: torch.Tensor
) -> torch.Tensor:
    """Exact pixel counts of ``mask a[pa[i]] & mask b[pb[i]]`` for every pair i (int64)."""
    dev = pa.device
    out = torch.zeros(pa.numel(), dtype=torch.long, device=dev)
    if pa.numel() == 0 or a.mask.numel() == 0 or b.mask.numel() == 0:
        return out
    n_a = int(a.mask.max()) + 1
    a_cnt = torch.bincount(a.mask, minlength=n_a)
    a_first = torch.cumsum(a_cnt, 0) - a_cnt
    valid = pa < n_a
    cnt = torch.where(valid, a_cnt[pa.clamp(max=n_a - 1)], 0)
    pair = torch.repeat_interleave(torch.arange(pa.numel(), device=dev), cnt)
    offs = torch.cumsum(cnt, 0) - cnt
    idx = a_first[pa[pair]] + torch.arange(pair.numel(), device=dev) - offs[pair]
    g = pb[pair]
    big = 1 << 32
    keys = b.mask * big + b.start

    def f(x: torch.Tensor) -> torch.Tensor:  # B pixels before x, per entry
        k = torch.searchsorted(keys, g * big + x, right=True) - 1
        kc = k.clamp(min=0)
        inside = (k >= 0) & (b.mask[kc] == g)
        val = b.before[kc] + torch.minimum(x - b.start[kc], b.end[kc] - b.start[kc]).clamp(min=0)
        return torch.where(inside, val, 0)

    contrib = f(a.end[idx]) - f(a.start[idx])
    return out.index_add_(0, pair, contrib)
