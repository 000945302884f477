"""A tiny segmentation config for fast CPU tests (32x32 generated shapes, batch 2, a few iterations)."""

from __future__ import annotations

from pathlib import Path

from tasks.common.config import load_config
from tasks.segment.config import SegmentConfig


def tiny_config(tmp: Path, **over: object) -> SegmentConfig:
    overrides = [
        "model.decoder_channels=[16, 16, 8, 8, 8]",
        "data.dataset=synthetic",
        f"data.synthetic.root={tmp / 'data'}",
        "data.synthetic.num_train=12",
        "data.synthetic.num_val=3",
        "data.synthetic.size=32",
        "data.crop_size=[32, 32]",
        "data.scale_range=[0.8, 1.25]",
        "data.num_workers=0",
        f"pretrain.output_dir={tmp / 'pretrain'}",
        "pretrain.batch_size=2",
        "pretrain.crop_size=[32, 32]",
        "pretrain.max_iter=2",
        "pretrain.warmup_iters=1",
        "pretrain.amp='off'",
        "pretrain.ema_decay=0.9",
        "pretrain.checkpoint_period=1",
        "pretrain.vis_period=2",
        f"finetune.output_dir={tmp / 'finetune'}",
        "finetune.batch_size=2",
        "finetune.max_iter=2",
        "finetune.warmup_iters=1",
        "finetune.amp='off'",
        "finetune.eval_period=2",
        "finetune.checkpoint_period=1",
    ]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return load_config(SegmentConfig, None, overrides)
