"""Each DDPM-Seg benchmark config builds the U-Net of its published checkpoint, key for key and
shape for shape,
with DDPM-Seg's dataset settings (experiments/<dataset>/ddpm.json) and 8448-dim features. Built on
the meta
device: no weights are allocated, no download is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from backbones.features import feature_specs_for
from tasks.common.config import load_config
from tasks.fewshot.config import FewShotConfig, build_unet
from tasks.fewshot.pixel_classifier import hidden_widths
from tests.backbones.test_adm_unet import expected_keys_and_shapes

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "fewshot"

# name: (checkpoint file, num_classes, ignore_label, training_number, testing_number),
# from DDPM-Seg's configs
BENCHMARKS = {
    "bedroom_28": ("lsun_bedroom.pt", 29, 0, 40, 20),
    "ffhq_34": ("ffhq.pt", 34, 255, 20, 20),
    "cat_15": ("lsun_cat.pt", 15, 255, 30, 20),
    "horse_21": ("lsun_horse.pt", 21, 255, 30, 30),
    "celeba_19": ("ffhq.pt", 19, 255, 20, 500),
    "ade_bedroom_30": ("lsun_bedroom.pt", 30, 255, 50, 650),
}

# guided-diffusion's 256x256 LSUN / FFHQ checkpoints
# (MODEL_FLAGS of DDPM-Seg's train_interpreter.sh)
PUBLISHED_256 = expected_keys_and_shapes(
    image_size=256,
    num_channels=256,
    num_res_blocks=2,
    channel_mult=(1, 1, 2, 2, 4, 4),
    attention_resolutions=(32, 16, 8),
    learn_sigma=True,
    sss=True,
    updown=True,
)


def test_every_benchmark_has_a_config():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert set(BENCHMARKS) <= names


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_config_builds_the_published_unet(name):
    ckpt, num_classes, ignore, n_train, n_test = BENCHMARKS[name]
    cfg = load_config(FewShotConfig, CONFIGS / f"{name}.yaml")
    assert (
        Path(cfg.diffusion.checkpoint).name == ckpt
        and not Path(cfg.diffusion.checkpoint).is_absolute()
    )
    assert (cfg.data.kind, cfg.data.num_classes, cfg.data.ignore_index) == (
        "ddpmseg",
        num_classes,
        ignore,
    )
    assert (cfg.data.training_number, cfg.data.testing_number) == (n_train, n_test)
    assert not cfg.data.root.startswith(("/", "..")) and (cfg.data.height, cfg.data.width) == (
        256,
        256,
    )
    with torch.device("meta"):
        unet = build_unet(cfg)
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert shapes == PUBLISHED_256
    assert list(shapes) == list(PUBLISHED_256)  # same order as the checkpoint's
    assert cfg.features.blocks == [5, 6, 7, 8, 12] and cfg.features.timesteps == [50, 150, 250]
    assert (
        sum(
            s.channels for s in feature_specs_for(unet, cfg.features.blocks, cfg.features.timesteps)
        )
        == 8448
    )
    assert hidden_widths(num_classes) == ((256, 128) if num_classes >= 30 else (128, 32))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_no_config_points_outside_the_repository(path):
    cfg = load_config(FewShotConfig, path)
    paths = [
        cfg.output_dir,
        cfg.data.root,
        cfg.diffusion.checkpoint,
        cfg.diffusion.data_dir,
        cfg.diffusion.output_dir,
        cfg.features.cache_dir,
    ]
    assert not [p for p in paths if p.startswith(("/", "..", "~"))]
