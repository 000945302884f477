"""Detection augmentations of the official DiffusionDet dataset mapper (detectron2 semantics).

Training: horizontal flip (p=0.5), then with p=0.5 a multi-scale resize of the short side to one of
``min_size_train`` (long side <= ``max_size_train``), otherwise resize the short side to one of
``crop_resize_short`` -> random crop with an absolute size range ``crop_size`` -> the same multi-scale resize.
Test: resize the short side to ``min_size_test`` (long side <= ``max_size_test``).

Every transform works on a :class:`Sample` (PIL RGB image, ``boxes_xyxy`` (M, 4) float32 absolute pixels of the
current image, ``labels`` (M,) int64) and draws its randomness from an explicit ``numpy.random.Generator`` so
that an epoch's augmentations are reproducible (exact resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tasks.detect.config import DataConfig

BOX_EPS = 1e-5  # detectron2 filter_empty_instances threshold


@dataclass
class Sample:
    """An image and its boxes.

    Attributes:
        image: PIL RGB image.
        boxes_xyxy: (M, 4) float32, absolute pixels of ``image``.
        labels: (M,) int64 contiguous labels.
    """

    image: Image.Image
    boxes_xyxy: np.ndarray
    labels: np.ndarray


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) of a shortest-edge resize: detectron2 ``ResizeShortestEdge.get_output_shape``, the same
    float arithmetic (the short side is set to ``short`` exactly, then both sides are capped by ``max_size``).

    The one implementation: training/test transforms and ``DiffusionDetector.predict`` all call it.

    A side is never rounded down to 0 px (detectron2 would crash later on such an image).

    Raises:
        ValueError: when a side of the input is < 1 px.
    """
    if height < 1 or width < 1:
        raise ValueError(
            f"cannot resize an image of {height}x{width} px (height x width): it is empty"
        )
    size = short * 1.0
    scale = size / min(height, width)
    if height < width:
        new_h, new_w = size, scale * width
    else:
        new_h, new_w = scale * height, size
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    # detectron2 would return 0 for a side of an extreme aspect ratio (e.g. 10000x1) and crash later; keep 1 px
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


class ResizeShortestEdge:
    """Resize the short side to a size chosen uniformly from ``sizes``, capping the long side at ``max_size``."""

    def __init__(self, sizes: Sequence[int], max_size: int) -> None:
        if not sizes:
            raise ValueError("ResizeShortestEdge needs at least one size")
        self.sizes = tuple(int(s) for s in sizes)
        self.max_size = int(max_size)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        short = (
            self.sizes[int(rng.integers(len(self.sizes)))] if len(self.sizes) > 1 else self.sizes[0]
        )
        width, height = sample.image.size
        new_h, new_w = resized_shape(height, width, short, self.max_size)
        if (new_h, new_w) == (height, width):
            return sample
        image = sample.image.resize((new_w, new_h), Image.BILINEAR)
        scale = np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
        return Sample(image, sample.boxes_xyxy * scale, sample.labels)


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``prob``."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        width = sample.image.size[0]
        boxes = sample.boxes_xyxy.copy()
        boxes[:, [0, 2]] = width - sample.boxes_xyxy[:, [2, 0]]
        return Sample(sample.image.transpose(Image.FLIP_LEFT_RIGHT), boxes, sample.labels)


class RandomCropAbsoluteRange:
    """detectron2 ``RandomCrop("absolute_range", (lo, hi))``: crop h in [lo, min(H, hi)], w in [lo, min(W, hi)].

    Boxes are shifted, clipped to the crop, and dropped when their width or height becomes <= 1e-5.
    """

    def __init__(self, low: int, high: int) -> None:
        if not 0 < low <= high:
            raise ValueError(
                f"crop_size must be (min, max) with 0 < min <= max, got ({low}, {high})"
            )
        self.low, self.high = int(low), int(high)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        width, height = sample.image.size
        crop_h = int(rng.integers(min(height, self.low), min(height, self.high) + 1))
        crop_w = int(rng.integers(min(width, self.low), min(width, self.high) + 1))
        y0 = int(rng.integers(0, height - crop_h + 1))
        x0 = int(rng.integers(0, width - crop_w + 1))
        image = sample.image.crop((x0, y0, x0 + crop_w, y0 + crop_h))
        boxes = sample.boxes_xyxy - np.array([x0, y0, x0, y0], dtype=np.float32)
        boxes = clip_boxes(boxes, crop_h, crop_w)
        keep = nonempty(boxes)
        return Sample(image, boxes[keep], sample.labels[keep])


class RandomChoice:
    """Apply one of several transform pipelines, chosen uniformly."""

    def __init__(self, pipelines: Sequence[Sequence]) -> None:
        self.pipelines = [list(p) for p in pipelines]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        pipeline = self.pipelines[int(rng.integers(len(self.pipelines)))]
        for transform in pipeline:
            sample = transform(sample, rng)
        return sample


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def clip_boxes(boxes_xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip (M, 4) absolute xyxy boxes to the image ``[0, width] x [0, height]``."""
    out = boxes_xyxy.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def nonempty(boxes_xyxy: np.ndarray, threshold: float = BOX_EPS) -> np.ndarray:
    """Boolean (M,) mask of boxes with width and height > ``threshold``."""
    return ((boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) > threshold) & (
        (boxes_xyxy[:, 3] - boxes_xyxy[:, 1]) > threshold
    )


def build_train_transform(cfg: DataConfig) -> Compose:
    """The official training augmentation with the sizes of ``cfg``."""
    multi_scale = ResizeShortestEdge(cfg.min_size_train, cfg.max_size_train)
    if not cfg.crop_enabled:
        return Compose([RandomHorizontalFlip(), multi_scale])
    crop = [
        ResizeShortestEdge(cfg.crop_resize_short, cfg.max_size_train),
        RandomCropAbsoluteRange(*cfg.crop_size),
        multi_scale,
    ]
    return Compose([RandomHorizontalFlip(), RandomChoice([[multi_scale], crop])])


def build_test_transform(cfg: DataConfig) -> Compose:
    """Deterministic test resize (short side ``min_size_test``, long side <= ``max_size_test``)."""
    return Compose([ResizeShortestEdge([cfg.min_size_test], cfg.max_size_test)])
