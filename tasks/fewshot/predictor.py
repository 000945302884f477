"""Predict label maps with a saved ensemble on images of any size, in batches, and write them as
PNGs.

Per input image ``<stem>`` (outputs at the input's own size):

- ``<stem>_label.png``: class index per pixel (8-bit, 16-bit from 256 classes on), nearest-resized;
- ``<stem>_overlay.png``: the image blended with the class colours;
- ``<stem>_uncertainty.png``: the ensemble's Jensen-Shannon map (entropy of the mean softmax minus
  the mean member entropy), 8-bit, 255 = ln(number of classes), its upper bound; bilinearly resized.

Images are resized to the ensemble's size for feature extraction; ``batch_size`` images are held at
a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tasks.common.checkpoint import atomic_write_png
from tasks.fewshot.data import IMAGE_SUFFIXES, colorize, open_rgb, pil_to_unit
from tasks.fewshot.ensemble import LoadedEnsemble
from tasks.fewshot.pixel_classifier import Prediction, predict_image
from tasks.fewshot.pixel_features import PixelFeatures


def input_images(path: str | Path) -> list[Path]:
    """``path`` itself (an image file) or the image files in folder ``path`` (sorted, not
    recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"--input {path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--input {path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def batches(files: Sequence[Path], batch_size: int) -> Iterator[list[tuple[Path, Image.Image]]]:
    """The files opened as RGB, ``batch_size`` at a time."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(files), batch_size):
        yield [(p, open_rgb(p)) for p in files[start : start + batch_size]]


def predict_pil(
    ensemble: LoadedEnsemble, features: PixelFeatures, images: Sequence[Image.Image]
) -> list[Prediction]:
    """Ensemble predictions at the ensemble's image size for a batch of PIL images."""
    tensors = [pil_to_unit(im, ensemble.image_size) for im in images]
    return [predict_image(ensemble.model, maps, ensemble.image_size) for maps in features(tensors)]


def resize_prediction(pred: Prediction, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(labels (H, W) int64 nearest-resized, js (H, W) float bilinear-resized) at ``size`` = (H,
    W)."""
    labels = F.interpolate(pred.majority[None, None].float(), size=size, mode="nearest")[
        0, 0
    ].long()
    js = F.interpolate(
        pred.js[None, None].float(), size=size, mode="bilinear", align_corners=False
    )[0, 0]
    return labels, js.clamp(min=0)


def write_prediction(
    out_dir: str | Path, stem: str, image: Image.Image, pred: Prediction, ensemble: LoadedEnsemble
) -> dict:
    """Write the three PNGs of one image (at ``image``'s size); returns its summary for
    predictions.json."""
    out_dir = Path(out_dir)
    labels, js = resize_prediction(pred, (image.height, image.width))
    num_classes = len(ensemble.class_names)
    label_array = labels.numpy().astype(np.uint8 if num_classes <= 256 else np.uint16)
    atomic_write_png(out_dir / f"{stem}_label.png", label_array)
    colours = colorize(labels, tuple(ensemble.palette), ensemble.ignore_index)
    rgb = np.asarray(image, dtype=np.float32)
    atomic_write_png(out_dir / f"{stem}_overlay.png", (rgb * 0.5 + colours * 0.5).astype(np.uint8))
    scale = 255.0 / math.log(max(num_classes, 2))
    atomic_write_png(
        out_dir / f"{stem}_uncertainty.png",
        (js.numpy() * scale).round().clip(0, 255).astype(np.uint8),
    )
    counts = torch.bincount(labels.reshape(-1), minlength=num_classes).tolist()
    return {
        "size_hw": [image.height, image.width],
        "uncertainty": pred.uncertainty,
        "pixels_per_class": {name: int(n) for name, n in zip(ensemble.class_names, counts)},
    }
