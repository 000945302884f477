from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from tasks.fewshot import train as fewshot_train
from tasks.fewshot import train_diffusion
from tasks.fewshot.config import FewShotConfig, build_unet

TINY = ["unet.image_size=16", "unet.num_channels=32", "unet.num_res_blocks=1", "unet.channel_mult='1,2'",
        "unet.attention_resolutions='8'", "unet.dropout=0.0", "data.height=16", "data.width=16",
        "device=cpu"]


def _folder(root, n, seed):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
        np.save(root / f"{i}.npy", (np.arange(256).reshape(16, 16) // 64) % 3)


def test_train_pipeline_on_ddpmseg_layout(tmp_path):
    from tasks.common.config import load_config

    _folder(tmp_path / "data" / "train", 3, 0)
    _folder(tmp_path / "data" / "test", 2, 1)
    cfg = load_config(FewShotConfig, None, TINY + [
        f"output_dir={tmp_path / 'out'}", "data.kind=ddpmseg", f"data.root={tmp_path / 'data'}",
        "data.train_split=train", "data.val_split=test", "data.num_classes=3", "data.ignore_index=255",
        f"diffusion.checkpoint={tmp_path / 'unet.pt'}", "features.blocks=[1,2]", "features.timesteps=[10]",
        f"features.cache_dir={tmp_path / 'cache'}", "classifier.num_models=2", "classifier.max_iterations=20", "k=2",
        "num_overlays=1"])
    torch.save(build_unet(cfg).state_dict(), tmp_path / "unet.pt")
    metrics = fewshot_train.run(cfg)
    assert metrics["k"] == 2 and 0.0 <= metrics["majority"]["miou"] <= 1.0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["soft"]["miou_ddpmseg"] >= 0
    assert (tmp_path / "out" / "overlay_000.png").exists()
    assert any((tmp_path / "cache").rglob("*.pt"))


def test_train_diffusion_resumes_and_samples(tmp_path):
    _folder(tmp_path / "imgs", 4, 2)
    args = ["--data", str(tmp_path / "imgs"), *TINY, f"diffusion.output_dir={tmp_path / 'd'}",
            "diffusion.batch_size=2", "diffusion.iterations=2", "diffusion.checkpoint_every=1",
            "diffusion.num_samples=2", "diffusion.sample_steps=2"]
    train_diffusion.main(args)
    first = torch.load(tmp_path / "d" / "last.pt", weights_only=True)
    assert first["iteration"] == 2 and (tmp_path / "d" / "samples.png").exists()
    train_diffusion.main([*args[:-3], "diffusion.iterations=3", "diffusion.num_samples=2", "diffusion.sample_steps=2"])
    assert torch.load(tmp_path / "d" / "last.pt", weights_only=True)["iteration"] == 3
