"""Typed configuration of the denoising-pretrained segmentation task (DeP / DDeP).

One config file drives both stages: ``pretrain.py`` reads ``model``, ``data``, ``noise`` and ``pretrain``;
``train.py`` (fine-tuning) reads ``model``, ``data`` and ``finetune``. YAML files under ``configs/segment/``
hold deltas over these defaults (``tasks.common.config.load_config(SegmentConfig, path, overrides)``).

The fine-tuning hyper-parameters are our own defaults: the DDeP paper's are not confirmed
(``../shared/reference/segmentation.md`` §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tasks.common.config import config_to_dict

__all__ = [
    "DataConfig",
    "FinetuneConfig",
    "ModelConfig",
    "NoiseConfig",
    "PretrainConfig",
    "SegmentConfig",
    "SyntheticConfig",
    "stage_config",
]


@dataclass
class ModelConfig:
    """The U-Net (segmentation-models-pytorch)."""

    encoder: str = "resnet18"  # any smp encoder: resnet18/34/50, efficientnet-b0, mit_b0, tu-<timm>
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    noise_conditioning: bool = False  # the noise std as an extra input channel (0 at fine-tuning)
    # pretraining's encoder start (DDeP: "imagenet" or a file); fine-tuning without --pretrained uses it too:
    # "random" | "imagenet" (smp download) | path to a local encoder state dict or a DeP checkpoint
    encoder_init: str = "random"


@dataclass
class NoiseConfig:
    """The corruption and the denoising loss (DDeP: scaled, sigma 0.22, eps target, L2)."""

    kind: Literal["scaled", "simple", "diffusion"] = "scaled"
    sigma: float = 0.22
    schedule: str = "squaredcos_cap_v2"  # kind=diffusion: the NoiseSchedule
    num_timesteps: int = 1000
    t_range: tuple[int, int] = (
        0,
        200,
    )  # kind=diffusion: t ~ U[lo, hi) per image (low noise levels)
    loss: Literal["l2", "l1", "huber"] = "l2"
    huber_delta: float = 1.0


@dataclass
class SyntheticConfig:
    """The embedded generated segmentation set (``data.dataset: synthetic``)."""

    root: str = "outputs/segment_synthetic"
    num_train: int = 600
    num_val: int = 100
    size: int = 64
    seed: int = 20261202


@dataclass
class DataConfig:
    """Datasets, label fractions and augmentation."""

    dataset: Literal["synthetic", "camvid", "cityscapes", "folder"] = "synthetic"
    root: str = (
        ""  # camvid: folder with train.txt; cityscapes: leftImg8bit/ + gtFine/; folder: see data.py
    )
    # pretraining images: folders searched recursively (empty: the images of the labelled train split)
    unlabeled: tuple[str, ...] = ()
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 0  # folder only (the others know theirs)
    class_names: tuple[str, ...] = ()  # folder only (default: class_<k>)
    ignore_index: int = 255  # folder only
    label_fraction: str = "full"  # "full", "1/8", "0.125"; --label-fraction overrides
    split_file: str | None = (
        None  # explicit list of labelled train frames (else written deterministically)
    )
    split_seed: int = 0
    resize: float = 1.0  # every image (and label) is first scaled by this (CPU runs use < 1)
    crop_size: tuple[int, int] = (512, 1024)  # fine-tuning crop (H, W), multiples of 32
    scale_range: tuple[float, float] = (0.5, 2.0)  # random scale (times ``resize``)
    flip: bool = True
    num_workers: int = 2
    max_val_images: int | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class PretrainConfig:
    """Denoising pretraining (the bwconrad/decoder-denoising recipe where it is known)."""

    mode: Literal["dep", "ddep"] = "dep"  # ddep: frozen encoder (weights AND BN statistics)
    output_dir: str = "outputs/segment/pretrain"
    batch_size: int = 32  # global
    crop_size: tuple[int, int] = (224, 224)
    scale_range: tuple[float, float] = (0.5, 1.0)
    max_iter: int = 100000
    base_lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_iters: int = 500
    clip_grad_norm: float = 0.0
    amp: Literal["off", "bf16", "fp16"] = "bf16"  # CPU runs use "off"
    ema_decay: float = 0.999  # 0 = no EMA
    log_period: int = 50
    checkpoint_period: int = 5000
    vis_period: int = 5000  # PNG of noisy / predicted clean / clean triplets


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning of the whole network (cross-entropy with the dataset's ignore label)."""

    output_dir: str = "outputs/segment/finetune"
    pretrained: str | None = None  # a pretrain checkpoint (--pretrained); None = model.encoder_init
    use_ema: bool = True  # take the pretraining EMA weights when the checkpoint has them
    batch_size: int = 8  # global
    optimizer: Literal["adamw", "sgd"] = "adamw"
    base_lr: float = 3e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd
    poly_power: float = 0.9
    max_iter: int = 40000
    warmup_iters: int = 200
    clip_grad_norm: float = 0.0
    amp: Literal["off", "bf16", "fp16"] = "bf16"
    eval_period: int = 4000
    eval_batch_size: int = 1
    log_period: int = 50
    checkpoint_period: int = 4000


@dataclass
class SegmentConfig:
    """Top level."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 20261202
    device: str = "auto"


def stage_config(cfg: SegmentConfig, stage: Literal["pretrain", "finetune"]) -> dict[str, Any]:
    """The part of the config one stage depends on (what its run folder stores and ``--resume`` compares)."""
    full = config_to_dict(cfg)
    keys = (
        ("model", "data", "noise", "pretrain")
        if stage == "pretrain"
        else ("model", "data", "finetune")
    )
    return {k: full[k] for k in (*keys, "seed", "device")}
