"""Training entry point: 2 iterations on real COCO images, outputs, logs, and the non-finite-loss guard."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.detect import train
from tests.tasks.detect._tiny import tiny_overrides, tiny_synthetic


def metric_keys(summary: dict) -> set[str]:
    """Metric names of one evaluation summary: flat (``{"AP": ...}``) or nested by IoU type (``{"bbox": {...}}``)."""
    nested = [set(v) for v in summary.values() if isinstance(v, dict)]
    return set(summary).union(*nested)


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
    metrics = train.run(tiny_overrides(out, data, 2, "checkpoint_period=2"))
    assert set(metrics) == {"steps_1"} and {"AP", "AP50", "APs"} <= metric_keys(metrics["steps_1"])
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
    assert {"AP", "AP50", "APs"} <= metric_keys(
        json.loads((out / "metrics.json").read_text())["steps_1"]
    )


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
        train.run(tiny_overrides(tmp_path / "run", data, 2))


def test_mismatched_num_classes_is_a_clear_error(tmp_path):
    data = tiny_synthetic(tmp_path / "synth")
    with pytest.raises(ValueError, match="num_classes=6"):
        train.run(tiny_overrides(tmp_path / "run", data, 1, "model.head.num_classes=3"))


def test_evaluate_writes_detections_metrics_and_drawings(tmp_path):
    from tasks.detect import evaluate

    data = tiny_synthetic(tmp_path / "synth")
    train.run(tiny_overrides(tmp_path / "run", data, 1, "checkpoint_period=1"))
    out = tmp_path / "eval"
    weights = tmp_path / "run" / "model_final.pt"
    metrics = evaluate.run(
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
    assert {"AP", "AP50", "APs", "APl"} <= metric_keys(metrics["steps_1"])
    dets = json.loads((out / "detections_steps1.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} <= dets[0].keys()
    assert {d["category_id"] for d in dets} <= set(range(1, 7))  # mapped back to category ids
    assert len(list((out / "vis").glob("*.png"))) == 2


def test_fed_loss_weights_come_from_class_image_counts():
    from tasks.common.config import load_config
    from tasks.common.dist import DistInfo
    from tasks.detect.build import build_model
    from tasks.detect.config import DetectConfig
    from tests.tasks.detect._tiny import TINY_MODEL

    cfg = load_config(
        DetectConfig,
        None,
        TINY_MODEL + ["model.head.num_classes=3", "model.loss.use_fed_loss=true"],
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
    counts = {
        c["id"]: len({a["image_id"] for a in data["annotations"] if a["category_id"] == c["id"]})
        for c in data["categories"]
    }
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
    metrics = train.run(tiny_overrides(tmp_path / "run", data, 2))
    assert {"AP", "APr", "APc", "APf"} <= metric_keys(metrics["steps_1"])
    records = [
        json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["iteration"] for r in records if r["type"] == "train"] == [1, 2]


def test_ema_warm_up_is_on_in_detection(tmp_path):
    # decay 0.999 without warm-up would leave the EMA at the initial weights; with it, update k (0-based)
    # uses min(0.999, (1 + k) / (10 + k)): the second update blends 2/11 of the old EMA with 9/11 of the weights
    from tasks.common.checkpoint import load_checkpoint

    data = tiny_synthetic(tmp_path / "synth") + ["data.val_json=null"]
    out = tmp_path / "run"
    assert (
        train.main(
            tiny_overrides(
                out, data, 2, "checkpoint_period=1", "solver.ema=true", "solver.ema_decay=0.999"
            )
        )
        is None
    )  # console scripts exit with main()'s return value
    first = load_checkpoint(out / "checkpoint_0000001.pt")
    second = load_checkpoint(out / "checkpoint_0000002.pt")
    decay = 2 / 11
    for name, ema in second["ema"].items():
        if ema.is_floating_point():
            expected = decay * first["ema"][name] + (1 - decay) * second["model"][name]
            torch.testing.assert_close(ema, expected, rtol=1e-5, atol=1e-6, msg=name)
    final = load_checkpoint(out / "model_final.pt")
    assert all(
        torch.equal(final["model"][n], second["ema"][n]) for n in second["ema"]
    )  # EMA is shipped


@pytest.mark.parametrize("form", [["tasks/detect/train.py"], ["-m", "tasks.detect.train"]])
def test_entry_point_runs_as_a_script_and_as_a_module(form):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    run = subprocess.run(
        [sys.executable, *form, "--help"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--resume" in run.stdout and "--overwrite" in run.stdout


def test_model_weights_starts_training_from_a_full_detector_file(tmp_path):
    # fine-tuning: model.weights= loads model_final.pt of another run; with lr 0 the parameters stay as loaded
    from tasks.common.checkpoint import load_checkpoint

    data = tiny_synthetic(tmp_path / "synth") + ["data.val_json=null"]
    train.run(tiny_overrides(tmp_path / "a", data, 1))
    source = tmp_path / "a" / "model_final.pt"
    train.run(
        tiny_overrides(tmp_path / "b", data, 1, f"model.weights={source}", "solver.base_lr=0")
    )
    a, b = (
        load_checkpoint(source)["model"],
        load_checkpoint(tmp_path / "b" / "model_final.pt")["model"],
    )
    params = [
        n for n in a if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    assert params and all(torch.equal(a[n], b[n]) for n in params)
    fresh = tmp_path / "c"
    train.run(tiny_overrides(fresh, data, 1, "solver.base_lr=0"))
    c = load_checkpoint(fresh / "model_final.pt")["model"]
    assert any(not torch.equal(a[n], c[n]) for n in params)  # control: same seed, no model.weights
