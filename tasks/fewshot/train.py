"""Few-shot segmentation: k labelled images -> pixel features -> DDPM-Seg MLP ensembles -> mIoU.

    python tasks/fewshot/train.py      # embedded default: generated scenes, k = 1/5/10, a small
                                       # diffusion model trained first, in-process (a few minutes)
    python tasks/fewshot/train.py --config configs/fewshot/camvid.yaml data.root=/path/to/camvid

The U-Net comes from ``diffusion.checkpoint`` (train_diffusion.py's ``unet_ema.pt`` or a
guided-diffusion state_dict such as DDPM-Seg's ``lsun_bedroom.pt``); without it the run stops,
unless the config asks explicitly for ``diffusion.train_in_process=true``. One ensemble per (method,
seed, k) of ``experiment``, each saved as ``output_dir/<method>_k<k>_seed<seed>/ensemble.pt`` (for
predict.py) with its ``metrics.json``; the table of all runs goes to ``output_dir/results.md`` and
``results.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from tasks.common.checkpoint import atomic_write_json, atomic_write_text
from tasks.common.config import add_config_args, config_to_dict, load_config
from tasks.common.dist import resolve_device
from tasks.common.log import setup_logging
from tasks.common.rundir import prepare_run_dir
from tasks.fewshot.config import FewShotConfig
from tasks.fewshot.datasets import load_fewshot_data
from tasks.fewshot.diffusion import load_unet, train_diffusion, write_samples
from tasks.fewshot.experiment import (
    plan_runs,
    predict_val,
    results_table,
    run_metrics,
    save_run,
    train_runs,
    write_overlays,
)
from tasks.fewshot.pixel_features import pixel_features

DEFAULT_CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "fewshot" / "default_synthetic.yaml"
)
logger = logging.getLogger("fewshot")


def run(cfg: FewShotConfig, *, overwrite: bool = False) -> list[dict]:
    """Train and score every run of ``cfg``; returns their metrics."""
    tic = time.time()
    out = Path(cfg.output_dir)
    device = resolve_device(cfg.device)
    # checks that need no output folder come first: a failed start leaves nothing to --overwrite
    data = load_fewshot_data(cfg)
    runs = plan_runs(cfg, len(data.train_images))
    wants_unet = any(r.method == "diffusion" for r in runs)
    in_process = wants_unet and not cfg.diffusion.checkpoint and cfg.diffusion.train_in_process
    unet = load_unet(cfg, device) if wants_unet and not in_process else None
    prepare_run_dir(out, config=config_to_dict(cfg), resume=False, overwrite=overwrite)
    setup_logging(out, "fewshot")
    logger.info(
        "%d train / %d val images; %d runs (methods %s)",
        len(data.train_images),
        len(data.val_images),
        len(runs),
        cfg.experiment.methods,
    )
    timings, note = {}, ""
    if in_process:
        start = time.time()
        logger.info(
            "diffusion.train_in_process=true: training a small diffusion model in-process first "
            "(%d iterations on the %d training images, into %s)",
            cfg.diffusion.iterations,
            len(data.train_images),
            cfg.diffusion.output_dir,
        )
        cfg.diffusion.checkpoint = str(
            train_diffusion(cfg, data.train_uint8(), overwrite=overwrite)
        )
        timings["diffusion_training_s"] = round(time.time() - start, 1)
        unet = load_unet(cfg, device)
        samples = write_samples(cfg, unet, device, Path(cfg.diffusion.output_dir) / "samples.png")
        note = (
            f"diffusion features from a U-Net trained in-process first "
            f"({cfg.diffusion.iterations} iterations, {timings['diffusion_training_s']:.0f} s; "
            f"samples: {samples})\n"
        )
    results = []
    start = time.time()
    for method in cfg.experiment.methods:
        method_runs = [r for r in runs if r.method == method]
        features = pixel_features(cfg, method, unet=unet, device=device)
        train_runs(cfg, method_runs, features, data, device)
        predict_val(method_runs, features, data, cfg.features.batch_size)
        for r in method_runs:
            save_run(cfg, r, features, data, out, cfg.diffusion.checkpoint)
            metrics = run_metrics(cfg, r, data)
            atomic_write_json(out / r.name / "metrics.json", metrics)
            results.append(metrics)
            logger.info(
                "%s: mIoU %.1f (DDPM-Seg mode %.1f, soft vote %.1f)",
                r.name,
                100 * metrics["majority"]["miou"],
                100 * metrics["majority"]["miou_ddpmseg"],
                100 * metrics["soft"]["miou"],
            )
            write_overlays(
                out / r.name, r, data, n=cfg.num_overlays, ignore_index=cfg.data.ignore_index
            )
    timings["features_ensembles_eval_s"] = round(time.time() - start, 1)
    timings["total_s"] = round(time.time() - tic, 1)
    table = results_table(results)
    atomic_write_json(out / "results.json", {"runs": results, "timings": timings})
    atomic_write_text(out / "results.md", table + "\n")
    print(
        f"\nmIoU (%) on {len(data.val_images)} val images, majority vote, mean +- std over seeds "
        f"({timings['total_s']:.0f} s):\n{table}\n{note}"
        f"ensembles: {out}/<method>_k<k>_seed<seed>/ensemble.pt",
        flush=True,
    )
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.description += f" (no --config: {DEFAULT_CONFIG.name}, the embedded default)"
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in output_dir"
    )
    args = parser.parse_args(argv)
    cfg = load_config(FewShotConfig, args.config or DEFAULT_CONFIG, args.overrides)
    return run(cfg, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
