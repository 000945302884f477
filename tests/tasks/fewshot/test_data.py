from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tasks.common.camvid import CAMVID_IGNORE
from tasks.fewshot.data import camvid_pairs, ddpmseg_pairs, load_pair, read_label

CAMVID_COUNTS = {  # ../shared/data/README.md, labels 0..11
    "train": [
        10682767,
        14750079,
        623349,
        20076880,
        2845085,
        6166762,
        743859,
        714595,
        3719877,
        405385,
        184967,
        2503995,
    ],
    "val": [
        1601620,
        4531180,
        98499,
        5053176,
        1521751,
        2851125,
        155724,
        537197,
        304716,
        113531,
        387010,
        297271,
    ],
}


@pytest.mark.parametrize("split,n", [("train", 367), ("val", 101)])
def test_camvid_known_pixel_counts(shared_data, split, n):
    pairs = camvid_pairs(shared_data / "camvid", split)
    assert len(pairs) == n
    counts = np.zeros(CAMVID_IGNORE + 1, dtype=np.int64)
    for pair in pairs:
        counts += np.bincount(read_label(pair.label).ravel(), minlength=CAMVID_IGNORE + 1)
    assert counts.tolist() == CAMVID_COUNTS[split]


def test_camvid_resize(shared_data):
    image, label = load_pair(camvid_pairs(shared_data / "camvid", "val")[0], (96, 128))
    assert image.shape == (3, 96, 128) and label.shape == (96, 128)
    assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert set(label.unique().tolist()) <= set(range(12))


def test_ddpmseg_layout(tmp_path):
    for name in ("b", "a"):
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / f"{name}.png")
        np.save(tmp_path / f"{name}.npy", np.arange(64).reshape(8, 8) % 3)
    pairs = ddpmseg_pairs(tmp_path)
    assert [p.image.name for p in pairs] == ["a.png", "b.png"]
    image, label = load_pair(pairs[0], (4, 4))
    assert image.shape == (3, 4, 4) and label.shape == (4, 4)
    assert float(image[0, 0, 0]) == pytest.approx(200 / 127.5 - 1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="no mask c.npy"):
        ddpmseg_pairs(tmp_path)


def test_split_list_entries_outside_the_root_are_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train.txt").write_text("a.png a_l.png\n../secret.png x.png\n")
    with pytest.raises(
        ValueError, match=r"train\.txt:2: '\.\./secret\.png' points outside the data root"
    ):
        camvid_pairs(tmp_path / "root", "train")
    (tmp_path / "root" / "train.txt").write_text("/etc/passwd a_l.png\n")
    with pytest.raises(ValueError, match="train.txt:1: '/etc/passwd' points outside"):
        camvid_pairs(tmp_path / "root", "train")


def test_truncated_image_and_fractional_labels_are_named(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:40])
    np.save(tmp_path / "b.npy", np.zeros((8, 8), dtype=np.int64))
    np.save(tmp_path / "a.npy", np.full((8, 8), 1.5))
    with pytest.raises(ValueError, match=r"b\.png: cannot read image"):
        load_pair(ddpmseg_pairs(tmp_path)[1], None)
    with pytest.raises(ValueError, match=r"a\.npy: label map holds fractional values"):
        read_label(tmp_path / "a.npy")
