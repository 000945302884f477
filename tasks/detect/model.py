"""The DiffusionDet detector: backbone + FPN, DynamicHead, set criterion and DDIM box sampler.

Contract used by ``train.py`` / ``evaluate.py``:

- train mode: ``model(images, targets)`` -> dict of *weighted* scalar losses (sum = total loss), with
  ``images`` a list of (3, H, W) float RGB tensors in 0..255 and ``targets`` a list of dicts with
  ``boxes_xyxy`` (M, 4) absolute pixels of that image and ``labels`` (M,) int64 in 0..K-1;
- ``model.inference(images, opts=SamplerOptions(...), num_boxes=..., ...)`` -> per image ``boxes_xyxy``
  (D, 4) in that image's pixels (or ``output_sizes``), ``scores`` (D,), ``labels`` (D,), sorted by score;
- eval mode: ``model(images)`` = ``model.inference(images)`` with the configured defaults.

:func:`build_detector` is the only function that reads a config.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import build_fpn_backbone
from backbones.base import spec_by_name
from diffusion_core import Generators, NoiseSchedule, q_sample, randn
from tasks.detect.box_codec import diffusion_to_xyxy, encode, xyxy_to_cxcywh
from tasks.detect.box_denoising import (
    SamplerOptions,
    StepPredictions,
    denoise_boxes,
    postprocess,
    select_detections,
)
from tasks.detect.config import DetectConfig, ModelConfig
from tasks.detect.criterion import SetCriterion
from tasks.detect.head import DynamicHead
from tasks.detect.matcher import SimOTAMatcher


class DiffusionDet(nn.Module):
    """Noise-to-box detector.

    Args:
        backbone: module with ``feature_specs`` returning a dict of features (e.g. an FPN).
        head: the DynamicHead.
        criterion: the set criterion (used in training only).
        in_features: pyramid levels pooled by the head (e.g. ``("p2", "p3", "p4", "p5")``).
        schedule: the diffusion noise schedule (float64 tables, kept off the state dict).
        num_proposals: training N and default inference N.
        scale: signal scale of the box codec (2.0).
        pixel_mean, pixel_std: RGB normalisation in 0..255.
        size_divisibility: pad the batch to a multiple of this.
        sampler_options: default inference options (``inference(opts=None)``).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: DynamicHead,
        criterion: SetCriterion,
        in_features: Sequence[str],
        schedule: NoiseSchedule,
        num_proposals: int = 500,
        scale: float = 2.0,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
        size_divisibility: int = 32,
        sampler_options: SamplerOptions | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.head, self.criterion = backbone, head, criterion
        self.in_features = tuple(in_features)
        self.schedule = schedule
        self.num_proposals, self.scale = num_proposals, scale
        self.size_divisibility = size_divisibility
        self.sampler_options = sampler_options or SamplerOptions()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    # ------------------------------------------------------------------ shared pieces
    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Normalises each (3, H, W) 0..255 RGB image, then zero-pads the batch (bottom/right) to a
        multiple of ``size_divisibility``. Returns the batch (B, 3, Hp, Wp) and ``image_whwh`` (B, 4)
        of the unpadded sizes."""
        if len(images) == 0:
            raise ValueError("got an empty list of images")
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(
                    f"image {i} must be a (3, H, W) tensor, got shape {tuple(img.shape)}"
                )
        normed = [
            (img.to(self.pixel_mean.device).float() - self.pixel_mean) / self.pixel_std
            for img in images
        ]
        div = max(self.size_divisibility, 1)
        max_h = -(-max(x.shape[1] for x in normed) // div) * div
        max_w = -(-max(x.shape[2] for x in normed) // div) * div
        batch = torch.stack(
            [F.pad(x, (0, max_w - x.shape[2], 0, max_h - x.shape[1])) for x in normed]
        )
        whwh = torch.tensor(
            [[x.shape[2], x.shape[1], x.shape[2], x.shape[1]] for x in normed],
            dtype=torch.float32,
            device=batch.device,
        )
        return batch, whwh

    def extract_features(self, batch: Tensor) -> list[Tensor]:
        """Backbone + FPN once; returns the pooled levels in ``in_features`` order."""
        feats = self.backbone(batch)
        return [feats[name] for name in self.in_features]

    def _schedule(self, device: torch.device) -> NoiseSchedule:
        if self.schedule.device != device:
            self.schedule = self.schedule.to(device)
        return self.schedule

    # ------------------------------------------------------------------ training
    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Train mode: weighted losses (needs ``targets``); eval mode: :meth:`inference` defaults."""
        if not self.training:
            return self.inference(images)
        if targets is None or len(targets) != len(images):
            raise ValueError("training forward needs one target dict per image")
        batch, whwh = self.preprocess(images)
        features = self.extract_features(batch)
        prepared = [self._prepare_target(t, whwh[i], i) for i, t in enumerate(targets)]
        x0 = torch.stack([self._pad_to_proposals(p["boxes_cxcywh_norm"]) for p in prepared])
        b = len(images)
        t = torch.randint(0, self.schedule.num_timesteps, (b,), device=batch.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(self._schedule(batch.device), x0, t, noise).float()
        boxes = diffusion_to_xyxy(x_t, whwh, self.scale)
        logits, pred_boxes = self.head(features, boxes, t)
        return self.criterion(logits, pred_boxes, prepared)

    def _prepare_target(
        self, target: dict[str, Tensor], whwh: Tensor, index: int
    ) -> dict[str, Tensor]:
        boxes = torch.as_tensor(target["boxes_xyxy"], dtype=torch.float32, device=whwh.device)
        labels = torch.as_tensor(target["labels"], dtype=torch.long, device=whwh.device)
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"target {index}: boxes_xyxy must be (M, 4) and labels (M,), got "
                f"{tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"target {index}: labels must be in [0, {self.num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        if not torch.isfinite(boxes).all():
            raise ValueError(f"target {index}: boxes_xyxy contains non-finite values")
        return {
            "labels": labels,
            "boxes_xyxy": boxes,
            "image_whwh": whwh,
            "boxes_cxcywh_norm": xyxy_to_cxcywh(boxes / whwh),
        }

    def _pad_to_proposals(self, gt_cxcywh: Tensor) -> Tensor:
        """x0 (N, 4) in diffusion space: the GT boxes, padded with N(0.5, 1/6) boxes (w, h >= 1e-4),
        a random subset when there are more than N, a [0.5, 0.5, 1, 1] box for an empty image."""
        n, device = self.num_proposals, gt_cxcywh.device
        if gt_cxcywh.shape[0] == 0:
            gt_cxcywh = torch.tensor([[0.5, 0.5, 1.0, 1.0]], device=device)
        m = gt_cxcywh.shape[0]
        if m < n:
            pad = torch.randn(n - m, 4, device=device) / 6.0 + 0.5
            pad[:, 2:] = pad[:, 2:].clamp(min=1e-4)
            boxes = torch.cat([gt_cxcywh, pad])
        elif m > n:
            boxes = gt_cxcywh[torch.randperm(m, device=device)[:n].sort().values]
        else:
            boxes = gt_cxcywh
        return encode(boxes, self.scale)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(
        self,
        images: Sequence[Tensor],
        *,
        opts: SamplerOptions | None = None,
        num_boxes: int | None = None,
        x_T: Tensor | None = None,
        generator: Generators = None,
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detects objects by denoising random boxes.

        Args:
            images: list of (3, H, W) float RGB 0..255 tensors.
            opts: sampler options (None = ``self.sampler_options``, the configured ones); change one field with
                ``dataclasses.replace(model.sampler_options, steps=4)``.
            num_boxes: N at inference (default: training N); must agree with ``x_T`` when both are given.
            x_T: (B, N, 4) initial noise in diffusion space, for reproducible results.
            generator: torch.Generator, or one per image (see ``diffusion_core.randn``).
            output_sizes: per image (height, width) to map boxes to (default: the input size).

        Returns:
            Per image ``{"boxes_xyxy": (D, 4), "scores": (D,), "labels": (D,)}``, sorted by score.

        Raises:
            ValueError: bad ``num_boxes`` / ``x_T`` / ``output_sizes``.
            FloatingPointError: the network produced non-finite scores or boxes (NaN weights or inputs),
                naming the images.
        """
        opts = opts or self.sampler_options
        if num_boxes is not None and (
            isinstance(num_boxes, bool) or not isinstance(num_boxes, int) or num_boxes < 1
        ):
            raise ValueError(f"num_boxes must be an integer >= 1, got {num_boxes!r}")
        if output_sizes is not None and len(output_sizes) != len(images):
            raise ValueError(f"got {len(output_sizes)} output_sizes for {len(images)} images")
        batch, whwh = self.preprocess(images)
        features = self.extract_features(batch)
        b = len(images)
        if x_T is None:
            x_T = randn(
                (b, num_boxes or self.num_proposals, 4), generator=generator, device=batch.device
            )
        elif x_T.dim() != 3 or x_T.shape[0] != b or x_T.shape[2] != 4 or x_T.shape[1] < 1:
            raise ValueError(f"x_T must have shape ({b}, N, 4) with N >= 1, got {tuple(x_T.shape)}")
        elif num_boxes is not None and x_T.shape[1] != num_boxes:
            raise ValueError(
                f"num_boxes={num_boxes} disagrees with x_T of shape {tuple(x_T.shape)}"
            )
        results = self.sample(features, whwh, x_T.to(batch.device), opts, generator)
        _check_finite(results[-1])
        detections = select_detections(results, x_T.shape[1], opts)
        out_sizes = output_sizes or [(img.shape[1], img.shape[2]) for img in images]
        return [
            postprocess(d, (img.shape[1], img.shape[2]), tuple(size))
            for d, img, size in zip(detections, images, out_sizes)
        ]

    def sample(
        self,
        features: list[Tensor],
        whwh: Tensor,
        x_T: Tensor,
        opts: SamplerOptions,
        generator: Generators = None,
    ) -> list[StepPredictions]:
        """Box denoising on precomputed features; returns each step's last-stage predictions."""

        def denoise(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            logits, boxes = self.head(features, diffusion_to_xyxy(x, whwh, self.scale), t)
            return logits[-1], boxes[-1]

        return denoise_boxes(
            denoise,
            self._schedule(x_T.device),
            x_T,
            whwh,
            scale=self.scale,
            opts=opts,
            generator=generator,
        )


def _check_finite(step: StepPredictions) -> None:
    """Non-finite scores would silently give zero detections (NaN never beats a threshold): refuse them."""
    bad = ~(
        torch.isfinite(step.logits).flatten(1).all(1)
        & torch.isfinite(step.boxes_xyxy).flatten(1).all(1)
    )
    if bool(bad.any()):
        raise FloatingPointError(
            f"the detector produced non-finite scores or boxes for image(s) {bad.nonzero()[:, 0].tolist()} of the "
            "batch: the weights or the input image hold NaN/Inf (DiffusionDetector checks images up front; "
            "load_detector_weights refuses non-finite weights)"
        )


def build_detector(cfg: DetectConfig | ModelConfig) -> DiffusionDet:
    """Builds a :class:`DiffusionDet` from a ``DetectConfig`` or its ``ModelConfig`` (``cfg.model``)."""
    mcfg = cfg.model if isinstance(cfg, DetectConfig) else cfg
    bcfg, hcfg, dcfg, lcfg = mcfg.backbone, mcfg.head, mcfg.diffusion, mcfg.loss
    backbone_kwargs: dict = dict(pretrained=bcfg.pretrained, weights=bcfg.weights)
    if bcfg.name == "swin_b":
        backbone_kwargs["drop_path_rate"] = bcfg.drop_path_rate
    else:
        backbone_kwargs.update(norm=bcfg.norm, freeze_at=bcfg.freeze_at, width=bcfg.width)
    backbone = build_fpn_backbone(bcfg.name, fpn_channels=bcfg.fpn_channels, **backbone_kwargs)
    if bcfg.fpn_channels != hcfg.hidden_dim:
        raise ValueError(
            f"model.backbone.fpn_channels ({bcfg.fpn_channels}) must equal "
            f"model.head.hidden_dim ({hcfg.hidden_dim}): the head pools FPN features"
        )
    strides = tuple(spec_by_name(backbone.feature_specs, f).stride for f in hcfg.in_features)
    head = DynamicHead(
        num_classes=hcfg.num_classes,
        feature_strides=strides,
        num_stages=hcfg.num_stages,
        hidden_dim=hcfg.hidden_dim,
        num_attn_heads=hcfg.num_attn_heads,
        dim_feedforward=hcfg.dim_feedforward,
        dim_dynamic=hcfg.dim_dynamic,
        num_dynamic=hcfg.num_dynamic,
        num_cls_layers=hcfg.num_cls_layers,
        num_reg_layers=hcfg.num_reg_layers,
        pooler_resolution=hcfg.pooler_resolution,
        pooler_sampling_ratio=hcfg.pooler_sampling_ratio,
        prior_prob=hcfg.prior_prob,
        dropout=hcfg.dropout,
    )
    matcher = SimOTAMatcher(
        cost_class=lcfg.class_weight,
        cost_bbox=lcfg.l1_weight,
        cost_giou=lcfg.giou_weight,
        ota_k=lcfg.ota_k,
        focal_alpha=lcfg.focal_alpha,
        focal_gamma=lcfg.focal_gamma,
    )
    criterion = SetCriterion(
        num_classes=hcfg.num_classes,
        matcher=matcher,
        class_weight=lcfg.class_weight,
        l1_weight=lcfg.l1_weight,
        giou_weight=lcfg.giou_weight,
        focal_alpha=lcfg.focal_alpha,
        focal_gamma=lcfg.focal_gamma,
        deep_supervision=lcfg.deep_supervision,
        use_fed_loss=lcfg.use_fed_loss,
        fed_loss_num_classes=lcfg.fed_loss_num_classes,
    )
    return DiffusionDet(
        backbone=backbone,
        head=head,
        criterion=criterion,
        in_features=hcfg.in_features,
        schedule=NoiseSchedule.from_name(dcfg.schedule, dcfg.num_timesteps),
        num_proposals=hcfg.num_proposals,
        scale=dcfg.scale,
        pixel_mean=mcfg.pixel_mean,
        pixel_std=mcfg.pixel_std,
        size_divisibility=mcfg.size_divisibility,
        sampler_options=dcfg.sampler_options(),
    )
