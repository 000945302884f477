"""Typed configuration for the DiffusionDet detection task.

YAML files under ``configs/detect/`` hold deltas over these dataclass defaults and are loaded with
``tasks.common.config.load_config(DetectConfig, path, overrides)``. The defaults mirror the official
COCO R50 recipe (official ``configs/diffdet.coco.res50.yaml``). The embedded synthetic default that
``python tasks/detect/train.py`` runs with no arguments lives in ``configs/detect/default_synthetic.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tasks.detect.synthetic import SyntheticSpec

if TYPE_CHECKING:
    from tasks.detect.box_denoising import SamplerOptions


@dataclass
class BackboneConfig:
    """Backbone + FPN options."""

    name: Literal["resnet18", "resnet50", "resnet101", "swin_b"] = "resnet50"
    pretrained: bool = True  # timm pretrained=True (online); ignored when ``weights`` is set
    weights: str | None = None  # local checkpoint path for the backbone
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    freeze_at: int = 2  # 0 = train everything (stem included); 2 = stem + res2 frozen (official)
    fpn_channels: int = 256
    width: int = 64  # ResNet base width (64 standard; smaller = slimmer, from scratch only)
    drop_path_rate: float = 0.3  # swin only


@dataclass
class HeadConfig:
    """DynamicHead options (official defaults)."""

    num_classes: int = 80
    num_proposals: int = 500  # training N; inference N can be overridden per call
    hidden_dim: int = 256
    num_stages: int = 6
    num_attn_heads: int = 8
    dim_feedforward: int = 2048
    dim_dynamic: int = 64
    num_dynamic: int = 2
    num_cls_layers: int = 1
    num_reg_layers: int = 3
    pooler_resolution: int = 7
    pooler_sampling_ratio: int = 2
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5")
    prior_prob: float = 0.01
    dropout: float = 0.0


@dataclass
class DiffusionConfig:
    """Noise schedule and sampler options."""

    num_timesteps: int = 1000
    schedule: str = "squaredcos_cap_v2"
    scale: float = 2.0  # signal scale (SNR_SCALE)
    sample_steps: int = 1
    eta: float = 1.0
    box_renewal: bool = True
    renewal_threshold: float = 0.5
    use_ensemble: bool = True
    ensemble_last_step: bool = (
        True  # official code drops the last step (#56); we include it (documented)
    )
    use_nms: bool = True
    nms_threshold: float = 0.5
    # "official": kept boxes first, fresh ones appended, noise for kept only (the official draw sequence)
    renewal_order: Literal["in_place", "official"] = "in_place"

    def sampler_options(self, **changes: object) -> SamplerOptions:
        """The :class:`~tasks.detect.box_denoising.SamplerOptions` of this config (the one place that maps
        config keys to sampler options); ``changes`` override fields, e.g. ``sampler_options(steps=4)``."""
        from tasks.detect.box_denoising import SamplerOptions

        values = dict(
            steps=self.sample_steps,
            eta=self.eta,
            box_renewal=self.box_renewal,
            renewal_threshold=self.renewal_threshold,
            use_ensemble=self.use_ensemble,
            ensemble_last_step=self.ensemble_last_step,
            use_nms=self.use_nms,
            nms_threshold=self.nms_threshold,
            renewal_order=self.renewal_order,
        )
        return SamplerOptions(**{**values, **changes})


@dataclass
class LossConfig:
    """Set-prediction loss weights and matcher options."""

    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    ota_k: int = 5
    deep_supervision: bool = True
    use_fed_loss: bool = False
    fed_loss_num_classes: int = 50
    fed_loss_freq_weight_power: float = 0.5


@dataclass
class ModelConfig:
    """Whole detector."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB, 0..255
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    # full-detector weights to start training from (fine-tuning): an official DiffusionDet file or one of our
    # checkpoints / model_final.pt; another class count re-initialises the class logits (logged)
    weights: str | None = None


@dataclass
class DataConfig:
    """Datasets and augmentation (official: flip + multi-scale / crop)."""

    format: Literal["coco", "lvis"] = "coco"
    train_json: str | None = None
    train_images: str | None = None
    val_json: str | None = None
    val_images: str | None = None
    synthetic: bool = False  # the embedded default dataset (generated on first use)
    synthetic_root: str = "outputs/synthetic_shapes"
    synthetic_spec: SyntheticSpec = field(default_factory=SyntheticSpec)  # generator parameters
    min_size_train: tuple[int, ...] = tuple(range(480, 801, 32))
    max_size_train: int = 1333
    crop_enabled: bool = True
    crop_resize_short: tuple[int, ...] = (400, 500, 600)
    crop_size: tuple[int, int] = (384, 600)  # absolute_range crop: (min, max) side in pixels
    min_size_test: int = 800
    max_size_test: int = 1333
    num_workers: int = 2
    repeat_factor_threshold: float | None = None  # LVIS RFS 0.001
    # images checked up front by header reads: "error" lists every bad image, "skip" drops them (counted
    # warning; training only), "off" skips the check
    image_check: Literal["error", "skip", "off"] = "error"
    allow_absolute_paths: bool = False  # accept absolute file_name entries (refused by default)
    voc_classes: tuple[str, ...] | None = (
        None  # VOC class order (default: first appearance in the split)
    )


@dataclass
class SolverConfig:
    """Optimiser and LR schedule (batch_size is global across ranks)."""

    batch_size: int = 16
    base_lr: float = 2.5e-5
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    max_iter: int = 450000
    steps: tuple[int, ...] = (350000, 420000)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.01
    clip_grad_norm: float = 1.0
    amp: Literal["off", "bf16", "fp16"] = "off"
    ema: bool = False
    ema_decay: float = 0.999


@dataclass
class TestConfig:
    """Evaluation options."""

    __test__ = False  # not a pytest class

    eval_period: int = 7330
    eval_steps: tuple[int, ...] = (1, 4)  # sampling-steps settings evaluated at the end
    num_proposals: int | None = None  # None = training N
    eval_batch_size: int = 1
    max_eval_images: int | None = None


@dataclass
class DetectConfig:
    """Top-level detection config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    output_dir: str = "outputs/detect"
    seed: int = 40244023
    device: str = "auto"
    log_period: int = 20
    checkpoint_period: int = 5000
