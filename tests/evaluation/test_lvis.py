"""LVIS federated evaluation vs lvis-api 0.5.3 (v0.5 sample and a small v1 JSON), arrays byte-equal."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from evaluation.lvis import RESULT_KEYS, LVISEvaluator, evaluate, format_table
from tests.evaluation.oracles import assert_bytes_equal, lvis_eval

pytest.importorskip("lvis")


@pytest.fixture(scope="module")
def lvis_gt(shared_data) -> dict:
    return json.loads((shared_data / "lvis_v0.5_val100" / "lvis_val_100.json").read_text())


def federated_dets(gt: dict, seed: int, per_ann: int = 3, flood_image: bool = True) -> list[dict]:
    """Jittered detections labelled with the GT category, a negative category, a not-exhaustive category or
    an unverified one (dropped by the federated filter); one image gets > 300 detections; scores tie."""
    rng = np.random.default_rng(seed)
    imgs = {im["id"]: im for im in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    dets = []
    for a in gt["annotations"]:
        im = imgs[a["image_id"]]
        for _ in range(per_ann):
            b = np.asarray(a["bbox"], float) + rng.normal(0, 0.1, 4) * (np.sqrt(a["area"]) + 1)
            b[2:] = np.abs(b[2:])
            u = rng.random()
            if u < 0.6:
                cat = a["category_id"]
            elif u < 0.75 and im["neg_category_ids"]:
                cat = int(rng.choice(im["neg_category_ids"]))
            elif u < 0.9 and im["not_exhaustive_category_ids"]:
                cat = int(rng.choice(im["not_exhaustive_category_ids"]))
            else:
                cat = int(rng.choice(cat_ids))
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": cat,
                    "bbox": [round(float(v), 1) for v in b],
                    "score": round(float(rng.random()), 2),
                }
            )
    if flood_image:
        a = gt["annotations"][0]
        for _ in range(400):
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox": [float(v + rng.normal(0, 3)) for v in a["bbox"]],
                    "score": round(float(rng.random()), 2),
                }
            )
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [1.0, 1.0, 0.0, 5.0],
                "score": 0.99,
            }
        )  # zero area: lvis-api drops it
    rng.shuffle(dets)
    return dets


def assert_equal_to_oracle(gt, dets, iou_type="bbox", device="cpu"):
    """Byte equality with lvis-api, for the compiled CPU kernel (or CUDA) and the torch path."""
    ref = lvis_eval(gt, dets, iou_type)
    kernels = ("auto", "torch") if torch.device(device).type == "cpu" else ("auto",)
    for kernel in kernels:
        ours = evaluate(gt, copy.deepcopy(dets), iou_type=iou_type, device=device, kernel=kernel)
        assert_bytes_equal(ours["precision"], ref.eval["precision"], f"precision ({kernel})")
        assert_bytes_equal(ours["recall"], ref.eval["recall"], f"recall ({kernel})")
        assert list(RESULT_KEYS) == list(ref.results)
        assert {k: ours[k] for k in RESULT_KEYS} == {k: float(v) for k, v in ref.results.items()}
    return ours


@pytest.mark.parametrize("seed", [0, 1])
def test_v05_federated_bbox(lvis_gt, seed, device):
    gt = copy.deepcopy(lvis_gt)
    for a in gt["annotations"][::17]:
        a["ignore"] = 1  # lvis-api honours the GT ignore flag
    ours = assert_equal_to_oracle(gt, federated_dets(gt, seed), device=device)
    assert ours["APr"] != -1 or ours["APc"] != -1


def test_v05_gt_as_detections(lvis_gt, device):
    rng = np.random.default_rng(7)
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": round(float(rng.random()), 1),
        }
        for a in lvis_gt["annotations"]
    ]
    assert_equal_to_oracle(lvis_gt, dets, device=device)


def test_v05_segm(lvis_gt, device):
    from pycocotools import mask as mask_utils

    gt = copy.deepcopy(lvis_gt)
    gt["images"] = gt["images"][:25]
    keep = {im["id"] for im in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    rng = np.random.default_rng(8)
    dets = []
    for a in gt["annotations"]:
        h, w = sizes[a["image_id"]]
        m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w)))
        m = np.roll(m, tuple(int(v) for v in rng.integers(-3, 4, 2)), (0, 1))
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "segmentation": rle,
                "score": round(float(rng.random()), 1),
            }
        )
    assert_equal_to_oracle(gt, dets, "segm", device=device)


def small_v1(seed: int) -> dict:
    """A LVIS v1-style file: coco_url instead of file_name, 3 frequency groups, neg / not-exhaustive lists."""
    rng = np.random.default_rng(seed)
    cats = [
        {"id": i, "name": f"c{i}", "frequency": "rcf"[i % 3], "image_count": 1, "synset": f"s{i}"}
        for i in range(1, 13)
    ]
    images, anns = [], []
    for i in range(1, 21):
        present = sorted({int(c) for c in rng.choice(12, 3, replace=False) + 1})
        rest = [c["id"] for c in cats if c["id"] not in present]
        images.append(
            {
                "id": i,
                "height": 200,
                "width": 300,
                "coco_url": f"http://x/{i:012d}.jpg",
                "neg_category_ids": rest[:3],
                "not_exhaustive_category_ids": present[:1],
            }
        )
        for c in present:
            for _ in range(int(rng.integers(1, 4))):
                x, y = float(rng.uniform(0, 250)), float(rng.uniform(0, 150))
                bw, bh = float(rng.uniform(5, 50)), float(rng.uniform(5, 50))
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i,
                        "category_id": c,
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                        "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]],
                    }
                )
    return {"images": images, "annotations": anns, "categories": cats}


def test_v1_json_and_streaming_evaluator(device):
    import torch

    gt = small_v1(0)
    dets = federated_dets(gt, 3, per_ann=2, flood_image=False)
    assert_equal_to_oracle(gt, dets, device=device)
    ev = LVISEvaluator(gt, device=device)
    for img in {d["image_id"] for d in dets}:
        ds = [d for d in dets if d["image_id"] == img]
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float64)
        ev.process(
            [{"image_id": img}],
            [
                {
                    "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                    "scores": torch.tensor([d["score"] for d in ds]),
                    "labels": torch.tensor([d["category_id"] for d in ds]),
                }
            ],
        )
    out = ev.evaluate()
    ref = lvis_eval(gt, ev.results())
    assert {k: out[k] for k in RESULT_KEYS} == {k: float(v) for k, v in ref.results.items()}
    assert set(out) == {*RESULT_KEYS, "per_class"}  # the protocol's flat result, no dict round trip
    assert "catIds=  r] =" in format_table(out)
