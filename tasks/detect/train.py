"""Train DiffusionDet.

    python tasks/detect/train.py                                  # embedded default: synthetic shapes, small model
    python -m tasks.detect.train --config configs/detect/diffdet_coco_r50.yaml solver.base_lr=5e-5
    python tasks/detect/train.py --config X.yaml --resume         # continue exactly from the newest good checkpoint
    python tasks/detect/train.py --config X.yaml --overwrite      # replace the run already in output_dir
    torchrun --nproc_per_node 8 tasks/detect/train.py --config configs/detect/diffdet_coco_r50.yaml

Outputs (``output_dir``): ``config.yaml`` (resolved), ``log.txt``, ``log.jsonl`` (one JSON record per log/eval;
TensorBoard scalars under ``tb/`` when tensorboard is installed), ``checkpoint_<iter>.pt``, ``model_final.pt``
(``{"model": weights (EMA when on), "label_map", "config"}``) and ``metrics.json`` (final COCO/LVIS results per
sampling-steps setting). Every file is written atomically. An ``output_dir`` holding another run is refused unless
``--resume`` (the config must match, the keys in ``RESUME_MAY_CHANGE`` aside) or ``--overwrite`` is given.

A non-finite loss or non-finite weights stop the run with a message naming the last finite checkpoint; a
checkpoint with non-finite weights is never written.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.common.checkpoint import atomic_write_json
from tasks.common.config import add_config_args, config_to_dict, load_config
from tasks.common.dist import DistInfo, cleanup, init_distributed, is_main
from tasks.common.ema import ModelEMA
from tasks.common.log import MetricWriter, setup_logging
from tasks.common.progress import progress
from tasks.common.rundir import prepare_run_dir
from tasks.common.training import (
    NonFiniteLossError,
    TrainState,
    make_grad_scaler,
    restore_training_state,
)
from tasks.detect import build
from tasks.detect.config import DetectConfig
from tasks.detect.loops import (
    checkpoint_if_finite,
    describe_result,
    evaluate_each_steps,
    format_losses,
    result_summary,
    resume_hint,
    save_final_weights,
    train_batches,
    train_step,
)

logger = logging.getLogger(build.LOGGER_NAME)
# config keys a --resume may change: they do not alter the steps already taken
RESUME_MAY_CHANGE = tuple(
    "output_dir solver.max_iter data.num_workers device log_period checkpoint_period test".split()
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in output_dir (deletes it)"
    )
    return parser.parse_args(argv)


def do_test(
    cfg: DetectConfig, model, val: build.ValData, info: DistInfo, *, steps_list: Sequence[int],
    iteration: int, writer: MetricWriter,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate ``model`` with each sampling-steps setting; log a table and a record per setting."""
    evaluator = build.build_evaluator(cfg.data.format, val.gt, val.category_ids, info.device)
    metrics = {}
    for steps, result in evaluate_each_steps(
        model, val.loader, evaluator, device=info.device, steps_list=steps_list,
        num_boxes=cfg.test.num_proposals, seed=cfg.seed, amp=cfg.solver.amp,
    ):  # fmt: skip
        if not is_main():
            continue
        metrics[f"steps_{steps}"] = result_summary(result)
        table = describe_result(result, evaluator)
        logger.info("iteration %d, %d sampling step(s):%s", iteration, steps, table)
        record = {"type": "eval", "steps": steps, **metrics[f"steps_{steps}"]}
        writer.write(record, step=iteration, tag=f"eval_steps{steps}")
    return metrics


