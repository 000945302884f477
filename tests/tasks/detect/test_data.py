"""COCO / LVIS v1 loading, annotation hygiene, lazy dataset items, and the seeded train sampler."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from tasks.common.data_samplers import InferenceSampler, TrainSampler
from tasks.detect.config import DataConfig
from tasks.detect.data import (
    DetectionDataset,
    load_detection_json,
    repeat_factors,
    subset_gt,
)
from tasks.detect.transforms import build_test_transform, build_train_transform


def _write_custom(tmp_path):
    (tmp_path / "img").mkdir()
    for name, (w, h) in {"a.png": (40, 30), "b.png": (20, 20)}.items():
        Image.new("RGB", (w, h), (10, 20, 30)).save(tmp_path / "img" / name)
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "b.png", "width": 20, "height": 20},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {
                "id": 2,
                "image_id": 7,
                "category_id": 2,
                "bbox": [30, 20, 20, 20],
                "iscrowd": 0,
            },  # clipped
            {
                "id": 3,
                "image_id": 7,
                "category_id": 2,
                "bbox": [5, 5, 0, 3],
                "iscrowd": 0,
            },  # zero width
            {
                "id": 4,
                "image_id": 7,
                "category_id": 5,
                "bbox": [5, 5, 3, 3],
                "iscrowd": 0,
            },  # unknown category
            {
                "id": 5,
                "image_id": 7,
                "category_id": 2,
                "bbox": [50, 50, 3, 3],
                "iscrowd": 0,
            },  # outside
            {"id": 6, "image_id": 7, "category_id": 9, "bbox": [0, 0, 5, 5], "iscrowd": 1},  # crowd
            {
                "id": 7,
                "image_id": 7,
                "category_id": 9,
                "bbox": [1, 1, -3, 5],
                "iscrowd": 0,
            },  # negative
        ],
    }
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    return path


def test_custom_dataset_hygiene_and_label_mapping(tmp_path, caplog):
    path = _write_custom(tmp_path)
    with caplog.at_level(logging.WARNING):
        recs = load_detection_json(path, tmp_path / "img")
    assert recs.label_to_category_id == [2, 9] and recs.category_names == ["cat", "dog"]
    a, b = recs.images
    np.testing.assert_allclose(a.boxes_xyxy, [[1, 2, 11, 7], [30, 20, 40, 30]])
    assert a.labels.tolist() == [1, 0]
    assert len(b.labels) == 0  # empty image kept
    assert recs.issues["boxes with non-positive width/height skipped"] == 2
    assert recs.issues["annotations with unknown category skipped"] == 1
    assert recs.issues["boxes entirely outside the image skipped"] == 1
    assert recs.issues["boxes reaching outside the image clipped"] == 1
    assert recs.issues["crowd annotations dropped"] == 1
    assert (
        "custom.json" in caplog.text
        and "non-positive" in caplog.text
        and "crowd" not in caplog.text
    )
    item = DetectionDataset(
        recs, build_test_transform(DataConfig(min_size_test=60, max_size_test=100))
    )[0]
    assert item["image"].shape == (3, 60, 80) and item["orig_size"] == (30, 40)
    np.testing.assert_allclose(item["boxes_xyxy"][0].numpy(), [2, 4, 22, 14])


def test_bad_files_raise_naming_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}], "categories": []}))
    with pytest.raises(ValueError, match="broken.json.*height"):
        load_detection_json(path, tmp_path)
    path.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": "x.png", "height": 5, "width": 5}], "categories": []}
        )
    )
    recs = load_detection_json(path, tmp_path)
    with pytest.raises(ValueError, match="broken.json.*x.png"):
        DetectionDataset(recs, build_test_transform(DataConfig()))[0]


def test_lvis_v1_uses_coco_url_and_image_counts(tmp_path):
    data = {
        "images": [
            {
                "id": 1,
                "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg",
                "height": 10,
                "width": 10,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        ],
        "categories": [
            {"id": 1, "name": "a", "image_count": 5, "frequency": "r"},
            {"id": 3, "name": "b", "image_count": 50, "frequency": "f"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4}
        ],
    }
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps(data))
    recs = load_detection_json(path, "/data/coco", fmt="lvis")
    assert recs.images[0].path == "/data/coco/val2017/000000000001.jpg"
    assert recs.class_image_counts == [5, 50] and recs.images[0].labels.tolist() == [1]


def test_coco_tiny(shared_data):
    root = shared_data / "coco_tiny"
    recs = load_detection_json(root / "annotations/instances_val2017.json", root / "val2017")
    assert len(recs.images) == 80 and len(recs.label_to_category_id) == 80
    raw = json.loads((root / "annotations/instances_val2017.json").read_text())
    assert sum(len(r.labels) for r in recs.images) == sum(
        1 for a in raw["annotations"] if not a["iscrowd"]
    )
    ds = DetectionDataset(
        recs,
        build_train_transform(
            DataConfig(
                min_size_train=(96, 128),
                max_size_train=200,
                crop_resize_short=(100,),
                crop_size=(64, 96),
            )
        ),
    )
    a, b = ds[(3, 123)], ds[(3, 123)]
    assert a["image"].dtype.is_floating_point is False and min(a["image"].shape[1:]) in (96, 128)
    assert (a["image"] == b["image"]).all() and (a["boxes_xyxy"] == b["boxes_xyxy"]).all()
    h, w = a["image"].shape[1:]
    boxes = a["boxes_xyxy"]
    assert (boxes[:, 2] <= w + 1e-3).all() and (boxes[:, 3] <= h + 1e-3).all()
    assert (
        len(
            subset_gt(root / "annotations/instances_val2017.json", [recs.images[0].image_id])[
                "images"
            ]
        )
        == 1
    )


def test_train_sampler_sharding_resume_and_determinism():
    full = list(TrainSampler(10, batch_size=2, seed=5))
    assert sorted(i for i, _ in full) == list(range(10))
    assert full == list(TrainSampler(10, batch_size=2, seed=5))
    s = TrainSampler(10, batch_size=2, seed=5)
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]
    s.set_epoch(0, start_batch=2)
    assert list(s) == full[4:] and len(s) == 6
    ranks = [TrainSampler(11, batch_size=2, seed=5, rank=r, world_size=2) for r in range(2)]
    parts = [list(r) for r in ranks]
    assert len(parts[0]) == len(parts[1]) == 4  # 11 -> 8 usable for 2 ranks x batch 2
    assert not {i for i, _ in parts[0]} & {i for i, _ in parts[1]}
    with pytest.raises(ValueError, match="fewer than the global batch"):
        TrainSampler(3, batch_size=2, seed=0, world_size=2)


def test_inference_sampler_covers_everything_once():
    shards = [list(InferenceSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))


def test_repeat_factors(tmp_path):
    path = _write_custom(tmp_path)
    recs = load_detection_json(path, tmp_path / "img")
    factors = repeat_factors(recs, threshold=1.0)
    # both classes appear in 1 of 2 images: f=0.5 -> sqrt(1/0.5); the empty image keeps 1
    np.testing.assert_allclose(factors, [np.sqrt(2.0), 1.0])
