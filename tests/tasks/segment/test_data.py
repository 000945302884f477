"""Segmentation data: Cityscapes id mapping (cityscapesscripts oracle), CamVid, bad input, split files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.segment import data as D
from tasks.segment.config import DataConfig
from tasks.segment.datasets import labelled_frames, pretraining_images, train_frames
from tasks.segment.splits import nested_splits, read_split_file, split_size, write_split_files


def test_cityscapes_label_ids_to_train_ids(shared_data: Path) -> None:
    labels_mod = pytest.importorskip("cityscapesscripts.helpers.labels")
    root = shared_data / "cityscapes_one_frame"
    frames, info = labelled_frames(DataConfig(dataset="cityscapes", root=str(root)), "val")
    assert len(frames) == 1 and info.num_classes == 19 and info.ignore_index == 255
    oracle = {
        lb.id: (255 if lb.trainId in (-1, 255) else lb.trainId)
        for lb in labels_mod.labels
        if lb.id >= 0
    }
    names = [
        lb.name
        for lb in sorted(
            (lb for lb in labels_mod.labels if lb.trainId not in (-1, 255)),
            key=lambda lb: lb.trainId,
        )
    ]
    assert list(info.class_names) == names
    raw = np.array(Image.open(frames[0].label))
    expected = np.vectorize(oracle.__getitem__)(raw)
    item = D.SegmentationDataset(frames, info, train=False)[0]
    assert item["unknown_pixels"] == 0
    assert torch.equal(item["label"], torch.from_numpy(expected.astype(np.int64)))
    assert torch.equal(item["label_ids"], torch.from_numpy(raw.astype(np.int64)))
    assert item["instances"].shape == item["label"].shape
    # the export table sends trainIds back to labelIds
    assert all(oracle[lid] == t for t, lid in enumerate(info.export_ids))


def test_camvid_listing(shared_data: Path) -> None:
    frames, info = labelled_frames(
        DataConfig(dataset="camvid", root=str(shared_data / "camvid")), "train"
    )
    assert len(frames) == 367 and info.num_classes == 11 and info.ignore_index == 11
    item = D.SegmentationDataset(frames[:1], info, train=False)[0]
    assert item["label"].shape == (360, 480) and int(item["label"].max()) <= 11


def _folder(tmp: Path, n: int = 4, size: tuple[int, int] = (32, 48)) -> Path:
    for sub in ("images", "masks"):
        (tmp / "train" / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            tmp / "train" / "images" / f"{i}.png"
        )
        Image.fromarray(rng.integers(0, 3, size, dtype=np.uint8)).save(
            tmp / "train" / "masks" / f"{i}.png"
        )
    return tmp


def test_label_size_mismatch_names_both_files(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "train" / "masks" / "2.png")
    frames, info = labelled_frames(
        DataConfig(dataset="folder", root=str(root), num_classes=3), "train"
    )
    ds = D.SegmentationDataset(frames, info, train=False)
    with pytest.raises(ValueError, match=r"masks/2\.png.*16x16.*images/2\.png.*48x32"):
        ds[2]


def test_unknown_label_values_are_ignored_and_counted(tmp_path: Path, caplog) -> None:
    root = _folder(tmp_path)
    mask = np.zeros((32, 48), np.uint8)
    mask[:2, :5] = 7  # 10 pixels of an unknown id
    Image.fromarray(mask).save(root / "train" / "masks" / "1.png")
    frames, info = labelled_frames(
        DataConfig(dataset="folder", root=str(root), num_classes=3), "train"
    )
    ds = D.SegmentationDataset(frames, info, train=False)
    item = ds[1]
    assert item["unknown_pixels"] == 10 and int((item["label"] == 255).sum()) == 10
    audit = D.LabelAudit()
    audit.add(D.collate([ds[i] for i in range(4)]))
    with caplog.at_level(logging.WARNING, logger="diffvision.segment.data"):
        audit.report("training labels")
    warnings = [r.getMessage() for r in caplog.records]
    assert (
        len(warnings) == 1
        and "10 label pixels in 1 files" in warnings[0]
        and "1.png" in warnings[0]
    )


def test_unreadable_images_are_skipped_with_a_counted_warning(tmp_path: Path, caplog) -> None:
    root = _folder(tmp_path)
    (root / "train" / "images" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "images" / "empty.jpg").write_bytes(b"")
    cfg = DataConfig(
        dataset="folder", root=str(root), num_classes=3, unlabeled=(str(root / "train" / "images"),)
    )
    with caplog.at_level(logging.WARNING, logger="diffvision.segment.data"):
        paths = pretraining_images(cfg)
    assert len(paths) == 4
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 2 unreadable" in msg and "broken.png" in msg and "empty.jpg" in msg


def test_augment_shapes_padding_and_determinism() -> None:
    image = np.full((20, 30, 3), 255, np.uint8)
    label = np.ones((20, 30), np.int64)
    kw = dict(resize=1.0, scale_range=(1.0, 1.0), crop_hw=(32, 32), flip=True, ignore_index=255)
    img, lab = D.augment(image, label, rng=np.random.default_rng(0), **kw)
    assert img.shape == (3, 32, 32) and lab.shape == (32, 32)
    assert int((lab == 255).sum()) == 32 * 32 - 20 * 30 and float(img.max()) == 1.0
    img2, lab2 = D.augment(image, label, rng=np.random.default_rng(0), **kw)
    assert torch.equal(img, img2) and torch.equal(lab, lab2)


def test_split_files_are_deterministic_and_nested(tmp_path: Path) -> None:
    names = [f"frame_{i:04d}" for i in range(2975)]
    a = write_split_files(names, tmp_path / "a", seed=3)
    b = write_split_files(list(reversed(names)), tmp_path / "b", seed=3)
    for tag in a:
        assert a[tag].read_text() == b[tag].read_text()
    sets = {tag: set(read_split_file(path, names)) for tag, path in a.items()}
    assert [len(sets[t]) for t in ("1_30", "1_8", "1_4", "full")] == [99, 372, 744, 2975]
    assert sets["1_30"] < sets["1_8"] < sets["1_4"] < sets["full"]
    assert nested_splits(names, seed=4)["1_8"] != sorted(sets["1_8"])  # the seed matters
    assert split_size(367, "1/30") == 12


def test_split_file_naming_missing_frames(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("# header\na\nghost_1\nb\nghost_2\n")
    with pytest.raises(ValueError, match="2 frames that are not in the dataset: ghost_1, ghost_2"):
        read_split_file(path, ["a", "b", "c"])


def test_train_frames_uses_the_fraction(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", n=8)
    cfg = DataConfig(dataset="folder", root=str(root), num_classes=3, label_fraction="1/4")
    frames, _, path = train_frames(cfg, split_dir=tmp_path / "splits")
    assert len(frames) == 2 and path.name == "1_4.txt"
    assert {p.name for p in (tmp_path / "splits").iterdir()} >= {
        "1_30.txt",
        "1_8.txt",
        "1_4.txt",
        "full.txt",
    }


def test_camvid_list_entries_outside_the_root_are_refused(tmp_path) -> None:
    from tasks.segment.data import camvid_frames

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "val.txt").write_text("a.png a_l.png\n../secret.png x.png\n")
    with pytest.raises(ValueError, match=r"val\.txt:2: '\.\./secret\.png' points outside"):
        camvid_frames(tmp_path / "root", "val")
