"""Evaluation metrics equal to the official tools: compiled loops (numba) on the CPU, torch on CUDA.

Every evaluator follows one protocol (:mod:`evaluation.protocol`: ``reset / process(inputs, outputs) /
evaluate() -> fractions under flat keys + "per_class"``), with a ``format_table(result)`` beside it.
Modules: :mod:`evaluation.coco` (COCO bbox / segm), :mod:`evaluation.keypoints` (COCO keypoints, OKS),
:mod:`evaluation.lvis` (LVIS federated), :mod:`evaluation.panoptic` (COCO / Cityscapes panoptic quality),
:mod:`evaluation.cityscapes` (Cityscapes pixel-level), :mod:`evaluation.cityscapes_instance` (Cityscapes
instance-level AP), :mod:`evaluation.semseg` (generic mIoU, DDPM-Seg mode), :mod:`evaluation.analysis`
(precision-recall plots, per-class AP, TIDE-style error breakdown).
Command line: ``python -m evaluation coco|lvis|keypoints|panoptic|cityscapes|cityscapes-instance ...``;
speed: ``benchmarks/eval_speed.py``, ``benchmarks/cityscapes_speed.py``.
"""
