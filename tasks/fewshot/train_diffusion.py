"""Train an unconditional ADM-U-Net DDPM on a folder of images (epsilon prediction).

    python tasks/fewshot/train_diffusion.py --config configs/fewshot/camvid.yaml --data DIR
    python tasks/fewshot/train_diffusion.py --config ... --data DIR --resume   # continue exactly
    torchrun --nproc_per_node 8 tasks/fewshot/train_diffusion.py --config ... --data DIR   # DDP
    python tasks/fewshot/train_diffusion.py --config ... --sample   # samples.png of unet_ema.pt

Writes ``diffusion.output_dir``: checkpoints (kernel schema, atomic), ``log.jsonl``, ``samples.png``
and ``unet_ema.pt``, the file to pass to train.py as ``diffusion.checkpoint``. A folder holding
another run is refused unless ``--resume`` or ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tasks.common.config import add_config_args, load_config
from tasks.common.dist import init_distributed, is_main
from tasks.common.log import setup_logging
from tasks.fewshot.config import FewShotConfig, image_size_hw
from tasks.fewshot.data import image_folder, load_images
from tasks.fewshot.diffusion import UNET_FILE, load_unet, train_diffusion, write_samples

logger = logging.getLogger("fewshot.diffusion")


def main(argv: list[str] | None = None) -> None:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument(
        "--data", default=None, help="folder of training images (sets diffusion.data_dir)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in diffusion.output_dir"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in diffusion.output_dir"
    )
    parser.add_argument(
        "--sample", action="store_true", help="only write samples.png from unet_ema.pt"
    )
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"diffusion.data_dir={args.data}"] if args.data else [])
    cfg = load_config(FewShotConfig, args.config, overrides)
    out = Path(cfg.diffusion.output_dir)
    setup_logging(out, "fewshot")
    if not args.sample:
        if not cfg.diffusion.data_dir:
            parser.error("no training images: pass --data DIR (or diffusion.data_dir=DIR)")
        files = image_folder(cfg.diffusion.data_dir)
        logger.info(
            "%d training images from %s at %s",
            len(files),
            cfg.diffusion.data_dir,
            image_size_hw(cfg),
        )
        train_diffusion(
            cfg,
            load_images(files, image_size_hw(cfg)),
            resume=args.resume,
            overwrite=args.overwrite,
        )
    if is_main():
        device = init_distributed(cfg.device).device
        cfg.diffusion.checkpoint = str(out / UNET_FILE)
        grid = write_samples(cfg, load_unet(cfg, device), device, out / "samples.png")
        logger.info("wrote %s", grid)


if __name__ == "__main__":
    main()
