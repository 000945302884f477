"""COCO keypoint AP vs pycocotools COCOeval(iouType="keypoints") on a generated person-keypoints set."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch

from evaluation.keypoints import KeypointEvaluator, evaluate, format_table
from tests.evaluation.oracles import assert_bytes_equal

pytest.importorskip("pycocotools")

# A standing person in a unit box (x right, y down): nose, eyes, ears, shoulders, elbows, wrists, hips,
# knees, ankles (COCO order).
TEMPLATE = np.array(
    [
        [0.50, 0.08],
        [0.46, 0.06],
        [0.54, 0.06],
        [0.42, 0.08],
        [0.58, 0.08],
        [0.35, 0.22],
        [0.65, 0.22],
        [0.28, 0.38],
        [0.72, 0.38],
        [0.25, 0.52],
        [0.75, 0.52],
        [0.40, 0.55],
        [0.60, 0.55],
        [0.40, 0.76],
        [0.60, 0.76],
        [0.40, 0.97],
        [0.60, 0.97],
    ]
)


def person(rng: np.random.Generator, x: float, y: float, w: float, h: float, p_vis: float):
    """Keypoints of one person in box (x, y, w, h) with visibility 0/1/2 and a little pose noise."""
    pts = TEMPLATE * [w, h] + [x, y] + rng.normal(0, 0.03, TEMPLATE.shape) * [w, h]
    v = rng.choice([0, 1, 2], size=17, p=[1 - p_vis, p_vis * 0.3, p_vis * 0.7])
    kps = []
    for (px, py), vi in zip(pts, v):
        kps += [0, 0, 0] if vi == 0 else [round(float(px), 2), round(float(py), 2), int(vi)]
    return kps, int((v > 0).sum())


def keypoint_dataset(seed: int = 0, n_images: int = 12):
    """GT with small / medium / large people, unlabelled people (num_keypoints 0), crowd regions, an
    image id-0-free annotation list; detections: jittered copies (scores rounded: ties), misses,
    false positives, one image without detections."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    aid = 1
    for i in range(n_images):
        img_id = 100 + i
        images.append({"id": img_id, "width": 640, "height": 480, "file_name": f"{img_id}.jpg"})
        for _ in range(int(rng.integers(1, 6))):
            side = float(rng.choice([20.0, 60.0, 160.0]) * rng.uniform(0.8, 1.3))
            w, h = side * 0.45, side
            x, y = float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h))
            kps, nk = person(rng, x, y, w, h, p_vis=float(rng.choice([0.0, 0.5, 0.9])))
            area = round(w * h * float(rng.uniform(0.5, 0.7)), 2)
            anns.append(
                {
                    "id": aid,
                    "image_id": img_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": area,
                    "keypoints": kps,
                    "num_keypoints": nk,
                }
            )
            aid += 1
            if i == 3:
                continue  # an image without detections
            for _c in range(int(rng.integers(0, 3))):
                noise = rng.normal(0, rng.choice([0.02, 0.06, 0.2]), (17, 2)) * [w, h]
                pts = TEMPLATE * [w, h] + [x, y] + noise
                dkp = [v for p in pts for v in (round(float(p[0]), 2), round(float(p[1]), 2), 1)]
                dets.append(
                    {
                        "image_id": img_id,
                        "category_id": 1,
                        "keypoints": dkp,
                        "score": round(float(rng.random()), 1),
                    }
                )
        if i % 4 == 1:  # a crowd region (no keypoints, ignored, may absorb several detections)
            x, y = float(rng.uniform(0, 400)), float(rng.uniform(0, 300))
            anns.append(
                {
                    "id": aid,
                    "image_id": img_id,
                    "category_id": 1,
                    "iscrowd": 1,
                    "bbox": [x, y, 200.0, 150.0],
                    "area": 25000.0,
                    "keypoints": [0] * 51,
                    "num_keypoints": 0,
                }
            )
            aid += 1
            for _ in range(2):
                pts = TEMPLATE * [60, 130] + [x + 40, y + 10] + rng.normal(0, 3, (17, 2))
                dets.append(
                    {
                        "image_id": img_id,
                        "category_id": 1,
                        "keypoints": [v for p in pts for v in (float(p[0]), float(p[1]), 1)],
                        "score": round(float(rng.random()), 1),
                    }
                )
        for _ in range(int(rng.integers(0, 3))):  # background false positives
            s = float(rng.uniform(20, 200))
            pts = TEMPLATE * [s * 0.45, s] + [rng.uniform(0, 500), rng.uniform(0, 300)]
            dets.append(
                {
                    "image_id": img_id,
                    "category_id": 1,
                    "keypoints": [v for p in pts for v in (float(p[0]), float(p[1]), 1)],
                    "score": round(float(rng.random()), 1),
                }
            )
    rng.shuffle(dets)
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": [f"k{j}" for j in range(17)],
                "skeleton": [],
            }
        ],
    }
    return gt, dets


def coco_kp_eval(gt: dict, dets: list):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_pycocotools(seed):
    gt, dets = keypoint_dataset(seed)
    ref = coco_kp_eval(gt, dets)
    ours = evaluate(gt, dets, device="cpu")
    assert_bytes_equal(ours["precision"], ref.eval["precision"], "precision")
    assert_bytes_equal(ours["recall"], ref.eval["recall"], "recall")
    assert_bytes_equal(ours["scores"], ref.eval["scores"], "scores")
    assert ours["stats"] == ref.stats.tolist()
    assert 0 < ours["stats"][0] < 1 and ours["stats"][3] > -1 and ours["stats"][4] > -1


