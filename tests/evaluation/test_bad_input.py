"""Malformed inputs raise a ValueError naming the entry; the CLI prints tables and writes --json."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from evaluation.__main__ import main
from evaluation.coco import COCOEvaluator, evaluate

GT = {
    "images": [{"id": 1, "height": 50, "width": 60}, {"id": 2, "height": 50, "width": 60}],
    "categories": [{"id": 7, "name": "cat"}],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 7,
            "bbox": [5, 5, 20, 20],
            "area": 400.0,
            "iscrowd": 0,
            "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]],
        }
    ],
}


def det(**kw):
    d = {"image_id": 1, "category_id": 7, "bbox": [5.0, 5.0, 20.0, 20.0], "score": 0.9}
    d.update(kw)
    return d


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"score": float("nan")}, r"result #1 \(image_id=1\) has score nan"),
        ({"score": float("inf")}, r"result #1 \(image_id=1\) has score inf"),
        ({"image_id": 99}, "result #1 has unknown image_id 99"),
        ({"category_id": 3}, "result #1 has unknown category_id 3"),
        ({"bbox": [1.0, 1.0, -2.0, 3.0]}, "result #1 .* negative box size"),
        ({"bbox": [1.0, 1.0, 3.0]}, r"result #1 .* has bbox \[1.0, 1.0, 3.0\]"),
    ],
)
def test_bad_results_name_the_entry(bad, match):
    with pytest.raises(ValueError, match=match):
        evaluate(GT, [det(), det(**bad)], device="cpu")


def test_missing_keys_and_wrong_mask_size():
    d = det()
    del d["score"]
    with pytest.raises(ValueError, match="result #1 .* has no 'score'"):
        evaluate(GT, [det(), d], device="cpu")
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.ones((40, 60), np.uint8)))
    with pytest.raises(
        ValueError, match=r"result #0: mask size \[40, 60\] differs from image 1 size \[50, 60\]"
    ):
        evaluate(
            GT,
            [{"image_id": 1, "category_id": 7, "segmentation": rle, "score": 0.5}],
            iou_type="segm",
            device="cpu",
        )
    bad_gt = json.loads(json.dumps(GT))
    del bad_gt["annotations"][0]["area"]
    with pytest.raises(ValueError, match="annotation #0 \\(id=1\\) has no 'area'"):
        evaluate(bad_gt, [det()], device="cpu")
    with pytest.raises(ValueError, match="file .* does not exist"):
        evaluate("/nonexistent/gt.json", [], device="cpu")


def test_evaluator_rejects_unknown_image_and_bad_mask_size():
    ev = COCOEvaluator(GT, iou_type="segm", device="cpu")
    out = {
        "boxes": torch.zeros(1, 4),
        "scores": torch.ones(1),
        "labels": torch.tensor([7]),
        "masks": torch.zeros(1, 10, 10, dtype=torch.bool),
    }
    with pytest.raises(ValueError, match="unknown image_id 5"):
        ev.process([{"image_id": 5}], [out])
    with pytest.raises(ValueError, match=r"masks for image 1 are \(10, 10\), image is \(50, 60\)"):
        ev.process([{"image_id": 1}], [out])


def test_cli_coco_and_json(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "dt.json").write_text(json.dumps([det()]))
    assert (
        main(
            [
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
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in text
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["AP"] > 0.999 and out["per_class"]["cat"] == out["AP"]  # eps quirk: 1 - 2**-52
    (tmp_path / "bad.json").write_text(json.dumps([det(score=None)]))
    assert (
        main(
            [
                "coco",
                "--gt",
                str(tmp_path / "gt.json"),
                "--dt",
                str(tmp_path / "bad.json"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "result #0" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "evaluation", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "coco" in r.stdout and "cityscapes" in r.stdout


def test_cli_lvis_and_cityscapes(tmp_path, capsys):
    from PIL import Image

    from tests.evaluation.synth import synthetic_frame

    lvis_gt = dict(GT, categories=[{"id": 7, "name": "cat", "frequency": "f"}])
    lvis_gt["images"] = [
        dict(im, neg_category_ids=[], not_exhaustive_category_ids=[]) for im in GT["images"]
    ]
    (tmp_path / "lvis.json").write_text(json.dumps(lvis_gt))
    (tmp_path / "dt.json").write_text(json.dumps([det()]))
    assert (
        main(
            [
                "lvis",
                "--gt",
                str(tmp_path / "lvis.json"),
                "--dt",
                str(tmp_path / "dt.json"),
                "--device",
                "cpu",
                "--json",
                str(tmp_path / "lvis_out.json"),
            ]
        )
        == 0
    )
    assert "catIds=  f] =" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "lvis_out.json").read_text())) >= {
        "APr",
        "APc",
        "APf",
        "AR@300",
    }

    pred, gt, inst = synthetic_frame(np.random.default_rng(0))
    gdir = tmp_path / "gtFine" / "val" / "ulm"
    gdir.mkdir(parents=True)
    Image.fromarray(gt).save(gdir / "ulm_000001_000019_gtFine_labelIds.png")
    Image.fromarray(inst).save(gdir / "ulm_000001_000019_gtFine_instanceIds.png")
    (tmp_path / "pred").mkdir()
    Image.fromarray(pred).save(tmp_path / "pred" / "ulm_000001_000019_leftImg8bit.png")
    assert (
        main(
            [
                "cityscapes",
                "--gt",
                str(tmp_path / "gtFine"),
                "--pred",
                str(tmp_path / "pred"),
                "--device",
                "cpu",
                "--json",
                str(tmp_path / "cs.json"),
            ]
        )
        == 0
    )
    assert "Score Average" in capsys.readouterr().out
    out = json.loads((tmp_path / "cs.json").read_text())
    assert {"mIoU", "iIoU", "mIoU_category", "iIoU_category", "per_class"} <= set(out)
    (tmp_path / "pred" / "ulm_000001_000019_leftImg8bit.png").unlink()
    assert (
        main(["cityscapes", "--gt", str(tmp_path / "gtFine"), "--pred", str(tmp_path / "pred")])
        == 2
    )
    assert "no prediction PNG for frame ulm_000001_000019" in capsys.readouterr().err


# --- issue 13: one rule for numbers (JSON numbers only), every bad entry named -----------------------


def test_empty_bbox_in_a_middle_entry_names_the_entry(tmp_path):
    dets = [det(), det(), det(bbox=[]), det()]
    with pytest.raises(ValueError, match=r"result #2 \(image_id=1\) has bbox \[\]"):
        evaluate(GT, dets, device="cpu")
    (tmp_path / "dt.json").write_text(
        json.dumps(dets)
    )  # the file path takes the fast decoder first
    with pytest.raises(ValueError, match=r"dt.json: result #2 \(image_id=1\) has bbox \[\]"):
        evaluate(GT, str(tmp_path / "dt.json"), device="cpu")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"score": "0.9"}, r"result #1 \(image_id=1\) has score '0.9'; expected a finite number"),
        (
            {"bbox": ["5", 5.0, 20.0, 20.0]},
            r"result #1 \(image_id=1\) has bbox \['5', 5.0, 20.0, 20.0\]",
        ),
        ({"score": True}, r"result #1 \(image_id=1\) has score True"),
    ],
)
def test_numeric_strings_are_refused_in_results(tmp_path, bad, match):
    dets = [det(), det(**bad)]
    with pytest.raises(ValueError, match=match):
        evaluate(GT, dets, device="cpu")
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with pytest.raises(ValueError, match=match):
        evaluate(GT, str(tmp_path / "dt.json"), device="cpu")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("area", "400", r"annotation #0 \(id=1\) has area '400'; expected a finite number"),
        ("bbox", [5, 5, "20", 20], r"annotation #0 \(id=1\) has bbox \[5, 5, '20', 20\]"),
        ("bbox", [5, 5, float("nan"), 20], r"annotation #0 \(id=1\) has bbox \[5, 5, nan, 20\]"),
        ("area", float("nan"), r"annotation #0 \(id=1\) has area nan"),
    ],
)
def test_gt_numbers_strings_and_nan_are_refused(tmp_path, field, value, match):
    bad_gt = json.loads(json.dumps(GT))
    bad_gt["annotations"][0][field] = value
    with pytest.raises(ValueError, match=match):
        evaluate(bad_gt, [det()], device="cpu")
    (tmp_path / "gt.json").write_text(json.dumps(bad_gt))  # Python writes NaN as a bare token
    with pytest.raises(ValueError, match="gt.json: " + match):
        evaluate(str(tmp_path / "gt.json"), [det()], device="cpu")


def test_nan_token_in_results_file_names_the_entry(tmp_path):
    (tmp_path / "dt.json").write_text(json.dumps([det(), det(score=float("nan"))]))
    with pytest.raises(ValueError, match=r"dt.json: result #1 \(image_id=1\) has score nan"):
        evaluate(GT, str(tmp_path / "dt.json"), device="cpu")


def test_truncated_results_file_names_the_file(tmp_path):
    (tmp_path / "dt.json").write_text(json.dumps([det(), det()])[:-7])
    with pytest.raises(ValueError, match=r"dt.json: not valid JSON"):
        evaluate(GT, str(tmp_path / "dt.json"), device="cpu")
