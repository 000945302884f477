"""Evaluators checked against sources that share nothing with them.

- The streaming COCO / LVIS evaluators and the detection evaluation loop convert model boxes (xyxy) to
  COCO xywh themselves. The oracle here is the official tool run on the RAW detections (xywh written by
  this test), never on the evaluator's own ``results()`` records, so a wrong conversion cannot be wrong
  on both sides.
- The Cityscapes labelId <-> trainId tables are compared with cityscapesscripts' own ``labels.py``.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.cityscapes import LABELS, TRAIN_TO_LABEL, CityscapesEvaluator
from evaluation.coco import STAT_NAMES, COCOEvaluator
from evaluation.lvis import RESULT_KEYS, LVISEvaluator
from tests.evaluation.oracles import cityscapes_eval, coco_eval, lvis_eval
from tests.evaluation.synth import synthetic_frame

pytest.importorskip("pycocotools")

# non-square images, (width, height) deliberately different so a swapped axis changes the result
SIZES = {1: (320, 120), 2: (90, 240), 3: (200, 200), 4: (400, 60)}


def _gt() -> dict:
    """GT with elongated boxes (aspect ratios 1:6 .. 6:1) in all three area ranges."""
    rng = np.random.default_rng(0)
    anns = []
    for img, (w, h) in SIZES.items():
        for _ in range(6):
            bw = float(rng.choice([4, 8, 12, 30, 60, 90])) * 0.5 * (1 + (img % 2))
            bh = float(rng.choice([3, 6, 10, 25, 45])) * (1 + (img == 2))
            bw, bh = min(bw, w - 2), min(bh, h - 2)
            x, y = float(rng.integers(0, w - bw)), float(rng.integers(0, h - bh))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img,
                    "category_id": int(rng.choice([3, 7])),
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    return {
        "images": [
            {"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"}
            for i, (w, h) in SIZES.items()
        ],
        "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
        "annotations": anns,
    }


def _raw_dets(gt: dict, seed: int) -> list[dict]:
    """Jittered xywh detections on a 0.25 grid (exact in float32, so xyxy -> xywh is exact)."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        for _ in range(2):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.15, 4) * np.array([w, h, w, h])
            box = [
                round(4 * v) / 4
                for v in (x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0))
            ]
            cat = a["category_id"] if rng.random() > 0.2 else 10 - a["category_id"]
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": cat,
                    "bbox": box,
                    "score": float(round(rng.random(), 3)),
                }
            )
    return dets


def _as_outputs(dets: list[dict], label_of) -> dict[int, dict]:
    """Raw xywh detections -> per-image model outputs (xyxy float32, the evaluator protocol)."""
    out: dict[int, dict] = {}
    for img in sorted({d["image_id"] for d in dets}):
        ds = [d for d in dets if d["image_id"] == img]
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float32)
        out[img] = {
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
            "scores": torch.tensor([d["score"] for d in ds], dtype=torch.float32).double(),
            "labels": torch.tensor([label_of(d["category_id"]) for d in ds]),
        }
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_coco_evaluator_equals_pycocotools_on_raw_detections(seed: int) -> None:
    gt = _gt()
    dets = _raw_dets(gt, seed)
    ev = COCOEvaluator(gt, label_to_category_id=[3, 7], device="cpu")
    for img, out in _as_outputs(dets, [3, 7].index).items():
        ev.process([{"image_id": img}], [out])
    ref = coco_eval(gt, dets)
    got = ev.evaluate()
    assert [got[k] for k in STAT_NAMES] == [float(v) for v in ref.stats]
    assert (
        0.05 < ref.stats[0] < 0.95
    )  # a discriminating operating point, not all-perfect or all-zero


