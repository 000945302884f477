"""The pieces of a few-shot run (train.py holds the loop): choosing labelled images, training one
ensemble per (method, seed, k), scoring the val split in bounded memory, and the mIoU table.

Labelled images: the first k of a permutation seeded by ``100 + seed``, so the sets are nested
across k.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tasks.common.checkpoint import atomic_write_png
from tasks.fewshot.config import FewShotConfig
from tasks.fewshot.data import colorize, overlay
from tasks.fewshot.datasets import FewShotData
from tasks.fewshot.ensemble import save_ensemble
from tasks.fewshot.metrics import miou_both
from tasks.fewshot.pixel_classifier import (
    EnsembleMLP,
    PixelBank,
    TrainStats,
    predict_image,
    train_ensemble,
)
from tasks.fewshot.pixel_features import PixelFeatures

logger = logging.getLogger("fewshot.train")


def choose(n: int, k: int, seed: int) -> list[int]:
    """``k`` training indices drawn with ``seed`` (all, in order, when k is 0 or >= n); nested
    across k."""
    if k <= 0 or k >= n:
        return list(range(n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(100 + seed))[:k].tolist()


@dataclass
class Run:
    """One ensemble: its method, seed, labelled images and (once trained) the model and its
    predictions."""

    method: str
    seed: int
    k: int
    indices: list[int]
    model: EnsembleMLP | None = None
    stats: TrainStats | None = None
    majority: list[Tensor] = field(default_factory=list)
    soft: list[Tensor] = field(default_factory=list)
    uncertainty: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.method}_k{self.k}_seed{self.seed}"


def plan_runs(cfg: FewShotConfig, num_train: int) -> list[Run]:
    """Every (method, seed, k) of ``cfg.experiment`` (empty lists: the config's ``seed`` and
    ``k``)."""
    e = cfg.experiment
    seeds, ks = e.seeds or [cfg.seed], e.ks or [cfg.k]
    return [Run(m, s, k, choose(num_train, k, s)) for m in e.methods for s in seeds for k in ks]


def train_runs(
    cfg: FewShotConfig,
    runs: Sequence[Run],
    features: PixelFeatures,
    data: FewShotData,
    device: torch.device,
) -> None:
    """Train the ensemble of every run of one method; features of the labelled images are extracted
    once."""
    used = sorted({i for run in runs for i in run.indices})
    maps = dict(zip(used, features([data.train_images[i] for i in used])))
    c = cfg.classifier
    for run in runs:
        bank = PixelBank(
            [maps[i] for i in run.indices],
            [data.train_labels[i] for i in run.indices],
            ignore_index=cfg.data.ignore_index,
            min_class_pixels=c.min_class_pixels,
            names=[data.train_names[i] for i in run.indices],
        )
        run.model, run.stats = train_ensemble(
            bank,
            cfg.data.num_classes,
            num_models=c.num_models,
            batch_size=c.batch_size,
            lr=c.lr,
            max_epochs=c.max_epochs,
            patience=c.patience,
            chunk_pixels=c.chunk_pixels,
            seed=run.seed,
            device=device,
            max_iterations=c.max_iterations or None,
        )
        logger.info(
            "%s: %d labelled pixels, member iterations %s",
            run.name,
            len(bank),
            run.stats.iterations,
        )


def save_run(
    cfg: FewShotConfig,
    run: Run,
    features: PixelFeatures,
    data: FewShotData,
    out: Path,
    checkpoint_path: str,
) -> Path:
    """``out/<run>/ensemble.pt`` with the feature spec, class names and the training record."""
    assert run.model is not None and run.stats is not None
    return save_ensemble(
        out / run.name / "ensemble.pt",
        run.model,
        class_names=data.class_names,
        ignore_index=cfg.data.ignore_index,
        palette=data.palette,
        feature_spec=features.spec,
        checkpoint_path=str(Path(checkpoint_path).resolve()) if run.method == "diffusion" else "",
        train={
            "k": len(run.indices),
            "seed": run.seed,
            "images": [data.train_names[i] for i in run.indices],
            "iterations": run.stats.iterations,
            "stop_epochs": run.stats.stop_epochs,
        },
    )


@torch.no_grad()
def predict_val(
    runs: Sequence[Run], features: PixelFeatures, data: FewShotData, batch_size: int
) -> None:
    """Predict the val split with every run's ensemble; features are computed once per batch of
    images and dropped (memory: one batch of features plus the small int16 label maps)."""
    for start in range(0, len(data.val_images), batch_size):
        images = data.val_images[start : start + batch_size]
        for maps, label in zip(features(images), data.val_labels[start : start + batch_size]):
            for run in runs:
                assert run.model is not None
                pred = predict_image(run.model, maps, tuple(label.shape))
                run.majority.append(pred.majority.to(torch.int16))
                run.soft.append(pred.soft.to(torch.int16))
                run.uncertainty.append(pred.uncertainty)


def run_metrics(cfg: FewShotConfig, run: Run, data: FewShotData) -> dict:
    """mIoU (standard and DDPM-Seg mode, majority and soft vote, fractions) and the run's record."""
    assert run.stats is not None
    metrics: dict = {
        "method": run.method,
        "k": len(run.indices),
        "seed": run.seed,
        "train_indices": run.indices,
        "iterations": run.stats.iterations,
        "stop_epochs": run.stats.stop_epochs,
        "uncertainty_mean": float(np.mean(run.uncertainty)),
    }
    for vote in ("majority", "soft"):
        preds = [p.long() for p in getattr(run, vote)]
        metrics[vote] = miou_both(
            preds, data.val_labels, cfg.data.num_classes, cfg.data.ignore_index
        )
    metrics["per_class"] = dict(zip(data.class_names, metrics["majority"]["iou"]))
    return metrics


def results_table(results: Sequence[dict]) -> str:
    """Markdown table: rows k, columns methods, cells mIoU (%) mean +- population std over seeds
    (majority vote)."""
    methods = list(dict.fromkeys(r["method"] for r in results))
    ks = sorted({r["k"] for r in results})
    lines = ["| k labelled | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for k in ks:
        cells = []
        for m in methods:
            vals = [
                100 * r["majority"]["miou"] for r in results if r["method"] == m and r["k"] == k
            ]
            cells.append(
                f"{np.mean(vals):.1f} +- {np.std(vals):.1f} (n={len(vals)})" if vals else "-"
            )
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_overlays(folder: Path, run: Run, data: FewShotData, *, n: int, ignore_index: int) -> None:
    """``overlay_<i>.png`` for the first ``n`` val images: ground truth | prediction, blended with
    the image."""
    for i in range(min(n, len(run.majority))):
        pair = [
            overlay(data.val_images[i], colorize(lab.long(), tuple(data.palette), ignore_index))
            for lab in (data.val_labels[i], run.majority[i])
        ]
        atomic_write_png(folder / f"overlay_{i:03d}.png", np.concatenate(pair, axis=1))