def test_fixture_covers_the_cases():
    gt, _ = keypoint_dataset(0)
    anns = gt["annotations"]
    assert any(a["iscrowd"] for a in anns)
    assert any(a["num_keypoints"] == 0 and not a["iscrowd"] for a in anns)
    vis = {v for a in anns for v in a["keypoints"][2::3]}
    assert vis == {0, 1, 2}
    areas = [a["area"] for a in anns]
    assert min(areas) < 32**2 < max(areas) and max(areas) > 96**2


def test_streaming_evaluator_and_table():
    gt, dets = keypoint_dataset(1)
    ev = KeypointEvaluator(gt, device="cpu")
    by_img: dict = {}
    for d in dets:
        by_img.setdefault(d["image_id"], []).append(d)
    for img, ds in by_img.items():
        ev.process(
            [{"image_id": img}],
            [
                {
                    "keypoints": torch.tensor([d["keypoints"] for d in ds]).view(-1, 17, 3),
                    "scores": torch.tensor([d["score"] for d in ds]),
                    "labels": torch.zeros(len(ds), dtype=torch.long),
                }
            ],
        )
    res = ev.evaluate()
    ref = coco_kp_eval(gt, [d for ds in by_img.values() for d in ds])
    assert [
        res[k] for k in ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
    ] == pytest.approx(ref.stats.tolist(), abs=0, rel=1e-12)
    assert set(res["per_class"]) == {"person"}
    assert "maxDets= 20" in format_table(res) and len(format_table(res).splitlines()) == 10


def test_wrong_keypoint_count_names_the_entry():
    gt, dets = keypoint_dataset(0)
    bad = copy.deepcopy(dets)
    bad[5]["keypoints"] = bad[5]["keypoints"][:48]
    with pytest.raises(ValueError, match=r"result #5 .*48 keypoint values, expected 51"):
        evaluate(gt, bad, device="cpu")
    bad_gt = copy.deepcopy(gt)
    bad_gt["annotations"][2]["keypoints"] = [1, 2, 2] * 16
    aid = bad_gt["annotations"][2]["id"]
    with pytest.raises(ValueError, match=rf"annotation id={aid}: 48 keypoint values"):
        evaluate(bad_gt, dets, device="cpu")
    nan = copy.deepcopy(dets)
    nan[0]["keypoints"][4] = float("nan")
    with pytest.raises(ValueError, match="result #0 .*NaN"):
        evaluate(gt, nan, device="cpu")


def test_oks_matrix_bits():
    """Every (detection, GT) OKS equals ``COCOeval.computeOks`` bit for bit (incl. GTs without labels)."""
    from evaluation.coco_data import GroundTruth
    from evaluation.keypoints import COCO_SIGMAS, gt_keypoints, oks_pairs, parse_keypoint_results

    gt, dets = keypoint_dataset(3, n_images=30)
    ref = coco_kp_eval(gt, dets)
    g = GroundTruth.from_dataset(gt, require=("area", "bbox", "keypoints"))
    gkp, gbox, _ = gt_keypoints(g, 17)
    res = parse_keypoint_results(dets, g, 17)
    area = np.array([a["area"] for a in g.anns], dtype=np.float64)
    n_cells = 0
    for (img_id, _cat), ious in ref.ious.items():
        if len(ious) == 0:
            continue
        gi = np.nonzero(g.ann_img == g.img_rank[img_id])[0]
        di = np.nonzero(res["img"] == g.img_rank[img_id])[0]
        di = di[np.argsort(-res["score"][di], kind="mergesort")][:20]
        dd, gg = np.repeat(di, len(gi)), np.tile(gi, len(di))
        ours = oks_pairs(res["kps"][dd], gkp[gg], gbox[gg], area[gg], COCO_SIGMAS)
        assert_bytes_equal(ours.reshape(len(di), len(gi)), np.asarray(ious), f"OKS image {img_id}")
        n_cells += 1
    assert n_cells >= 20


def test_cli(tmp_path, capsys):
    import json

    from evaluation.__main__ import main

    gt, dets = keypoint_dataset(2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    args = [
        "keypoints",
        "--gt",
        str(tmp_path / "gt.json"),
        "--dt",
        str(tmp_path / "dt.json"),
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "out.json"),
    ]
    assert main(args) == 0
    assert "area=medium | maxDets= 20" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out.json").read_text())
    names = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
    assert [saved[k] for k in names] == coco_kp_eval(gt, dets).stats.tolist()
    assert set(saved) == {*names, "per_class"}
    dets[3]["keypoints"] = dets[3]["keypoints"][:50]
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    assert main(args) == 2
    assert "result #3" in capsys.readouterr().err


@pytest.mark.gpu
def test_cuda_equals_cpu():
    gt, dets = keypoint_dataset(0)
    a, b = evaluate(gt, dets, device="cpu"), evaluate(gt, dets, device="cuda")
    for key in ("precision", "recall", "scores"):
        assert_bytes_equal(b[key], a[key], key)
