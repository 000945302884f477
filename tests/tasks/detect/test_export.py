"""ONNX export: the graph equals PyTorch on a real BCCD image (skips without onnxruntime or shared data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.common.config import load_config
from tasks.detect.config import DetectConfig
from tasks.detect.export import main as export_main
from tasks.detect.exportable import compare_with_pytorch, export_onnx, prepare_image
from tasks.detect.model import build_detector

from ._tiny import TINY_MODEL

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

OVERRIDES = TINY_MODEL + [
    "model.head.num_classes=3",
    "model.head.num_stages=2",
    "data.min_size_test=64",
    "data.max_size_test=96",
]


@pytest.fixture(scope="module")
def bccd_image(shared_data):
    return shared_data / "bccd" / "BCCD" / "JPEGImages" / "BloodImage_00001.jpg"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_detector(load_config(DetectConfig, None, OVERRIDES)).eval()
    with (
        torch.no_grad()
    ):  # confident classes, so detections survive NMS and renewal keeps some boxes
        model.head.head_series[-1].class_logits.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    return model


def test_onnx_equals_pytorch_on_a_real_image(
    model, bccd_image, tmp_path, steps=3, deterministic=True
):
    height, width = 64, 85  # BCCD 640x480 at the test short side 64
    opts = export_onnx(
        model,
        tmp_path / "m.onnx",
        height=height,
        width=width,
        steps=steps,
        num_boxes=12,
        deterministic=deterministic,
    )
    image, orig = prepare_image(bccd_image, height=height, width=width)
    assert orig == (480, 640) and image.shape == (1, 3, 64, 85)
    for seed in range(
        3
    ):  # other noise than at export: nothing data-dependent was frozen by the trace
        x_T = torch.randn((1, 12, 4), generator=torch.Generator().manual_seed(100 + seed)) * 1.3
        diff = compare_with_pytorch(model, tmp_path / "m.onnx", opts, image, x_T)
        assert diff["detections_onnx"] == diff["detections_torch"] > 0
        assert diff["max_box_diff_px"] < 1e-2 and diff["max_score_diff"] < 1e-4
        assert diff["label_mismatches"] == 0


def test_stochastic_multi_step_graph_runs(model, bccd_image, tmp_path):
    import onnxruntime as ort

    export_onnx(model, tmp_path / "s.onnx", height=64, width=85, steps=2, num_boxes=12)
    image, _ = prepare_image(bccd_image, height=64, width=85)
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(
        None, {"image": image.numpy(), "x_T": np.random.randn(1, 12, 4).astype(np.float32)}
    )
    assert len(scores) > 0 and np.isfinite(boxes).all() and (np.diff(scores) <= 0).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 85 and boxes[:, 3].max() <= 64
    assert set(labels.tolist()) <= {0, 1, 2}


def test_export_cli_verifies_one_step(bccd_image, tmp_path):  # 1 step: the official default
    config = tmp_path / "tiny.yaml"
    config.write_text("{}\n")
    report = export_main(
        [
            "--config",
            str(config),
            "--output",
            str(tmp_path / "c.onnx"),
            "--steps",
            "1",
            "--num-boxes",
            "8",
            "--verify",
            str(bccd_image),
            *OVERRIDES,
        ]
    )
    assert report["input_hw"] == [64, 85] and "RoiAlign" in report["ops"]
    assert report["verify"]["max_box_diff_px"] < 1e-2
