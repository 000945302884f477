"""Builders shared by ``train.py`` and ``evaluate.py``: data loaders, the model, the optimizer, the evaluator,
and the label map that ties the model's contiguous labels to category ids and names.

The label map is ``{"category_ids": [...], "names": [...]}``: label ``i`` of the model is category
``category_ids[i]`` named ``names[i]`` (training order: the training JSON's category ids sorted ascending). It is
stored in every checkpoint and in ``model_final.pt``; :func:`category_ids_for` maps it onto a validation JSON
and refuses one whose categories cannot be matched, so labels can never shift silently.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from tasks.common.data_samplers import InferenceSampler, TrainSampler
from tasks.common.dist import DistInfo, barrier, is_main
from tasks.common.schedule import warmup_step_lr
from tasks.detect import data as D
from tasks.detect.config import DetectConfig, ModelConfig, SolverConfig
from tasks.detect.transforms import build_test_transform, build_train_transform
from tasks.detect.weights import load_detector_weights

DEFAULT_CONFIG = (
    Path(__file__).resolve().parents[2] / "configs" / "detect" / "default_synthetic.yaml"
)
LOGGER_NAME = "diffvision.detect"
logger = logging.getLogger(LOGGER_NAME)

# {"category_ids": list[int], "names": list[str]}; list index = the model's contiguous label
LabelMap = dict[str, list]


@dataclass
class TrainData:
    """The training loader, its resumable sampler and the parsed training annotations."""

    loader: DataLoader
    sampler: TrainSampler
    records: D.DetectionRecords


@dataclass
class ValData:
    """The validation loader (sharded over ranks), its ground truth and the category id of every model label."""

    loader: DataLoader
    gt: dict
    category_ids: list[int]
    names: list[str]


def label_map_of(records: D.DetectionRecords) -> LabelMap:
    """The label map of a parsed annotation file (label ``i`` = ``records.label_to_category_id[i]``)."""
    return {
        "category_ids": [int(c) for c in records.label_to_category_id],
        "names": [str(n) for n in records.category_names],
    }


def category_ids_for(
    label_map: Mapping[str, Sequence], categories: LabelMap, *, source: str
) -> list[int]:
    """The category id, in the annotation file ``source``, of every label of a model trained with ``label_map``.

    Same ids with the same names: used as they are. Same names under other ids: re-mapped by name (a warning says
    so). Anything else (another category set, or an id whose name changed): a ValueError naming both lists.
    """
    ids, names = [int(i) for i in label_map["category_ids"]], [str(n) for n in label_map["names"]]
    theirs = dict(
        zip((int(i) for i in categories["category_ids"]), (str(n) for n in categories["names"]))
    )
    if len(theirs) == len(ids) and all(theirs.get(i) == n for i, n in zip(ids, names)):
        return ids
    by_name = {n: i for i, n in theirs.items()}
    if len(by_name) == len(theirs) == len(set(names)) == len(names) and set(by_name) == set(names):
        mapped = [by_name[n] for n in names]
        logger.warning(
            "%s lists the trained categories under other ids; scoring by name: %s",
            source,
            ", ".join(f"{n} {i}->{j}" for n, i, j in zip(names, ids, mapped) if i != j),
        )
        return mapped
    raise ValueError(
        f"{source}: its categories (id, name) {sorted(theirs.items())} do not match the model's label map "
        f"(training order) {list(zip(ids, names))}; evaluate against a JSON with the training categories"
    )


def resolve_data_paths(cfg: DetectConfig) -> dict[str, str | None]:
    """Dataset paths; rank 0 generates the synthetic dataset first when ``data.synthetic``."""
    if is_main():
        D.resolve_paths(cfg.data)
    barrier()
    return D.resolve_paths(cfg.data)


def build_train_data(
    cfg: DetectConfig, paths: Mapping[str, str | None], info: DistInfo
) -> TrainData:
    """Training annotations, the seeded train sampler (global batch split over ranks) and the loader."""
    if paths["train_json"] is None or paths["train_images"] is None:
        raise ValueError(
            "data.train_json and data.train_images must be set (or data.synthetic=true)"
        )
    records = D.load_detection_json(
        paths["train_json"],
        paths["train_images"],
        fmt=cfg.data.format,
        allow_absolute_paths=cfg.data.allow_absolute_paths,
    )
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
    sampler = TrainSampler(
        len(records.images),
        batch_size=per_rank,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        factors=factors,
    )
    loader = DataLoader(
        D.DetectionDataset(
            records, build_train_transform(cfg.data), image_check=cfg.data.image_check
        ),
        batch_size=per_rank,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=True,
        collate_fn=D.collate,
        generator=torch.Generator(),
        pin_memory=info.device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )
    return TrainData(loader, sampler, records)


def build_val_data(
    cfg: DetectConfig, paths: Mapping[str, str | None], label_map: LabelMap, info: DistInfo
) -> ValData | None:
    """Validation loader, ground truth and label -> category id mapping (None when no val set is configured).

    Raises:
        ValueError: the val JSON's categories do not match ``label_map`` (see :func:`category_ids_for`).
    """
    if paths["val_json"] is None or paths["val_images"] is None:
        return None
    records = D.load_detection_json(
        paths["val_json"],
        paths["val_images"],
        fmt=cfg.data.format,
        allow_absolute_paths=cfg.data.allow_absolute_paths,
    )
    category_ids = category_ids_for(label_map, label_map_of(records), source=str(paths["val_json"]))
    records = D.first_images(records, cfg.test.max_eval_images)
    loader = DataLoader(
        # skipping a validation image would still count its boxes in the GT: only "error" or "off" here
        D.DetectionDataset(
            records,
            build_test_transform(cfg.data),
            image_check="off" if cfg.data.image_check == "off" else "error",
        ),
        batch_size=cfg.test.eval_batch_size,
        sampler=InferenceSampler(len(records.images), info.rank, info.world_size),
        num_workers=cfg.data.num_workers,
        collate_fn=D.collate,
        generator=torch.Generator(),
        persistent_workers=cfg.data.num_workers > 0,
    )
    gt = D.subset_gt(paths["val_json"], [r.image_id for r in records.images])
    return ValData(loader, gt, category_ids, list(label_map["names"]))


def without_backbone_weights(model_cfg: ModelConfig) -> ModelConfig:
    """A copy of ``model_cfg`` that loads no backbone weights (for a full-detector file that holds them)."""
    backbone = dataclasses.replace(model_cfg.backbone, pretrained=False, weights=None)
    return dataclasses.replace(model_cfg, backbone=backbone)


def build_model(
    cfg: DetectConfig, info: DistInfo, class_image_counts: Sequence[int] | None = None
) -> torch.nn.Module:
    """The detector on ``info.device``, wrapped in DDP when running with several processes.

    With ``model.loss.use_fed_loss`` (LVIS), the federated loss samples classes with weights
    ``class_image_counts ** fed_loss_freq_weight_power`` (detectron2's ``get_fed_loss_cls_weights``).
    With ``model.weights`` set, a full detector file is loaded first (fine-tuning; official DiffusionDet files
    or ours; another class count re-initialises the class logits, with a warning).
    """
    from tasks.detect.model import build_detector

    model_cfg = without_backbone_weights(cfg.model) if cfg.model.weights else cfg.model
    model = build_detector(model_cfg)
    if model_cfg.weights:
        loaded = load_detector_weights(model, model_cfg.weights, allow_class_change=True)
        logger.info(
            "model.weights: started from %s (%s weights, %s)",
            model_cfg.weights,
            loaded.format,
            loaded.source,
        )
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


def build_optimizer(
    model: torch.nn.Module, *, lr: float, betas: Sequence[float], weight_decay: float
) -> torch.optim.AdamW:
    """AdamW with weight decay on every trainable parameter (official ``build_optimizer``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def build_lr_schedule(solver: SolverConfig) -> Callable[[int], float]:
    """``lr_at(step)`` for 0-based optimiser steps: linear warm-up, then x ``gamma`` at each milestone."""
    return functools.partial(
        warmup_step_lr, base_lr=solver.base_lr, warmup_iters=solver.warmup_iters,
        warmup_factor=solver.warmup_factor, milestones=solver.steps, gamma=solver.gamma,
    )  # fmt: skip


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_evaluator(
    data_format: str, gt: dict, category_ids: Sequence[int], device: torch.device
) -> Any:
    """COCO or LVIS evaluator; model label ``i`` is scored as category ``category_ids[i]``."""
    if data_format == "lvis":
        from evaluation.lvis import LVISEvaluator

        return LVISEvaluator(gt, label_to_category_id=category_ids, device=device)
    from evaluation.coco import COCOEvaluator

    return COCOEvaluator(gt, label_to_category_id=category_ids, device=device)
