"""DiffusionDet end to end on a tiny CPU config: training losses, gradients, GT padding, inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.detect import DiffusionDetector
from tasks.detect.box_denoising import SamplerOptions
from tasks.detect.visualize import draw_detections
from tests.tasks.detect.model_helpers import random_images, tiny_model


def _targets():
    return [
        {
            "boxes_xyxy": torch.tensor([[5.0, 5, 40, 30], [10, 20, 60, 60]]),
            "labels": torch.tensor([0, 2]),
        },
        {
            "boxes_xyxy": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
        },  # empty image
    ]


def test_forward_backward_weighted_losses(device: torch.device) -> None:
    model = tiny_model().to(device).train()
    targets = [{k: v.to(device) for k, v in t.items()} for t in _targets()]
    losses = model([im.to(device) for im in random_images([(64, 96), (70, 50)])], targets)
    assert set(losses) == {
        f"{n}{s}" for n in ("loss_ce", "loss_bbox", "loss_giou") for s in ("", "_0")
    }
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head_grads = [p.grad for p in model.head.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert (
        model.backbone.bottom_up.res5[0].conv1.weight.grad is not None
    )  # freeze_at=0 in the tiny config


def test_gt_padding_subset_and_empty_image() -> None:
    model = tiny_model(num_proposals=4)
    gt = torch.rand(10, 4) * 0.5 + 0.25
    x0 = model._pad_to_proposals(gt)
    assert x0.shape == (4, 4)
    enc = (gt * 2 - 1) * 2.0
    assert all(any(torch.allclose(row, e) for e in enc) for row in x0)  # a subset of the GT
    torch.testing.assert_close(
        model._pad_to_proposals(torch.zeros(0, 4))[0], torch.tensor([0.0, 0, 2, 2])
    )
    padded = model._pad_to_proposals(gt[:1])
    assert (padded[1:, 2:] >= (1e-4 * 2 - 1) * 2 - 1e-6).all()  # w, h >= 1e-4 before encoding


def test_more_gt_than_proposals_trains() -> None:
    model = tiny_model(num_proposals=3).train()
    xy = torch.rand(8, 2) * 40
    target = [
        {"boxes_xyxy": torch.cat([xy, xy + 10], 1), "labels": torch.zeros(8, dtype=torch.long)}
    ]
    losses = model(random_images([(64, 64)]), target)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_targets_raise() -> None:
    model = tiny_model().train()
    with pytest.raises(ValueError, match="labels must be in"):
        model(
            random_images([(64, 64)]),
            [{"boxes_xyxy": torch.ones(1, 4), "labels": torch.tensor([7])}],
        )


def test_eval_forward_is_inference_with_defaults() -> None:
    model = tiny_model().eval()
    images = random_images([(64, 96)])
    torch.manual_seed(5)
    a = model(images)[0]
    torch.manual_seed(5)
    b = model.inference(images)[0]
    assert torch.equal(a["boxes_xyxy"], b["boxes_xyxy"])
    assert a["scores"].numel() <= 16 and torch.all(a["scores"][:-1] >= a["scores"][1:])
    box = a["boxes_xyxy"]
    assert (box[:, 0] >= 0).all() and (box[:, 2] <= 96).all() and (box[:, 3] <= 64).all()
    assert ((box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])).all()


def test_inference_options_and_output_sizes() -> None:
    model = tiny_model().eval()
    images = random_images([(64, 96)])
    opts = SamplerOptions(steps=2, eta=0.0, box_renewal=False, use_nms=False)
    out = model.inference(images, opts=opts, num_boxes=30, output_sizes=[(128, 192)])[0]
    assert (
        0 < out["scores"].numel() <= 60
    )  # 2 steps x top-30 ensembled, no NMS (minus empty after clip)
    assert out["boxes_xyxy"][:, 2].max() <= 192
    with pytest.raises(ValueError, match="x_T must have shape"):
        model.inference(images, x_T=torch.zeros(2, 5, 4))


def test_predictor_accepts_paths_arrays_tensors(tmp_path, monkeypatch) -> None:
    model = tiny_model().eval()
    detector = DiffusionDetector(model, min_size=64, max_size=100)
    arr = (np.random.default_rng(0).random((50, 80, 3)) * 255).astype(np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(arr).save(path)
    outs = detector.predict(
        [str(path), arr, torch.from_numpy(arr).permute(2, 0, 1).float()],
        generator=torch.Generator().manual_seed(0),
        opts=detector.options(steps=1),
    )
    assert len(outs) == 3
    for out in outs:
        assert out["boxes"][:, 2].max() <= 80 and out["boxes"][:, 3].max() <= 50
    # same image and same noise -> same detections whatever the input type
    x_T = torch.randn(1, 16, 4)
    a = detector.predict(str(path), x_T=x_T)[0]
    b = detector.predict(arr, x_T=x_T)[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    drawn = draw_detections(arr, a["boxes"], a["scores"], a["labels"], ["a", "b", "c"])
    assert drawn.size == (80, 50)


def test_from_config_loads_training_checkpoint(tmp_path) -> None:
    from tasks.common.config import save_config
    from tests.tasks.detect.model_helpers import tiny_config

    cfg = tiny_config()
    cfg.data.min_size_test, cfg.data.max_size_test = 64, 96
    save_config(cfg, tmp_path / "cfg.yaml")
    model = tiny_model(seed=3)
    torch.save({"model": model.state_dict(), "iteration": 7}, tmp_path / "ckpt.pt")
    det = DiffusionDetector.from_config(tmp_path / "cfg.yaml", weights=tmp_path / "ckpt.pt")
    for (k, v), w in zip(model.state_dict().items(), det.model.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.gpu
def test_cuda_bf16_train_and_inference() -> None:
    model = tiny_model().cuda().train()
    images = [im.cuda() for im in random_images([(64, 96), (70, 50)])]
    targets = [{k: v.cuda() for k, v in t.items()} for t in _targets()]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.inference(
            images,
            opts=SamplerOptions(steps=4),
            generator=[torch.Generator("cuda").manual_seed(i) for i in (0, 1)],
        )
    assert len(out) == 2 and out[0]["boxes_xyxy"].is_cuda


def test_predictor_and_test_transform_resize_to_equal_sizes(monkeypatch) -> None:
    """One shortest-edge function: the evaluation transform and predict() give the network equal sizes."""
    from tasks.detect.config import DataConfig
    from tasks.detect.transforms import Sample, build_test_transform, resized_shape

    cfg = DataConfig(min_size_test=64, max_size_test=100)
    transform = build_test_transform(cfg)
    detector = DiffusionDetector(tiny_model(), min_size=64, max_size=100)
    fed: list[tuple[int, int]] = []

    def fake_inference(images, **kwargs):
        fed.extend((int(im.shape[1]), int(im.shape[2])) for im in images)
        empty = {
            "boxes_xyxy": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        }
        return [empty for _ in images]

    monkeypatch.setattr(detector.model, "inference", fake_inference)
    rng = np.random.default_rng(0)
    sizes = [(h, w) for h in range(1, 300, 13) for w in range(1, 300, 29)]
    for h, w in sizes:
        detector.predict(np.zeros((h, w, 3), np.uint8))
        out = transform(
            Sample(Image.new("RGB", (w, h)), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)),
            rng,
        )
        assert fed[-1] == (out.image.size[1], out.image.size[0]), (h, w)
    assert len(fed) == len(sizes) > 250
    # detectron2 ResizeShortestEdge.get_output_shape values where the old predictor formula was 1 px off
    assert resized_shape(105, 310, 800, 1333) == (451, 1333)
    assert resized_shape(108, 744, 800, 1333) == (193, 1333)
    assert resized_shape(176, 352, 800, 1333) == (666, 1333)
    assert resized_shape(10000, 1, 64, 100) == (100, 1)  # never 0 px (detectron2 would crash later)


def test_config_maps_every_sampler_option_in_one_place() -> None:
    """Every SamplerOptions field has a config key: changing every key changes every option."""
    import dataclasses

    from tasks.detect.config import DiffusionConfig

    changed = DiffusionConfig(
        sample_steps=3,
        eta=0.5,
        box_renewal=False,
        renewal_threshold=0.3,
        use_ensemble=False,
        ensemble_last_step=False,
        use_nms=False,
        nms_threshold=0.7,
        renewal_order="official",
    )
    opts, default = changed.sampler_options(), SamplerOptions()
    assert all(
        getattr(opts, f.name) != getattr(default, f.name)
        for f in dataclasses.fields(SamplerOptions)
    )
    assert changed.sampler_options(steps=8).steps == 8
    from tasks.detect.model import build_detector
    from tests.tasks.detect.model_helpers import tiny_config

    cfg = tiny_config()
    cfg.model.diffusion.eta = 0.0
    assert build_detector(cfg).sampler_options == cfg.model.diffusion.sampler_options()
