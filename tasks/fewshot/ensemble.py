"""One file per trained pixel-classifier ensemble: the MLPs plus everything needed to compute their
input again.

``ensemble.pt`` (atomic, loads with ``torch.load(weights_only=True)``) holds::

    {"format": "diffvision-fewshot-ensemble", "version": 1,
     "model": EnsembleMLP state_dict, "in_dim", "num_classes", "num_models",
     "class_names": [...], "ignore_index", "palette": [[r, g, b], ...],
     "feature_spec": {...},           # the identity of the features (see below)
     "checkpoint_path": "...",        # where the U-Net came from: a hint, not part of the identity
     "train": {...}}                  # k, seed, image names, iterations: a record only

``feature_spec`` is what the features depend on: the method, the U-Net's weights (a SHA-1 of its
state_dict), its flags and noise schedule, the blocks and timesteps, the shared noise's seed and
device, the image size and the feature dimension. :func:`check_feature_spec` refuses any difference,
naming each one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tasks.common.checkpoint import load_checkpoint, save_checkpoint
from tasks.fewshot.pixel_classifier import EnsembleMLP

FORMAT = "diffvision-fewshot-ensemble"
VERSION = 1


class FeatureSpecMismatch(ValueError):
    """The ensemble was trained on features computed differently from the ones offered now."""


@dataclass
class LoadedEnsemble:
    """An ensemble read back by :func:`load_ensemble`, with its metadata."""

    model: EnsembleMLP
    class_names: list[str]
    ignore_index: int
    palette: list[tuple[int, int, int]]
    feature_spec: dict[str, Any]
    checkpoint_path: str
    train: dict[str, Any]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) the ensemble's features are computed at."""
        h, w = self.feature_spec["image_size"]
        return int(h), int(w)


def save_ensemble(
    path: str | Path,
    model: EnsembleMLP,
    *,
    class_names: Sequence[str],
    ignore_index: int,
    palette: Sequence[Sequence[int]],
    feature_spec: Mapping[str, Any],
    checkpoint_path: str = "",
    train: Mapping[str, Any] | None = None,
) -> Path:
    """Write the ensemble and its metadata to ``path`` atomically (see the module doc for the
    layout)."""
    if len(class_names) != model.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for an ensemble of {model.num_classes} classes"
        )
    if int(feature_spec.get("feature_dim", -1)) != model.in_dim:
        raise ValueError(
            f"feature_spec feature_dim {feature_spec.get('feature_dim')} != "
            f"ensemble input {model.in_dim}"
        )
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "in_dim": model.in_dim,
        "num_classes": model.num_classes,
        "num_models": model.num_models,
        "class_names": list(class_names),
        "ignore_index": int(ignore_index),
        "palette": [[int(c) for c in rgb] for rgb in palette],
        "feature_spec": dict(feature_spec),
        "checkpoint_path": str(checkpoint_path),
        "train": dict(train or {}),
    }
    return save_checkpoint(payload, path)


def load_ensemble(path: str | Path, *, device: torch.device | str = "cpu") -> LoadedEnsemble:
    """Read an ensemble file (eval mode on ``device``); a file of another kind is a named error."""
    data = load_checkpoint(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a few-shot ensemble file (no format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(
            f"{path}: ensemble file version {data.get('version')}, this code reads {VERSION}"
        )
    model = EnsembleMLP(int(data["in_dim"]), int(data["num_classes"]), int(data["num_models"]))
    model.load_state_dict(data["model"])
    return LoadedEnsemble(
        model=model.to(device).eval(),
        class_names=list(data["class_names"]),
        ignore_index=int(data["ignore_index"]),
        palette=[tuple(int(c) for c in rgb) for rgb in data["palette"]],
        feature_spec=dict(data["feature_spec"]),
        checkpoint_path=str(data["checkpoint_path"]),
        train=dict(data["train"]),
    )


def spec_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: saved -> current`` for every feature-spec entry that differs (absent entries
    included)."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if _plain(a) != _plain(b):
            lines.append(f"{key}: {a!r} (ensemble) -> {b!r} (now)")
    return lines


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_feature_spec(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, where: str = "ensemble"
) -> None:
    """Raise :class:`FeatureSpecMismatch` naming every difference between the two feature specs."""
    diff = spec_differences(saved, current)
    if diff:
        raise FeatureSpecMismatch(
            f"{where} was trained on different features than these; "
            "refusing to predict with it:\n  " + "\n  ".join(diff)
        )
