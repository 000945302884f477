"""Train DiffusionDet.

    python tasks/detect/train.py                                  # embedded default: synthetic shapes, small model
    python tasks/detect/train.py --config configs/detect/diffdet_coco_r50.yaml solver.base_lr=5e-5
    python tasks/detect/train.py --config X.yaml --resume         # continue exactly from the latest checkpoint
    torchrun --nproc_per_node 8 tasks/detect/train.py --config configs/detect/diffdet_coco_r50.yaml

Outputs (``output_dir``): ``config.yaml`` (resolved), ``log.txt``, ``log.jsonl`` (one JSON record per log/eval),
``checkpoint_<iter>.pt``, ``model_final.pt`` and ``metrics.json`` (final COCO/LVIS stats per sampling-steps setting).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from tasks.common.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tasks.common.config import add_config_args, config_to_dict, load_config, save_config
from tasks.common.dist import (
    DistInfo,
    all_gather_object,
    barrier,
    cleanup,
    init_distributed,
    is_main,
)
from tasks.common.ema import ModelEMA, unwrap_model
from tasks.common.log import JsonlLogger, setup_logging
from tasks.detect import data as D
from tasks.detect.config import DetectConfig
from tasks.detect.engine import (
    TrainState,
    build_optimizer,
    describe_result,
    evaluate_each_steps,
    format_losses,
    result_summary,
    train_one_epoch,
)
from tasks.detect.transforms import build_test_transform, build_train_transform

DEFAULT_CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "detect" / "default_synthetic.yaml"
)
LOGGER_NAME = "diffvision.detect"


@dataclass
class DataBundle:
    """Everything data-related that training needs."""

    train_loader: DataLoader
    sampler: D.TrainSampler
    val_loader: DataLoader | None
    val_gt: dict | None
    records: D.DetectionRecords


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in output_dir"
    )
    return parser.parse_args(argv)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_val_loader(
    cfg: DetectConfig, paths: dict, label_map: Sequence[int], info: DistInfo
) -> tuple[DataLoader, dict]:
    """Validation loader (sharded across ranks) and the matching GT dict for the evaluator."""
    records = D.load_detection_json(
        paths["val_json"], paths["val_images"], fmt=cfg.data.format, label_to_category_id=label_map
    )
    records = D.first_images(records, cfg.test.max_eval_images)
    dataset = D.DetectionDataset(records, build_test_transform(cfg.data))
    sampler = D.InferenceSampler(len(dataset), info.rank, info.world_size)
    loader = DataLoader(
        dataset,
        batch_size=cfg.test.eval_batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=D.collate,
        generator=torch.Generator(),
        persistent_workers=cfg.data.num_workers > 0,
    )
    return loader, D.subset_gt(paths["val_json"], [r.image_id for r in records.images])


def build_data(cfg: DetectConfig, info: DistInfo) -> DataBundle:
    """Datasets, the seeded train sampler (global batch split over ranks) and loaders."""
    if info.rank == 0:
        paths = D.resolve_paths(cfg.data)  # generates the synthetic dataset on first use
    barrier()
    paths = D.resolve_paths(cfg.data)
    if paths["train_json"] is None or paths["train_images"] is None:
        raise ValueError(
            "data.train_json and data.train_images must be set (or data.synthetic=true)"
        )
    records = D.load_detection_json(paths["train_json"], paths["train_images"], fmt=cfg.data.format)
    if len(records.label_to_category_id) != cfg.model.head.num_classes:
        raise ValueError(
            f"{paths['train_json']} has {len(records.label_to_category_id)} categories but "
            f"model.head.num_classes={cfg.model.head.num_classes}; set model.head.num_classes="
            f"{len(records.label_to_category_id)}"
        )
    if cfg.solver.batch_size % info.world_size:
        raise ValueError(
            f"solver.batch_size={cfg.solver.batch_size} is not divisible by {info.world_size} processes"
        )
    per_rank = cfg.solver.batch_size // info.world_size
    factors = None
    if cfg.data.repeat_factor_threshold is not None:
        factors = D.repeat_factors(records, cfg.data.repeat_factor_threshold)
    sampler = D.TrainSampler(
        len(records.images),
        batch_size=per_rank,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        factors=factors,
    )
    dataset = D.DetectionDataset(records, build_train_transform(cfg.data))
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=True,
        collate_fn=D.collate,
        generator=torch.Generator(),
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )
    val_loader, val_gt = None, None
    if paths["val_json"] is not None and paths["val_images"] is not None:
        val_loader, val_gt = build_val_loader(cfg, paths, records.label_to_category_id, info)
    return DataBundle(loader, sampler, val_loader, val_gt, records)


def build_model(
    cfg: DetectConfig, info: DistInfo, class_image_counts: Sequence[int] | None = None
) -> torch.nn.Module:
    """The detector on ``info.device``, wrapped in DDP when running with several processes.

    With ``model.loss.use_fed_loss`` (LVIS), the federated loss samples classes with weights
    ``class_image_counts ** fed_loss_freq_weight_power`` (detectron2's ``get_fed_loss_cls_weights``).
    """
    from tasks.detect.model import build_detector

    model = build_detector(cfg.model)
    if cfg.model.loss.use_fed_loss:
        if class_image_counts is None:
            raise ValueError(
                "model.loss.use_fed_loss needs the per-class image counts of the train set"
            )
        counts = torch.tensor(class_image_counts, dtype=torch.float32)
        model.criterion.set_fed_loss_weights(counts**cfg.model.loss.fed_loss_freq_weight_power)
    model = model.to(info.device)
    if info.world_size > 1:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=True
        )
    return model


def build_evaluator(
    cfg: DetectConfig, gt: dict, label_map: Sequence[int], device: torch.device
) -> Any:
    if cfg.data.format == "lvis":
        from evaluation.lvis import LVISEvaluator

        return LVISEvaluator(gt, label_to_category_id=label_map, device=device)
    from evaluation.coco import COCOEvaluator

    return COCOEvaluator(gt, label_to_category_id=label_map, device=device)


def save_training_state(
    path: Path, model, optimizer, ema, scaler, state: TrainState, cfg: DetectConfig
) -> None:
    """Atomic checkpoint with everything needed to continue exactly (every rank's RNG state included)."""
    rngs = all_gather_object(rng_state())
    if not is_main():
        return
    payload = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": {
            "iteration": state.iteration,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
        },
        "rng": rngs,
        "config": config_to_dict(cfg),
    }
    if ema is not None:
        payload["ema"] = ema.state_dict()
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    save_checkpoint(payload, path)


