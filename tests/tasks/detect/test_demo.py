"""demo.py (detections drawn, EXIF, threshold, batching, denoising strips) and draw.py (GT + results)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.common.config import load_config
from tasks.detect.config import DetectConfig
from tasks.detect.demo import main as demo
from tasks.detect.draw import main as draw
from tasks.detect.model import build_detector

from ._tiny import TINY_MODEL

TINY_TEST = [
    "data.min_size_test=64",
    "data.max_size_test=96",
    "model.head.num_classes=3",
    "model.diffusion.sample_steps=1",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-init tiny detector saved like model_final.pt (with a label map), and three images."""
    root = tmp_path_factory.mktemp("demo")
    config = root / "tiny.yaml"
    config.write_text("{}\n")  # every value comes from the overrides
    overrides = TINY_MODEL + TINY_TEST
    torch.manual_seed(0)
    model = build_detector(load_config(DetectConfig, config, overrides))
    with torch.no_grad():  # a confident class bias so that some boxes pass the threshold
        model.head.head_series[-1].class_logits.bias.copy_(torch.tensor([2.0, 0.0, -2.0]))
    weights = root / "model_final.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "label_map": {"category_ids": [1, 2, 3], "names": ["RBC", "WBC", "Platelets"]},
        },
        weights,
    )
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 72, 3), dtype=np.uint8)).save(
            images / f"im{i}.png"
        )
    rotated = Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    rotated.save(images / "phone.jpg", exif=exif)
    return {"config": config, "overrides": overrides, "weights": weights, "images": images}


def _demo(tiny, out, *extra):
    return demo(
        [
            "--config",
            str(tiny["config"]),
            "--weights",
            str(tiny["weights"]),
            "--output",
            str(out),
            "--steps",
            "1",
            *extra,
            *tiny["overrides"],
        ]
    )


def test_demo_writes_images_with_exif_and_threshold(tiny, tmp_path):
    results = _demo(
        tiny,
        tmp_path / "out",
        "--input",
        str(tiny["images"]),
        "--threshold",
        "0.0",
        "--num-boxes",
        "8",
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "im0.png",
        "im1.png",
        "phone.png",
    ]
    assert Image.open(tmp_path / "out" / "phone.png").size == (40, 80)  # EXIF rotation applied
    assert all(len(r["scores"]) > 0 for r in results)
    assert {n for r in results for n in r["names"]} <= {"RBC", "WBC", "Platelets"}
    strict = _demo(
        tiny,
        tmp_path / "strict",
        "--input",
        str(tiny["images"] / "*.png"),
        "--threshold",
        "0.99",
        "--num-boxes",
        "8",
    )
    assert len(strict) == 2 and all(min(r["scores"], default=1.0) >= 0.99 for r in strict)
    saved = json.loads((tmp_path / "strict" / "detections.json").read_text())
    assert saved == strict


def test_demo_batched_equals_single(tiny, tmp_path):
    single = _demo(
        tiny,
        tmp_path / "a",
        "--input",
        str(tiny["images"]),
        "--threshold",
        "0.0",
        "--num-boxes",
        "8",
        "--batch-size",
        "1",
    )
    batched = _demo(
        tiny,
        tmp_path / "b",
        "--input",
        str(tiny["images"]),
        "--threshold",
        "0.0",
        "--num-boxes",
        "8",
        "--batch-size",
        "3",
    )
    for s, b in zip(single, batched):
        assert s["labels"] == b["labels"]
        np.testing.assert_allclose(s["boxes_xyxy"], b["boxes_xyxy"], atol=1e-3)
        np.testing.assert_allclose(s["scores"], b["scores"], atol=1e-5)


def test_demo_show_denoising_strip(tiny, tmp_path):
    _demo(
        tiny,
        tmp_path / "d",
        "--input",
        str(tiny["images"] / "im0.png"),
        "--show-denoising",
        "--num-boxes",
        "6",
        "--steps",
        "2",
    )
    strip = Image.open(tmp_path / "d" / "im0_denoising.png")
    single = Image.open(tmp_path / "d" / "im0.png")
    assert strip.height == 320 and strip.width > 3 * single.width * 320 / single.height  # 3 panels


def test_demo_bad_input_is_named(tiny, tmp_path):
    with pytest.raises(ValueError, match="nothing_here"):
        _demo(tiny, tmp_path / "x", "--input", str(tmp_path / "nothing_here*.jpg"))


def test_draw_writes_gt_and_detections(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (60, 40), (0, 0, 0)).save(tmp_path / "img" / "a.png")
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0}
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 1, "bbox": [30, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.1},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    written = draw(
        [
            "--gt",
            str(tmp_path / "gt.json"),
            "--dt",
            str(tmp_path / "dt.json"),
            "--images",
            str(tmp_path / "img"),
            "--output",
            str(tmp_path / "vis"),
        ]
    )
    pixels = np.asarray(Image.open(written[0]))
    assert tuple(pixels[5, 15]) == (40, 220, 60)  # GT edge in green
    assert tuple(pixels[30, 40]) == (255, 60, 40)  # detection edge in red
    assert tuple(pixels[9, 2]) == (0, 0, 0)  # below --threshold 0.3: not drawn
    (tmp_path / "dt.json").write_text(
        json.dumps([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    )
    with pytest.raises(ValueError, match="dt.json.*9"):
        draw(
            [
                "--gt",
                str(tmp_path / "gt.json"),
                "--dt",
                str(tmp_path / "dt.json"),
                "--images",
                str(tmp_path / "img"),
                "--output",
                str(tmp_path / "vis"),
            ]
        )
