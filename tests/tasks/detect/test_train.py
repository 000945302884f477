"""Training entry point: 2 iterations on real COCO images, outputs, logs, and the non-finite-loss guard."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.detect import train
from tests.tasks.detect._tiny import tiny_overrides, tiny_synthetic


def test_train_two_iterations_on_coco_tiny(shared_data, tmp_path):
    root = shared_data / "coco_tiny"
    data = [
        f"data.train_json={root}/annotations/instances_train2017.json",
        f"data.train_images={root}/train2017",
        f"data.val_json={root}/annotations/instances_val2017.json",
        f"data.val_images={root}/val2017",
        "model.head.num_classes=80",
        "test.max_eval_images=3",
        "data.num_workers=1",
    ]
    out = tmp_path / "run"
    metrics = train.main(tiny_overrides(out, data, 2, "checkpoint_period=2"))
    assert set(metrics) == {"steps_1"} and len(metrics["steps_1"]["stats"]) == 12
    for name in (
        "config.yaml",
        "log.txt",
        "log.jsonl",
        "metrics.json",
        "checkpoint_0000002.pt",
        "model_final.pt",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["type"] == "train"]
    assert [r["iteration"] for r in train_recs] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in train_recs)
    assert any(r["type"] == "eval" and r["steps"] == 1 for r in records)
    assert json.loads((out / "metrics.json").read_text())["steps_1"]["bbox"].keys() >= {
        "AP",
        "AP50",
        "APs",
    }


def test_non_finite_loss_raises_with_loss_dict(tmp_path, monkeypatch):
    data = tiny_synthetic(tmp_path / "synth")
    from tasks.detect import model as model_module

    real_build = model_module.build_detector

    def build_nan(cfg):
        det = real_build(cfg)
        forward = det.forward

        def nan_forward(images, targets=None):
            losses = forward(images, targets)
            losses["loss_giou"] = losses["loss_giou"] * float("nan")
            return losses

        det.forward = nan_forward
        return det

    monkeypatch.setattr(model_module, "build_detector", build_nan)
    with pytest.raises(FloatingPointError, match="loss_giou.*nan"):
        train.main(tiny_overrides(tmp_path / "run", data, 2))


def test_mismatched_num_classes_is_a_clear_error(tmp_path):
    data = tiny_synthetic(tmp_path / "synth")
    with pytest.raises(ValueError, match="num_classes=6"):
        train.main(tiny_overrides(tmp_path / "run", data, 1, "model.head.num_classes=3"))


def test_evaluate_writes_detections_metrics_and_drawings(tmp_path):
    from tasks.detect import evaluate

    data = tiny_synthetic(tmp_path / "synth")
    train.main(tiny_overrides(tmp_path / "run", data, 1, "checkpoint_period=1"))
    out = tmp_path / "eval"
    weights = tmp_path / "run" / "model_final.pt"
    metrics = evaluate.main(
        [
            "--weights",
            str(weights),
            "--vis",
            "2",
            "--vis-threshold",
            "0",
            *tiny_overrides(out, data, 1),
        ]
    )
    assert len(metrics["steps_1"]["stats"]) == 12
    dets = json.loads((out / "detections_steps1.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} <= dets[0].keys()
    assert {d["category_id"] for d in dets} <= set(range(1, 7))  # mapped back to category ids
    assert len(list((out / "vis").glob("*.png"))) == 2


def test_fed_loss_weights_come_from_class_image_counts():
    from tasks.common.config import load_config
    from tasks.common.dist import DistInfo
    from tasks.detect.config import DetectConfig
    from tasks.detect.train import build_model
    from tests.tasks.detect._tiny import TINY_MODEL

    cfg = load_config(
        DetectConfig, None, TINY_MODEL + ["model.head.num_classes=3", "model.loss.use_fed_loss=true"]
    )
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    model = build_model(cfg, info, [4, 9, 1])
    torch.testing.assert_close(model.criterion.fed_loss_cls_weights, torch.tensor([2.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match="per-class image counts"):
        build_model(cfg, info, None)


def _as_lvis(coco_json: str, images_dir: str, root, split: str) -> str:
    """Rewrites a synthetic COCO split as an LVIS v1 JSON (coco_url, image_count/frequency,
    neg/not-exhaustive ids) with its images under ``root/<split>2017``."""
    import shutil

    data = json.loads(open(coco_json).read())
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    for im in data["images"]:
        shutil.copy(f"{images_dir}/{im['file_name']}", root / f"{split}2017" / im["file_name"])
        im["coco_url"] = f"http://images.cocodataset.org/{split}2017/{im.pop('file_name')}"
        im["neg_category_ids"], im["not_exhaustive_category_ids"] = [], []
    counts = {c["id"]: len({a["image_id"] for a in data["annotations"] if a["category_id"] == c["id"]})
              for c in data["categories"]}
    for c in data["categories"]:
        c["image_count"], c["frequency"] = counts[c["id"]], "rcf"[c["id"] % 3]
    for a in data["annotations"]:
        a.pop("iscrowd", None)
    path = root / f"lvis_v1_{split}.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_lvis_training_end_to_end(tmp_path):
    # LVIS v1 format + federated loss + repeat-factor sampling + the LVIS evaluator, 2 iterations.
    synth = tiny_synthetic(tmp_path / "synth")
    paths = dict(s.split("=", 1) for s in synth if s.startswith("data."))
    root = tmp_path / "lvis"
    data = [
        "data.format=lvis",
        f"data.train_json={_as_lvis(paths['data.train_json'], paths['data.train_images'], root, 'train')}",
        f"data.train_images={root}",
        f"data.val_json={_as_lvis(paths['data.val_json'], paths['data.val_images'], root, 'val')}",
        f"data.val_images={root}",
        "data.repeat_factor_threshold=0.5",
        "model.head.num_classes=6",
        "model.loss.use_fed_loss=true",
        "model.loss.fed_loss_num_classes=3",
    ]
    metrics = train.main(tiny_overrides(tmp_path / "run", data, 2))
    bbox = metrics["steps_1"]["bbox"]
    assert {"AP", "APr", "APc", "APf"} <= bbox.keys()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["type"] == "train"] == [1, 2]
