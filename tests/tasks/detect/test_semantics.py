"""DiffusionDet behaviour observed from outside: which boxes renewal replaces (by identity), the (w, h)
order through loading, preprocessing, the diffusion box codec and post-processing on non-square images,
and time conditioning entering only through the scale/shift modulation.

Every expectation is computed here from the documented rule (reference §2, §10, §11), never by calling
the function under test a second time.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_core import NoiseSchedule
from tasks.detect.box_codec import diffusion_to_xyxy, encode, xyxy_to_diffusion
from tasks.detect.box_denoising import SamplerOptions, denoise_boxes, postprocess
from tasks.detect.data import DetectionDataset, load_detection_json
from tasks.detect.head import DynamicHead
from tasks.detect.transforms import Compose, ResizeShortestEdge, Sample
from tests.tasks.detect.model_helpers import random_images, tiny_model

SCHEDULE = NoiseSchedule.from_name("squaredcos_cap_v2", 1000)
WHWH = torch.tensor([[96.0, 64.0, 96.0, 64.0]])
# proposal i is confident (max class score > 0.5) iff CONFIDENT[i]
CONFIDENT = torch.tensor([True, False, True, False, False, True, False, True])


def _renewal_logits() -> torch.Tensor:
    """(1, 8, 3) logits. Confident proposals have ONE strong class (the max over classes decides);
    weak ones stay below 0.5 in every class, proposal 6 sits exactly at 0.5 (not kept: strict >)."""
    logits = torch.full((1, 8, 3), -4.0)
    logits[0, CONFIDENT, 1] = 4.0
    logits[0, 3, 2] = -0.1
    logits[0, 6, 0] = 0.0
    return logits


def _fixed_boxes() -> torch.Tensor:
    xy = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 2) * 4 + 2
    return torch.cat([xy, xy + torch.tensor([30.0, 20.0])], 1)[None]  # (1, 8, 4) inside 96 x 64


def _run_two_steps(x_T: torch.Tensor, seed: int) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []

    def denoise(x, t):
        seen.append(x.clone())
        return _renewal_logits(), _fixed_boxes()

    opts = SamplerOptions(steps=2, eta=0.0, box_renewal=True, renewal_threshold=0.5)
    denoise_boxes(
        denoise,
        SCHEDULE,
        x_T,
        WHWH,
        scale=2.0,
        opts=opts,
        generator=torch.Generator().manual_seed(seed),
    )
    return seen


def _ddim_eta0(x_t: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
    """Deterministic DDIM written out: eps from x0, then x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    abar = SCHEDULE.alphas_cumprod
    a, a_prev = float(abar[t]), float(abar[t_prev])
    eps = (x_t.double() - a**0.5 * x0.double()) / (1 - a) ** 0.5
    return (a_prev**0.5 * x0.double() + (1 - a_prev) ** 0.5 * eps).float()


def test_renewal_keeps_confident_boxes_and_replaces_weak_ones_by_fresh_noise() -> None:
    g = torch.Generator().manual_seed(1)
    x_a = torch.randn(1, 8, 4, generator=g)
    x_b = torch.randn(1, 8, 4, generator=g)
    seen_a, seen_b = _run_two_steps(x_a, seed=7), _run_two_steps(x_b, seed=7)
    assert len(seen_a) == 2  # linspace pairs for 2 steps: 999 -> 499 -> final
    x0 = xyxy_to_diffusion(_fixed_boxes(), WHWH, 2.0)
    expected_a = _ddim_eta0(x_a, x0, 999, 499)
    expected_b = _ddim_eta0(x_b, x0, 999, 499)
    keep, weak = CONFIDENT, ~CONFIDENT
    # confident proposals continue on their own DDIM trajectory ...
    torch.testing.assert_close(seen_a[1][0, keep], expected_a[0, keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen_b[1][0, keep], expected_b[0, keep], atol=1e-5, rtol=1e-5)
    # ... weak ones are replaced: no trace of their trajectory, the same fresh draw whatever x_T was
    assert not torch.allclose(seen_a[1][0, weak], expected_a[0, weak], atol=1e-3)
    assert torch.equal(seen_a[1][0, weak], seen_b[1][0, weak])
    assert not torch.equal(seen_a[1][0, keep], seen_b[1][0, keep])


def test_no_renewal_keeps_every_trajectory() -> None:
    x_T = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(2))
    seen: list[torch.Tensor] = []

    def denoise(x, t):
        seen.append(x.clone())
        return _renewal_logits(), _fixed_boxes()

    denoise_boxes(
        denoise,
        SCHEDULE,
        x_T,
        WHWH,
        scale=2.0,
        opts=SamplerOptions(steps=2, eta=0.0, box_renewal=False),
    )
    want = _ddim_eta0(x_T, xyxy_to_diffusion(_fixed_boxes(), WHWH, 2.0), 999, 499)
    torch.testing.assert_close(seen[1], want, atol=1e-5, rtol=1e-5)


