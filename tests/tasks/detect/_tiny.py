"""A tiny detection setup shared by the training tests: 64 px images, 1 head stage, 10 proposals."""

from __future__ import annotations

from pathlib import Path

from tasks.detect.synthetic import SyntheticSpec, ensure_synthetic_dataset

TINY_MODEL = [
    "model.backbone.name=resnet18",
    "model.backbone.pretrained=false",
    "model.backbone.norm=bn",
    "model.backbone.freeze_at=0",
    "model.backbone.fpn_channels=16",
    "model.head.hidden_dim=16",
    "model.head.num_stages=1",
    "model.head.num_attn_heads=2",
    "model.head.dim_feedforward=32",
    "model.head.dim_dynamic=4",
    "model.head.num_proposals=10",
    "model.head.in_features=[p2, p3]",
]
TINY_DATA = [
    "data.min_size_train=[64]",
    "data.max_size_train=96",
    "data.crop_enabled=false",
    "data.min_size_test=64",
    "data.max_size_test=96",
    "data.num_workers=0",
    "data.synthetic=false",
]
TINY_SOLVER = [
    "solver.batch_size=2",
    "solver.base_lr=1e-4",
    "solver.warmup_iters=2",
    "solver.steps=[3]",
    "test.eval_steps=[1]",
    "test.eval_period=0",
    "log_period=1",
]


def tiny_synthetic(root: Path) -> list[str]:
    """Writes a 6 + 4 image synthetic dataset under ``root``; returns the data overrides pointing at it."""
    paths = ensure_synthetic_dataset(
        root, SyntheticSpec(num_train=6, num_val=4, min_image_size=64, max_image_size=80)
    )
    return [f"data.{k}={v}" for k, v in paths.items()] + ["model.head.num_classes=6"]


def tiny_overrides(output_dir: Path, data: list[str], max_iter: int, *extra: str) -> list[str]:
    return [
        *TINY_MODEL,
        *TINY_DATA,
        *TINY_SOLVER,
        *data,
        f"solver.max_iter={max_iter}",
        f"output_dir={output_dir}",
        *extra,
    ]
