"""Exact resume: 4 iterations straight == 2 iterations, then --resume for 2 more (crossing an epoch)."""

from __future__ import annotations

import torch

from tasks.common.checkpoint import load_checkpoint
from tasks.detect import train
from tests.tasks.detect._tiny import tiny_overrides, tiny_synthetic


def test_resume_continues_exactly(tmp_path):
    data = tiny_synthetic(tmp_path / "synth") + ["data.val_json=null", "checkpoint_period=2"]
    # 6 train images, batch 2 -> 3 batches per epoch: iterations 1-4 cross an epoch boundary
    train.main(tiny_overrides(tmp_path / "straight", data, 4))
    train.main(tiny_overrides(tmp_path / "split", data, 2))
    train.main(["--resume", *tiny_overrides(tmp_path / "split", data, 4)])
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_0000004.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint_0000004.pt")
    assert a["state"] == b["state"] == {"iteration": 4, "epoch": 1, "batch_in_epoch": 1}
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    # and training actually moved the weights after the resume point
    mid = load_checkpoint(tmp_path / "split" / "checkpoint_0000002.pt")
    assert any(not torch.equal(mid["model"][n], b["model"][n]) for n in b["model"])
