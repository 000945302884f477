"""Issue 13, detection data: bad annotation JSON, bad images and paths escaping the data root.

Each test is the reproduction of one defect: the loader must give an error naming the file and the entry,
or skip and count with a warning naming them, and must find bad images before training starts.
"""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from tasks.detect.config import DataConfig
from tasks.detect.data import DetectionDataset, load_detection_json, subset_gt
from tasks.detect.transforms import build_test_transform


def _write(tmp_path, images=None, annotations=None, name="ann.json"):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    data = {
        "images": images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": annotations or [],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _ann(ann_id, bbox, image_id=1):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "iscrowd": 0}


def _dataset(recs, **kw):
    return DetectionDataset(recs, build_test_transform(DataConfig(min_size_test=32)), **kw)


@pytest.mark.parametrize("bad", [None, [1, None, 3, 4], [1, "abc", 3, 4], "1,2,3,4", [1, 2, 3]])
def test_malformed_bbox_skipped_counted_and_named(tmp_path, caplog, bad):
    path = _write(tmp_path, annotations=[_ann(1, [1, 1, 5, 5]), _ann(42, bad)])
    with caplog.at_level(logging.WARNING):
        recs = load_detection_json(path, tmp_path / "img")
    assert len(recs.images[0].labels) == 1
    assert recs.issues["malformed bbox entries skipped"] == 1
    assert "ann.json" in caplog.text and "42" in caplog.text  # the file and the annotation id


def test_numeric_string_bbox_is_malformed_not_coerced(tmp_path):
    path = _write(tmp_path, annotations=[_ann(3, ["1", "1", "5", "5"])])
    recs = load_detection_json(path, tmp_path / "img")
    assert len(recs.images[0].labels) == 0 and recs.issues["malformed bbox entries skipped"] == 1


@pytest.mark.parametrize(
    "field,value",
    [
        ("id", "1"),
        ("id", 1.5),
        ("height", "30"),
        ("height", "thirty"),
        ("width", None),
        ("width", -4),
    ],
)
def test_bad_image_fields_raise_naming_file_and_entry(tmp_path, field, value):
    image = {"id": 1, "file_name": "a.png", "width": 40, "height": 30, field: value}
    path = _write(tmp_path, images=[image])
    with pytest.raises(ValueError, match=rf"ann\.json.*images\[0\].*{field}"):
        load_detection_json(path, tmp_path / "img")


def test_duplicate_image_ids_raise(tmp_path):
    image = {"id": 1, "file_name": "a.png", "width": 40, "height": 30}
    path = _write(tmp_path, images=[image, dict(image)])
    with pytest.raises(ValueError, match=r"ann\.json.*images\[1\].*duplicate"):
        load_detection_json(path, tmp_path / "img")


@pytest.mark.parametrize("text", ["", '{"images": [{"id": 1, "file_na', "[1, 2]", "null"])
def test_truncated_empty_or_non_object_json_names_the_file(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="broken.json"):
        load_detection_json(path, tmp_path)


def test_bad_annotation_entries_name_the_entry(tmp_path):
    path = _write(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"] = [_ann(1, [1, 1, 2, 2]), "not a dict"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"ann\.json.*annotations\[1\]"):
        load_detection_json(path, tmp_path / "img")


def test_missing_image_found_up_front(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "gone.png", "width": 40, "height": 30},
    ]
    recs = load_detection_json(_write(tmp_path, images=images), tmp_path / "img")
    with pytest.raises(ValueError, match=r"ann\.json.*id=2.*gone\.png.*missing"):
        _dataset(recs)  # at construction: not when the image is first sampled


def test_truncated_image_found_up_front(tmp_path):
    path = _write(tmp_path)
    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG")):
        Image.effect_noise((400, 300), 50).convert("RGB").save(tmp_path / "img" / name, fmt)
        raw = (tmp_path / "img" / name).read_bytes()
        (tmp_path / "img" / name).write_bytes(raw[: len(raw) // 2])
        data = json.loads(path.read_text())
        data["images"][0].update(file_name=name, width=400, height=300)
        path.write_text(json.dumps(data))
        recs = load_detection_json(path, tmp_path / "img")
        with pytest.raises(ValueError, match=rf"ann\.json.*id=1.*{name}.*truncated"):
            _dataset(recs)


def test_wrong_size_image_found_up_front(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 30, "height": 40}]
    recs = load_detection_json(_write(tmp_path, images=images), tmp_path / "img")
    with pytest.raises(ValueError, match=r"ann\.json.*id=1.*40x30 on disk.*30x40"):
        _dataset(recs)


def test_bad_images_skipped_and_counted_when_asked(tmp_path, caplog):
    images = [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "gone.png", "width": 40, "height": 30},
        {"id": 3, "file_name": "a.png", "width": 41, "height": 30},
    ]
    recs = load_detection_json(_write(tmp_path, images=images), tmp_path / "img")
    with caplog.at_level(logging.WARNING):
        ds = _dataset(recs, image_check="skip")
    assert len(ds) == 1 and ds.records.images[0].image_id == 1
    assert "2 images" in caplog.text and "gone.png" in caplog.text and "id=3" in caplog.text


@pytest.mark.parametrize("name", ["../secret.png", "sub/../../secret.png", "/etc/hostname"])
def test_file_name_escaping_the_root_is_refused(tmp_path, name):
    images = [{"id": 5, "file_name": name, "width": 40, "height": 30}]
    with pytest.raises(ValueError, match=r"ann\.json.*images\[0\].*id=5.*outside"):
        load_detection_json(_write(tmp_path, images=images), tmp_path / "img")


def test_absolute_paths_allowed_only_explicitly(tmp_path):
    absolute = str(tmp_path / "img" / "a.png")
    images = [{"id": 1, "file_name": absolute, "width": 40, "height": 30}]
    path = _write(tmp_path, images=images)
    recs = load_detection_json(path, tmp_path / "other_root", allow_absolute_paths=True)
    assert recs.images[0].path == absolute
    inside = [{"id": 1, "file_name": "sub/../a.png", "width": 40, "height": 30}]
    recs = load_detection_json(_write(tmp_path, images=inside), tmp_path / "img")
    assert recs.images[0].path == str(tmp_path / "img" / "a.png")


def test_lvis_coco_url_escaping_the_root_is_refused(tmp_path):
    images = [
        {
            "id": 1,
            "coco_url": "http://images.cocodataset.org/../secret.jpg",
            "width": 40,
            "height": 30,
        }
    ]
    with pytest.raises(ValueError, match=r"ann\.json.*images\[0\].*outside"):
        load_detection_json(_write(tmp_path, images=images), tmp_path / "coco", fmt="lvis")


def test_evaluation_gt_drops_what_the_loader_cannot_use(tmp_path, caplog):
    anns = [_ann(1, [1, 1, 5, 5]), _ann(2, None), _ann(3, [1, "x", 2, 2]), _ann(4, [1, 1, 0, 5])]
    path = _write(tmp_path, annotations=anns)
    with caplog.at_level(logging.WARNING):
        gt = subset_gt(path, [1])
    assert [a["id"] for a in gt["annotations"]] == [1]
    assert "ann.json" in caplog.text and "3 " in caplog.text


def test_config_keys_reach_the_training_loader(tmp_path, caplog):
    """data.image_check and data.allow_absolute_paths are config keys, not only function arguments."""
    import torch

    from tasks.common.dist import DistInfo
    from tasks.detect.build import build_train_data
    from tasks.detect.config import DetectConfig

    absolute = str(tmp_path / "img" / "a.png")
    images = [
        {"id": 1, "file_name": absolute, "width": 40, "height": 30},
        {"id": 2, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 3, "file_name": "gone.png", "width": 40, "height": 30},
    ]
    path = str(_write(tmp_path, images=images))
    paths = {"train_json": path, "train_images": str(tmp_path / "img")}
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    cfg = DetectConfig()
    cfg.model.head.num_classes, cfg.solver.batch_size, cfg.data.num_workers = 1, 1, 0
    with pytest.raises(ValueError, match="outside"):
        build_train_data(cfg, paths, info)
    cfg.data.allow_absolute_paths = True
    with pytest.raises(ValueError, match="gone.png"):
        build_train_data(cfg, paths, info)
    cfg.data.image_check = "skip"
    with caplog.at_level(logging.WARNING):
        data = build_train_data(cfg, paths, info)
    assert len(data.loader.dataset) == 2
    assert "gone.png" in caplog.text
