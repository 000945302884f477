"""Denoising pretraining (DeP: whole U-Net from random init; DDeP: frozen encoder, decoder only).

    python tasks/segment/pretrain.py --config configs/segment/camvid_r18_cpu.yaml
    python tasks/segment/pretrain.py --config configs/segment/cityscapes_dep_r50.yaml data.unlabeled=[/data/cs/leftImg8bit/train,/data/cs/leftImg8bit/train_extra]
    python tasks/segment/pretrain.py --config X.yaml pretrain.mode=ddep model.encoder_init=imagenet
    python tasks/segment/pretrain.py --config X.yaml --resume          # continue exactly
    torchrun --nproc_per_node 8 tasks/segment/pretrain.py --config configs/segment/cityscapes_dep_r50.yaml

Outputs (``pretrain.output_dir``): config.yaml, log.txt, log.jsonl, checkpoint_<iter>.pt, denoise_<iter>.png
(noisy | predicted clean | clean), model_final.pt (the input of ``train.py --pretrained``).
"""

from __future__ import annotations

import argparse

from tasks.common.config import add_config_args, load_config
from tasks.common.dist import is_main
from tasks.segment.config import SegmentConfig
from tasks.segment.pretraining import run_pretraining


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue the run in pretrain.output_dir"
    )
    group.add_argument(
        "--overwrite", action="store_true", help="replace the run in pretrain.output_dir"
    )
    args = parser.parse_args(argv)
    cfg = load_config(SegmentConfig, args.config, args.overrides)
    final = run_pretraining(cfg, resume=args.resume, overwrite=args.overwrite)
    if is_main():
        print(f"pretrained weights: {final}")


if __name__ == "__main__":
    main()
