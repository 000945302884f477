"""Analysis: per-class AP table, PR-curve PNGs, TIDE-style error breakdown (one call and the CLI)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from evaluation.analysis import (
    ERROR_TYPES,
    analyze,
    error_breakdown,
    format_errors,
    per_class_table,
    plot_pr_curves,
)
from evaluation.coco import evaluate
from tests.evaluation.synth import jittered_dets


def _box_gt(boxes):
    """One 300x300 image; boxes: [(category_id, [x, y, w, h]), ...]."""
    anns = [
        {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, (c, b) in enumerate(boxes)
    ]
    return {
        "images": [{"id": 1, "width": 300, "height": 300}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def golden():
    gt = _box_gt([(1, [0, 0, 10, 10]), (2, [50, 50, 10, 10]), (1, [100, 100, 10, 10])])
    d = lambda c, b, s: {"image_id": 1, "category_id": c, "bbox": b, "score": s}  # noqa: E731
    dets = [
        d(1, [0, 0, 10, 10], 0.9),  # TP
        d(1, [0, 0, 10, 10], 0.8),  # duplicate of the TP's GT
        d(2, [0, 0, 10, 10], 0.7),  # classification (IoU 1 with a class-1 GT)
        d(2, [55, 55, 10, 10], 0.6),  # localisation: IoU 25 / 175 with its class-2 GT
        d(1, [55, 50, 10, 10], 0.5),  # both: IoU 50 / 150 with a class-2 GT
        d(1, [200, 200, 10, 10], 0.4),  # background; GT 3 (class 1 at 100, 100) is missed
    ]
    return gt, dets


def test_golden_error_breakdown():
    gt, dets = golden()
    res = error_breakdown(gt, dets)
    assert res["counts"] == {t: 1 for t in ERROR_TYPES}
    # class a: TP then 3 FPs (dup 0.8, both 0.5, bkg 0.4) over 2 GT: precision 1 at the 51 recall
    # thresholds 0 .. 0.50 of 101 -> 51 / 101; class b: the cls (0.7) and loc (0.6) errors, no TP -> 0
    assert res["AP50"] == pytest.approx(51 / 101 / 2, abs=1e-12)
    # fixing localisation: det 4 becomes b's TP after the 0.7 FP: precision 1/2 at every threshold
    assert res["dAP"]["localisation"] == pytest.approx(0.5 / 2, abs=1e-12)
    # fixing classification: det 3 becomes class a, but GT 1 is taken -> dropped; b is unchanged
    assert res["dAP"]["classification"] == pytest.approx(0.0, abs=1e-12)
    # removing the missed GT: class a finds 1 of 1 first -> AP 1.0
    assert res["dAP"]["missed"] == pytest.approx(1.0 / 2 - 51 / 101 / 2, abs=1e-12)
    for t in ("duplicate", "both", "background"):
        assert res["dAP"][t] >= 0
    assert "localisation" in format_errors(res)


def test_ap50_close_to_cocoeval_and_per_class_table(shared_data):
    gt = json.loads(
        (shared_data / "coco_tiny" / "annotations" / "instances_val2017.json").read_text()
    )
    ids = {im["id"] for im in gt["images"]}
    dets = [d for d in jittered_dets(gt, seed=0) if d["image_id"] in ids]
    res = error_breakdown(gt, dets)
    ref = evaluate(gt, dets, device="cpu")
    assert abs(res["AP50"] - ref["stats"][1]) < 0.03
    assert sum(res["counts"].values()) > 0
    rows, table = per_class_table(
        ref["precision"], [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    )
    for name, v in ref["per_class"].items():
        assert (math.isnan(v) and math.isnan(rows[name]["AP"])) or rows[name]["AP"] == v
    assert len(table.splitlines()) == len(rows) + 1


def test_pr_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    gt, dets = golden()
    out = evaluate(gt, dets, device="cpu")
    paths = plot_pr_curves(out["precision"], tmp_path / "plots")
    assert [p.name for p in paths] == [
        "pr_all.png",
        "pr_small.png",
        "pr_medium.png",
        "pr_large.png",
    ]
    with Image.open(paths[0]) as im:
        assert im.size == (500, 400)
        assert len(np.unique(np.asarray(im.convert("L")))) > 5  # something was drawn
    assert not list((tmp_path / "plots").glob("*.tmp"))


def test_one_call_and_cli(tmp_path):
    pytest.importorskip("matplotlib")
    from evaluation.__main__ import main

    gt, dets = golden()
    res = analyze(gt, dets, plots_dir=tmp_path / "p1", device="cpu")
    assert res["errors"]["counts"]["missed"] == 1 and len(res["plots"]) == 4
    assert "a" in res["per_class"] and res["per_class_table"].startswith("category")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    rc = main(
        [
            "coco",
            "--gt",
            str(tmp_path / "gt.json"),
            "--dt",
            str(tmp_path / "dt.json"),
            "--device",
            "cpu",
            "--plots",
            str(tmp_path / "p2"),
            "--errors",
            "--json",
            str(tmp_path / "out.json"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "p2" / "pr_all.png").is_file()
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["errors"]["counts"]["duplicate"] == 1
    assert "per_class_table" in saved
