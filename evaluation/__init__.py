"""Evaluation metrics equal to the official tools, computed in torch on CPU or CUDA.

Modules: :mod:`evaluation.coco` (COCO bbox / segm), :mod:`evaluation.lvis` (LVIS federated),
:mod:`evaluation.cityscapes` (Cityscapes pixel-level), :mod:`evaluation.semseg` (generic mIoU, DDPM-Seg mode).
Command line: ``python -m evaluation coco|lvis|cityscapes ...``; benchmark: ``python -m evaluation.bench``.
"""
