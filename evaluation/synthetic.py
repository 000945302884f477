"""Synthetic COCO / LVIS / Cityscapes inputs for the speed benchmarks (``benchmarks/eval_speed.py``,
``benchmarks/cityscapes_speed.py``): the same seed gives the same inputs, so figures are comparable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def synth_coco(
    n_images: int,
    dets_per_image: int,
    n_cats: int = 80,
    seed: int = 0,
    segm: bool = False,
    hw: tuple[int, int] = (480, 640),
    with_lvis: bool = False,
) -> tuple[dict, list]:
    """COCO-like GT (~7 objects / image in 2-4 categories, 1% crowd, log-uniform sizes) and detections
    (jittered copies of GTs, category confusions, background boxes; scores rounded to 3 decimals -> ties)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    cats = [{"id": i + 1, "name": f"c{i + 1}", "frequency": "rcf"[i % 3]} for i in range(n_cats)]
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        img_cats = rng.choice(n_cats, int(rng.integers(2, 5)), replace=False) + 1
        im = {"id": i, "height": h, "width": w}
        n_gt = max(1, int(rng.poisson(7)))
        side = np.exp(rng.uniform(np.log(8), np.log(400), n_gt))
        ar = np.exp(rng.normal(0, 0.4, n_gt))
        bw, bh = np.minimum(side * ar, w - 1), np.minimum(side / ar, h - 1)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        gcat = rng.choice(img_cats, n_gt)
        for j in range(n_gt):
            box = [round(float(v), 2) for v in (x[j], y[j], bw[j], bh[j])]
            a = {
                "id": len(anns) + 1,
                "image_id": i,
                "category_id": int(gcat[j]),
                "bbox": box,
                "area": round(box[2] * box[3] * float(rng.uniform(0.5, 0.9)), 2),
                "iscrowd": int(rng.random() < 0.01),
            }
            if segm or with_lvis:
                x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                a["segmentation"] = [[cx, y0, x1, cy, cx, y1, x0, cy]]  # a diamond polygon
            anns.append(a)
        if with_lvis:
            rest = np.setdiff1d(np.arange(1, n_cats + 1), img_cats)
            im["neg_category_ids"] = [int(c) for c in rng.choice(rest, 5, replace=False)]
            im["not_exhaustive_category_ids"] = [int(img_cats[0])]
        images.append(im)
        k = 0
        while k < dets_per_image:
            if rng.random() < 0.7:
                j = int(rng.integers(n_gt))
                b = np.array([x[j], y[j], bw[j], bh[j]]) + rng.normal(0, 0.1, 4) * np.sqrt(
                    bw[j] * bh[j]
                )
                b[2:] = np.abs(b[2:]) + 1
                c = int(gcat[j]) if rng.random() < 0.8 else int(rng.choice(img_cats))
            else:
                s = float(np.exp(rng.uniform(np.log(8), np.log(300))))
                b = np.array([rng.uniform(0, w - s), rng.uniform(0, h - s), s, s])
                c = (
                    int(rng.integers(1, n_cats + 1))
                    if not with_lvis
                    else int(rng.choice(np.r_[img_cats, im["neg_category_ids"]]))
                )
            dets.append(
                {
                    "image_id": i,
                    "category_id": c,
                    "bbox": [round(float(v), 2) for v in b],
                    "score": round(float(rng.beta(2, 3)), 3),
                }
            )
            k += 1
    gt = {"images": images, "annotations": anns, "categories": cats}
    if segm:
        dets = _segm_dets(gt, dets)
    return gt, dets


def _segm_dets(gt: dict, dets: list) -> list:
    """Detections as RLE masks (rasterised diamonds of the detection boxes)."""
    from pycocotools import mask as mask_utils

    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    out = []
    for d in dets:
        x0, y0, bw, bh = d["bbox"]
        cx, cy = x0 + bw / 2, y0 + bh / 2
        h, w = sizes[d["image_id"]]
        rle = mask_utils.frPyObjects([[cx, y0, x0 + bw, cy, cx, y0 + bh, x0, cy]], h, w)[0]
        rle["counts"] = rle["counts"].decode()
        out.append(
            {
                "image_id": d["image_id"],
                "category_id": d["category_id"],
                "segmentation": rle,
                "score": d["score"],
            }
        )
    return out


def synth_cityscapes(
    root: Path, n_frames: int, n_unique: int, hw=(1024, 2048), seed: int = 3
) -> list:
    """Write ``n_unique`` blocky Cityscapes frames (labelIds, instanceIds, labelId prediction) and hard-link
    them under ``n_frames`` names. Returns the decoded unique frames."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = hw
    frames = []
    for u in range(n_unique):
        gt = np.full((h, w), 7, np.uint8)
        inst = np.full((h, w), 7, np.uint16)
        for k in range(60):
            lab = int(
                rng.choice(
                    [8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0, 4]
                )
            )
            y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
            bh, bw = int(rng.integers(8, h // 3)), int(rng.integers(8, w // 4))
            gt[y : y + bh, x : x + bw] = lab
            inst[y : y + bh, x : x + bw] = lab * 1000 + k if lab >= 24 else lab
        pred = gt.copy()
        for _ in range(80):
            y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
            pred[y : y + int(rng.integers(4, 120)), x : x + int(rng.integers(4, 200))] = int(
                rng.choice([7, 8, 21, 26, 24, 0])
            )
        frames.append((pred, gt, inst))
        for name, arr in (("pred", pred), ("gtFine_labelIds", gt), ("gtFine_instanceIds", inst)):
            Image.fromarray(arr).save(root / f"u{u}_{name}.png")
    gt_dir, pred_dir = root / "gtFine" / "val" / "city", root / "pred"
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir()
    for i in range(n_frames):
        u, stem = i % n_unique, f"city_{i:06d}_000019"
        os.link(root / f"u{u}_gtFine_labelIds.png", gt_dir / f"{stem}_gtFine_labelIds.png")
        os.link(root / f"u{u}_gtFine_instanceIds.png", gt_dir / f"{stem}_gtFine_instanceIds.png")
        os.link(root / f"u{u}_pred.png", pred_dir / f"{stem}_pred.png")
    return frames
