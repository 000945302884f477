"""Typed configuration of the few-shot task (YAML deltas over these defaults, dotted overrides).

No default points outside the repository: data and checkpoint paths are given in a config file or on
the command line (``data.root=...``, ``diffusion.checkpoint=...``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from backbones.adm_unet import ADMUNet


@dataclass
class UNetConfig:
    """guided-diffusion ``create_model`` flags (defaults: a small CamVid model)."""

    image_size: int = 128
    num_channels: int = 64
    num_res_blocks: int = 2
    channel_mult: str = "1,2,2,4"
    attention_resolutions: str = "16"
    num_heads: int = 1
    num_head_channels: int = 32
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    dropout: float = 0.1
    learn_sigma: bool = False
    class_cond: bool = False
    use_fp16: bool = False
    use_new_attention_order: bool = False
    use_checkpoint: bool = False


@dataclass
class DiffusionConfig:
    """The diffusion U-Net: a checkpoint for train.py (``checkpoint``), or training by
    train_diffusion.py."""

    # U-Net weights for train.py: a guided-diffusion state_dict or train_diffusion's unet_ema.pt
    checkpoint: str = ""
    train_in_process: bool = (
        False  # train.py trains a small model first when checkpoint is empty (embedded default)
    )
    data_dir: str = ""  # train_diffusion.py: folder of unlabelled training images
    output_dir: str = "outputs/fewshot/diffusion"
    iterations: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    noise_schedule: str = "linear"
    num_timesteps: int = 1000
    amp: str = "off"  # off | bf16 | fp16 (tasks.common.training.autocast)
    clip_grad_norm: float = 0.0  # 0 = no clipping
    hflip: bool = True  # random horizontal flips of the training images
    log_every: int = 50
    checkpoint_every: int = 2000
    num_samples: int = 16
    sample_steps: int = 50
    sampler: str = "ddim"  # ddim | dpm_solver


@dataclass
class DataConfig:
    """Labelled data: ``kind`` camvid (split lists) or ddpmseg (image + .npy folders)."""

    kind: str = "camvid"  # camvid | ddpmseg | synthetic (generated in memory, the embedded default)
    root: str = ""  # camvid / ddpmseg: dataset folder (given on the command line or in a config)
    train_split: str = "train"  # camvid: list name; ddpmseg: folder under root
    val_split: str = "val"
    height: int = 96
    width: int = 128
    num_classes: int = 11
    ignore_index: int = 11
    class_names: list[str] = field(default_factory=list)
    training_number: int = (
        0  # ddpmseg: first N sorted training files (0 = all); synthetic: images generated
    )
    testing_number: int = 0
    synthetic_seed: int = 20261202


@dataclass
class FeatureConfig:
    blocks: list[int] = field(default_factory=lambda: [2, 4, 5, 7, 8])
    timesteps: list[int] = field(default_factory=lambda: [50, 150, 250])
    noise_seed: int = 0
    # where the shared noise is drawn: cpu = the same features on every machine; cuda = DDPM-Seg's
    noise_device: str = "cpu"
    cache_dir: str = ""  # empty = no cache
    batch_size: int = 8


@dataclass
class ClassifierConfig:
    num_models: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    max_epochs: int = 100
    patience: int = 50
    chunk_pixels: int = 65536
    min_class_pixels: int = 20
    max_iterations: int = 0  # 0 = DDPM-Seg's early stop only


METHODS: tuple[str, ...] = ("diffusion", "random_unet", "rgb_pos")


@dataclass
class ExperimentConfig:
    """The runs train.py makes: one ensemble per (method, seed, k); empty lists = the config's
    ``seed`` / ``k``.

    Methods: ``diffusion`` (the U-Net's features), ``random_unet`` (the same U-Net at its seeded
        initialisation,
    same blocks / t / noise) and ``rgb_pos`` (RGB + normalised (y, x), 5 dims), all on the same
    pixels.
    """

    ks: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["diffusion"])


@dataclass
class FewShotConfig:
    seed: int = 0
    device: str = "auto"
    output_dir: str = "outputs/fewshot/run"
    k: int = 0  # labelled training images (random, seeded); 0 = all of the training split
    num_overlays: int = 8
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


def build_unet(cfg: FewShotConfig) -> ADMUNet:
    """The ADM U-Net of ``cfg.unet``."""
    return ADMUNet.from_flags(**asdict(cfg.unet))


def image_size_hw(cfg: FewShotConfig) -> tuple[int, int]:
    """(H, W) images are resized to."""
    return (cfg.data.height, cfg.data.width)
