"""Fine-tune the segmentation U-Net (whole network, new head, cross-entropy, poly LR) and evaluate.

    python tasks/segment/train.py        # embedded default: generated shapes, DeP pretraining + fine-tuning
                                         # with and without it, prints the mIoU table (a few minutes on CPU)
    python tasks/segment/train.py --config configs/segment/camvid_r18_cpu.yaml \\
        --pretrained outputs/segment/camvid/pretrain/model_final.pt --label-fraction 1/8
    python tasks/segment/train.py --config configs/segment/cityscapes_dep_r50.yaml --label-fraction 1/30 \\
        --pretrained CKPT finetune.output_dir=outputs/cs_1_30
    python tasks/segment/train.py --config X.yaml --resume

Outputs (``finetune.output_dir``): config.yaml, splits/, log.txt, log.jsonl, checkpoint_<iter>.pt,
metrics.json, model_final.pt (for predict.py).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tasks.common.config import add_config_args, load_config
from tasks.segment.config import SegmentConfig
from tasks.segment.experiment import format_table, run_label_efficiency
from tasks.segment.finetuning import format_metrics, run_finetuning

DEFAULT_CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "segment" / "default_synthetic.yaml"
)
DEFAULT_FRACTIONS = ("1/30", "full")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument(
        "--pretrained", default=None, help="pretraining checkpoint (pretrain.py's model_final.pt)"
    )
    parser.add_argument(
        "--label-fraction", default=None, help="'full', '1/30', '1/8', '1/4', or a decimal"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue the run in finetune.output_dir"
    )
    group.add_argument(
        "--overwrite", action="store_true", help="replace the run(s) in the output folder"
    )
    args = parser.parse_args(argv)
    if (
        args.config is None
        and not args.overrides
        and args.pretrained is None
        and args.label_fraction is None
    ):
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
        cfg = load_config(SegmentConfig, DEFAULT_CONFIG)
        records = run_label_efficiency(
            cfg,
            out_root="outputs/segment_synthetic_runs",
            fractions=DEFAULT_FRACTIONS,
            seeds=(0,),
            overwrite=True,
        )
        print(
            "\nEmbedded default (generated shapes, val split), mIoU with and without denoising pretraining:"
        )
        print(format_table(records))
        return
    cfg = load_config(SegmentConfig, args.config, args.overrides)
    if args.pretrained is not None:
        cfg.finetune.pretrained = args.pretrained
    if args.label_fraction is not None:
        cfg.data.label_fraction = args.label_fraction
    metrics = run_finetuning(cfg, resume=args.resume, overwrite=args.overwrite)
    if metrics:
        print(format_metrics(metrics))


if __name__ == "__main__":
    main()