def test_per_image_cap_keeps_the_top_scoring_detections() -> None:
    """``max_dets_per_image=3`` (COCO challenge rule) vs pycocotools on the raw detections capped HERE:
    the 3 highest scores of each image (stable order for ties)."""
    gt = _gt()
    dets = _raw_dets(gt, 3)
    capped = []
    for img in SIZES:
        mine = [d for d in dets if d["image_id"] == img]
        capped += sorted(mine, key=lambda d: -d["score"])[:3]
    ev = COCOEvaluator(gt, label_to_category_id=[3, 7], device="cpu", max_dets_per_image=3)
    for img, out in _as_outputs(dets, [3, 7].index).items():
        ev.process([{"image_id": img}], [out])
    ref = coco_eval(gt, capped)
    got = ev.evaluate()
    assert [got[k] for k in STAT_NAMES] == [float(v) for v in ref.stats]
    assert ref.stats[8] > 0  # AR100: the kept detections do find objects


def test_streaming_lvis_evaluator_equals_lvis_api_on_raw_detections() -> None:
    from tests.evaluation.test_lvis import federated_dets, small_v1

    gt = small_v1(1)
    dets = [
        dict(d, bbox=[round(4 * v) / 4 for v in d["bbox"]], score=float(np.float32(d["score"])))
        for d in federated_dets(gt, 2, per_ann=2, flood_image=False)
    ]
    dets = [d for d in dets if d["bbox"][2] > 0 and d["bbox"][3] > 0]
    ev = LVISEvaluator(gt, device="cpu")
    for img, out in _as_outputs(dets, lambda c: c).items():
        ev.process([{"image_id": img}], [out])
    ref = lvis_eval(gt, dets)
    got = {k: ev.evaluate()[k] for k in RESULT_KEYS}
    assert got == {k: float(v) for k, v in ref.results.items()}
    assert 0.05 < ref.results["AP"] < 0.95


def _detect_loops():
    """The detection evaluation loop (``tasks.detect.loops``; ``tasks.detect.engine`` before the rename)."""
    for name in ("tasks.detect.loops", "tasks.detect.engine"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "evaluate"):
            return module
    pytest.fail("no detection evaluation loop found (tasks.detect.loops.evaluate)")


def test_detection_eval_loop_boxes_reach_pycocotools_in_original_pixels() -> None:
    """``loops.evaluate``: model on a resized non-square image, boxes mapped to the ORIGINAL size and
    converted to xywh by the evaluator, scored against pycocotools fed detections built here by hand."""
    from tasks.detect.box_denoising import SamplerOptions
    from tests.tasks.detect.model_helpers import random_images, tiny_model

    loops = _detect_loops()
    model = tiny_model(num_classes=2, num_proposals=20).eval()
    resized = random_images([(64, 96)])[0]
    orig_h, orig_w = 160, 360  # x scale 3.75, y scale 2.5: a swapped axis would show
    # what the model detects on the resized image (same generator as the loop: seed + rank 0)
    raw = model.inference(
        [resized], opts=SamplerOptions(steps=1), generator=torch.Generator().manual_seed(0)
    )[0]
    sx, sy = orig_w / 96, orig_h / 64
    boxes = raw["boxes_xyxy"].double() * torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, orig_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, orig_h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, labels = boxes[keep], raw["scores"][keep], raw["labels"][keep]
    assert len(boxes) >= 6
    dets = [
        {
            "image_id": 5,
            "category_id": [11, 12][int(lab)],
            "score": float(s),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
        }
        for b, s, lab in zip(boxes, scores, labels)
    ]
    # GT: three of the detections, rounded to whole pixels (high but not perfect IoU), one missed object
    anns = []
    for d in dets[:6:2]:
        x, y, w, h = (round(v) for v in d["bbox"])
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": 5,
                "category_id": d["category_id"],
                "bbox": [x, y, max(w, 1), max(h, 1)],
                "area": float(max(w, 1) * max(h, 1)),
                "iscrowd": 0,
            }
        )
    anns.append(
        {
            "id": 9,
            "image_id": 5,
            "category_id": 11,
            "bbox": [5, 5, 20, 10],
            "area": 200.0,
            "iscrowd": 0,
        }
    )
    gt = {
        "images": [{"id": 5, "width": orig_w, "height": orig_h, "file_name": "5.jpg"}],
        "categories": [{"id": 11, "name": "a"}, {"id": 12, "name": "b"}],
        "annotations": anns,
    }
    evaluator = COCOEvaluator(gt, label_to_category_id=[11, 12], device="cpu")
    loader = [[{"image": resized, "image_id": 5, "orig_size": (orig_h, orig_w)}]]
    result = loops.evaluate(model, loader, evaluator, device=torch.device("cpu"), steps=1, seed=0)
    ref = coco_eval(gt, dets)
    for got, want in zip([result[k] for k in STAT_NAMES], ref.stats):
        assert math.isclose(got, float(want), rel_tol=1e-6, abs_tol=1e-9)
    assert ref.stats[1] > 0.3  # AP50: the GT copies are found


