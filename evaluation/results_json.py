"""Decode a COCO bbox results file straight into arrays (numba), without a Python object per detection.

The flat schema ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": number, ...}, ...]``
is scanned byte by byte; other keys are skipped. Numbers are converted exactly as Python's ``float()`` does
(correctly rounded): Clinger's fast path for up to 15 digits and powers of ten up to 1e22, an exact integer
long division for up to 18 digits and 1e-26, and Python's ``float()`` on the few tokens beyond that.

Anything outside this schema (a missing key, ``"bbox": []``, a string where a number belongs, NaN, broken
JSON) makes :func:`decode_bbox_results` return ``None``; the caller then parses the file the general way,
which names the bad entry.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

_KEYS = (b"image_id", b"category_id", b"score", b"bbox")
_KEY_BYTES = np.frombuffer(b"".join(_KEYS), dtype=np.uint8)
_KEY_OFF = np.cumsum([0] + [len(k) for k in _KEYS]).astype(np.int64)
_POW10 = np.array([10.0**i for i in range(23)])
_POW5 = np.array([5**i for i in range(27)], dtype=np.int64)
_TWO53 = 1 << 53


@njit(cache=True)
def _ws(b, i):
    while i < b.shape[0] and (b[i] == 32 or b[i] == 10 or b[i] == 13 or b[i] == 9):
        i += 1
    return i


@njit(cache=True)
def _bitlen(x):
    n = 0
    while x:
        x >>= 1
        n += 1
    return n


@njit(cache=True)
def _div_pow10(m, k):
    """Correctly rounded float64 of m / 10**k for 0 < m < 10**18, 1 <= k <= 26 (exact integer division
    by 5**k to 55 bits plus a sticky bit, round half to even, then an exact scaling by 2**-k)."""
    d = _POW5[k]
    q, r = m // d, m % d
    nb, e2 = _bitlen(q), 0
    while nb < 55:
        r <<= 1
        q <<= 1
        e2 -= 1
        if r >= d:
            q |= 1
            r -= d
        if q:
            nb = nb + 1 if nb else 1
    sticky = r != 0
    if nb > 55:
        extra = nb - 55
        sticky = sticky or (q & ((1 << extra) - 1)) != 0
        q >>= extra
        e2 += extra
    low = q & 3
    q >>= 2
    e2 += 2
    if (low & 2) and ((low & 1) or sticky or (q & 1)):
        q += 1
    if q == _TWO53:
        q >>= 1
        e2 += 1
    return math.ldexp(np.float64(q), e2 - k)


@njit(cache=True)
def _number(b, i):
    """JSON number at ``i`` -> (value, is_int, int value, end, status); status 0 ok, 1 use float(), -1 bad."""
    n, neg, m, digits, frac, exp, big = b.shape[0], False, 0, 0, 0, 0, False
    if i < n and b[i] == 45:
        neg = True
        i += 1
    if i >= n or b[i] < 48 or b[i] > 57:
        return 0.0, False, 0, i, -1
    is_int = True
    while i < n and 48 <= b[i] <= 57:
        if digits < 18:
            m = m * 10 + (b[i] - 48)
            digits += 1 if m else 0
        else:
            big = True
        i += 1
    if i < n and b[i] == 46:
        is_int = False
        i += 1
        while i < n and 48 <= b[i] <= 57:
            if digits < 18:
                m = m * 10 + (b[i] - 48)
                digits += 1 if m else 0
                frac += 1
            elif b[i] != 48:
                big = True
            i += 1
    if i < n and (b[i] == 101 or b[i] == 69):
        is_int = False
        i += 1
        eneg = False
        if i < n and (b[i] == 45 or b[i] == 43):
            eneg = b[i] == 45
            i += 1
        while i < n and 48 <= b[i] <= 57:
            exp = min(exp * 10 + (b[i] - 48), 100000)
            i += 1
        exp = -exp if eneg else exp
    e10 = exp - frac
    if big:
        return 0.0, False, 0, i, 1
    if m == 0:
        return (-0.0 if neg else 0.0), is_int, 0, i, 0
    if e10 == 0:
        v = np.float64(m)
    elif 0 < e10 <= 22 and m < _TWO53:
        v = np.float64(m) * _POW10[e10]
    elif -22 <= e10 < 0 and m < _TWO53:
        v = np.float64(m) / _POW10[-e10]
    elif -26 <= e10 < 0:
        v = _div_pow10(m, -e10)
    else:
        return 0.0, False, 0, i, 1
    return (-v if neg else v), is_int, (-m if neg else m), i, 0


@njit(cache=True)
def _is_delim(c):
    return c == 44 or c == 93 or c == 125 or c == 91 or c == 123 or c == 34 or c <= 32


@njit(cache=True)
def _skip_value(b, i):
    """End of the JSON value at ``i`` (strings, numbers, literals, nested arrays / objects); -1 if broken."""
    n, depth = b.shape[0], 0
    while i < n:
        c = b[i]
        if c == 34:  # string
            i += 1
            while i < n and b[i] != 34:
                i += 2 if b[i] == 92 else 1
            i += 1
        elif c == 91 or c == 123:
            depth += 1
            i += 1
        elif c == 93 or c == 125:
            depth -= 1
            i += 1
        else:
            i += 1
            while i < n and not _is_delim(b[i]):
                i += 1
        i = _ws(b, i)
        if depth == 0:
            return i
        if i < n and b[i] == 44:
            i += 1
    return -1


@njit(cache=True)
def _key_index(b, s, e):
    """Index of the key ``b[s:e]`` in ``_KEYS`` (-1: another key); length and first byte pick the
    candidate, then the bytes are compared."""
    n = e - s
    k = -1
    if n == 8 and b[s] == 105:  # image_id
        k = 0
    elif n == 11 and b[s] == 99:  # category_id
        k = 1
    elif n == 5 and b[s] == 115:  # score
        k = 2
    elif n == 4 and b[s] == 98:  # bbox
        k = 3
    if k < 0:
        return -1
    k0 = _KEY_OFF[k]
    for j in range(1, n):
        if b[s + j] != _KEY_BYTES[k0 + j]:
            return -1
    return k


@njit(cache=True, nogil=True)
def _scan(b, cap, opens, closes):
    """-> (n, ids (n, 2) int64 [image_id, category_id], vals (n, 5) [score, x, y, w, h], slow (S, 3) int64
    [start, end, flat index into vals]) or n = -1 when the bytes are outside the fast schema.

    ``opens`` / ``closes``: the bytes start with ``[`` / end with ``]``; a middle piece of a file (a split
    between two entries) has neither and must end right after an entry's ``}``."""
    ids = np.empty((cap, 2), dtype=np.int64)
    vals = np.empty((cap, 5))
    slow = np.empty((cap * 5, 3), dtype=np.int64)
    n_slow, n = 0, 0
    i = _ws(b, 0)
    if opens:
        if i >= b.shape[0] or b[i] != 91:
            return -1, ids, vals, slow
        i = _ws(b, i + 1)
        if closes and i < b.shape[0] and b[i] == 93 and _ws(b, i + 1) == b.shape[0]:
            return 0, ids, vals, slow[:0]
    while True:
        if n >= cap or i >= b.shape[0] or b[i] != 123:
            return -1, ids, vals, slow
        i = _ws(b, i + 1)
        seen = 0
        while i < b.shape[0] and b[i] == 34:
            s = i + 1
            e = s
            while e < b.shape[0] and b[e] != 34 and b[e] != 92:
                e += 1
            if e >= b.shape[0] or b[e] != 34:
                return -1, ids, vals, slow
            k = _key_index(b, s, e)
            i = _ws(b, e + 1)
            if i >= b.shape[0] or b[i] != 58:
                return -1, ids, vals, slow
            i = _ws(b, i + 1)
            if k == -1:
                i = _skip_value(b, i)
                if i < 0:
                    return -1, ids, vals, slow
            elif seen & (1 << k):
                return -1, ids, vals, slow
            else:
                seen |= 1 << k
                n_num = 4 if k == 3 else 1
                if k == 3:
                    if i >= b.shape[0] or b[i] != 91:
                        return -1, ids, vals, slow
                    i = _ws(b, i + 1)
                for q in range(n_num):
                    start = i
                    v, is_int, iv, i, st = _number(b, i)
                    if st < 0 or (k < 2 and (not is_int or st != 0)):
                        return -1, ids, vals, slow
                    if k < 2:
                        ids[n, k] = iv
                    else:
                        col = 0 if k == 2 else 1 + q
                        vals[n, col] = v
                        if st == 1:
                            slow[n_slow, 0], slow[n_slow, 1] = start, i
                            slow[n_slow, 2] = n * 5 + col
                            n_slow += 1
                    i = _ws(b, i)
                    if k == 3:
                        want = 93 if q == 3 else 44
                        if i >= b.shape[0] or b[i] != want:
                            return -1, ids, vals, slow
                        i = _ws(b, i + 1)
            if i < b.shape[0] and b[i] == 44:
                i = _ws(b, i + 1)
        if seen != 15 or i >= b.shape[0] or b[i] != 125:
            return -1, ids, vals, slow
        n += 1
        i = _ws(b, i + 1)
        if i < b.shape[0] and b[i] == 44:
            i = _ws(b, i + 1)
            continue
        if closes and i < b.shape[0] and b[i] == 93 and _ws(b, i + 1) == b.shape[0]:
            return n, ids, vals, slow[:n_slow]
        if not closes and i == b.shape[0]:
            return n, ids, vals, slow[:n_slow]
        return -1, ids, vals, slow


