"""Few-shot segmentation: k labelled images -> diffusion features -> MLP ensemble -> val mIoU.

    python tasks/fewshot/train.py --config configs/fewshot/camvid.yaml k=10 seed=1

Loads the diffusion U-Net from ``diffusion.checkpoint`` (a guided-diffusion-format state_dict,
e.g. DDPM-Seg's ``lsun_bedroom.pt``) or ``diffusion.output_dir/last.pt`` (train_diffusion.py;
trained first when missing), extracts features (cached when ``features.cache_dir`` is set),
trains the ensemble, predicts the val split and writes ``metrics.json`` (standard and DDPM-Seg
mIoU, majority and soft vote) plus coloured overlays.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
from PIL import Image

from backbones.adm_unet import ADMUNet
from backbones.features import FeatureCache, extract_per_image, module_fingerprint
from diffusion_core import NoiseSchedule
from tasks.common.config import add_config_args, load_config, save_config
from tasks.common.dist import resolve_device
from tasks.common.log import setup_logging
from tasks.fewshot import train_diffusion
from tasks.fewshot.config import FewShotConfig, build_unet, image_size_hw
from tasks.fewshot.data import (
    CAMVID_PALETTE,
    camvid_pairs,
    colorize,
    ddpmseg_pairs,
    default_palette,
    load_split,
    overlay,
)
from tasks.fewshot.metrics import miou_both
from tasks.fewshot.pixel_classifier import PixelBank, predict_image, train_ensemble

logger = logging.getLogger("fewshot.train")


def load_unet(cfg: FewShotConfig, device: torch.device) -> ADMUNet:
    """The U-Net from ``diffusion.checkpoint`` or the train_diffusion.py output (trained if absent)."""
    if cfg.diffusion.checkpoint:
        state = torch.load(cfg.diffusion.checkpoint, map_location="cpu", weights_only=True)
        model = build_unet(cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{cfg.diffusion.checkpoint}: does not match the unet flags in the config: {err}") from None
        return model.to(device).eval()
    last = Path(cfg.diffusion.output_dir) / "last.pt"
    if not last.exists():
        logger.info("no diffusion checkpoint at %s: training one first", last)
        train_diffusion.train(cfg)
    return train_diffusion.load_trained_unet(cfg, last, device)


def load_data(cfg: FewShotConfig):
    """(train images, train labels, val images, val labels) resized to the config size."""
    size = image_size_hw(cfg)
    if cfg.data.kind == "camvid":
        train_pairs = camvid_pairs(cfg.data.root, cfg.data.train_split)
        val_pairs = camvid_pairs(cfg.data.root, cfg.data.val_split)
    elif cfg.data.kind == "ddpmseg":
        root = Path(cfg.data.root)
        train_pairs = ddpmseg_pairs(root / cfg.data.train_split, cfg.data.training_number or None)
        val_pairs = ddpmseg_pairs(root / cfg.data.val_split, cfg.data.testing_number or None)
    else:
        raise ValueError(f"data.kind must be 'camvid' or 'ddpmseg', got {cfg.data.kind!r}")
    return (*load_split(train_pairs, size), *load_split(val_pairs, size))


def choose(n: int, k: int, seed: int) -> list[int]:
    """``k`` training indices drawn with ``seed`` (all, in order, when k is 0 or >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(100 + seed))[:k].tolist()


def run(cfg: FewShotConfig) -> dict:
    out = Path(cfg.output_dir)
    setup_logging(str(out), "fewshot.train")
    save_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.device)
    train_x, train_y, val_x, val_y = load_data(cfg)
    chosen = choose(len(train_x), cfg.k, cfg.seed)
    logger.info("%d labelled training images (%s), %d val images", len(chosen), chosen, len(val_x))
    unet = load_unet(cfg, device)
    schedule = NoiseSchedule.from_name(cfg.diffusion.noise_schedule, cfg.diffusion.num_timesteps)
    cache = None
    if cfg.features.cache_dir:
        cache = FeatureCache(cfg.features.cache_dir, checkpoint=module_fingerprint(unet), blocks=cfg.features.blocks,
                             timesteps=cfg.features.timesteps, noise_seed=cfg.features.noise_seed,
                             noise_device=device.type)

    def features(images):
        per_image = extract_per_image(unet, schedule, images, timesteps=cfg.features.timesteps,
                                      blocks=cfg.features.blocks, noise_seed=cfg.features.noise_seed,
                                      device=device, batch_size=cfg.features.batch_size, cache=cache, progress=True)
        return [list(d.values()) for d in per_image]

    c = cfg.classifier
    bank = PixelBank(features([train_x[i] for i in chosen]), [train_y[i] for i in chosen],
                     ignore_index=cfg.data.ignore_index, min_class_pixels=c.min_class_pixels)
    model, stats = train_ensemble(bank, cfg.data.num_classes, num_models=c.num_models, batch_size=c.batch_size,
                                  lr=c.lr, max_epochs=c.max_epochs, patience=c.patience, chunk_pixels=c.chunk_pixels,
                                  seed=cfg.seed, device=device, max_iterations=c.max_iterations or None)
    preds = [predict_image(model, f, tuple(lab.shape)) for f, lab in zip(features(val_x), val_y)]
    metrics = {"k": len(chosen), "train_indices": chosen, "iterations": stats.iterations,
               "stop_epochs": stats.stop_epochs}
    for vote in ("majority", "soft"):
        metrics[vote] = miou_both([getattr(p, vote) for p in preds], val_y, cfg.data.num_classes, cfg.data.ignore_index)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    logger.info("mIoU %.2f (DDPM-Seg mode %.2f), soft vote %.2f", 100 * metrics["majority"]["miou"],
                100 * metrics["majority"]["miou_ddpmseg"], 100 * metrics["soft"]["miou"])
    palette = CAMVID_PALETTE if cfg.data.kind == "camvid" else default_palette(cfg.data.num_classes)
    for i in range(min(cfg.num_overlays, len(preds))):
        pair = [overlay(val_x[i], colorize(lab, palette, cfg.data.ignore_index)) for lab in (val_y[i], preds[i].majority)]
        Image.fromarray(np.concatenate(pair, axis=1)).save(out / f"overlay_{i:03d}.png")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    run(load_config(FewShotConfig, args.config, args.overrides))


if __name__ == "__main__":
    main()
