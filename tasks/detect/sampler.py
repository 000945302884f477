"""DDIM box sampling for DiffusionDet (official ``ddim_sample``), batch-size agnostic.

Differences from the official code, all documented options:
- Box renewal is a *masked replacement* at fixed N: after the DDIM step, proposals whose max class
  score is <= ``renewal_threshold`` are replaced by fresh N(0, I) boxes in place (the official code
  drops them and appends the fresh boxes at the end, which only supports batch 1). The head is
  permutation-equivariant over proposals, so this is the same computation up to proposal order.
- ``ensemble_last_step``: the official code leaves the last step out of the ensemble (issue #56);
  ``True`` includes it.
- Randomness comes only from ``x_T`` and ``generator``. A *list* of generators (one per image) draws
  every image's noise from its own stream, so a batch gives exactly the per-image results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from diffusion_core import NoiseSchedule, ddim_step, sampling_pairs, to_x0_eps
from tasks.detect.box_codec import xyxy_to_diffusion

Generator = torch.Generator | Sequence[torch.Generator] | None
DenoiseFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class SamplerOptions:
    """Inference-time sampler settings (defaults = the official sampler except ``ensemble_last_step``)."""

    steps: int = 1
    eta: float = 1.0
    box_renewal: bool = True
    renewal_threshold: float = 0.5
    use_ensemble: bool = True
    ensemble_last_step: bool = True
    use_nms: bool = True
    nms_threshold: float = 0.5


def draw_normal(shape: tuple[int, int, int], generator: Generator, device: torch.device) -> Tensor:
    """Standard normal (B, N, 4) noise from ``generator``: None (global RNG), one generator for the
    batch, or one generator per image (rows drawn separately so they do not depend on the batch)."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} images")
    return torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)


@dataclass
class StepResult:
    """Last-stage predictions of one sampling step: logits (B, N, K), boxes_xyxy (B, N, 4)."""

    logits: Tensor
    boxes_xyxy: Tensor


def ddim_sample(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x_T: Tensor,
    image_whwh: Tensor,
    *,
    scale: float,
    opts: SamplerOptions,
    generator: Generator = None,
) -> list[StepResult]:
    """Runs the DDIM loop from ``x_T`` and returns every step's last-stage predictions.

    Args:
        denoise: ``(x_t (B, N, 4) diffusion space, t (B,)) -> (logits (B, N, K), boxes_xyxy (B, N, 4))``.
        schedule: the training noise schedule.
        x_T: (B, N, 4) initial noise in diffusion space.
        image_whwh: (B, 4) sizes of the unpadded images.
        scale: signal scale of the box codec.
        opts: sampler options. generator: see :func:`draw_normal`.
    """
    b, n, _ = x_T.shape
    x = x_T.float()
    results: list[StepResult] = []
    for t_now, t_next in sampling_pairs(schedule.num_timesteps, opts.steps, "linspace"):
        t = torch.full((b,), t_now, dtype=torch.long, device=x.device)
        logits, boxes = denoise(x, t)
        results.append(StepResult(logits, boxes))
        if t_next < 0:
            break
        x0 = xyxy_to_diffusion(boxes, image_whwh, scale)
        eps = to_x0_eps(schedule, x, t, x0, "sample").eps
        noise = draw_normal((b, n, 4), generator, x.device) if opts.eta > 0 else None
        x_next = ddim_step(schedule, x, t, t_next, x0, eps, eta=opts.eta, noise=noise).prev_sample
        if opts.box_renewal:
            keep = logits.sigmoid().amax(-1) > opts.renewal_threshold  # (B, N)
            fresh = draw_normal((b, n, 4), generator, x.device)
            x_next = torch.where(keep[..., None], x_next, fresh)
        x = x_next
    return results


def topk_detections(logits: Tensor, boxes_xyxy: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k (score, label, box) over the N x K sigmoid scores of each image (unsorted, like the official
    ``topk(sorted=False)``). Args: logits (B, N, K), boxes (B, N, 4). Returns scores (B, k), labels (B, k),
    boxes (B, k, 4)."""
    b, n, num_classes = logits.shape
    scores, idx = logits.sigmoid().flatten(1).topk(min(k, n * num_classes), dim=1, sorted=False)
    labels = idx % num_classes
    boxes = torch.gather(boxes_xyxy, 1, (idx // num_classes)[..., None].expand(-1, -1, 4))
    return scores, labels, boxes


def select_detections(
    results: list[StepResult], num_boxes: int, opts: SamplerOptions
) -> list[dict[str, Tensor]]:
    """Turns step predictions into per-image detections (``boxes_xyxy``, ``scores``, ``labels``),
    sorted by decreasing score: ensemble over steps (when enabled and steps > 1), then class-wise NMS."""
    if opts.use_ensemble and len(results) > 1:
        used = results if opts.ensemble_last_step else results[:-1]
    else:
        used = results[-1:]
    parts = [topk_detections(r.logits, r.boxes_xyxy, num_boxes) for r in used]
    scores = torch.cat([p[0] for p in parts], dim=1)
    labels = torch.cat([p[1] for p in parts], dim=1)
    boxes = torch.cat([p[2] for p in parts], dim=1)
    out = []
    for s, lab, bx in zip(scores, labels, boxes):  # per image: NMS results must not depend on the batch
        if opts.use_nms:
            keep = batched_nms(bx.float(), s.float(), lab, opts.nms_threshold)
        else:
            keep = s.argsort(descending=True)
        out.append({"boxes_xyxy": bx[keep], "scores": s[keep], "labels": lab[keep]})
    return out


def postprocess(
    detections: dict[str, Tensor], input_hw: tuple[int, int], output_hw: tuple[int, int]
) -> dict[str, Tensor]:
    """detectron2 ``detector_postprocess``: scale boxes from the ``input_hw`` frame to ``output_hw``,
    clip to the output image and drop boxes with zero width or height."""
    (in_h, in_w), (out_h, out_w) = input_hw, output_hw
    boxes = detections["boxes_xyxy"].clone()
    boxes[:, 0::2] *= out_w / in_w
    boxes[:, 1::2] *= out_h / in_h
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes_xyxy": boxes[keep], "scores": detections["scores"][keep],
            "labels": detections["labels"][keep]}