def test_model_renewal_replaces_exactly_the_low_score_proposals() -> None:
    """Through ``DiffusionDet.sample``: the step-2 boxes of kept proposals are their DDIM update, the
    others are fresh boxes (the head is spied on; eta 0 so the only random draw is the renewal)."""
    model = tiny_model(num_proposals=12).eval()
    with torch.no_grad():
        for stage in model.head.head_series:
            torch.nn.init.zeros_(stage.class_logits.bias)
            stage.class_logits.weight.mul_(20.0)
    images = random_images([(64, 96)])
    batch, whwh = model.preprocess(images)
    feats = model.extract_features(batch)
    inputs: list[torch.Tensor] = []
    head_forward = model.head.forward

    def spy(features, boxes_xyxy, t):
        inputs.append(boxes_xyxy.clone())
        return head_forward(features, boxes_xyxy, t)

    model.head.forward = spy
    x_T = torch.randn(1, 12, 4, generator=torch.Generator().manual_seed(0))
    res = model.sample(
        feats,
        whwh,
        x_T,
        SamplerOptions(steps=2, eta=0.0),
        generator=torch.Generator().manual_seed(9),
    )
    keep = res[0].logits.sigmoid().amax(-1)[0] > 0.5
    assert 0 < int(keep.sum()) < 12
    kept_x = _ddim_eta0(x_T, xyxy_to_diffusion(res[0].boxes_xyxy, whwh, 2.0), 999, 499)
    fresh = torch.randn(1, 12, 4, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(
        inputs[1][0, keep], diffusion_to_xyxy(kept_x, whwh, 2.0)[0, keep], atol=1e-3, rtol=1e-4
    )
    torch.testing.assert_close(
        inputs[1][0, ~keep], diffusion_to_xyxy(fresh, whwh, 2.0)[0, ~keep], atol=1e-3, rtol=1e-4
    )


# ----------------------------------------------------------------------------- (w, h) order


def test_preprocess_whwh_is_width_first_and_pads_bottom_right() -> None:
    model = tiny_model()
    images = random_images([(48, 80), (70, 40)])
    batch, whwh = model.preprocess(images)
    assert whwh.tolist() == [[80.0, 48.0, 80.0, 48.0], [40.0, 70.0, 40.0, 70.0]]
    assert tuple(batch.shape) == (2, 3, 96, 96)  # max (70, 80) padded up to multiples of 32
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(batch[1, :, :70, :40], (images[1] - mean) / std)
    assert batch[1, :, 70:].abs().sum() == 0 and batch[1, :, :, 40:].abs().sum() == 0


def test_full_image_box_reaches_the_head_as_the_image_rectangle() -> None:
    """x_T = the encoded full-image box [0.5, 0.5, 1, 1] must enter the head as [0, 0, W, H]."""
    model = tiny_model(num_proposals=2).eval()
    seen: list[torch.Tensor] = []
    head_forward = model.head.forward
    model.head.forward = lambda f, b, t: (seen.append(b.clone()), head_forward(f, b, t))[1]
    x_T = encode(torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 0.5]]]), 2.0)
    model.inference(random_images([(40, 100)]), x_T=x_T, opts=SamplerOptions(steps=1))
    torch.testing.assert_close(seen[0][0], torch.tensor([[0.0, 0, 100, 40], [0, 20, 50, 40]]))