# ----------------------------------------------------------------------------- Cityscapes tables


def _official_labels():
    pytest.importorskip("cityscapesscripts")
    from cityscapesscripts.helpers import labels as cs_labels

    return cs_labels.labels


def test_label_table_equals_cityscapesscripts_labels_py() -> None:
    official = _official_labels()
    ours = {lb.id: lb for lb in LABELS}
    assert sorted(ours) == sorted(lb.id for lb in official)
    for lb in official:
        o = ours[lb.id]
        assert (o.name, o.train_id, o.category, o.has_instances, o.ignore_in_eval) == (
            lb.name,
            lb.trainId,
            lb.category,
            lb.hasInstances,
            lb.ignoreInEval,
        ), lb.name


def test_train_to_label_lut_equals_the_official_inverse() -> None:
    official = _official_labels()
    inverse = {lb.trainId: lb.id for lb in official if 0 <= lb.trainId < 255}
    assert len(inverse) == 19
    for train_id in range(256):
        want = inverse.get(train_id, 0)  # void / unknown trainIds become "unlabeled" (labelId 0)
        assert int(TRAIN_TO_LABEL[train_id]) == want, train_id


def test_trainid_predictions_score_like_official_labelid_predictions(tmp_path) -> None:
    """CityscapesEvaluator(pred_ids="train") vs the official script on labelId PNGs made with labels.py."""
    official = _official_labels()
    train_to_label = np.zeros(256, np.uint8)
    for lb in official:
        if 0 <= lb.trainId < 255:
            train_to_label[lb.trainId] = lb.id
    label_to_train = np.full(256, 255, np.uint8)
    for lb in official:
        if lb.id >= 0 and 0 <= lb.trainId < 255:
            label_to_train[lb.id] = lb.trainId
    rng = np.random.default_rng(11)
    ev = CityscapesEvaluator(pred_ids="train", device="cpu")
    preds, gts = [], []
    for i in range(3):
        _, gt, inst = synthetic_frame(rng)
        pred_t = rng.integers(0, 19, gt.shape).astype(np.uint8)
        hit = rng.random(gt.shape) < 0.6
        pred_t[hit] = np.where(label_to_train[gt[hit]] == 255, 3, label_to_train[gt[hit]])
        ev.process_frame(pred_t, gt, inst, name=f"frankfurt_{i:06d}_000019")
        Image.fromarray(train_to_label[pred_t]).save(tmp_path / f"p{i}.png")
        Image.fromarray(gt).save(tmp_path / f"g{i}.png")
        preds.append(tmp_path / f"p{i}.png")
        gts.append(tmp_path / f"g{i}.png")
    ref = cityscapes_eval(preds, gts, tmp_path, inst_level=False)
    ours = ev.official()
    for name, want in ref["classScores"].items():
        got = ours["classScores"][name]
        assert (math.isnan(got) and math.isnan(want)) or got == want, name
    assert ours["averageScoreClasses"] == ref["averageScoreClasses"]
