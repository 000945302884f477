"""Panoptic quality: hand-computed golden cases, cityscapesscripts ``evalPanopticSemanticLabeling`` (the
panopticapi algorithm) and hotcoco's PQ as oracles on a generated COCO-panoptic fixture (PNG + JSON)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.panoptic import (
    PanopticEvaluator,
    accumulate,
    cityscapes_categories,
    evaluate,
    format_table,
    image_stats,
)

CATS = [
    {"id": 1, "name": "sky", "isthing": 0},
    {"id": 2, "name": "road", "isthing": 0},
    {"id": 3, "name": "person", "isthing": 1},
    {"id": 4, "name": "car", "isthing": 1},
    {"id": 5, "name": "tree", "isthing": 0},  # never present: excluded from the means
]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _segments_info(ids: np.ndarray, cats: dict, crowd: set) -> list[dict]:
    out = []
    for sid in sorted(cats):
        area = int((ids == sid).sum())
        if area:
            out.append(
                {
                    "id": int(sid),
                    "category_id": cats[sid],
                    "area": area,
                    "iscrowd": int(sid in crowd),
                    "bbox": [0, 0, 1, 1],
                }
            )
    return out


def panoptic_frame(rng: np.random.Generator, h: int = 48, w: int = 64):
    """GT: sky / road stuff, people and cars, a crowd of people, VOID pixels. Prediction: boundaries
    moved, a car split, a person missed, category confusions, a segment on VOID, one in the crowd."""
    gt = np.zeros((h, w), np.int64)
    cats: dict[int, int] = {}

    def new_id(cat):
        sid = int(rng.integers(1, 2**24))
        while sid in cats:
            sid = int(rng.integers(1, 2**24))
        cats[sid] = cat
        return sid

    sky, road = new_id(1), new_id(2)
    gt[: h // 3] = sky
    gt[h // 2 :] = road
    things = []
    for _ in range(int(rng.integers(2, 6))):
        cat = int(rng.choice([3, 4]))
        sid = new_id(cat)
        y, x = int(rng.integers(h // 4, h - 10)), int(rng.integers(0, w - 12))
        hh, ww = int(rng.integers(4, 12)), int(rng.integers(3, 12))
        gt[y : y + hh, x : x + ww] = sid
        things.append(sid)
    crowd = set()
    if rng.random() < 0.7:
        cid = new_id(3)
        gt[h // 3 : h // 3 + 5, w - 20 : w - 4] = cid
        crowd.add(cid)
    gt[rng.random((h, w)) < 0.03] = 0  # VOID speckle
    gt[:3, :6] = 0

    pred = np.zeros_like(gt)
    pcats: dict[int, int] = {}
    remap = {}
    for sid in sorted(set(np.unique(gt).tolist()) - {0}):
        if sid in things and rng.random() < 0.15:
            continue  # missed
        cat = cats[sid]
        if rng.random() < 0.1:
            cat = {1: 2, 2: 1, 3: 4, 4: 3}[cat]
        nid = int(rng.integers(1, 2**24))
        remap[sid] = nid
        pcats[nid] = cat
        pred[gt == sid] = nid
    shift = int(rng.integers(-2, 3))
    pred = np.roll(pred, shift, axis=1)
    for sid in things:  # split some cars in two
        if sid in remap and cats[sid] == 4 and rng.random() < 0.4:
            ys, xs = np.nonzero(pred == remap[sid])
            half = xs > np.median(xs)
            nid = int(rng.integers(1, 2**24))
            pcats[nid] = 4
            pred[ys[half], xs[half]] = nid
    for _ in range(2):  # false positives, one on VOID
        nid = int(rng.integers(1, 2**24))
        pcats[nid] = int(rng.choice([3, 4]))
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        pred[y : y + 3, x : x + 4] = nid
    nid = int(rng.integers(1, 2**24))
    pcats[nid] = 3
    pred[:3, :6] = nid  # on VOID: ignored
    pred[rng.random((h, w)) < 0.02] = 0
    pcats = {k: v for k, v in pcats.items() if (pred == k).any()}
    gcats = {k: v for k, v in cats.items() if (gt == k).any()}
    return gt, _segments_info(gt, gcats, crowd), pred, _segments_info(pred, pcats, set())


def write_fixture(root, n: int = 8, seed: int = 0, categories=CATS):
    rng = np.random.default_rng(seed)
    for d in ("gt", "pred"):
        (root / d).mkdir(parents=True, exist_ok=True)
    gt_json = {"images": [], "annotations": [], "categories": categories}
    pred_json = {"annotations": []}
    frames = []
    for i in range(n):
        gt, ginfo, pred, pinfo = panoptic_frame(rng)
        name = f"img_{i:04d}.png"
        Image.fromarray(id_to_rgb(gt)).save(root / "gt" / name)
        Image.fromarray(id_to_rgb(pred)).save(root / "pred" / name)
        gt_json["images"].append(
            {
                "id": i,
                "file_name": name.replace("png", "jpg"),
                "height": gt.shape[0],
                "width": gt.shape[1],
            }
        )
        gt_json["annotations"].append({"image_id": i, "file_name": name, "segments_info": ginfo})
        pred_json["annotations"].append({"image_id": i, "file_name": name, "segments_info": pinfo})
        frames.append((gt, ginfo, pred, pinfo))
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_json))
    return gt_json, pred_json, frames


def official(root, tmp_path):
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    with contextlib.redirect_stdout(io.StringIO()):
        return evaluatePanoptic(
            str(root / "gt.json"),
            str(root / "gt"),
            str(root / "pred.json"),
            str(root / "pred"),
            str(tmp_path / "res.json"),
        )


def test_golden_hand_computed():
    # GT: A (stuff 1, area 8), B (thing 2, area 4), C (crowd of 2, area 2), 2 VOID pixels.
    gt = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 3, 3], [2, 2, 0, 0]])
    # Prediction: X (cat 1, 7 px), Y (cat 2, 1 px), Z (cat 2, 3 px), W (cat 2, on crowd + VOID)
    pr = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 6], [7, 7, 8, 8], [7, 0, 8, 8]])
    cats = {1: {"id": 1, "isthing": 0}, 2: {"id": 2, "isthing": 1}}
    ginfo = [
        {"id": 1, "category_id": 1, "area": 8, "iscrowd": 0},
        {"id": 2, "category_id": 2, "area": 4, "iscrowd": 0},
        {"id": 3, "category_id": 2, "area": 2, "iscrowd": 1},
    ]
    pinfo = [
        {"id": 5, "category_id": 1},
        {"id": 6, "category_id": 2},
        {"id": 7, "category_id": 2},
        {"id": 8, "category_id": 2},
    ]
    res = accumulate([image_stats(gt, pr, ginfo, pinfo, cats)], cats)
    # A-X: 7 / (7 + 8 - 7) = 0.875 TP; B-Z: 3 / 4 = 0.75 TP; Y: FP; W: 4/4 on VOID + crowd -> ignored
    assert res["per_class"][1] == {"pq": 0.875, "sq": 0.875, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert res["per_class"][2]["pq"] == 0.75 / 1.5 and res["per_class"][2]["rq"] == 1 / 1.5
    assert res["All"] == {
        "pq": (0.875 + 0.5) / 2,
        "sq": (0.875 + 0.75) / 2,
        "rq": (1.0 + 1 / 1.5) / 2,
        "n": 2,
    }
    assert res["Things"]["pq"] == 0.5 and res["Stuff"]["pq"] == 0.875


def test_golden_half_iou_and_void_rule():
    cats = {1: {"id": 1, "isthing": 1}}
    gt = torch.tensor([[1, 1, 0, 0]])
    ginfo = [{"id": 1, "category_id": 1, "area": 2, "iscrowd": 0}]
    # IoU exactly 0.5 is not a match (strict >): 2 / (4 + 2 - 2) when the prediction covers no VOID...
    pr = torch.tensor([[9, 9, 9, 9]])
    gt2 = torch.tensor([[1, 1, 4, 4]])
    ginfo2 = ginfo + [{"id": 4, "category_id": 1, "area": 2, "iscrowd": 0}]
    st = image_stats(gt2, pr, ginfo2, [{"id": 9, "category_id": 1}], cats)
    assert st.matches == [] and st.fn == {1: 2} and st.fp == {1: 1}
    # ... while VOID pixels leave the union: 2 / (4 + 2 - 2 - 2) = 1 -> match
    st = image_stats(gt, pr, ginfo, [{"id": 9, "category_id": 1}], cats)
    assert st.matches == [(1, 1.0)] and st.fp == {} and st.fn == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_cityscapesscripts_panoptic(tmp_path, seed):
    pytest.importorskip("cityscapesscripts")
    root = tmp_path / "data"
    write_fixture(root, n=9, seed=seed)
    ref = official(root, tmp_path)
    ours = evaluate(
        root / "gt.json", root / "pred.json", device="cpu", chunks=multiprocessing.cpu_count()
    )
    for name in ("All", "Things", "Stuff"):
        assert ours[name] == ref[name], name
    assert ours["per_class"].keys() == ref["per_class"].keys()
    for cid, v in ref["per_class"].items():
        assert {k: ours["per_class"][cid][k] for k in v} == v, cid
    assert 0.2 < ours["All"]["pq"] < 0.95
    assert ours["Things"]["n"] == 2 and ours["Stuff"]["n"] == 2  # "tree" never occurs
    table = format_table(ours, {c["id"]: c for c in CATS})
    assert "Things" in table and "person" in table


def test_equal_to_hotcoco(tmp_path):
    hotcoco = pytest.importorskip("hotcoco.panoptic")
    root = tmp_path / "data"
    write_fixture(root, n=9, seed=3)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = hotcoco.pq_compute(
            str(root / "gt.json"),
            str(root / "pred.json"),
            gt_folder=str(root / "gt"),
            pred_folder=str(root / "pred"),
        )
    ours = evaluate(root / "gt.json", root / "pred.json", device="cpu")
    for name in ("All", "Things", "Stuff"):
        for m in ("pq", "sq", "rq"):
            assert ours[name][m] == ref[name][m], (name, m)  # one sequential IoU sum, like hotcoco
        assert ours[name]["n"] == ref[name]["n"]
    for cid, v in ours["per_class"].items():
        if "tp" in v:
            assert v["pq"] == ref["per_class"][cid]["pq"], cid
            assert v["tp"] == ref["per_class"][cid]["tp"] and v["fp"] == ref["per_class"][cid]["fp"]


def test_cityscapes_categories_and_streaming(tmp_path):
    pytest.importorskip("cityscapesscripts")
    cs = cityscapes_categories()
    assert len(cs) == 19 and sum(c["isthing"] for c in cs) == 8
    # relabel the fixture with Cityscapes labelIds: sky 23, road 7, person 24, car 26
    lut = {1: 23, 2: 7, 3: 24, 4: 26}
    root = tmp_path / "data"
    gt_json, pred_json, frames = write_fixture(root, n=6, seed=4, categories=cs)
    for js in (gt_json, pred_json):
        for a in js["annotations"]:
            for s in a["segments_info"]:
                s["category_id"] = lut[s["category_id"]]
    (root / "gt.json").write_text(json.dumps(gt_json))
    (root / "pred.json").write_text(json.dumps(pred_json))
    ref = official(root, tmp_path)
    ours = evaluate(
        root / "gt.json", root / "pred.json", device="cpu", chunks=multiprocessing.cpu_count()
    )
    assert {k: ours[k] for k in ("All", "Things", "Stuff")} == {
        k: ref[k] for k in ("All", "Things", "Stuff")
    }
    ev = PanopticEvaluator(root / "gt.json", gt_folder=root / "gt", device="cpu")
    for i, (_g, _gi, pred, pinfo) in enumerate(frames):
        info = copy.deepcopy(pinfo)  # (already relabelled above: the same dicts)
        if i % 2:  # as masks
            masks = torch.stack([torch.from_numpy(pred == s["id"]) for s in info])
            ev.process([{"image_id": i}], [{"panoptic_seg": (masks, info)}])
        else:
            ev.process([{"image_id": i}], [{"panoptic_seg": (torch.from_numpy(pred), info)}])
    flat = ev.evaluate()
    assert all(isinstance(v, float) for k, v in flat.items() if not k.startswith("per_"))
    assert "Things" in format_table(flat)
    assert flat["PQ"] == pytest.approx(ref["All"]["pq"], rel=1e-12)
    assert flat["PQ_th"] == pytest.approx(ref["Things"]["pq"], rel=1e-12)
    assert set(flat["per_class"]) <= {c["name"] for c in cs}


def test_bad_input_names_the_entry(tmp_path):
    root = tmp_path / "data"
    gt_json, pred_json, frames = write_fixture(root, n=3, seed=5)
    bad = copy.deepcopy(pred_json)
    dropped = bad["annotations"][1]["segments_info"].pop(0)["id"]
    with pytest.raises(
        ValueError, match=rf"image 1 .*prediction PNG holds segment ids \[{dropped}\]"
    ):
        evaluate(root / "gt.json", bad, pred_folder=root / "pred", device="cpu")
    bad = copy.deepcopy(pred_json)
    bad["annotations"][2]["segments_info"].append({"id": 77, "category_id": 3})
    with pytest.raises(ValueError, match=r"image 2 .*lists ids \[77\] that are not in its PNG"):
        evaluate(root / "gt.json", bad, pred_folder=root / "pred", device="cpu")
    bad = copy.deepcopy(pred_json)
    bad["annotations"][0]["segments_info"][0]["category_id"] = 99
    with pytest.raises(ValueError, match=r"image 0 .*unknown category_id 99"):
        evaluate(root / "gt.json", bad, pred_folder=root / "pred", device="cpu")
    # overlapping segments given as masks
    _g, _gi, pred, pinfo = frames[0]
    masks = torch.stack([torch.from_numpy(pred == s["id"]) for s in pinfo])
    masks[1, 5, 7] = masks[0, 5, 7] = True
    ev = PanopticEvaluator(root / "gt.json", device="cpu")
    a, b = pinfo[0]["id"], pinfo[1]["id"]
    with pytest.raises(ValueError, match=rf"image 0: segments \[{a}, {b}.*\] overlap .*y=5, x=7"):
        ev.process([{"image_id": 0}], [{"panoptic_seg": (masks, pinfo)}])
    # a truncated PNG names the file
    png = root / "pred" / "img_0001.png"
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(ValueError, match="img_0001.png"):
        evaluate(root / "gt.json", root / "pred.json", device="cpu")


def test_cli(tmp_path, capsys):
    from evaluation.__main__ import main

    root = tmp_path / "data"
    write_fixture(root, n=4, seed=6)
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "panoptic",
                "--gt",
                str(root / "gt.json"),
                "--pred",
                str(root / "pred.json"),
                "--device",
                "cpu",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "Things" in text and "person" in text
    saved = json.loads(out.read_text())
    ref = evaluate(root / "gt.json", root / "pred.json", device="cpu")
    assert saved["PQ"] == ref["All"]["pq"] and saved["PQ_st"] == ref["Stuff"]["pq"]


@pytest.mark.gpu
def test_cuda_equals_cpu(tmp_path):
    root = tmp_path / "data"
    write_fixture(root, n=5, seed=8)
    a = evaluate(root / "gt.json", root / "pred.json", device="cpu")
    b = evaluate(root / "gt.json", root / "pred.json", device="cuda")
    assert {k: a[k] for k in ("All", "Things", "Stuff", "per_class")} == {
        k: b[k] for k in ("All", "Things", "Stuff", "per_class")
    }
