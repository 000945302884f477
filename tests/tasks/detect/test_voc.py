"""Pascal VOC import: voc2coco CLI and direct VOC loading by config (shared BCCD and a written fixture)."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from tasks.detect.config import DataConfig
from tasks.detect.data import load_detection_json, resolve_paths
from tasks.detect.voc2coco import main as voc2coco


def _expected_counts(root, split):
    """Independent count: images, non-degenerate boxes, degenerate boxes, class names by first use."""
    ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    boxes = degenerate = 0
    names: list[str] = []
    for image_id in ids:
        for obj in ET.parse(root / "Annotations" / f"{image_id}.xml").getroot().iter("object"):
            b = obj.find("bndbox")
            x1, y1, x2, y2 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x2 > x1 and y2 > y1:
                boxes += 1
            else:
                degenerate += 1
            if obj.find("name").text not in names:
                names.append(obj.find("name").text)
    return len(ids), boxes, degenerate, names


@pytest.mark.parametrize("split", ["train", "val"])
def test_bccd_counts(shared_data, tmp_path, caplog, split):
    root = shared_data / "bccd" / "BCCD"
    n_images, n_boxes, n_degenerate, names = _expected_counts(root, split)
    assert n_images == {"train": 205, "val": 87}[split] and n_degenerate == 1
    out = tmp_path / f"{split}.json"
    with caplog.at_level(logging.WARNING):
        coco = voc2coco([str(root), "--split", split, str(out)])
    assert json.loads(out.read_text()) == coco
    assert len(coco["images"]) == n_images and len(coco["annotations"]) == n_boxes
    assert [c["name"] for c in coco["categories"]] == names
    warning = [r.getMessage() for r in caplog.records if "degenerate" in r.getMessage()]
    assert len(warning) == 1 and f"{n_degenerate} degenerate" in warning[0]
    assert {"train": "BloodImage_00343.xml", "val": "BloodImage_00338.xml"}[split] in warning[0]
    recs = load_detection_json(out, root / "JPEGImages")  # the loader accepts it unchanged
    assert sum(len(r.labels) for r in recs.images) == n_boxes and not recs.issues
    assert (recs.images[0].width, recs.images[0].height) == (640, 480)


def _write_voc(root, objects_per_image):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, objects in enumerate(objects_per_image):
        image_id = f"im{i}"
        ids.append(image_id)
        Image.new("RGB", (50, 40)).save(root / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(
            f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
            f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
            for n, (a, b, c, d) in objects
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>50</width>"
            f"<height>40</height><depth>3</depth></size>{objs}</annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:2]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[2:]) + "\n")


def test_coordinates_classes_and_degenerate_boxes(tmp_path):
    root = tmp_path / "VOC"
    _write_voc(
        root,
        [
            [("dog", (1, 1, 50, 40)), ("cat", (5, 5, 5, 9))],
            [("cat", (11, 21, 20, 30)), ("dog", (3, 4, 2, 8))],
            [("bird", (2, 2, 6, 6))],
        ],
    )
    coco = voc2coco([str(root), "--split", "train", str(tmp_path / "a.json")])
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]  # file order, not sorted
    # 1-based inclusive VOC pixels -> continuous COCO boxes: xmin=1..xmax=W covers the whole image
    assert [a["bbox"] for a in coco["annotations"]] == [[0, 0, 50, 40], [10, 20, 10, 10]]
    given = voc2coco(
        [str(root), "--split", "train", str(tmp_path / "b.json"), "--classes", "cat,dog"]
    )
    assert [c["name"] for c in given["categories"]] == ["cat", "dog"]
    assert [a["category_id"] for a in given["annotations"]] == [2, 1]


def test_direct_voc_loading_by_config(tmp_path, monkeypatch):
    root = tmp_path / "VOC"
    _write_voc(root, [[("dog", (1, 1, 10, 10))], [("cat", (2, 2, 9, 9))], [("bird", (2, 2, 6, 6))]])
    monkeypatch.chdir(tmp_path)  # the converted files go to ./outputs/voc_coco
    cfg = DataConfig(
        train_json=str(root / "ImageSets/Main/train.txt"),
        val_json=str(root / "ImageSets/Main/val.txt"),
    )
    paths = resolve_paths(cfg)
    assert paths["train_images"] == paths["val_images"] == str(root / "JPEGImages")
    train = load_detection_json(paths["train_json"], paths["train_images"])
    val = load_detection_json(
        paths["val_json"], paths["val_images"], label_to_category_id=train.label_to_category_id
    )
    assert (
        train.category_names == val.category_names == ["dog", "cat", "bird"]
    )  # train order, then val
    assert val.images[0].labels.tolist() == [2]
    assert resolve_paths(cfg) == paths  # stable file names


def test_bad_voc_files_are_named(tmp_path):
    root = tmp_path / "VOC"
    _write_voc(root, [[("dog", (1, 1, 10, 10))], [("cat", (2, 2, 9, 9))]])
    (root / "Annotations" / "im1.xml").write_text("<annotation><object><name>cat</name>")
    with pytest.raises(ValueError, match="im1.xml.*cannot parse"):
        voc2coco([str(root), "--split", "train", str(tmp_path / "x.json")])
    (root / "Annotations" / "im1.xml").write_text(
        "<annotation><size><width>50</width><height>40</height></size><object><name>cat</name>"
        "<bndbox><xmin>a</xmin><ymin>1</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>"
        "</annotation>"
    )
    with pytest.raises(ValueError, match=r"im1.xml object 0.*xmin"):
        voc2coco([str(root), "--split", "train", str(tmp_path / "x.json")])
    with pytest.raises(FileNotFoundError, match="test.txt"):
        voc2coco([str(root), "--split", "test", str(tmp_path / "x.json")])
