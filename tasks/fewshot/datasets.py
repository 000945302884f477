"""The labelled splits of a few-shot run, from the config: generated (embedded default), CamVid or
DDPM-Seg folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tasks.common.camvid import CAMVID_CLASSES, CAMVID_PALETTE
from tasks.fewshot.config import FewShotConfig, image_size_hw
from tasks.fewshot.data import (
    camvid_pairs,
    ddpmseg_pairs,
    default_palette,
    load_split,
)
from tasks.fewshot.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, synthetic_split


@dataclass
class FewShotData:
    """Images (3, H, W) in [-1, 1], labels (H, W) int64 and a readable name per image, for both
    splits."""

    train_images: list[Tensor]
    train_labels: list[Tensor]
    train_names: list[str]
    val_images: list[Tensor]
    val_labels: list[Tensor]
    val_names: list[str]
    class_names: list[str]
    palette: list[tuple[int, int, int]]

    def train_uint8(self) -> Tensor:
        """The training images as (N, 3, H, W) uint8: the unlabelled set of in-process diffusion
        training."""
        return torch.stack(
            [((im + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for im in self.train_images]
        )


def _to_unit(images: Tensor) -> list[Tensor]:
    return list(images.float().div(127.5).sub(1))


def load_fewshot_data(cfg: FewShotConfig) -> FewShotData:
    """The train / val splits of ``cfg.data`` resized to (data.height, data.width); errors name the
    missing key."""
    d, size = cfg.data, image_size_hw(cfg)
    if d.kind == "synthetic":
        if d.training_number <= 0 or d.testing_number <= 0:
            raise ValueError(
                "data.kind=synthetic needs data.training_number and data.testing_number > 0"
            )
        tx, ty = synthetic_split(d.training_number, size=size, seed=d.synthetic_seed)
        vx, vy = synthetic_split(d.testing_number, size=size, seed=d.synthetic_seed + 1)
        names = list(SYNTHETIC_CLASSES)
        if d.num_classes != len(names):
            raise ValueError(
                f"data.kind=synthetic has {len(names)} classes {names}, "
                f"but data.num_classes={d.num_classes}"
            )
        return FewShotData(
            _to_unit(tx),
            list(ty),
            [f"synthetic train #{i}" for i in range(len(ty))],
            _to_unit(vx),
            list(vy),
            [f"synthetic val #{i}" for i in range(len(vy))],
            d.class_names or names,
            list(SYNTHETIC_PALETTE),
        )
    if not d.root:
        raise ValueError(
            f"data.root is empty: pass the {d.kind} dataset folder, "
            f"e.g. data.root=/path/to/{d.kind}"
        )
    if d.kind == "camvid":
        train_pairs = camvid_pairs(d.root, d.train_split)
        val_pairs = camvid_pairs(d.root, d.val_split)
        names, palette = d.class_names or list(CAMVID_CLASSES), list(CAMVID_PALETTE)
    elif d.kind == "ddpmseg":
        root = Path(d.root)
        train_pairs = ddpmseg_pairs(root / d.train_split, d.training_number or None)
        val_pairs = ddpmseg_pairs(root / d.val_split, d.testing_number or None)
        names = d.class_names or [f"class_{i}" for i in range(d.num_classes)]
        palette = list(default_palette(d.num_classes))
    else:
        raise ValueError(f"data.kind must be 'synthetic', 'camvid' or 'ddpmseg', got {d.kind!r}")
    if len(names) != d.num_classes:
        raise ValueError(
            f"data.class_names has {len(names)} names for data.num_classes={d.num_classes}"
        )
    tx, ty = load_split(train_pairs, size)
    vx, vy = load_split(val_pairs, size)
    return FewShotData(
        tx,
        ty,
        [str(p.image) for p in train_pairs],
        vx,
        vy,
        [str(p.image) for p in val_pairs],
        names,
        palette,
    )
