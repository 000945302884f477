"""Area-range boundaries and degenerate boxes vs pycocotools: whole arrays byte-equal.

COCO's ranges are [0, 32^2], [32^2, 96^2], [96^2, 1e10] with BOTH ends inclusive (reference §1.5: an area of
exactly 1024 is small AND medium). Ground truth uses the annotation ``area``; detections use w * h. The cases
sit exactly on 32^2 and 96^2, one ULP either side, at zero area, and on elongated boxes (1:16 .. 16:1) whose
areas would change if width and height were read from the wrong axis of a non-square image.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest

from evaluation.coco import evaluate
from tests.evaluation.oracles import assert_bytes_equal, coco_eval

pytest.importorskip("pycocotools")

SMALL, LARGE = 32.0**2, 96.0**2
# every matching kernel the evaluator has on the CPU ("auto" = compiled, "torch" = the CUDA code path)
KERNELS = ("auto", "torch") if "kernel" in inspect.signature(evaluate).parameters else (None,)


def _evaluate(gt: dict, dets: list, kernel: str | None) -> dict:
    extra = {} if kernel is None else {"kernel": kernel}
    return evaluate(gt, copy.deepcopy(dets), device="cpu", **extra)


BOUNDARY_AREAS = [
    SMALL,
    LARGE,
    np.nextafter(SMALL, 0),
    np.nextafter(SMALL, 2e4),
    np.nextafter(LARGE, 0),
    np.nextafter(LARGE, 2e4),
]


def _gt() -> dict:
    """One 640 x 160 image per case family; GT boxes whose annotation area sits on the boundaries."""
    images = [{"id": i, "width": 640, "height": 160, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    anns = []
    # image 1: square-ish GT boxes whose annotation area is exactly / next to a boundary
    for k, area in enumerate(BOUNDARY_AREAS):
        side = float(np.sqrt(area))
        anns.append(
            {
                "image_id": 1,
                "category_id": 1,
                "bbox": [10.0 + 100 * k, 10.0, side, min(side, 140.0)],
                "area": float(area),
                "iscrowd": 0,
            }
        )
    # image 2: elongated boxes with w * h exactly 1024 and 9216 (16 x 64, 64 x 16, 576 x 16, 16 x 144 ...)
    for k, (w, h) in enumerate([(16, 64), (64, 16), (576, 16), (96, 96), (128, 8), (8, 128)]):
        anns.append(
            {
                "image_id": 2,
                "category_id": 2,
                "bbox": [float(k * 10), float(k * 2), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": 0,
            }
        )
    # image 3: a zero-area GT (area 0, zero width) next to an ordinary one
    anns.append(
        {
            "image_id": 3,
            "category_id": 1,
            "bbox": [50.0, 50.0, 0.0, 20.0],
            "area": 0.0,
            "iscrowd": 0,
        }
    )
    anns.append(
        {
            "image_id": 3,
            "category_id": 1,
            "bbox": [200.0, 40.0, 40.0, 30.0],
            "area": 1200.0,
            "iscrowd": 0,
        }
    )
    for i, a in enumerate(anns):
        a["id"] = i + 1
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def _dets(gt: dict) -> list[dict]:
    """Matches and misses whose detection area (w * h) lands on the boundaries, plus zero-area boxes."""
    dets = []
    score = iter(np.linspace(0.95, 0.05, 200).round(4).tolist())
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x + 0.5, y, w, h],
                "score": next(score),
            }
        )
    # unmatched false positives with area exactly on / next to each boundary (only they are area-ignored)
    for k, area in enumerate(BOUNDARY_AREAS):
        for w in (8.0, 32.0, 128.0):
            dets.append(
                {
                    "image_id": 3,
                    "category_id": 1,
                    "bbox": [300.0 + k, 100.0 - k, w, float(area) / w],
                    "score": next(score),
                }
            )
    # zero-area detections: width 0, height 0, both 0
    for bbox in ([50.0, 50.0, 0.0, 20.0], [210.0, 45.0, 20.0, 0.0], [5.0, 5.0, 0.0, 0.0]):
        dets.append({"image_id": 3, "category_id": 1, "bbox": bbox, "score": next(score)})
    # elongated detections on image 2 in the other category (w and h swapped: same area, IoU changes)
    for w, h in ((16, 64), (576, 16)):
        dets.append(
            {
                "image_id": 2,
                "category_id": 2,
                "bbox": [0.0, 0.0, float(h), float(w)],
                "score": next(score),
            }
        )
    return dets


@pytest.mark.parametrize("kernel", KERNELS)
def test_boundary_areas_equal_pycocotools_arrays(kernel) -> None:
    gt = _gt()
    dets = _dets(gt)
    ours = _evaluate(gt, dets, kernel)
    ref = coco_eval(gt, dets)
    for key in ("precision", "recall", "scores"):
        assert_bytes_equal(ours[key], ref.eval[key], key)
    assert ours["stats"] == [float(v) for v in ref.stats]


@pytest.mark.parametrize("kernel", KERNELS)
def test_exact_boundary_gt_counts_in_both_ranges(kernel) -> None:
    """One GT of area exactly 32^2 and a perfect detection: recall 1 in BOTH small and medium."""
    gt = {
        "images": [{"id": 1, "width": 100, "height": 50, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10.0, 5.0, 64.0, 16.0],
                "area": SMALL,
                "iscrowd": 0,
            }
        ],
    }
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10.0, 5.0, 64.0, 16.0], "score": 0.9}]
    ours = _evaluate(gt, dets, kernel)
    ref = coco_eval(gt, dets)
    assert ours["stats"] == [float(v) for v in ref.stats]
    _, _, _, aps, apm, apl, *_ = ours["stats"]
    assert (
        aps == pytest.approx(1.0) and apm == pytest.approx(1.0) and apl == -1.0
    )  # numpy mean of 1.0s
    # one ULP above the boundary: medium only
    gt["annotations"][0]["area"] = float(np.nextafter(SMALL, 2e4))
    ours = _evaluate(gt, dets, kernel)
    assert ours["stats"][3:6] == [-1.0, pytest.approx(1.0), -1.0]
    assert ours["stats"] == [float(v) for v in coco_eval(gt, dets).stats]


@pytest.mark.parametrize("kernel", KERNELS)
def test_unmatched_detection_exactly_on_boundary_is_a_false_positive_in_both_ranges(kernel) -> None:
    """GT of area 500 (small) found by a detection; a second, unmatched detection of area exactly 32^2
    (16 x 64) scoring higher is an FP for 'small' (not ignored: inclusive bound), lowering APs below 1."""
    gt = {
        "images": [{"id": 1, "width": 200, "height": 100, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10.0, 10.0, 25.0, 20.0],
                "area": 500.0,
                "iscrowd": 0,
            }
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 25.0, 20.0], "score": 0.5},
        {"image_id": 1, "category_id": 1, "bbox": [100.0, 20.0, 64.0, 16.0], "score": 0.9},
    ]
    ours = _evaluate(gt, dets, kernel)
    assert ours["stats"] == [float(v) for v in coco_eval(gt, dets).stats]
    assert 0.0 < ours["stats"][3] < 1.0  # APs: the boundary FP counts
    dets[1]["bbox"] = [100.0, 20.0, 64.0, 16.25]  # area 1040 > 1024: ignored for 'small'
    ours = _evaluate(gt, dets, kernel)
    assert ours["stats"] == [float(v) for v in coco_eval(gt, dets).stats]
    assert ours["stats"][3] == pytest.approx(1.0)
