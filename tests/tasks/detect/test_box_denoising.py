"""Box denoising: batch-of-2 equals two batches-of-1, reproducibility, ensemble/NMS selection, postprocess."""

from __future__ import annotations

import pytest
import torch

from tasks.detect.box_codec import diffusion_to_xyxy
from tasks.detect.box_denoising import (
    SamplerOptions,
    StepPredictions,
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
    opts = SamplerOptions(steps=steps, box_renewal=True, renewal_threshold=0.5)

    def gens(*seeds):
        return [torch.Generator(device=device).manual_seed(s) for s in seeds]

    both = model.inference(images, x_T=x_T, generator=gens(10, 11), opts=opts)
    one = model.inference(images[:1], x_T=x_T[:1], generator=gens(10), opts=opts)
    two = model.inference(images[1:], x_T=x_T[1:], generator=gens(11), opts=opts)
    for batched, single in ((both[0], one[0]), (both[1], two[0])):
        assert batched["scores"].shape == single["scores"].shape
        for key in ("boxes_xyxy", "scores"):
            torch.testing.assert_close(
                batched[key], single[key], atol=1e-2, rtol=1e-3
            )  # float reorderings only
        assert torch.equal(batched["labels"], single["labels"])


def test_renewal_actually_mixes_kept_and_fresh_boxes() -> None:
    model = _model_with_mixed_scores()
    images = random_images([(64, 96)])
    batch, whwh = model.preprocess(images)
    feats = model.extract_features(batch)
    x_T = torch.randn(1, 12, 4, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    head_forward = model.head.forward
    model.head.forward = lambda f, b, t: (seen.append(b.clone()), head_forward(f, b, t))[1]
    # eta 0: the renewal is the only random draw, so the fresh boxes are the generator's first draw
    res = model.sample(
        feats, whwh, x_T, SamplerOptions(steps=2, eta=0.0), torch.Generator().manual_seed(5)
    )
    keep = res[0].logits.sigmoid().amax(-1)[0] > 0.5
    assert 0 < int(keep.sum()) < 12
    fresh = diffusion_to_xyxy(
        torch.randn(1, 12, 4, generator=torch.Generator().manual_seed(5)), whwh, 2.0
    )[0]
    # renewed proposals are exactly the fresh boxes; kept ones are not (they continue their trajectory)
    torch.testing.assert_close(seen[1][0, ~keep], fresh[~keep])
    assert not torch.isclose(seen[1][0, keep], fresh[keep], atol=1e-3).all(-1).any()
    # (tests/tasks/detect/test_semantics.py checks the kept ones against a hand-written DDIM update)


def test_same_x_T_is_deterministic_at_one_step() -> None:
    model = tiny_model().eval()
    images = random_images([(64, 64)])
    x_T = torch.randn(1, 16, 4)
    a = model.inference(images, x_T=x_T, opts=SamplerOptions(steps=1))[0]
    b = model.inference(images, x_T=x_T, opts=SamplerOptions(steps=1))[0]
    assert torch.equal(a["boxes_xyxy"], b["boxes_xyxy"])


def test_ensemble_selection_and_last_step_option() -> None:

    boxes_a = torch.tensor([[[0.0, 0, 10, 10], [50, 50, 60, 60]]])
    boxes_b = torch.tensor([[[100.0, 100, 110, 110], [0, 0, 10, 10]]])
    logits_a = torch.tensor([[[3.0, -9], [-9, 2.0]]])
    logits_b = torch.tensor([[[-9.0, 4.0], [1.0, -9]]])
    steps = [StepPredictions(logits_a, boxes_a), StepPredictions(logits_b, boxes_b)]
    official = select_detections(steps, 2, SamplerOptions(steps=2, ensemble_last_step=False))[0]
    assert official["scores"].shape == (2,)  # only step 1 (the official code drops the last step)
    full = select_detections(steps, 2, SamplerOptions(steps=2, ensemble_last_step=True))[0]
    # step 2 adds a new class-1 box and a duplicate of the class-0 box (suppressed by NMS)
    assert full["labels"].tolist() == [1, 0, 1]
    assert torch.all(full["scores"][:-1] >= full["scores"][1:])
    no_ens = select_detections(steps, 2, SamplerOptions(steps=2, use_ensemble=False))[0]
    assert no_ens["labels"].tolist() == [1, 0]


def test_postprocess_scales_clips_and_drops_empty() -> None:
    det = {
        "boxes_xyxy": torch.tensor([[10.0, 10, 50, 30], [-5, 0, 200, 50], [60, 10, 60, 20]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([0, 1, 2]),
    }
    out = postprocess(det, (50, 100), (100, 200))
    torch.testing.assert_close(
        out["boxes_xyxy"], torch.tensor([[20.0, 20, 100, 60], [0, 0, 200, 100]])
    )
    assert out["labels"].tolist() == [0, 1]


def _official_ddim_sample(model, images, *, steps: int, seed: int) -> list[StepPredictions]:
    """A transcription of the official ``DiffusionDet.ddim_sample`` (batch 1, eta 1, box renewal at 0.5, the
    global RNG), written from its formulas: schedule buffers in float64, kept boxes compacted, fresh ones appended."""
    from torchvision.ops import box_convert

    batch, whwh = model.preprocess(images)
    feats = model.extract_features(batch)
    abar = model.schedule.alphas_cumprod
    n, scale = 12, model.scale
    torch.manual_seed(seed)
    img = torch.randn(1, n, 4)
    times = [int(v) for v in torch.linspace(-1, 999, steps + 1).tolist()][::-1]
    out = []
    for time, time_next in zip(times[:-1], times[1:]):
        boxes_in = (
            box_convert((img.clamp(-scale, scale) / scale + 1) / 2, "cxcywh", "xyxy")
            * whwh[:, None]
        )
        logits, boxes = model.head(feats, boxes_in.float(), torch.full((1,), time))
        logits, boxes = logits[-1], boxes[-1]
        out.append(StepPredictions(logits, boxes))
        x_start = ((box_convert(boxes / whwh[:, None], "xyxy", "cxcywh") * 2 - 1) * scale).clamp(
            -scale, scale
        )
        pred_noise = ((1 / abar[time]).sqrt() * img - x_start) / (1 / abar[time] - 1).sqrt()
        keep = logits[0].sigmoid().max(-1).values > 0.5
        pred_noise, x_start, img = pred_noise[:, keep], x_start[:, keep], img[:, keep]
        if time_next < 0:
            break
        alpha, alpha_next = abar[time], abar[time_next]
        sigma = ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c = (1 - alpha_next - sigma**2).sqrt()
        noise = torch.randn_like(img)
        img = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise
        img = torch.cat((img, torch.randn(1, n - int(keep.sum()), 4)), dim=1).float()
    return out


def test_official_renewal_order_reproduces_the_official_draws() -> None:
    model = _model_with_mixed_scores()
    images = random_images([(64, 96)])
    expected = _official_ddim_sample(model, images, steps=3, seed=21)
    batch, whwh = model.preprocess(images)
    feats = model.extract_features(batch)
    torch.manual_seed(21)
    x_T = torch.randn(1, 12, 4)
    ours = model.sample(feats, whwh, x_T, SamplerOptions(steps=3, renewal_order="official"))
    in_place = model.sample(feats, whwh, x_T, SamplerOptions(steps=3))
    kept = expected[0].logits.sigmoid().amax(-1) > 0.5
    assert 0 < int(kept.sum()) < 12  # renewal really mixes kept and fresh boxes
    for got, ref in zip(ours, expected):
        torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.boxes_xyxy, ref.boxes_xyxy, atol=1e-3, rtol=1e-4)
    # the default in-place renewal uses another (batch-invariant) draw sequence: same first step, other noise
    torch.testing.assert_close(in_place[0].logits, expected[0].logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(in_place[-1].boxes_xyxy, expected[-1].boxes_xyxy, atol=1e-2)


def test_official_renewal_order_is_batch_invariant_with_per_image_generators() -> None:
    model = _model_with_mixed_scores()
    images = random_images([(64, 96), (64, 96)], seed=4)
    x_T = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(5))
    opts = SamplerOptions(steps=3, renewal_order="official")

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    both = model.inference(images, x_T=x_T, generator=gens(1, 2), opts=opts)
    singles = [
        model.inference(images[i : i + 1], x_T=x_T[i : i + 1], generator=gens(i + 1), opts=opts)[0]
        for i in range(2)
    ]
    for batched, single in zip(both, singles):
        assert torch.equal(batched["labels"], single["labels"])
        torch.testing.assert_close(
            batched["boxes_xyxy"], single["boxes_xyxy"], atol=1e-2, rtol=1e-3
        )
    with pytest.raises(ValueError, match="renewal_order must be"):
        SamplerOptions(renewal_order="compact")
