"""COCO bbox/segm evaluation vs pycocotools 2.0.11: whole precision/recall/scores arrays byte-equal."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from evaluation.coco import STAT_NAMES, COCOEvaluator, evaluate, format_table
from tests.evaluation.oracles import assert_bytes_equal, coco_eval
from tests.evaluation.synth import jittered_dets

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def coco_gt(shared_data) -> dict:
    """coco_tiny val GT plus two images without annotations (one gets detections, one none)."""
    gt = json.loads((shared_data / "coco_tiny/annotations/instances_val2017.json").read_text())
    gt["images"] += [
        {"id": 900001, "height": 300, "width": 400, "file_name": "x.jpg"},
        {"id": 900002, "height": 200, "width": 200, "file_name": "y.jpg"},
    ]
    return gt


def assert_equal_to_oracle(gt, dets, iou_type="bbox", device="cpu", **kw):
    """Byte equality with pycocotools, for the compiled CPU kernel (or CUDA) and the torch path."""
    ref = coco_eval(gt, dets, iou_type, **kw)
    kernels = ("auto", "torch") if torch.device(device).type == "cpu" else ("auto",)
    for kernel in kernels:
        ours = evaluate(
            gt, copy.deepcopy(dets), iou_type=iou_type, device=device, kernel=kernel, **kw
        )
        for key in ("precision", "recall", "scores"):
            assert_bytes_equal(ours[key], ref.eval[key], f"{key} ({kernel})")
        assert ours["stats"] == [float(v) for v in ref.stats]
        assert [ours[k] for k in STAT_NAMES] == ours["stats"]
    return ours, ref


def test_gt_as_detections(coco_gt, device):
    rng = np.random.default_rng(1)
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": round(float(rng.random()), 1),
        }
        for a in coco_gt["annotations"]
        if not a["iscrowd"]
    ]
    ours, _ = assert_equal_to_oracle(coco_gt, dets, device=device)
    assert (
        ours["stats"][1] > 0.99
    )  # sanity: perfect boxes (the exact figure comes from the oracle above)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jittered_with_ties_crowd_and_empty_images(coco_gt, seed, device):
    dets = jittered_dets(coco_gt, seed)
    assert any(a["iscrowd"] for a in coco_gt["annotations"])
    ours, _ = assert_equal_to_oracle(coco_gt, dets, device=device)
    assert (ours["precision"] == -1).any() and (ours["precision"] > 0).any()
    assert set(ours["per_class"]) == {c["name"] for c in coco_gt["categories"]}


def test_more_than_100_detections_per_cell_and_custom_max_dets(coco_gt, device):
    dets = jittered_dets(coco_gt, 3, copies=2)
    a = next(x for x in coco_gt["annotations"] if not x["iscrowd"])
    rng = np.random.default_rng(3)
    for _ in range(150):  # one (image, category) cell with > 100 detections
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [float(v + rng.normal(0, 2)) for v in a["bbox"]],
                "score": round(float(rng.random()), 2),
            }
        )
    assert_equal_to_oracle(coco_gt, dets, device=device)
    assert_equal_to_oracle(
        coco_gt, dets, device=device, max_dets=(1, 10, 50)
    )  # stats[0] = -1 quirk


def test_use_cats_false(coco_gt, device):
    assert_equal_to_oracle(coco_gt, jittered_dets(coco_gt, 4), device=device, use_cats=False)


def test_no_detections(coco_gt):
    ours, _ = assert_equal_to_oracle(coco_gt, [])
    assert ours["stats"][0] == 0.0


def test_quirks_equal_iou_ties_area_boundary_and_id_zero(device):
    """Last equal-IoU GT wins, area exactly 32**2 is small and medium, GT id 0 never counts as matched."""
    gt = {
        "images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100}],
        "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 3,
                "bbox": [0, 0, 20, 20],
                "area": 1024.0,
                "iscrowd": 0,
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "bbox": [10, 0, 20, 20],
                "area": 400.0,
                "iscrowd": 0,
            },
            {
                "id": 0,
                "image_id": 2,
                "category_id": 5,
                "bbox": [5, 5, 40, 40],
                "area": 1600.0,
                "iscrowd": 0,
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 5,
                "bbox": [50, 50, 40, 40],
                "area": 1600.0,
                "iscrowd": 1,
            },
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 3, "bbox": [5, 0, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 3, "bbox": [5, 0, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 5, "bbox": [5, 5, 40, 40], "score": 0.8},
        {"image_id": 2, "category_id": 5, "bbox": [55, 55, 20, 20], "score": 0.7},
        {"image_id": 2, "category_id": 5, "bbox": [60, 60, 20, 20], "score": 0.7},
    ]
    assert_equal_to_oracle(gt, dets, device=device)


def test_segm_jittered_masks(coco_gt, device):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(coco_gt)
    coco.createIndex()
    rng = np.random.default_rng(5)
    anns = [
        a
        for a in coco_gt["annotations"]
        if a["image_id"] in {im["id"] for im in coco_gt["images"][:30]}
    ]
    dets = []
    for a in anns:
        m = mask_utils.decode(coco.annToRLE(a))
        for _ in range(2):
            mm = np.roll(m, tuple(int(v) for v in rng.integers(-4, 5, 2)), (0, 1))
            rle = mask_utils.encode(np.asfortranarray(mm))
            rle["counts"] = rle["counts"].decode()
            cat = a["category_id"] if rng.random() > 0.1 else coco_gt["categories"][0]["id"]
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": cat,
                    "segmentation": rle,
                    "score": round(float(rng.random()), 1),
                }
            )
    assert_equal_to_oracle(coco_gt, dets, iou_type="segm", device=device)
    # results carrying a bbox: pycocotools then uses the box area for the area ranges
    with_box = [
        dict(d, bbox=[float(v) for v in mask_utils.toBbox(d["segmentation"])]) for d in dets
    ]
    assert_equal_to_oracle(coco_gt, with_box, iou_type="segm", device=device)


def test_evaluator_streaming_matches_results_json(coco_gt, device):
    dets = jittered_dets(coco_gt, 6)
    cat_ids = sorted(c["id"] for c in coco_gt["categories"])
    ev = COCOEvaluator(coco_gt, label_to_category_id=cat_ids, device=device, max_dets_per_image=50)
    by_img: dict = {}
    for d in dets:
        by_img.setdefault(d["image_id"], []).append(d)
    for img_id, ds in by_img.items():
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        out = {
            "boxes": boxes,
            "scores": torch.tensor([d["score"] for d in ds], dtype=torch.float32),
            "labels": torch.tensor([cat_ids.index(d["category_id"]) for d in ds]),
        }
        ev.process([{"image_id": img_id}], [out])
    res = ev.evaluate()
    records = ev.results()
    assert max(sum(r["image_id"] == i for r in records) for i in by_img) <= 50
    ref = coco_eval(coco_gt, records)
    assert [res[k] for k in STAT_NAMES] == [float(v) for v in ref.stats]
    assert set(res) == {*STAT_NAMES, "per_class"}  # the protocol's flat result, fractions
    ev.reset()
    assert ev.results() == []


def test_format_table():
    text = format_table(dict(zip(STAT_NAMES, [0.5] * 12)))
    lines = text.splitlines()
    assert len(lines) == 12
    assert (
        lines[0]
        == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500"
    )
    assert lines[11].startswith(
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]"
    )


def test_evaluator_segm_masks(coco_gt, device):
    """Streaming segm: masks (N, H, W) -> RLE records; equal to pycocotools on ``results()``."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(coco_gt)
    coco.createIndex()
    rng = np.random.default_rng(9)
    ev = COCOEvaluator(coco_gt, iou_type="segm", device=device)
    for im in coco_gt["images"][:12]:
        anns = [a for a in coco_gt["annotations"] if a["image_id"] == im["id"]]
        if not anns:
            continue
        masks = np.stack(
            [
                np.roll(mask_utils.decode(coco.annToRLE(a)), int(rng.integers(-3, 4)), 1)
                for a in anns
            ]
        )
        out = {
            "boxes": torch.zeros(len(anns), 4),
            "scores": torch.tensor([round(float(rng.random()), 1) for _ in anns]),
            "labels": torch.tensor([a["category_id"] for a in anns]),
            "masks": torch.from_numpy(masks).float() * 0.9,  # probabilities, thresholded at 0.5
        }
        ev.process([{"image_id": im["id"]}], [out])
    res = ev.evaluate()
    ref = coco_eval(coco_gt, ev.results(), "segm")
    assert [res[k] for k in STAT_NAMES] == [float(v) for v in ref.stats]


def test_cli_class_agnostic_equals_pycocotools_usecats_0(coco_gt, tmp_path, capsys):
    from evaluation.__main__ import main

    dets = jittered_dets(coco_gt, 5)
    rng = np.random.default_rng(7)
    cat_ids = [c["id"] for c in coco_gt["categories"]]
    for d in dets[::3]:  # wrong labels: only the class-agnostic score forgives them
        d["category_id"] = int(rng.choice(cat_ids))
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    args = [
        "coco",
        "--gt",
        str(tmp_path / "gt.json"),
        "--dt",
        str(tmp_path / "dt.json"),
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "out.json"),
    ]
    assert main([*args, "--class-agnostic"]) == 0
    agnostic = json.loads((tmp_path / "out.json").read_text())
    assert agnostic["class_agnostic"] is True
    assert [agnostic[k] for k in STAT_NAMES] == [
        float(v) for v in coco_eval(coco_gt, dets, use_cats=False).stats
    ]
    assert main(args) == 0
    aware = json.loads((tmp_path / "out.json").read_text())
    assert [aware[k] for k in STAT_NAMES] == [float(v) for v in coco_eval(coco_gt, dets).stats]
    assert aware["AP"] < agnostic["AP"]
    capsys.readouterr()
