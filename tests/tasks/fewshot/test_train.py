"""Few-shot entry points end to end on tiny inputs: train.py, train_diffusion.py, the embedded
default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.common.config import load_config
from tasks.common.rundir import RunDirError
from tasks.fewshot import train as fewshot_train
from tasks.fewshot import train_diffusion
from tasks.fewshot.config import FewShotConfig, build_unet

TINY = [
    "unet.image_size=16",
    "unet.num_channels=32",
    "unet.num_res_blocks=1",
    "unet.channel_mult='1,2'",
    "unet.attention_resolutions='8'",
    "unet.dropout=0.0",
    "data.height=16",
    "data.width=16",
    "device=cpu",
]


def _folder(root, n, seed, label_fn=None):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
        labels = (np.arange(256).reshape(16, 16) // 64) % 3 if label_fn is None else label_fn(i)
        np.save(root / f"{i}.npy", labels)


def _ddpmseg_cfg(tmp_path, extra=()):
    cfg = load_config(
        FewShotConfig,
        None,
        TINY
        + [
            f"output_dir={tmp_path / 'out'}",
            "data.kind=ddpmseg",
            f"data.root={tmp_path / 'data'}",
            "data.train_split=train",
            "data.val_split=test",
            "data.num_classes=3",
            "data.ignore_index=255",
            f"diffusion.checkpoint={tmp_path / 'unet.pt'}",
            "features.blocks=[1,2]",
            "features.timesteps=[10]",
            "classifier.num_models=2",
            "classifier.max_iterations=20",
            "k=2",
            "num_overlays=1",
            *extra,
        ],
    )
    torch.save(build_unet(cfg).state_dict(), tmp_path / "unet.pt")
    return cfg


def test_train_pipeline_on_ddpmseg_layout(tmp_path):
    _folder(tmp_path / "data" / "train", 3, 0)
    _folder(tmp_path / "data" / "test", 2, 1)
    cfg = _ddpmseg_cfg(
        tmp_path,
        [
            f"features.cache_dir={tmp_path / 'cache'}",
            "experiment.methods=[diffusion, random_unet, rgb_pos]",
        ],
    )
    results = fewshot_train.run(cfg)
    assert [(r["method"], r["k"]) for r in results] == [
        ("diffusion", 2),
        ("random_unet", 2),
        ("rgb_pos", 2),
    ]
    # every val pixel is labelled and all 3 classes occur, so the standard and the DDPM-Seg modes
    # must agree (up to DDPM-Seg's 1e-8 epsilon)
    for r in results:
        for vote in ("majority", "soft"):
            m = r[vote]
            assert len(m["iou"]) == 3 and not np.isnan(m["iou"]).any()
            assert m["miou"] == pytest.approx(float(np.mean(m["iou"])), abs=1e-12)
            assert m["miou"] == pytest.approx(m["miou_ddpmseg"], abs=1e-6)
    run = tmp_path / "out" / "diffusion_k2_seed0"
    assert json.loads((run / "metrics.json").read_text())["soft"]["miou_ddpmseg"] >= 0
    assert (run / "overlay_000.png").exists() and (run / "ensemble.pt").exists()
    assert "| 2 |" in (tmp_path / "out" / "results.md").read_text()
    assert any((tmp_path / "cache").rglob("*.pt"))
    with pytest.raises(
        RunDirError, match="already holds a run"
    ):  # a second run never destroys the first
        fewshot_train.run(cfg)


def test_missing_checkpoint_stops_and_names_train_diffusion(tmp_path):
    _folder(tmp_path / "data" / "train", 2, 0)
    _folder(tmp_path / "data" / "test", 1, 1)
    cfg = _ddpmseg_cfg(tmp_path, ["diffusion.checkpoint=''"])
    with pytest.raises(ValueError, match=r"diffusion\.checkpoint is empty.*train_diffusion\.py"):
        fewshot_train.run(cfg)
    assert not (tmp_path / "out").exists()  # nothing written: a rerun needs no --overwrite


@pytest.mark.parametrize("labels", ["all_ignored", "too_few"])
def test_no_labelled_pixels_left_is_an_error_naming_the_images(tmp_path, labels):
    def label_fn(i):
        lab = np.full((16, 16), 255)
        if labels == "too_few" and i == 0:
            lab[0, :5] = (
                1  # 5 pixels of class 1, kept (min_class_pixels=0) but fewer than the batch of 64
            )
        return lab

    _folder(tmp_path / "data" / "train", 2, 0, label_fn)
    _folder(tmp_path / "data" / "test", 1, 1)
    cfg = _ddpmseg_cfg(tmp_path, ["experiment.methods=[rgb_pos]", "classifier.min_class_pixels=0"])
    count = 0 if labels == "all_ignored" else 5
    with pytest.raises(
        ValueError, match=rf"only {count} labelled pixels.*train/0\.png: {count}.*train/1\.png: 0"
    ):
        fewshot_train.run(cfg)
    assert not (tmp_path / "out" / "rgb_pos_k2_seed0" / "metrics.json").exists()


def test_train_diffusion_resumes_and_samples(tmp_path):
    _folder(tmp_path / "imgs", 4, 2)
    args = [
        "--data",
        str(tmp_path / "imgs"),
        *TINY,
        f"diffusion.output_dir={tmp_path / 'd'}",
        "diffusion.batch_size=2",
        "diffusion.iterations=2",
        "diffusion.checkpoint_every=1",
        "diffusion.num_samples=2",
        "diffusion.sample_steps=2",
    ]
    train_diffusion.main(args)
    first = torch.load(tmp_path / "d" / "checkpoint_2.pt", weights_only=True)
    assert first["state"]["iteration"] == 2 and set(first) >= {
        "model",
        "ema",
        "optimizer",
        "rng",
        "config",
    }
    assert (tmp_path / "d" / "samples.png").exists() and (tmp_path / "d" / "unet_ema.pt").exists()
    with pytest.raises(RunDirError, match="already holds a run"):
        train_diffusion.main(args)
    train_diffusion.main([*args, "diffusion.iterations=3", "--resume"])
    assert (
        torch.load(tmp_path / "d" / "checkpoint_3.pt", weights_only=True)["state"]["iteration"] == 3
    )
    assert sorted(p.name for p in (tmp_path / "d").glob("checkpoint_*.pt")) == [
        "checkpoint_2.pt",
        "checkpoint_3.pt",
    ]
    with pytest.raises(
        RunDirError, match="unet.num_channels"
    ):  # resume with another model is refused by name
        train_diffusion.main([*args, "unet.num_channels=64", "--resume"])


def test_embedded_default_runs_reduced(tmp_path, capsys):
    """`python tasks/fewshot/train.py` with no arguments, shrunk: generated data, in-process
    diffusion, the table."""
    results = fewshot_train.main(
        [
            f"output_dir={tmp_path / 'run'}",
            f"diffusion.output_dir={tmp_path / 'run' / 'diffusion'}",
            "diffusion.iterations=2",
            "diffusion.num_samples=2",
            "diffusion.sample_steps=2",
            "data.training_number=12",
            "data.testing_number=3",
            "experiment.ks=[1,5]",
            "classifier.num_models=2",
            "classifier.max_iterations=10",
        ]
    )
    assert sorted((r["method"], r["k"]) for r in results) == [
        ("diffusion", 1),
        ("diffusion", 5),
        ("rgb_pos", 1),
        ("rgb_pos", 5),
    ]
    printed = capsys.readouterr().out
    assert "| k labelled | diffusion | rgb_pos |" in printed and "| 5 |" in printed
    assert "trained in-process first (2 iterations" in printed
    assert (tmp_path / "run" / "diffusion" / "unet_ema.pt").exists()
    assert (tmp_path / "run" / "diffusion_k5_seed0" / "ensemble.pt").exists()
