"""Official augmentation semantics: resize arithmetic, flip, crop clipping, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.detect.config import DataConfig
from tasks.detect.transforms import (
    RandomCropAbsoluteRange,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    Sample,
    build_test_transform,
    build_train_transform,
    resized_shape,
)


def _sample(w=200, h=100):
    image = Image.fromarray(np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3))
    boxes = np.array([[10, 20, 50, 60], [150, 0, 200, 100]], dtype=np.float32)
    return Sample(image, boxes, np.array([0, 1], dtype=np.int64))


def test_resized_shape_matches_detectron2():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)  # long side capped
    assert resized_shape(427, 640, 800, 1333) == (800, 1199)


def test_resize_scales_boxes():
    out = ResizeShortestEdge([200], 1000)(_sample(), np.random.default_rng(0))
    assert out.image.size == (400, 200)
    np.testing.assert_allclose(out.boxes_xyxy[0], [20, 40, 100, 120])


def test_flip_mirrors_boxes_and_pixels():
    sample = _sample()
    out = RandomHorizontalFlip(prob=1.0)(sample, np.random.default_rng(0))
    np.testing.assert_allclose(out.boxes_xyxy, [[150, 20, 190, 60], [0, 0, 50, 100]])
    assert np.array_equal(np.asarray(out.image)[:, ::-1], np.asarray(sample.image))


def test_crop_clips_and_drops_boxes():
    crop = RandomCropAbsoluteRange(60, 60)
    for seed in range(20):
        out = crop(_sample(), np.random.default_rng(seed))
        assert out.image.size == (60, 60)
        assert (out.boxes_xyxy >= 0).all() and (out.boxes_xyxy <= 60).all()
        assert ((out.boxes_xyxy[:, 2:] - out.boxes_xyxy[:, :2]) > 0).all()
        assert len(out.labels) == len(out.boxes_xyxy) <= 2
    with pytest.raises(ValueError, match="crop_size"):
        RandomCropAbsoluteRange(10, 5)


def test_train_transform_sizes_and_reproducibility():
    cfg = DataConfig(
        min_size_train=(64, 80), max_size_train=200, crop_resize_short=(70,), crop_size=(40, 60)
    )
    tfm = build_train_transform(cfg)
    shapes = set()
    for seed in range(30):
        a = tfm(_sample(), np.random.default_rng(seed))
        b = tfm(_sample(), np.random.default_rng(seed))
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and np.array_equal(
            a.boxes_xyxy, b.boxes_xyxy
        )
        assert min(a.image.size) in (64, 80) and max(a.image.size) <= 200
        shapes.add(a.image.size)
    assert len(shapes) > 2  # multi-scale and crop paths both used


def test_test_transform_is_deterministic_resize():
    out = build_test_transform(DataConfig(min_size_test=50, max_size_test=500))(
        _sample(), np.random.default_rng()
    )
    assert out.image.size == (100, 50)
    np.testing.assert_allclose(out.boxes_xyxy[1], [75, 0, 100, 50])
