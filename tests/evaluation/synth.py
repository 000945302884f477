"""Synthetic test inputs shared by the evaluation tests (no oracle imports here)."""

from __future__ import annotations

import numpy as np


def jittered_dets(gt: dict, seed: int, copies: int = 3) -> list[dict]:
    """Noisy boxes around GTs (some with a wrong category), scores rounded to 0.1 (many ties), plus false
    positives on an empty image and in categories without GT; one image gets no detections."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    skip_img = gt["annotations"][0]["image_id"]
    dets = []
    for a in gt["annotations"]:
        if a["image_id"] == skip_img:
            continue
        for _ in range(copies):
            b = np.asarray(a["bbox"], dtype=np.float64) + rng.normal(0, 0.08, 4) * (
                np.sqrt(a["area"]) + 1
            )
            b[2:] = np.abs(b[2:])
            cat = a["category_id"] if rng.random() > 0.15 else int(rng.choice(cat_ids))
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": cat,
                    "bbox": [round(float(v), 1) for v in b],
                    "score": round(float(rng.random()), 1),
                }
            )
    for _ in range(20):
        dets.append(
            {
                "image_id": 900001,
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [float(rng.uniform(0, 200)), float(rng.uniform(0, 100)), 30.0, 40.0],
                "score": round(float(rng.random()), 1),
            }
        )
    rng.shuffle(dets)
    return dets


def synthetic_frame(rng: np.random.Generator, h: int = 96, w: int = 160):
    """Blocky labelIds with instances (labelId*1000+k), plus a noisy labelId prediction."""
    gt = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.uint16)
    for _ in range(14):
        lab = int(rng.choice([7, 8, 11, 21, 23, 17, 24, 25, 26, 27, 28, 29, 31, 33, 4, 9, 0]))
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        hh, ww = int(rng.integers(4, h // 2)), int(rng.integers(4, w // 2))
        gt[y : y + hh, x : x + ww] = lab
    inst[:] = gt
    k = 0
    for lab in (24, 25, 26, 27, 28, 29, 31, 33):
        ys, xs = np.nonzero(gt == lab)
        if len(ys) and rng.random() > 0.2:
            k += 1
            sel = (gt == lab) & (np.arange(w)[None, :] < xs.min() + (xs.max() - xs.min()) // 2 + 1)
            inst[sel] = lab * 1000 + k
    pred = gt.copy()
    noise = rng.random((h, w)) < 0.25
    pred[noise] = rng.choice([0, 7, 8, 11, 24, 25, 26, 27, 29, 30, 33, 21], size=int(noise.sum()))
    return pred, gt, inst
