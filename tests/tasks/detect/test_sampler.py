"""Sampler: batch-of-2 equals two batches-of-1, reproducibility, ensemble/NMS selection, postprocess."""

from __future__ import annotations

import pytest
import torch

from tasks.detect.sampler import (
    SamplerOptions,
    StepResult,
    draw_normal,
    postprocess,
    select_detections,
)
from tests.tasks.detect.model_helpers import random_images, tiny_model


def _model_with_mixed_scores():
    """Widely spread scores around 0.5, so renewal keeps some boxes and renews others while few
    scores sit close enough to the threshold for float reorderings to flip a decision."""
    model = tiny_model(num_proposals=12).eval()
    with torch.no_grad():
        for stage in model.head.head_series:
            torch.nn.init.zeros_(stage.class_logits.bias)
            stage.class_logits.weight.mul_(20.0)
    return model


@pytest.fixture
def no_tf32():
    """TF32 convs/matmuls pick batch-size-dependent algorithms on CUDA; compare in full fp32."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("steps", [1, 4])
def test_batch_of_two_equals_two_batches_of_one(steps: int, device: torch.device, no_tf32) -> None:
    model = _model_with_mixed_scores().to(device)
    images = [im.to(device) for im in random_images([(64, 96), (64, 96)])]
    x_T = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(3)).to(device)
    opts = dict(steps=steps, box_renewal=True, renewal_threshold=0.5)

    def gens(*seeds):
        return [torch.Generator(device=device).manual_seed(s) for s in seeds]

    both = model.inference(images, x_T=x_T, generator=gens(10, 11), **opts)
    one = model.inference(images[:1], x_T=x_T[:1], generator=gens(10), **opts)
    two = model.inference(images[1:], x_T=x_T[1:], generator=gens(11), **opts)
    for batched, single in ((both[0], one[0]), (both[1], two[0])):
        assert batched["scores"].shape == single["scores"].shape
        for key in ("boxes_xyxy", "scores"):
            torch.testing.assert_close(batched[key], single[key], atol=1e-2, rtol=1e-3)  # float reorderings only
        assert torch.equal(batched["labels"], single["labels"])


def test_renewal_actually_mixes_kept_and_fresh_boxes() -> None:
    model = _model_with_mixed_scores()
    images = random_images([(64, 96)])
    batch, whwh = model.preprocess(images)
    feats = model.extract_features(batch)
    x_T = torch.randn(1, 12, 4, generator=torch.Generator().manual_seed(0))
    res = model.sample(feats, whwh, x_T, SamplerOptions(steps=2))
    keep = res[0].logits.sigmoid().amax(-1) > 0.5
    assert 0 < int(keep.sum()) < 12


def test_same_x_T_is_deterministic_at_one_step() -> None:
    model = tiny_model().eval()
    images = random_images([(64, 64)])
    x_T = torch.randn(1, 16, 4)
    a = model.inference(images, x_T=x_T, steps=1)[0]
    b = model.inference(images, x_T=x_T, steps=1)[0]
    assert torch.equal(a["boxes_xyxy"], b["boxes_xyxy"])


def test_draw_normal_per_image_generators_do_not_depend_on_batch() -> None:
    both = draw_normal((2, 5, 4), [torch.Generator().manual_seed(s) for s in (1, 2)], torch.device("cpu"))
    second = draw_normal((1, 5, 4), [torch.Generator().manual_seed(2)], torch.device("cpu"))
    assert torch.equal(both[1], second[0])


def test_ensemble_selection_and_last_step_option() -> None:

    boxes_a = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]]])
    boxes_b = torch.tensor([[[100.0, 100, 110, 110], [0, 0, 10, 10]]])
    logits_a = torch.tensor([[[3.0, -9], [-9, 2.0]]])
    logits_b = torch.tensor([[[-9.0, 4.0], [1.0, -9]]])
    steps = [StepResult(logits_a, boxes_a), StepResult(logits_b, boxes_b)]
    official = select_detections(steps, 2, SamplerOptions(steps=2, ensemble_last_step=False))[0]
    assert official["scores"].shape == (2,)  # only step 1 (the official code drops the last step)
    full = select_detections(steps, 2, SamplerOptions(steps=2, ensemble_last_step=True))[0]
    # step 2 adds a new class-1 box and a duplicate of the class-0 box (suppressed by NMS)
    assert full["labels"].tolist() == [1, 0, 1]
    assert torch.all(full["scores"][:-1] >= full["scores"][1:])
    no_ens = select_detections(steps, 2, SamplerOptions(steps=2, use_ensemble=False))[0]
    assert no_ens["labels"].tolist() == [1, 0]


def test_postprocess_scales_clips_and_drops_empty() -> None:
    det = {"boxes_xyxy": torch.tensor([[10.0, 10, 50, 30], [-5, 0, 200, 50], [60, 10, 60, 20]]),
           "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([0, 1, 2])}
    out = postprocess(det, (50, 100), (100, 200))
    torch.testing.assert_close(out["boxes_xyxy"], torch.tensor([[20.0, 20, 100, 60], [0, 0, 200, 100]]))
    assert out["labels"].tolist() == [0, 1]