def _split(data: bytes) -> int:
    """A position near the middle right after an entry's ``}`` (followed by ``,`` and the next ``{``), or
    -1. A split inside a nested value or a string makes one piece fail to scan (then the whole file is
    scanned in one piece), never a wrong result: each piece must hold complete entries only."""
    pos = data.find(b"}", len(data) // 2)
    while pos != -1 and pos < len(data) - 1:
        rest = data[pos + 1 : pos + 64].lstrip()
        if rest.startswith(b",") and rest[1:].lstrip().startswith(b"{"):
            return pos + 1
        pos = data.find(b"}", pos + 1)
    return -1


def _scan_pieces(data: bytes) -> list | None:
    """Scan the file in two pieces on two threads (the compiled scanner releases the GIL), or in one."""
    buf = np.frombuffer(data, dtype=np.uint8)
    cut = _split(data) if len(data) > 4 << 20 else -1
    if cut > 0:
        nxt = data.index(b"{", cut)
        pieces = [(0, buf[:cut], True, False), (nxt, buf[nxt:], False, True)]
        with ThreadPoolExecutor(max_workers=2) as pool:
            outs = list(pool.map(lambda p: _scan(p[1], len(p[1]) // 50 + 2, p[2], p[3]), pieces))
        if all(o[0] >= 0 for o in outs):
            return [(p[0], *o) for p, o in zip(pieces, outs)]
    out = _scan(buf, len(data) // 50 + 2, True, True)  # the shortest entry takes more than 50 bytes
    return [(0, *out)] if out[0] >= 0 else None


def decode_bbox_results(
    data: bytes,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Results-file bytes -> (image_id (N,) int64, category_id (N,) int64, score (N,) float64,
    bbox (N, 4) float64 xywh) in file order, or ``None`` when the file is not in the flat bbox schema."""
    pieces = _scan_pieces(data)
    if pieces is None:
        return None
    ids = np.concatenate([p[2][: p[1]] for p in pieces])
    vals = np.concatenate([p[3][: p[1]] for p in pieces])
    flat, base = vals.reshape(-1), 0
    for offset, n, _ids, _vals, slow in pieces:
        for start, end, idx in slow.tolist():
            flat[base * 5 + idx] = float(data[offset + start : offset + end])
        base += n
    return ids[:, 0], ids[:, 1], vals[:, 0].copy(), vals[:, 1:].copy()
