"""CUDA results equal the CPU results byte for byte (the CPU path is checked against the official tools)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluation.cityscapes import CityscapesEvaluator
from evaluation.coco import evaluate
from tests.evaluation.synth import jittered_dets, synthetic_frame


@pytest.mark.gpu
def test_cuda_equals_cpu_coco_bbox(shared_data):
    gt = json.loads((shared_data / "coco_tiny/annotations/instances_val2017.json").read_text())
    gt["images"] += [
        {"id": 900001, "height": 300, "width": 400},
        {"id": 900002, "height": 200, "width": 200},
    ]
    for seed in range(3):
        dets = jittered_dets(gt, seed)
        cpu, cuda = evaluate(gt, dets, device="cpu"), evaluate(gt, dets, device="cuda")
        for key in ("precision", "recall", "scores"):
            assert cpu[key].tobytes() == cuda[key].tobytes(), key
        assert cpu["stats"] == cuda["stats"]


@pytest.mark.gpu
def test_cuda_equals_cpu_cityscapes():
    rng = np.random.default_rng(0)
    evs = [CityscapesEvaluator(device=d) for d in ("cpu", "cuda")]
    for _ in range(3):
        frame = synthetic_frame(rng)
        for ev in evs:
            ev.process_frame(*frame)
    a, b = (ev.official() for ev in evs)
    assert a["confMatrix"] == b["confMatrix"]
    assert a["averageScoreInstClasses"] == b["averageScoreInstClasses"]
    assert torch.cuda.is_available()
