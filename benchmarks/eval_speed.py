"""COCO / LVIS evaluation speed, the whole job from JSON files: ours beside hotcoco, faster-coco-eval,
pycocotools and lvis-api on the same files in the same process, with equality checks.

    flock /tmp/diffvision-heavy.lock python benchmarks/eval_speed.py
    python benchmarks/eval_speed.py --only bbox --images 1000 --repeat 1    # a quick look

Every tool reads the ground-truth and results files itself (parse, match, accumulate, summarize), best of
``--repeat`` runs. pycocotools / lvis-api take minutes on the full bbox set, so they run on the first
``--official-images`` images (ours runs on that subset too, for the ratio and the byte-equality check).
Checks: ours vs pycocotools (lvis-api) ``precision`` / ``recall`` byte-equal; the other tools' number of
precision cells that differ from ours, and whether their summary numbers are equal to ours.
hotcoco, faster-coco-eval, pycocotools and lvis-api are benchmark / test comparisons only, never
dependencies of the library. The Cityscapes benchmark is ``benchmarks/cityscapes_speed.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import coco, lvis
from evaluation.synthetic import synth_coco


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` runs and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run_ours(gt: Path, dt: Path, iou_type: str) -> dict:
    return coco.evaluate(gt, dt, iou_type=iou_type, device="cpu")


def run_hotcoco(gt: Path, dt: Path, iou_type: str) -> Any:
    import hotcoco

    g = hotcoco.COCO(str(gt))
    e = hotcoco.COCOeval(g, g.loadRes(str(dt)), iou_type)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e


def run_fce(gt: Path, dt: Path, iou_type: str) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    g = COCO(str(gt))
    e = COCOeval_faster(g, g.loadRes(str(dt)), iou_type)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e


def run_pycocotools(gt: Path, dt: Path, iou_type: str) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    g = COCO(str(gt))
    e = COCOeval(g, g.loadRes(str(dt)), iou_type)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return e


def run_lvis_ours(gt: Path, dt: Path, iou_type: str) -> dict:
    return lvis.evaluate(gt, dt, iou_type=iou_type, device="cpu")


def run_lvis_hotcoco(gt: Path, dt: Path, iou_type: str) -> Any:
    import hotcoco

    g = hotcoco.LVIS(str(gt))
    e = hotcoco.LVISEval(g, hotcoco.LVISResults(g, str(dt)), iou_type)
    e.run()
    return e


def run_lvis_api(gt: Path, dt: Path, iou_type: str) -> Any:
    if not hasattr(np, "float"):
        np.float = float  # lvis-api 0.5.3 needs it on numpy >= 1.24 (this process only)
    from lvis import LVIS, LVISEval, LVISResults

    g = LVIS(str(gt))
    e = LVISEval(g, LVISResults(g, str(dt)), iou_type)
    e.run()
    return e


def subset(gt: dict, dets: list, n_images: int) -> tuple[dict, list]:
    keep = {im["id"] for im in gt["images"][:n_images]}
    sub = dict(gt, images=gt["images"][:n_images])
    sub["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    return sub, [d for d in dets if d["image_id"] in keep]


def write(folder: Path, name: str, gt: dict, dets: list) -> tuple[Path, Path]:
    (folder / f"{name}_gt.json").write_text(json.dumps(gt))
    (folder / f"{name}_dt.json").write_text(json.dumps(dets))
    return folder / f"{name}_gt.json", folder / f"{name}_dt.json"


def ours_arrays(out: dict) -> tuple[np.ndarray, np.ndarray]:
    return out["precision"], out["recall"]


def tool_arrays(e: Any) -> tuple[np.ndarray, np.ndarray]:
    ev = e.eval
    return np.asarray(ev["precision"]), np.asarray(ev["recall"])


def compare(name: str, ours: tuple, theirs: tuple, lines: list[str]) -> None:
    p, r = ours
    tp, tr = theirs
    if tp.ndim == p.ndim - 1:  # lvis-api keeps no maxDets axis
        p, r = p[..., 0], r[..., 0]
    if tp.ndim == p.ndim + 1 and tp.shape[-1] == 1:  # hotcoco's LVIS arrays keep it
        tp, tr = tp[..., 0], tr[..., 0]
    same = p.shape == tp.shape and p.tobytes() == tp.tobytes() and r.tobytes() == tr.tobytes()
    cells = int((p != tp).sum()) if p.shape == tp.shape else -1
    lines.append(
        f"  {name}: precision+recall byte-equal: {same} (precision cells differing: {cells})"
    )


def inputs(args, folder: Path, kind: str) -> tuple[dict, list, Path, Path]:
    """The synthetic workload, generated (and written to ``folder``) or read back from ``--inputs``."""
    if args.inputs and (Path(args.inputs) / f"{kind}_gt.json").is_file():
        gt_path, dt_path = (
            Path(args.inputs) / f"{kind}_gt.json",
            Path(args.inputs) / f"{kind}_dt.json",
        )
        return json.loads(gt_path.read_text()), json.loads(dt_path.read_text()), gt_path, dt_path
    if kind == "lvis":
        gt, dets = synth_coco(args.lvis_images, 300, n_cats=1203, seed=2, with_lvis=True)
    else:
        n = args.images if kind == "bbox" else args.segm_images
        gt, dets = synth_coco(
            n, 100 if kind == "bbox" else 20, segm=kind == "segm", seed=int(kind == "segm")
        )
    out = Path(args.inputs) if args.inputs else folder
    out.mkdir(parents=True, exist_ok=True)
    return (gt, dets, *write(out, kind, gt, dets))


def workload(args, folder: Path, kind: str, lines: list[str]) -> None:
    """Time the chosen tools on one workload ("bbox", "segm" or "lvis") and check equality."""
    if kind == "lvis":
        iou_type, ours, tools = "bbox", run_lvis_ours, {"hotcoco": run_lvis_hotcoco}
        official, official_name = run_lvis_api, "lvis-api"
    else:
        iou_type, ours, tools = (
            kind,
            run_ours,
            {"hotcoco": run_hotcoco, "faster-coco-eval": run_fce},
        )
        official, official_name = run_pycocotools, "pycocotools"
    tools = {k: v for k, v in tools.items() if k in args.tools.split(",")}
    gt, dets, gt_path, dt_path = inputs(args, folder, kind)
    title = (
        f"{kind}: {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(dets)} detections"
    )
    print(f"\n== {title}", flush=True)
    best_of(
        lambda: ours(gt_path, dt_path, iou_type), 1
    )  # warm-up: numba kernels load from the cache
    times = {}
    times["ours"], out = best_of(lambda: ours(gt_path, dt_path, iou_type), args.repeat)
    results = {}
    for name, fn in tools.items():
        times[name], results[name] = best_of(
            lambda fn=fn: fn(gt_path, dt_path, iou_type), args.repeat
        )
    for name, t in times.items():
        ratio = "" if name == "ours" else f"   ours is {t / times['ours']:.2f}x faster"
        print(f"  {name:<18} {t:8.3f} s{ratio}", flush=True)
    lines.append(f"{title}:")
    for name, e in results.items():
        compare(f"{name} vs ours", ours_arrays(out), tool_arrays(e), lines)
    if args.official_images > 0:
        n_off = min(args.official_images, len(gt["images"]))
        sg, sd = subset(gt, dets, n_off)
        sg_path, sd_path = write(folder, f"{kind}_sub", sg, sd)
        t_off, e = best_of(lambda: official(sg_path, sd_path, iou_type), 1)
        t_ours, o = best_of(lambda: ours(sg_path, sd_path, iou_type), args.repeat)
        print(
            f"  subset of {n_off} images ({len(sd)} detections): {official_name} {t_off:.3f} s, "
            f"ours {t_ours:.3f} s, ours is {t_off / t_ours:.1f}x faster",
            flush=True,
        )
        compare(
            f"ours vs {official_name} ({n_off}-image subset)", ours_arrays(o), tool_arrays(e), lines
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="bbox,segm,lvis", help="comma list of bbox, segm, lvis")
    p.add_argument(
        "--images", type=int, default=5000, help="COCO bbox images (100 detections each)"
    )
    p.add_argument(
        "--segm-images", type=int, default=500, help="COCO segm images (20 detections each)"
    )
    p.add_argument("--lvis-images", type=int, default=500, help="LVIS images (300 detections each)")
    p.add_argument(
        "--official-images",
        type=int,
        default=500,
        help="pycocotools / lvis-api run on this many images (0: skip them)",
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--tools",
        default="hotcoco,faster-coco-eval",
        help="comma list of the comparisons to time beside ours",
    )
    p.add_argument(
        "--inputs",
        default=None,
        help="keep the generated JSON files in this folder and reuse them on later runs",
    )
    args = p.parse_args(argv)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.only.split(","):
            workload(args, Path(tmp), kind, lines)
    print("\n== checks")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
