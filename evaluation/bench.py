"""Speed benchmark: ours vs the official tools (and faster-coco-eval) on the same synthetic inputs, one process.

    python -m evaluation.bench                      # all workloads, default sizes (a few minutes on 2 cores)
    python -m evaluation.bench --only coco --device cuda --check-ref .devcarry/ref

Prints wall times and ratios, and checks that every tool's output equals pycocotools / lvis-api /
cityscapesScripts (byte equality of the precision / recall arrays; number of differing cells otherwise).
Workloads: COCO bbox val2017-sized (5000 images, ~7 GT / image, 80 categories, 100 detections / image),
COCO segm (smaller), LVIS-style federated (1203 categories, 300 detections / image), Cityscapes
(1024x2048 frames; PNG whole job and decoded-array metric).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs (CUDA synchronised) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


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


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def run_pycocotools(gt: dict, dets: list, iou_type: str):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with quiet():
        c = COCO()
        c.dataset = gt
        c.createIndex()
        e = COCOeval(c, c.loadRes(dets), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def run_fce(gt: dict, dets: list, iou_type: str):
    from faster_coco_eval import COCO, COCOeval_faster

    with quiet():
        c = COCO(gt)
        e = COCOeval_faster(c, c.loadRes(dets), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def cells_differ(a: np.ndarray, b: np.ndarray) -> int:
    return int((a != b).sum()) if a.shape == b.shape else -1


def bench_coco(args, iou_type: str, n_images: int, dets_per_image: int, rows: list) -> None:
    from evaluation.coco import evaluate
    from evaluation.coco_data import GroundTruth, parse_results

    gt, dets = synth_coco(
        n_images, dets_per_image, segm=iou_type == "segm", seed=1 if iou_type == "segm" else 0
    )
    name = f"COCO {iou_type} ({n_images} img, {len(gt['annotations'])} GT, {len(dets)} dets)"
    ref = None
    times: dict[str, float] = {}
    if args.check_ref:
        ref = dict(np.load(Path(args.check_ref) / f"coco_{iou_type}.npz"))
    if not args.skip_official:
        times["pycocotools"], e = timed(
            lambda: run_pycocotools(copy.deepcopy(gt), copy.deepcopy(dets), iou_type)
        )
        ref = {"precision": e.eval["precision"], "recall": e.eval["recall"]}
        if args.save_ref:
            os.makedirs(args.save_ref, exist_ok=True)
            np.savez_compressed(Path(args.save_ref) / f"coco_{iou_type}.npz", **ref)
        try:
            times["faster-coco-eval"], f = timed(
                lambda: run_fce(copy.deepcopy(gt), copy.deepcopy(dets), iou_type)
            )
            rows.append(
                (
                    name,
                    "faster-coco-eval vs pycocotools: differing precision cells",
                    cells_differ(f.eval["precision"], ref["precision"]),
                )
            )
        except ImportError:
            pass
    for dev in args.devices:
        evaluate(
            gt, dets[:1000], iou_type=iou_type, device=dev
        )  # warm-up (lazy init, CUDA context)
        t, out = timed(
            lambda dev=dev: evaluate(gt, dets, iou_type=iou_type, device=dev), repeat=args.repeat
        )
        times[f"ours {dev}"] = t
        gtp = GroundTruth.from_dataset(gt, require=("area",))
        res = parse_results(dets, gtp, iou_type)
        evaluate(gtp, res, iou_type=iou_type, device=dev)  # warm-up (also caches the GT tables)
        times[f"ours {dev} (pre-parsed GT + results)"], _ = timed(
            lambda dev=dev, gtp=gtp, res=res: evaluate(gtp, res, iou_type=iou_type, device=dev),
            repeat=args.repeat,
        )
        if ref is not None:
            same = (
                out["precision"].tobytes() == ref["precision"].tobytes()
                and out["recall"].tobytes() == ref["recall"].tobytes()
            )
            rows.append((name, f"ours {dev}: precision+recall byte-equal to pycocotools", same))
    _report(name, times, rows)


def bench_lvis(args, rows: list) -> None:
    from evaluation.lvis import evaluate

    gt, dets = synth_coco(args.lvis_images, 300, n_cats=1203, seed=2, with_lvis=True)
    name = f"LVIS bbox ({args.lvis_images} img, 1203 cats, {len(dets)} dets)"
    times: dict[str, float] = {}
    ref = dict(np.load(Path(args.check_ref) / "lvis.npz")) if args.check_ref else None
    if not args.skip_official:
        if not hasattr(np, "float"):
            np.float = float  # lvis-api 0.5.3 needs it on numpy >= 1.24 (benchmark process only)
        from lvis import LVIS, LVISEval, LVISResults

        def official():
            import logging

            lv = LVIS.__new__(LVIS)
            lv.logger = logging.getLogger("lvis")
            lv.dataset = copy.deepcopy(gt)
            lv._create_index()
            e = LVISEval(lv, LVISResults(lv, copy.deepcopy(dets)), "bbox")
            e.run()
            return e

        times["lvis-api"], e = timed(official)
        ref = {"precision": e.eval["precision"], "recall": e.eval["recall"]}
        if args.save_ref:
            np.savez_compressed(Path(args.save_ref) / "lvis.npz", **ref)
    for dev in args.devices:
        evaluate(gt, dets[:1000], device=dev)
        t, out = timed(lambda dev=dev: evaluate(gt, dets, device=dev), repeat=args.repeat)
        times[f"ours {dev}"] = t
        if ref is not None:
            rows.append(
                (
                    name,
                    f"ours {dev}: precision+recall byte-equal to lvis-api",
                    out["precision"].tobytes() == ref["precision"].tobytes()
                    and out["recall"].tobytes() == ref["recall"].tobytes(),
                )
            )
    _report(name, times, rows)


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


def bench_cityscapes(args, rows: list) -> None:
    from evaluation.cityscapes import CityscapesEvaluator, evaluate_dirs, find_frames

    n = args.cs_frames
    name = f"Cityscapes ({n} frames 1024x2048)"
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames = synth_cityscapes(root, n, args.cs_unique)
        triples = find_frames(root / "gtFine", root / "pred")
        ref = None
        if not args.skip_official:
            if not hasattr(np, "in1d"):
                np.in1d = lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel()
            os.environ.setdefault("CITYSCAPES_EXPORT_DIR", tmp)
            from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

            cs.args.JSONOutput, cs.args.quiet = False, True
            times["cityscapesScripts (PNG)"], ref = timed(
                lambda: cs.evaluateImgLists(
                    [str(p) for p, _, _ in triples], [str(g) for _, g, _ in triples], cs.args
                )
            )
        for dev in args.devices:
            t, out = timed(
                lambda dev=dev: evaluate_dirs(
                    root / "gtFine", root / "pred", device=dev, progress=False, workers=args.workers
                )
            )
            times[f"ours {dev} (PNG, {args.workers} decode threads)"] = t
            if ref is not None:
                keys = (
                    "averageScoreClasses",
                    "averageScoreInstClasses",
                    "averageScoreCategories",
                    "averageScoreInstCategories",
                    "confMatrix",
                )
                rows.append(
                    (
                        name,
                        f"ours {dev}: official averages + confusion equal",
                        all(out[k] == ref[k] for k in keys),
                    )
                )
            dev_frames = [
                tuple(
                    torch.from_numpy(a.astype(np.int32) if a.dtype == np.uint16 else a).to(dev)
                    for a in f
                )
                for f in frames
            ]

            def metric(dev=dev, dev_frames=dev_frames):
                ev = CityscapesEvaluator(device=dev)
                for i in range(n):
                    ev.process(*dev_frames[i % len(dev_frames)])
                return ev.evaluate()

            metric()
            times[f"ours {dev} (metric on decoded arrays)"], _ = timed(metric)
    if "cityscapesScripts (PNG)" in times:
        rows.append(
            (
                name,
                "cityscapesScripts per frame [s]",
                round(times["cityscapesScripts (PNG)"] / n, 4),
            )
        )
    _report(name, times, rows)


def _report(name: str, times: dict[str, float], rows: list) -> None:
    base = next(iter(times.values()))
    base_name = next(iter(times))
    for k, v in times.items():
        rows.append((name, f"{k} [s]", round(v, 3)))
        if k != base_name:
            rows.append((name, f"speed-up of {k} vs {base_name}", round(base / v, 2)))
    print(f"\n== {name}")
    for k, v in times.items():
        print(f"  {k:<55} {v:9.3f} s   x{base / v:7.2f} vs {base_name}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="coco,segm,lvis,cityscapes")
    p.add_argument("--images", type=int, default=5000, help="COCO bbox images")
    p.add_argument("--segm-images", type=int, default=500)
    p.add_argument("--lvis-images", type=int, default=500)
    p.add_argument("--cs-frames", type=int, default=500)
    p.add_argument(
        "--cs-unique", type=int, default=10, help="distinct synthetic frames (hard-linked copies)"
    )
    p.add_argument("--workers", type=int, default=8)
    p.add_argument(
        "--device", action="append", dest="devices", help="cpu and/or cuda (default: cpu [+ cuda])"
    )
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(
        "--skip-official",
        action="store_true",
        help="time ours only (e.g. on a machine without them)",
    )
    p.add_argument("--save-ref", default=None, help="save the official arrays here (.npz)")
    p.add_argument("--check-ref", default=None, help="compare ours with arrays saved by --save-ref")
    p.add_argument("--json", default=None, help="write the result rows here")
    args = p.parse_args(argv)
    args.devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows: list = []
    only = args.only.split(",")
    if "coco" in only:
        bench_coco(args, "bbox", args.images, 100, rows)
    if "segm" in only:
        bench_coco(args, "segm", args.segm_images, 20, rows)
    if "lvis" in only:
        bench_lvis(args, rows)
    if "cityscapes" in only:
        bench_cityscapes(args, rows)
    print("\n== checks")
    for name, what, val in rows:
        if not what.endswith("[s]") and not what.startswith("speed-up"):
            print(f"  {name}: {what}: {val}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