def do_train(
    cfg: DetectConfig, model, *, data: build.TrainData, val: build.ValData | None, info: DistInfo,
    writer: MetricWriter, resume_from: Path | None,
) -> tuple[TrainState, ModelEMA | None, Path | None]:  # fmt: skip
    """The training loop (detectron2 ``do_train`` shape): step, EMA, log, checkpoint, periodic eval.

    Returns the final position, the EMA (None when off) and the newest checkpoint written.
    """
    solver, out = cfg.solver, Path(cfg.output_dir)
    optimizer = build.build_optimizer(
        model, lr=solver.base_lr, betas=solver.betas, weight_decay=solver.weight_decay
    )
    ema = ModelEMA(model, solver.ema_decay) if solver.ema else None
    scaler = make_grad_scaler(info.device, solver.amp)
    lr_at = build.build_lr_schedule(solver)
    label_map, config = build.label_map_of(data.records), config_to_dict(cfg)
    state, last_good = TrainState(), resume_from
    if resume_from is not None:
        state, ckpt = restore_training_state(
            resume_from, model=model, optimizer=optimizer, device=info.device, ema=ema,
            scaler=scaler, rank=info.rank, world_size=info.world_size,
        )  # fmt: skip
        if ckpt["extra"].get("label_map", label_map) != label_map:
            raise ValueError(f"{resume_from}: label map {ckpt['extra']['label_map']} differs from "
                             f"the training JSON's {label_map}")  # fmt: skip
        logger.info("resumed from %s at iteration %d", resume_from, state.iteration)

    bar = progress(total=solver.max_iter, initial=state.iteration, desc="train")
    model.train()
    for batch in train_batches(data.loader, data.sampler, state, max_iter=solver.max_iter):
        it, start = state.iteration, time.perf_counter()  # it: 1-based number of this step
        lr = lr_at(it - 1)
        try:
            losses = train_step(
                model, optimizer, batch, step=it - 1, lr=lr, device=info.device, amp=solver.amp,
                clip_grad_norm=solver.clip_grad_norm, scaler=scaler,
            )  # fmt: skip
        except NonFiniteLossError as err:
            err.args = (f"{err}; {resume_hint(last_good)}",)  # same error type, the way out added
            logger.error("%s", err)
            raise
        if ema is not None:
            ema.update(model, step=it - 1)
        losses["time"] = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{losses['total_loss']:.3f}", lr=f"{lr:.2e}")

        if it % cfg.log_period == 0 or it == solver.max_iter:
            logger.info("iter %d/%d  lr %.3g  %.2fs/it  %s", it, solver.max_iter, lr,
                        losses["time"], format_losses(losses))  # fmt: skip
            writer.write({"type": "train", "epoch": state.epoch, **losses}, step=it)
        if cfg.checkpoint_period > 0 and (it % cfg.checkpoint_period == 0 or it == solver.max_iter):
            last_good = checkpoint_if_finite(
                out / f"checkpoint_{it:07d}.pt", model=model, optimizer=optimizer, state=state,
                config=config, ema=ema, scaler=scaler, extra={"label_map": label_map},
                last_good=last_good,
            )  # fmt: skip
        eval_now = cfg.test.eval_period > 0 and it % cfg.test.eval_period == 0
        if val is not None and eval_now and it < solver.max_iter:
            eval_model = ema.module if ema is not None else model
            do_test(cfg, eval_model, val, info, steps_list=cfg.test.eval_steps[:1], iteration=it,
                    writer=writer)  # fmt: skip
            model.train()
    bar.close()
    return state, ema, last_good


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate with ``test.eval_steps`` sampling steps, write ``metrics.json``; returns them."""
    args = parse_args(argv)
    cfg = load_config(DetectConfig, args.config or build.DEFAULT_CONFIG, args.overrides)
    info = init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(None, "diffvision")  # console only until the folder is accepted
    resume_from = prepare_run_dir(
        out, config=config_to_dict(cfg), resume=args.resume, overwrite=args.overwrite,
        ignore_keys=RESUME_MAY_CHANGE,
    )  # fmt: skip
    setup_logging(out, "diffvision")
    build.seed_everything(cfg.seed + info.rank)
    paths = build.resolve_data_paths(cfg)
    data = build.build_train_data(cfg, paths, info)
    label_map = build.label_map_of(data.records)
    val = build.build_val_data(cfg, paths, label_map, info)
    if val is None:
        logger.warning("no validation set configured (data.val_json); skipping evaluation")
    model = build.build_model(cfg, info, data.records.class_image_counts)
    writer = MetricWriter(out)

    state, ema, last_good = do_train(
        cfg, model, data=data, val=val, info=info, writer=writer, resume_from=resume_from
    )
    final = ema.module if ema is not None else model
    save_final_weights(out / "model_final.pt", final, label_map=label_map,
                       config=config_to_dict(cfg), last_good=last_good)  # fmt: skip
    metrics: dict[str, Any] = {}
    if val is not None:
        metrics = do_test(cfg, final, val, info, steps_list=cfg.test.eval_steps,
                          iteration=state.iteration, writer=writer)  # fmt: skip
    writer.close()
    if is_main():
        atomic_write_json(out / "metrics.json", metrics)
        logger.info("metrics written to %s", out / "metrics.json")
    cleanup()
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (returns None: a console script exits with ``main()``'s return value)."""
    run(argv)


if __name__ == "__main__":
    main()