def test_training_targets_are_normalised_by_width_then_height() -> None:
    model = tiny_model()
    prepared = model._prepare_target(
        {
            "boxes_xyxy": torch.tensor([[0.0, 0, 100, 40], [10, 4, 30, 24]]),
            "labels": torch.tensor([0, 1]),
        },
        torch.tensor([100.0, 40, 100, 40]),
        0,
    )
    torch.testing.assert_close(
        prepared["boxes_cxcywh_norm"], torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.2, 0.35, 0.2, 0.5]])
    )


def test_postprocess_scales_x_by_width_and_y_by_height() -> None:
    det = {
        "boxes_xyxy": torch.tensor([[10.0, 10, 40, 20], [0, 0, 100, 50]]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([0, 1]),
    }
    out = postprocess(det, (50, 100), (150, 200))  # x * 2, y * 3
    torch.testing.assert_close(
        out["boxes_xyxy"], torch.tensor([[20.0, 30, 80, 60], [0, 0, 200, 150]])
    )


def test_inference_output_sizes_are_height_width() -> None:
    model = tiny_model(num_proposals=8).eval()
    image = random_images([(64, 96)])
    x_T = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(4))
    same = model.inference(image, x_T=x_T, opts=SamplerOptions(steps=1))[0]
    bigger = model.inference(
        image, x_T=x_T, opts=SamplerOptions(steps=1), output_sizes=[(128, 288)]
    )[0]  # h * 2, w * 3
    assert len(same["scores"]) == len(bigger["scores"]) > 0
    torch.testing.assert_close(
        bigger["boxes_xyxy"], same["boxes_xyxy"] * torch.tensor([3.0, 2, 3, 2])
    )


def test_resize_shortest_edge_scales_boxes_per_axis() -> None:
    """100 x 33 (w x h), short side -> 64: new size 194 x 64, so x scales by 1.94 and y by 64 / 33."""
    image = Image.new("RGB", (100, 33))
    boxes = np.array([[10.0, 3, 100, 33]], dtype=np.float32)
    out = ResizeShortestEdge([64], 1000)(
        Sample(image, boxes, np.array([0])), np.random.default_rng(0)
    )
    assert out.image.size == (194, 64)
    np.testing.assert_allclose(out.boxes_xyxy, [[19.4, 64 / 33 * 3, 194.0, 64.0]], rtol=1e-6)


