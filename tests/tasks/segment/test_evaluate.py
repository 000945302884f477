"""The evaluation path (evaluation.semseg / evaluation.cityscapes) with a model that predicts the ground truth."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tasks.segment.config import DataConfig
from tasks.segment.data import SegmentationDataset, collate
from tasks.segment.datasets import labelled_frames
from tasks.segment.steps import evaluate


class Oracle(nn.Module):
    """Returns one-hot logits of a stored (H, W) trainId map (ignore -> class 0), whatever the input."""

    def __init__(self, label: torch.Tensor, num_classes: int, wrong: bool = False) -> None:
        super().__init__()
        lab = label.clone()
        lab[lab >= num_classes] = 0  # ignore (255 or CamVid 11) -> class 0
        if wrong:
            lab = (lab + 1) % num_classes
        self.register_buffer("logits", F.one_hot(lab, num_classes).permute(2, 0, 1)[None].float())

    def forward(self, x: torch.Tensor, *, task: str = "segment") -> torch.Tensor:
        return self.logits[..., : x.shape[-2], : x.shape[-1]]


@pytest.mark.parametrize("wrong", [False, True])
def test_cityscapes_metrics_of_a_perfect_and_a_wrong_model(shared_data: Path, wrong: bool) -> None:
    cfg = DataConfig(dataset="cityscapes", root=str(shared_data / "cityscapes_one_frame"))
    frames, info = labelled_frames(cfg, "val")
    ds = SegmentationDataset(frames, info, train=False)
    model = Oracle(ds[0]["label"], info.num_classes, wrong=wrong)
    loader = DataLoader(ds, batch_size=1, collate_fn=collate)
    m = evaluate(model, loader, info, device=torch.device("cpu"))
    assert set(m) >= {"mIoU", "iIoU", "mIoU_category", "iIoU_category", "per_class", "per_category"}
    assert len(m["per_class"]) == 19
    if wrong:
        assert m["mIoU"] == 0.0
    else:
        assert m["mIoU"] == pytest.approx(1.0) and m["iIoU"] == pytest.approx(1.0)


def test_semseg_metrics_on_camvid_frame(shared_data: Path) -> None:
    frames, info = labelled_frames(
        DataConfig(dataset="camvid", root=str(shared_data / "camvid")), "val"
    )
    ds = SegmentationDataset(frames[:1], info, train=False, resize=0.25)
    model = Oracle(
        ds[0]["label"], info.num_classes
    )  # full-res one-hot; evaluate upsamples the crop
    big = model.logits
    model.logits = F.interpolate(big, scale_factor=0.25, mode="nearest")
    m = evaluate(
        model, DataLoader(ds, batch_size=1, collate_fn=collate), info, device=torch.device("cpu")
    )
    assert 0.3 < m["mIoU"] <= 1.0 and set(m["per_class"]) == set(info.class_names)
