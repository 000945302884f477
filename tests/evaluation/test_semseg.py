"""Generic semantic segmentation metrics: trainId mIoU vs cityscapesscripts, DDPM-Seg mode vs a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.cityscapes import LABELS
from evaluation.semseg import SemSegEvaluator, confusion_matrix, ddpmseg_miou, miou_from_confusion
from tests.evaluation.oracles import cityscapes_eval
from tests.evaluation.synth import synthetic_frame

LABEL_TO_TRAIN = np.full(256, 255, np.uint8)
for _lb in LABELS:
    if _lb.id >= 0 and _lb.train_id not in (-1, 255):
        LABEL_TO_TRAIN[_lb.id] = _lb.train_id
TRAIN_TO_LABEL = np.zeros(256, np.uint8)
for _lb in LABELS:
    if 0 <= _lb.train_id < 255:
        TRAIN_TO_LABEL[_lb.train_id] = _lb.id


def test_trainid_miou_equals_cityscapes_class_iou(tmp_path, device):
    """19-class trainId mIoU (ignore 255, NaN-skipping) == official labelId evaluation (reference §4.4)."""
    rng = np.random.default_rng(3)
    ev = SemSegEvaluator(
        19,
        255,
        [
            lb.name
            for lb in sorted((x for x in LABELS if 0 <= x.train_id < 255), key=lambda x: x.train_id)
        ],
        device=device,
    )
    preds, gts = [], []
    for i in range(4):
        _, gt, _ = synthetic_frame(rng)
        pred_t = rng.integers(0, 19, gt.shape).astype(np.uint8)
        keep = rng.random(gt.shape) < 0.6
        pred_t[keep] = np.where(LABEL_TO_TRAIN[gt[keep]] == 255, 0, LABEL_TO_TRAIN[gt[keep]])
        pred_t[pred_t == 9] = 10  # terrain never predicted
        ev.process(
            [{"sem_seg": torch.from_numpy(LABEL_TO_TRAIN[gt])}],
            [{"sem_seg": torch.from_numpy(pred_t)}],
        )
        Image.fromarray(TRAIN_TO_LABEL[pred_t]).save(tmp_path / f"p{i}_pred.png")
        Image.fromarray(gt).save(tmp_path / f"g{i}_gt.png")
        preds.append(tmp_path / f"p{i}_pred.png")
        gts.append(tmp_path / f"g{i}_gt.png")
    ref = cityscapes_eval(preds, gts, tmp_path, inst_level=False)  # class IoU needs no instances
    out = ev.evaluate()
    for name, iou in out["per_class"].items():
        r = ref["classScores"][name]
        assert (math.isnan(iou) and math.isnan(r)) or iou == r, name
    assert out["mIoU"] == ref["averageScoreClasses"]
    assert set(out) == {"mIoU", "mean_acc", "pixel_acc", "per_class"}


def test_confusion_matrix_ignore_and_errors():
    gt = torch.tensor([[0, 1, 255], [2, 2, 1]])
    pred = torch.tensor([[0, 2, 1], [2, 0, 1]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.sum() == 5 and cm[2, 2] == 1 and cm[2, 0] == 1 and cm[1, 2] == 1
    res = miou_from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(res["miou"]) and np.isnan(res["iou"]).all()
    with pytest.raises(ValueError, match="prediction holds values outside"):
        confusion_matrix(torch.tensor([5]), torch.tensor([1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)


def naive_ddpmseg(preds, gts, n_cls, ignore):
    """Straight transcription of the documented DDPM-Seg compute_iou semantics (reference §1.5)."""
    inter, union = {}, {}
    for p, g in zip(preds, gts):
        for k in range(n_cls):
            if k == ignore:
                continue
            pk, gk = (p == k).astype(int), (g == k).astype(int)
            union[k] = union.get(k, 0) + (pk | gk).sum()
            inter[k] = inter.get(k, 0) + (pk & gk).sum()
    return np.array([inter[k] / (1e-8 + union[k]) for k in range(n_cls) if k != ignore]).mean()


def test_ddpmseg_mode_quirks(device):
    rng = np.random.default_rng(4)
    gts = [
        rng.integers(0, 6, (32, 32)) for _ in range(3)
    ]  # class 6 absent everywhere -> IoU 0, counted
    preds = [np.where(rng.random((32, 32)) < 0.7, g, rng.integers(0, 6, (32, 32))) for g in gts]
    out = ddpmseg_miou(preds, gts, num_classes=7, ignore_index=0)
    assert out["miou"] == naive_ddpmseg(preds, gts, 7, 0)
    assert out["iou"][-1] == 0.0 and len(out["iou"]) == 6
    ev = SemSegEvaluator(7, 0, mode="ddpmseg", device=device)
    for p, g in zip(preds, gts):
        ev.process_arrays(torch.from_numpy(p), torch.from_numpy(g))
    assert ev.evaluate()["mIoU"] == out["miou"]
    # standard mode drops the ignored GT pixels and skips the absent class instead
    std = SemSegEvaluator(7, 0, device=device)
    for p, g in zip(preds, gts):
        std.process([{"sem_seg": g}], [{"sem_seg": p}])
    assert math.isnan(std.evaluate()["per_class"]["6"])


def test_camvid_style_k_classes(shared_data, device):
    """Generic 11-class mIoU on real CamVid labels (void = 11 ignored) with a corrupted prediction."""
    lines = (shared_data / "camvid" / "val.txt").read_text().split("\n")[:2]
    ev = SemSegEvaluator(11, 11, device=device)
    total = torch.zeros(11, 11, dtype=torch.long)
    rng = np.random.default_rng(5)
    for line in lines:
        lab = np.array(Image.open(shared_data / "camvid" / line.split()[1]))
        pred = np.where(
            rng.random(lab.shape) < 0.8, np.minimum(lab, 10), rng.integers(0, 11, lab.shape)
        )
        ev.process([{"sem_seg": lab, "file_name": line.split()[1]}], [{"sem_seg": pred}])
        m = lab != 11
        total += torch.from_numpy(
            np.bincount(lab[m].astype(np.int64) * 11 + pred[m], minlength=121).reshape(11, 11)
        )
    assert torch.equal(ev.counts(), total)
    assert 0.0 < ev.evaluate()["mIoU"] < 1.0
