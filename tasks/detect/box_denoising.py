"""DiffusionDet's box denoising at inference (official ``ddim_sample``) on the core loop, batch-size agnostic.

:func:`denoise_boxes` runs ``diffusion_core.sample_loop`` (the repository's only sampling loop): the head is the
denoiser (x0 = its last-stage boxes, its class logits the auxiliary output), box renewal is the loop callback.
:func:`select_detections` turns the recorded steps into detections (ensemble + class-wise NMS).

Deliberate differences from the official code (``tasks/detect/README.md`` lists them with the options that
restore the official behaviour):
- Box renewal is a *masked replacement* at fixed N: after the DDIM step, proposals whose max class score is
  <= ``renewal_threshold`` are replaced in place by fresh N(0, I) boxes (the official code drops them and appends
  fresh boxes at the end, which supports batch 1 only). The head is permutation-equivariant over proposals, so
  this is the same computation up to proposal order and the order of the random draws.
  ``renewal_order="official"`` restores the official layout and draw sequence (per image).
- ``ensemble_last_step``: the official code leaves the last step out of the ensemble (issue #56); ``True``
  (our default) includes it, ``False`` restores the official selection.
- Randomness comes only from ``x_T`` and ``generator``. A *list* of generators (one per image) draws every
  image's noise from its own stream, so a batch gives exactly the per-image results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from diffusion_core import Generators, LoopState, NoiseSchedule, randn, sample_loop, sampling_pairs
from tasks.detect.box_codec import xyxy_to_diffusion

DenoiseFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class SamplerOptions:
    """Inference-time box-sampling settings: the one definition (config, model and predictor use it).

    Defaults are the official sampler except ``ensemble_last_step`` (see the module docstring).

    Attributes:
        steps: DDIM steps S (time pairs ``int(linspace(-1, T - 1, S + 1))``, reversed).
        eta: DDIM eta (official 1.0).
        box_renewal: replace low-score proposals by fresh noise between steps.
        renewal_threshold: a proposal is kept when its max sigmoid class score is > this.
        use_ensemble: with S > 1, pool the top-N detections of every step before NMS.
        ensemble_last_step: include the last step in the ensemble (official: False).
        use_nms: class-wise NMS on the pooled detections.
        nms_threshold: IoU threshold of that NMS.
        renewal_order: ``"in_place"`` (fresh boxes replace the dropped ones where they were; the step noise is
            drawn for all N) or ``"official"`` (kept boxes first, fresh ones appended, noise drawn for the kept
            ones only: the official layout and draw sequence, i.e. the same numbers as the official code at
            batch 1 with the same seed).
    """

    steps: int = 1
    eta: float = 1.0
    box_renewal: bool = True
    renewal_threshold: float = 0.5
    use_ensemble: bool = True
    ensemble_last_step: bool = True
    use_nms: bool = True
    nms_threshold: float = 0.5
    renewal_order: Literal["in_place", "official"] = "in_place"

    def __post_init__(self) -> None:
        if self.renewal_order not in ("in_place", "official"):
            raise ValueError(
                f"renewal_order must be 'in_place' or 'official', got {self.renewal_order!r}"
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"sampler steps must be an integer >= 1, got {self.steps!r}")
        if self.eta < 0:
            raise ValueError(f"sampler eta must be >= 0, got {self.eta}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in [0, 1], got {self.nms_threshold}")


@dataclass
class StepPredictions:
    """Last-stage predictions of one sampling step: logits (B, N, K), boxes_xyxy (B, N, 4)."""

    logits: Tensor
    boxes_xyxy: Tensor


def denoise_boxes(
    denoise: DenoiseFn,
    schedule: NoiseSchedule,
    x_T: Tensor,
    image_whwh: Tensor,
    *,
    scale: float,
    opts: SamplerOptions,
    generator: Generators = None,
) -> list[StepPredictions]:
    """Runs the DDIM box sampler from ``x_T`` and returns every step's last-stage predictions.

    Args:
        denoise: ``(x_t (B, N, 4) diffusion space, t (B,)) -> (logits (B, N, K), boxes_xyxy (B, N, 4))``.
        schedule: the training noise schedule.
        x_T: (B, N, 4) initial noise in diffusion space.
        image_whwh: (B, 4) sizes of the unpadded images.
        scale: signal scale of the box codec.
        opts: sampler options. generator: see ``diffusion_core.randn`` (one per image for batch invariance).
    """
    x = x_T.float()
    results: list[StepPredictions] = []
    renewal = _OfficialRenewal(x, generator) if opts.renewal_order == "official" else None

    def model_fn(x_t: Tensor, t: Tensor) -> tuple[Tensor, StepPredictions]:
        logits, boxes = denoise(x_t, t)
        if renewal is not None:
            renewal.keep = logits.sigmoid().amax(-1) > opts.renewal_threshold
        return xyxy_to_diffusion(boxes, image_whwh, scale), StepPredictions(logits, boxes)

    def renew(state: LoopState) -> Tensor | None:
        results.append(state.aux)
        if not opts.box_renewal or int(state.t_prev[0]) < 0:
            return None
        if renewal is not None:
            return renewal.compact(state.step.prev_sample, drew_noise=opts.eta > 0)
        keep = state.aux.logits.sigmoid().amax(-1) > opts.renewal_threshold  # (B, N)
        fresh = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(keep[..., None], state.step.prev_sample, fresh)

    pairs = sampling_pairs(schedule.num_timesteps, opts.steps, "linspace")
    if renewal is not None and opts.box_renewal:
        sample_loop(
            model_fn,
            schedule,
            x,
            pairs,
            eta=opts.eta,
            callback=renew,
            prediction_type="sample",
            noise_fn=renewal.step_noise,
        )
    else:
        sample_loop(
            model_fn,
            schedule,
            x,
            pairs,
            eta=opts.eta,
            generator=generator,
            callback=renew,
            prediction_type="sample",
        )
    return results


class _OfficialRenewal:
    """``renewal_order="official"``: the official layout and random draws, per image.

    The DDIM noise is drawn for the kept proposals only (``randn_like(img[:, keep])``), the kept proposals move to
    the front in their order and ``N - kept`` fresh N(0, I) boxes are appended (``torch.cat``), image by image from
    that image's generator (or the shared one). At batch 1 with the global RNG this is the official draw sequence.
    """

    def __init__(self, x: Tensor, generator: Generators) -> None:
        self.n, self.device, self.dtype = x.shape[1], x.device, x.dtype
        self.generators = (
            list(generator) if isinstance(generator, (list, tuple)) else [generator] * x.shape[0]
        )
        self.keep = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)

    def _draw(self, i: int, rows: int) -> Tensor:
        return randn((rows, 4), generator=self.generators[i], device=self.device, dtype=self.dtype)

    def step_noise(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> Tensor:
        z = torch.zeros(shape, device=device, dtype=dtype)
        for i, keep in enumerate(self.keep):
            z[i, keep] = self._draw(i, int(keep.sum()))
        return z

    def compact(self, x_prev: Tensor, *, drew_noise: bool) -> Tensor:
        rows = []
        for i, keep in enumerate(self.keep):
            if not drew_noise:  # the official code draws the DDIM noise even when sigma = 0
                self._draw(i, int(keep.sum()))
            kept = x_prev[i, keep]
            rows.append(torch.cat([kept, self._draw(i, self.n - kept.shape[0])]))
        return torch.stack(rows)


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
    results: list[StepPredictions], num_boxes: int, opts: SamplerOptions
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
    for s, lab, bx in zip(
        scores, labels, boxes
    ):  # per image: NMS results must not depend on the batch
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
    return {
        "boxes_xyxy": boxes[keep],
        "scores": detections["scores"][keep],
        "labels": detections["labels"][keep],
    }
