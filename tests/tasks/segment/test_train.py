"""End to end on CPU: 2-iteration pretrain + fine-tune + predict, bit-exact resume, run-folder safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.common.checkpoint import load_checkpoint
from tasks.segment.finetuning import run_finetuning
from tasks.segment.predict import main as predict_main
from tasks.segment.pretraining import run_pretraining

from ._tiny import tiny_config


def test_pretrain_finetune_predict_smoke(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    final = run_pretraining(cfg)
    ckpt = load_checkpoint(final)
    assert ckpt["ema"] is not None and any(k.startswith("denoise_head") for k in ckpt["model"])
    assert (tmp_path / "pretrain" / "denoise_0000002.png").is_file()
    assert Image.open(tmp_path / "pretrain" / "denoise_0000002.png").size == (3 * 32, 4 * 32)

    cfg.finetune.pretrained = str(final)
    cfg.data.label_fraction = "1/4"
    metrics = run_finetuning(cfg)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and set(metrics["per_class"]) == {
        "background",
        "disc",
        "box",
        "triangle",
    }
    saved = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert saved["labelled_frames"] == 3 and saved["mIoU"] == pytest.approx(metrics["mIoU"])
    # the fine-tuned encoder started from the pretrained EMA encoder, and the denoising head was dropped
    model = load_checkpoint(tmp_path / "finetune" / "model_final.pt")["model"]
    assert not any(k.startswith("denoise_head") for k in model) and "seg_head.weight" in model

    out = tmp_path / "pred"
    predict_main(
        [
            "--weights",
            str(tmp_path / "finetune" / "model_final.pt"),
            "--input",
            str(tmp_path / "data" / "val" / "images"),
            "--output",
            str(out),
        ]
    )
    labels = sorted(out.glob("?????.png"))
    assert len(labels) == 3 and len(list(out.glob("*_overlay.png"))) == 3
    arr = np.array(Image.open(labels[0]))
    assert arr.shape == (32, 32) and arr.max() < 4


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    return {
        **{f"m.{k}": v for k, v in ckpt["model"].items()},
        **{f"e.{k}": v for k, v in (ckpt.get("ema") or {}).items()},
    }


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_is_bit_exact(tmp_path: Path, stage: str) -> None:
    """Run 3 iterations straight; then drop the last checkpoint and resume from iteration 2: same weights."""
    over = {f"{stage}.max_iter": 3}
    cfg = tiny_config(tmp_path, **over)
    run = run_pretraining if stage == "pretrain" else run_finetuning
    run(cfg)
    out = tmp_path / stage
    reference = _weights(out / "model_final.pt")
    (out / "checkpoint_0000003.pt").unlink()
    (out / "model_final.pt").unlink()
    assert (out / "checkpoint_0000002.pt").is_file()
    run(tiny_config(tmp_path, **over), resume=True)
    resumed = _weights(out / "model_final.pt")
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), f"{k} differs after resume"


def test_existing_run_is_refused_and_resume_checks_config(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"pretrain.max_iter": 1})
    run_pretraining(cfg)
    with pytest.raises(RuntimeError, match="already holds a run"):
        run_pretraining(tiny_config(tmp_path, **{"pretrain.max_iter": 1}))
    with pytest.raises(RuntimeError, match="noise.sigma"):
        run_pretraining(
            tiny_config(tmp_path, **{"pretrain.max_iter": 1, "noise.sigma": 0.3}), resume=True
        )