def test_dataset_converts_xywh_and_clips_in_the_right_axes(tmp_path) -> None:
    """A 100 x 40 image: bbox [60, 5, 60, 50] (x, y, w, h) clips to x2 = 100 (width), y2 = 40 (height)."""
    Image.new("RGB", (100, 40)).save(tmp_path / "a.png")
    data = {
        "images": [{"id": 3, "file_name": "a.png", "width": 100, "height": 40}],
        "categories": [{"id": 7, "name": "thing"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 3,
                "category_id": 7,
                "bbox": [60, 5, 60, 50],
                "area": 100.0,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 3,
                "category_id": 7,
                "bbox": [2, 10, 30, 20],
                "area": 100.0,
                "iscrowd": 0,
            },
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    records = load_detection_json(tmp_path / "a.json", tmp_path)
    item = DetectionDataset(records, Compose([ResizeShortestEdge([40], 1000)]))[0]
    assert item["orig_size"] == (40, 100) and tuple(item["image"].shape) == (3, 40, 100)
    torch.testing.assert_close(
        item["boxes_xyxy"], torch.tensor([[60.0, 5, 100, 40], [2, 10, 32, 30]])
    )


# ----------------------------------------------------------------------------- time conditioning


def _head(num_stages: int = 1) -> DynamicHead:
    torch.manual_seed(0)
    return DynamicHead(
        num_classes=5,
        feature_strides=(4, 8, 16, 32),
        num_stages=num_stages,
        hidden_dim=32,
        num_attn_heads=4,
        dim_feedforward=64,
        dim_dynamic=8,
    )


def _feats(b: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 32, 64 // s, 96 // s, generator=g) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize("stage_index", [0, 1])
def test_time_enters_only_through_scale_shift_of_the_towers(stage_index: int) -> None:
    """obj_features (passed to the next stage) do not depend on t; logits and boxes do; with the
    modulation zeroed, t has no effect at all."""
    head = _head(num_stages=2)
    stage = head.head_series[stage_index]
    boxes = torch.tensor([[[5.0, 5, 40, 30], [10, 10, 50, 50], [60, 20, 90, 60]]])
    roi = head.box_pooler(_feats(), boxes)
    pro = (
        None
        if stage_index == 0
        else torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(3))
    )
    t_a, t_b = head.time_mlp(torch.tensor([10])), head.time_mlp(torch.tensor([900]))
    la, ba, fa = stage(roi, boxes, pro, t_a)
    lb, bb, fb = stage(roi, boxes, pro, t_b)
    assert torch.equal(fa, fb)
    assert not torch.allclose(la, lb) and not torch.allclose(ba, bb)
    with torch.no_grad():
        stage.block_time_mlp[1].weight.zero_()
        stage.block_time_mlp[1].bias.zero_()
    lc, bc, _ = stage(roi, boxes, pro, t_a)
    ld, bd, _ = stage(roi, boxes, pro, t_b)
    assert torch.equal(lc, ld) and torch.equal(bc, bd)


def test_scale_is_one_plus_scale_and_shift_is_added() -> None:
    """fc = obj * (scale + 1) + shift: with the time MLP's output forced to (scale=0, shift=0) the towers
    see the un-modulated features, identical to a stage whose modulation is removed."""
    head = _head()
    stage = head.head_series[0]
    boxes = torch.tensor([[[5.0, 5, 40, 30], [10, 10, 50, 50]]])
    roi = head.box_pooler(_feats(), boxes)
    with torch.no_grad():
        stage.block_time_mlp[1].weight.zero_()
        stage.block_time_mlp[1].bias.zero_()
    logits, _, obj = stage(roi, boxes, None, head.time_mlp(torch.tensor([500])))
    feat = obj.reshape(2, 32)
    for layer in stage.cls_module:
        feat = layer(feat)
    torch.testing.assert_close(logits.reshape(2, 5), stage.class_logits(feat))
    # a pure shift of +1 moves the tower input by exactly +1
    with torch.no_grad():
        stage.block_time_mlp[1].bias[32:] = 1.0
    logits_shift, _, _ = stage(roi, boxes, None, head.time_mlp(torch.tensor([500])))
    feat = obj.reshape(2, 32) + 1.0
    for layer in stage.cls_module:
        feat = layer(feat)
    torch.testing.assert_close(logits_shift.reshape(2, 5), stage.class_logits(feat))


def test_boxes_are_detached_between_stages() -> None:
    """Stage 2's outputs send no gradient into stage 1's box regression (official ``boxes.detach()``)."""
    head = _head(num_stages=2)
    boxes = torch.tensor([[[5.0, 5, 40, 30], [10, 10, 50, 50]]])
    _, out_boxes = head(_feats(), boxes, torch.tensor([300]))
    out_boxes[1].sum().backward()
    grad = head.head_series[0].bboxes_delta.weight.grad
    assert grad is None or float(grad.abs().sum()) == 0.0
    assert float(head.head_series[1].bboxes_delta.weight.grad.abs().sum()) > 0


def test_default_nms_threshold_is_one_half() -> None:
    """Class-wise NMS at IoU 0.5 by default (library options and the config-built model): a same-class
    pair at IoU 0.6 collapses to one detection, a pair at IoU 0.4 keeps both."""
    from tasks.detect.box_denoising import StepPredictions, select_detections

    def kept(iou_pair_x2: float, opts) -> int:
        boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, iou_pair_x2, 10]]])
        logits = torch.tensor([[[3.0], [2.0]]])
        return len(select_detections([StepPredictions(logits, boxes)], 2, opts)[0]["scores"])

    for opts in (SamplerOptions(), tiny_model().sampler_options):
        assert kept(6.0, opts) == 1  # IoU 0.6
        assert kept(4.0, opts) == 2  # IoU 0.4
        assert opts.nms_threshold == 0.5