def restore_training_state(path: Path, model, optimizer, ema, scaler, info: DistInfo) -> TrainState:
    ckpt = load_checkpoint(path, map_location=info.device)
    unwrap_model(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt["rng"]
    if len(rngs) != info.world_size:
        logging.getLogger(LOGGER_NAME).warning(
            "checkpoint has %d ranks' RNG states, running with %d", len(rngs), info.world_size
        )
    set_rng_state(rngs[info.rank % len(rngs)])
    return TrainState(**ckpt["state"])


def run_evaluation(
    cfg,
    model,
    ema,
    bundle: DataBundle,
    info: DistInfo,
    steps_list: Sequence[int],
    iteration: int,
    jsonl: JsonlLogger,
    logger: logging.Logger,
) -> dict[str, Any]:
    """Evaluate with each sampling-steps setting; log a table and one JSON record per setting."""
    if bundle.val_loader is None:
        logger.warning("no validation set configured (data.val_json); skipping evaluation")
        return {}
    evaluator = build_evaluator(
        cfg, bundle.val_gt, bundle.records.label_to_category_id, info.device
    )
    eval_model = ema.module if ema is not None else model
    metrics = {}
    for steps, result in evaluate_each_steps(
        eval_model, bundle.val_loader, evaluator, cfg, device=info.device, steps_list=steps_list
    ):
        if not is_main():
            continue
        metrics[f"steps_{steps}"] = result_summary(result)
        logger.info(
            "iteration %d, %d sampling step(s):%s",
            iteration,
            steps,
            describe_result(result, cfg.data.format),
        )
        jsonl.write(
            {"type": "eval", "iteration": iteration, "steps": steps, **metrics[f"steps_{steps}"]}
        )
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, evaluate with ``test.eval_steps`` sampling steps, write ``metrics.json``; returns the metrics."""
    args = parse_args(argv)
    cfg = load_config(DetectConfig, args.config or DEFAULT_CONFIG, args.overrides)
    info = init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    logger = setup_logging(out, LOGGER_NAME)
    if is_main():
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.seed + info.rank)
    bundle = build_data(cfg, info)
    model = build_model(cfg, info, bundle.records.class_image_counts)
    optimizer = build_optimizer(model, cfg.solver)
    ema = ModelEMA(model, cfg.solver.ema_decay) if cfg.solver.ema else None
    scaler = torch.amp.GradScaler(info.device.type) if cfg.solver.amp == "fp16" else None
    state = TrainState()
    if args.resume and (ckpt := latest_checkpoint(out)) is not None:
        state = restore_training_state(ckpt, model, optimizer, ema, scaler, info)
        logger.info("resumed from %s at iteration %d", ckpt, state.iteration)
    elif args.resume:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", out)
    jsonl = JsonlLogger(out / "log.jsonl")
    on_step = StepHooks(
        cfg, model, optimizer, ema, scaler, bundle, info, jsonl, logger, state.iteration
    )
    with logging_redirect_tqdm(loggers=[logger]):
        while state.iteration < cfg.solver.max_iter:
            bundle.sampler.set_epoch(state.epoch, state.batch_in_epoch)
            train_one_epoch(
                model,
                optimizer,
                bundle.train_loader,
                state,
                solver=cfg.solver,
                device=info.device,
                ema=ema,
                scaler=scaler,
                on_step=on_step,
            )
        on_step.close()
        if is_main():
            torch.save(
                unwrap_model(ema.module if ema else model).state_dict(), out / "model_final.pt"
            )
        metrics = run_evaluation(
            cfg, model, ema, bundle, info, cfg.test.eval_steps, state.iteration, jsonl, logger
        )
    if is_main():
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        logger.info("metrics written to %s", out / "metrics.json")
    cleanup()
    return metrics


class StepHooks:
    """After-step work: progress bar, text + JSON logs, checkpoints, periodic evaluation."""

    def __init__(
        self, cfg, model, optimizer, ema, scaler, bundle, info, jsonl, logger, start_iter: int
    ) -> None:
        self.cfg, self.model, self.optimizer, self.ema, self.scaler = (
            cfg,
            model,
            optimizer,
            ema,
            scaler,
        )
        self.bundle, self.info, self.jsonl, self.logger = bundle, info, jsonl, logger
        self.bar = tqdm(
            total=cfg.solver.max_iter,
            initial=start_iter,
            desc="train",
            disable=not is_main(),
            dynamic_ncols=True,
        )

    def __call__(self, state: TrainState, losses: dict[str, float]) -> None:
        cfg, it = self.cfg, state.iteration
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{losses['total_loss']:.3f}", lr=f"{losses['lr']:.2e}")
        if it % cfg.log_period == 0 or it == cfg.solver.max_iter:
            self.logger.info(
                "iter %d/%d  lr %.3g  %.2fs/it  %s",
                it,
                cfg.solver.max_iter,
                losses["lr"],
                losses["time"],
                format_losses(losses),
            )
            self.jsonl.write({"type": "train", "iteration": it, "epoch": state.epoch, **losses})
        if cfg.checkpoint_period > 0 and (
            it % cfg.checkpoint_period == 0 or it == cfg.solver.max_iter
        ):
            path = Path(cfg.output_dir) / f"checkpoint_{it:07d}.pt"
            save_training_state(path, self.model, self.optimizer, self.ema, self.scaler, state, cfg)
        if cfg.test.eval_period > 0 and it % cfg.test.eval_period == 0 and it < cfg.solver.max_iter:
            run_evaluation(
                cfg,
                self.model,
                self.ema,
                self.bundle,
                self.info,
                cfg.test.eval_steps[:1],
                it,
                self.jsonl,
                self.logger,
            )
            self.model.train()

    def close(self) -> None:
        self.bar.close()


if __name__ == "__main__":
    main()
