"""The evaluator protocol, written down once. Every evaluator in :mod:`evaluation` follows it.

An evaluator is fed batch by batch and evaluates once (the shape of detectron2's ``DatasetEvaluator``):

* ``reset()`` drops everything processed so far;
* ``process(inputs, outputs)`` adds one batch: two equally long sequences of dicts, ``inputs[i]`` describing
  the ground truth side of image ``i`` and ``outputs[i]`` the model's prediction for it;
* ``evaluate() -> dict`` gathers all ranks (``torch.distributed``) and returns the metrics on rank 0
  (``{}`` on the other ranks).

**Inputs and outputs.**

* Detection (:class:`evaluation.coco.COCOEvaluator`, :class:`evaluation.lvis.LVISEvaluator`):
  ``inputs[i]["image_id"]`` (an image id of the ground-truth file); ``outputs[i]`` = ``{"boxes": (N, 4)
  boxes_xyxy in original-image pixels, "scores": (N,), "labels": (N,) contiguous 0..K-1}`` (+ ``"masks"``
  (N, H, W) for segm). ``label_to_category_id`` maps the labels to the file's category ids.
* Semantic segmentation (:class:`evaluation.semseg.SemSegEvaluator`,
  :class:`evaluation.cityscapes.CityscapesEvaluator`): ``inputs[i]["sem_seg"]`` (H, W) integer ground truth
  (optional ``"file_name"`` used in error messages, Cityscapes: optional ``"instances"`` (H, W) instanceIds);
  ``outputs[i]["sem_seg"]`` (H, W) integer labels or (C, H, W) scores (argmax over C).

**Result.** Metric values are FRACTIONS in [0, 1] (NaN where the metric is undefined, -1 where the official
COCO / LVIS tools write -1) under flat, readable keys ("AP", "AP50", ..., "AR100", "mIoU", "pixel_acc");
per-class values under ``"per_class": {class name: value}`` (further breakdowns, e.g. Cityscapes'
per-category IoU, under other ``"per_..."`` keys). Nothing else is nested, so the keys not starting with
``per_`` form a flat dict of floats, ready for a log line or metrics.json.

**Tables.** Each evaluator module has a module-level ``format_table(result) -> str`` printing that result the
familiar way (pycocotools' 12 lines, lvis-api's 13, cityscapesScripts' class / category tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Evaluator(Protocol):
    """``reset()``, ``process(inputs, outputs)``, ``evaluate() -> dict`` (see the module docstring)."""

    def reset(self) -> None:
        """Drop everything processed so far."""

    def process(self, inputs: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]]) -> None:
        """Add one batch; ``inputs[i]`` and ``outputs[i]`` belong to the same image."""

    def evaluate(self) -> dict[str, Any]:
        """Metrics over everything processed (all ranks), as fractions under flat keys, on rank 0."""


def check_batch(inputs: Sequence[Any], outputs: Sequence[Any], who: str) -> None:
    """Raise ValueError unless ``inputs`` and ``outputs`` are equally long sequences of dicts."""
    if len(inputs) != len(outputs):
        raise ValueError(f"{who}.process: {len(inputs)} inputs but {len(outputs)} outputs")
    for i, (inp, out) in enumerate(zip(inputs, outputs)):
        if not isinstance(inp, dict) or not isinstance(out, dict):
            raise ValueError(
                f"{who}.process: inputs[{i}] and outputs[{i}] must be dicts, got "
                f"{type(inp).__name__} and {type(out).__name__}"
            )


def require_key(d: dict[str, Any], key: str, who: str, what: str) -> Any:
    """``d[key]``, or ValueError naming the evaluator, the entry and the missing key."""
    if key not in d:
        raise ValueError(f"{who}.process: {what} has no '{key}' (keys: {sorted(d)})")
    return d[key]
