"""Official tools used as test oracles (pycocotools 2.0.11, lvis 0.5.3, cityscapesscripts 2.3.0).

numpy shims needed by the official packages on numpy 2.4 are applied here, inside tests only.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np


def coco_eval(
    gt: dict, dets: list, iou_type: str = "bbox", max_dets=(1, 10, 100), use_cats: bool = True
):
    """Run pycocotools COCOeval quietly on deep copies; returns the COCOeval object (eval, stats)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        res = coco.loadRes(copy.deepcopy(dets)) if dets else COCO()
        if not dets:  # loadRes([]) crashes on anns[0]; an empty result set is a valid COCO object
            res.dataset = {
                "images": copy.deepcopy(gt["images"]),
                "categories": copy.deepcopy(gt["categories"]),
                "annotations": [],
            }
            res.createIndex()
        ev = COCOeval(coco, res, iou_type)
        ev.params.maxDets = list(max_dets)
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def lvis_eval(gt: dict | str, dets: list, iou_type: str = "bbox"):
    """lvis-api 0.5.3 LVISEval (with the ``np.float = float`` shim it needs on numpy >= 1.24)."""
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]
    from lvis import LVIS, LVISEval, LVISResults

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, dict):
            lv = LVIS.__new__(LVIS)
            import logging

            lv.logger = logging.getLogger("lvis")
            lv.dataset = copy.deepcopy(gt)
            lv._create_index()
        else:
            lv = LVIS(gt)
        res = LVISResults(lv, copy.deepcopy(dets))
        ev = LVISEval(lv, res, iou_type)
        ev.run()
    return ev


def assert_bytes_equal(a: np.ndarray, b: np.ndarray, name: str) -> None:
    """Byte equality of two float64 arrays with a readable failure message."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
    if a.tobytes() != b.tobytes():
        diff = np.argwhere(a != b)
        raise AssertionError(
            f"{name}: {len(diff)} cells differ, first {diff[:3].tolist()}: "
            f"{a[tuple(diff[0])]!r} vs {b[tuple(diff[0])]!r}"
        )


def cityscapes_eval(pred_paths: list, gt_paths: list, tmp_dir, inst_level: bool = True) -> dict:
    """cityscapesscripts 2.3.0 ``evaluateImgLists`` (shim: ``np.in1d`` was removed in numpy 2.4)."""
    import os

    if not hasattr(np, "in1d"):
        np.in1d = lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel()  # type: ignore[attr-defined]
    os.environ.setdefault("CITYSCAPES_EXPORT_DIR", str(tmp_dir))
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    cs.args.JSONOutput = False
    cs.args.quiet = True
    cs.args.evalInstLevelScore = inst_level
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cs.evaluateImgLists(
                [str(p) for p in pred_paths], [str(p) for p in gt_paths], cs.args
            )
    finally:
        cs.args.evalInstLevelScore = True
