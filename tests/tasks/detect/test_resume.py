"""Exact resume: 4 iterations straight == 2 iterations, then --resume for 2 more (crossing an epoch).

Checked on what the continuation produces (weights, EMA weights, optimizer moments, and the losses logged at
iterations 3 and 4), not only on the position counters.
"""

from __future__ import annotations

import json

import torch

from tasks.common.checkpoint import load_checkpoint
from tasks.detect import train
from tests.tasks.detect._tiny import tiny_overrides, tiny_synthetic


def _train_losses(run_dir) -> dict[int, dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["iteration"]: r for r in records if r["type"] == "train"}


def test_resume_continues_exactly(tmp_path):
    data = tiny_synthetic(tmp_path / "synth") + [
        "data.val_json=null",
        "checkpoint_period=2",
        "solver.ema=true",
        "solver.ema_decay=0.9",
    ]
    # 6 train images, batch 2 -> 3 batches per epoch: iterations 1-4 cross an epoch boundary
    train.run(tiny_overrides(tmp_path / "straight", data, 4))
    train.run(tiny_overrides(tmp_path / "split", data, 2))
    train.run(["--resume", *tiny_overrides(tmp_path / "split", data, 4)])
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_0000004.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint_0000004.pt")
    assert a["state"] == b["state"] == {"iteration": 4, "epoch": 1, "batch_in_epoch": 1}
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    # the continued steps saw the same batches and produced the same losses, bit for bit
    straight, split = _train_losses(tmp_path / "straight"), _train_losses(tmp_path / "split")
    assert sorted(split) == [1, 2, 3, 4]
    for it in (3, 4):
        for key in ("total_loss", "loss_ce", "loss_bbox", "loss_giou", "lr"):
            assert straight[it][key] == split[it][key], (it, key)
    # training actually moved the weights after the resume point, and the EMA differs from the weights
    mid = load_checkpoint(tmp_path / "split" / "checkpoint_0000002.pt")
    assert any(not torch.equal(mid["model"][n], b["model"][n]) for n in b["model"])
    assert any(not torch.equal(b["ema"][n], b["model"][n]) for n in b["model"])
    # every checkpoint carries the label map (ids and names, training order)
    assert b["extra"]["label_map"]["category_ids"] == [1, 2, 3, 4, 5, 6]
    assert len(b["extra"]["label_map"]["names"]) == 6
