"""The label-efficiency experiment: one denoising pretraining, then fine-tuning with each label fraction from
random init and from the pretrained weights, over several seeds; a table of val mIoU (mean +- std).

Used by ``python tasks/segment/train.py`` without arguments (the embedded synthetic default) and by
``python -m tasks.segment.experiment --config configs/segment/camvid_r18_cpu.yaml`` (docs/results.md).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.common.checkpoint import atomic_write_json
from tasks.common.config import add_config_args, load_config
from tasks.segment.config import SegmentConfig
from tasks.segment.finetuning import run_finetuning
from tasks.segment.pretraining import run_pretraining
from tasks.segment.splits import fraction_tag

__all__ = ["format_table", "main", "run_label_efficiency"]

logger = logging.getLogger("diffvision.segment.experiment")


def _finetune_cfg(
    cfg: SegmentConfig, *, out: Path, init: str, fraction: str, seed: int, ckpt: Path | None
) -> SegmentConfig:
    c = copy.deepcopy(cfg)
    c.seed = seed
    c.data.label_fraction = fraction
    c.finetune.output_dir = str(out / f"{init}_{fraction_tag(fraction)}_seed{seed}")
    c.finetune.pretrained = str(ckpt) if ckpt is not None else None
    if init == "random":
        c.model.encoder_init = "random"
    return c


def run_label_efficiency(
    cfg: SegmentConfig,
    *,
    out_root: str | Path,
    fractions: Sequence[str],
    seeds: Sequence[int],
    pretrained: str | Path | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Pretrain once (``cfg.pretrain``, unless ``pretrained`` is given), then fine-tune every
    (fraction, init in {random, <pretrain mode>}, seed). Returns one record per run; writes
    ``out_root/results.json`` after every run."""
    out = Path(out_root)
    t0 = time.monotonic()
    if pretrained is None:
        cfg.pretrain.output_dir = str(out / "pretrain")
        pretrained = run_pretraining(cfg, overwrite=overwrite)
    pretrain_s = time.monotonic() - t0
    records: list[dict[str, Any]] = []
    init_name = cfg.pretrain.mode
    for fraction in fractions:
        for init, ckpt in (("random", None), (init_name, Path(pretrained))):
            for seed in seeds:
                c = _finetune_cfg(cfg, out=out, init=init, fraction=fraction, seed=seed, ckpt=ckpt)
                t = time.monotonic()
                metrics = run_finetuning(c, overwrite=overwrite)
                records.append(
                    {
                        "fraction": fraction,
                        "init": init,
                        "seed": seed,
                        "mIoU": metrics.get("mIoU"),
                        "per_class": metrics.get("per_class"),
                        "seconds": round(time.monotonic() - t, 1),
                    }
                )
                atomic_write_json(
                    out / "results.json",
                    {
                        "pretrain_seconds": round(pretrain_s, 1),
                        "pretrained": str(pretrained),
                        "runs": records,
                    },
                )
    return records


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one row per label fraction, one column per init, val mIoU % as mean +- std (n seeds)."""
    fractions = list(dict.fromkeys(r["fraction"] for r in records))
    inits = list(dict.fromkeys(r["init"] for r in records))
    lines = [
        "| labels | " + " | ".join(f"{i} init mIoU (%)" for i in inits) + " |",
        "| --- |" + " --- |" * len(inits),
    ]
    for f in fractions:
        cells = []
        for i in inits:
            vals = [100 * r["mIoU"] for r in records if r["fraction"] == f and r["init"] == i]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(
                f"{statistics.mean(vals):.1f} +- {sd:.1f} (n={len(vals)})" if vals else "-"
            )
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument(
        "--out", default="outputs/segment/experiment", help="root folder of all runs"
    )
    parser.add_argument("--fractions", nargs="+", default=["1/30", "1/8", "1/4", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--pretrained", default=None, help="reuse this pretraining checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier runs in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    cfg = load_config(SegmentConfig, args.config, args.overrides)
    records = run_label_efficiency(
        cfg,
        out_root=args.out,
        fractions=args.fractions,
        seeds=args.seeds,
        pretrained=args.pretrained,
        overwrite=args.overwrite,
    )
    print(format_table(records))


if __name__ == "__main__":
    main()
