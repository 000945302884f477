"""ONNX export of a DiffusionDet detector for a fixed number of sampling steps and boxes (used by ``export.py``).

The whole detector exports as one graph: normalisation and padding, backbone + FPN, the S-step box sampler
(DDIM, box renewal, ensemble), top-k, class-wise NMS and box clipping. Fixed at export time: batch 1, the
input size (H, W) (resize images to it first, see :func:`prepare_image`), the number of steps S and of boxes
N, and every sampler option. Inputs: ``image`` (1, 3, H, W) float RGB 0..255, ``x_T`` (1, N, 4) standard
normal initial boxes. Outputs: ``boxes_xyxy`` (D, 4) in the input image's pixels, ``scores`` (D,), ``labels``
(D,) int64, sorted by score (D varies).

Randomness: with S = 1 the result is a function of ``x_T`` alone. With S > 1 the DDIM noise (eta > 0) and the
renewal boxes are drawn inside the graph (ONNX ``RandomNormalLike``), so only ``deterministic=True``
(eta = 0, no renewal) reproduces PyTorch exactly; the stochastic graph is the same sampler with its own RNG.

What does not export as is, and what we do:
- PyTorch's fused attention fast path (``aten::_native_multi_head_attention``) has no ONNX symbolic; it is
  switched off while tracing (the same math).
- ``RoIPooler.forward`` pools a pyramid level only when some box is assigned to it (``if idx.numel()``), a
  Python branch the tracer freezes: a level empty at export would be missing from the graph. While tracing,
  :func:`_static_pooler_forward` pools every box at every level and keeps each box's own level (the same
  numbers, a static graph; costs L RoIAligns instead of one per box).
- The dynamo exporter needs ``onnxscript`` (not a dependency), so the TorchScript exporter is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align as tv_roi_align

from tasks.detect.box_denoising import SamplerOptions, postprocess, select_detections
from tasks.detect.model import DiffusionDet
from tasks.detect.pooler import RoIPooler, assign_levels


class ExportableDetector(nn.Module):
    """``(image (1, 3, H, W) 0..255, x_T (1, N, 4)) -> (boxes_xyxy (D, 4), scores (D,), labels (D,))``.

    ``DiffusionDet.inference`` with the input size fixed: the padding to the size divisibility and
    ``image_whwh`` are constants here (traced from tensor shapes, the padding exported wrongly)."""

    def __init__(
        self, model: DiffusionDet, opts: SamplerOptions, *, height: int, width: int
    ) -> None:
        super().__init__()
        self.model, self.opts, self.height, self.width = model, opts, height, width
        div = max(model.size_divisibility, 1)
        self.pad = (0, -(-width // div) * div - width, 0, -(-height // div) * div - height)

    def forward(self, image: Tensor, x_T: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        batch = F.pad((image - m.pixel_mean[None]) / m.pixel_std[None], self.pad)
        whwh = torch.tensor(
            [[self.width, self.height] * 2], dtype=torch.float32, device=batch.device
        )
        steps = m.sample(m.extract_features(batch), whwh, x_T, self.opts)
        det = select_detections(steps, x_T.shape[1], self.opts)[0]
        hw = (self.height, self.width)
        det = postprocess(det, hw, hw)
        return det["boxes_xyxy"], det["scores"], det["labels"]


def _static_pooler_forward(self: RoIPooler, features: list[Tensor], boxes_xyxy: Tensor) -> Tensor:
    """``RoIPooler.forward`` without data-dependent branches: (B * N, C, P, P), image-major."""
    b, n = boxes_xyxy.shape[:2]
    flat = boxes_xyxy.reshape(-1, 4).float()
    batch_idx = torch.arange(b, device=flat.device, dtype=flat.dtype).repeat_interleave(n)
    rois = torch.cat([batch_idx[:, None], flat], dim=1)
    args = dict(output_size=self.output_size, sampling_ratio=self.sampling_ratio, aligned=True)
    if len(features) == 1:
        return tv_roi_align(features[0], rois, spatial_scale=self.scales[0], **args)
    levels = assign_levels(flat, self.min_level, self.max_level)
    out = None
    for lvl, (feat, scale) in enumerate(zip(features, self.scales)):
        pooled = tv_roi_align(feat, rois, spatial_scale=scale, **args)
        out = (
            pooled
            if out is None
            else torch.where((levels == lvl)[:, None, None, None], pooled, out)
        )
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def _traceable() -> Iterator[None]:
    """Attention fast path off and the static pooler while tracing."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    original = RoIPooler.forward
    RoIPooler.forward = _static_pooler_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        RoIPooler.forward = original  # type: ignore[method-assign]
        torch.backends.mha.set_fastpath_enabled(enabled)


def export_onnx(
    model: DiffusionDet,
    path: str | Path,
    *,
    height: int,
    width: int,
    steps: int,
    num_boxes: int,
    deterministic: bool = False,
    opset: int = 17,
) -> SamplerOptions:
    """Writes the detector as ONNX for (1, 3, ``height``, ``width``) inputs, ``steps`` steps and
    ``num_boxes`` boxes; returns the sampler options baked into the graph (the model's configured ones,
    with eta = 0 and no renewal when ``deterministic``)."""
    opts = dataclasses.replace(model.sampler_options, steps=steps)
    if deterministic:
        opts = dataclasses.replace(opts, eta=0.0, box_renewal=False)
    wrapper = ExportableDetector(model, opts, height=height, width=width).eval()
    device = next(model.parameters()).device
    image = torch.full((1, 3, height, width), 128.0, device=device)
    x_T = torch.randn((1, num_boxes, 4), generator=torch.Generator().manual_seed(0)).to(device)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with _traceable(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values fixed at export time
        torch.onnx.export(
            wrapper,
            (image, x_T),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image", "x_T"],
            output_names=["boxes_xyxy", "scores", "labels"],
        )
    wrapper.eval()  # the exporter restores the wrapper's mode; keep the model in eval mode
    return opts


def prepare_image(path: str | Path, *, height: int, width: int) -> tuple[Tensor, tuple[int, int]]:
    """An image file (EXIF orientation applied) resized to the exported size: ((1, 3, H, W) float 0..255,
    original (height, width)). Boxes map back with factors (orig_w / W, orig_h / H)."""
    from tasks.detect.predictor import load_image, resize_image

    image = load_image(str(path))
    return resize_image(image, (height, width))[None], (int(image.shape[1]), int(image.shape[2]))


def onnx_ops(path: str | Path) -> list[str]:
    """Sorted ONNX operator types used by an exported graph."""
    import onnx

    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


def compare_with_pytorch(
    model: DiffusionDet, onnx_path: str | Path, opts: SamplerOptions, image: Tensor, x_T: Tensor
) -> dict[str, float]:
    """Runs the ONNX graph (onnxruntime, CPU) and the PyTorch model on the same inputs; returns the
    detection counts and the largest absolute differences (boxes in pixels, scores)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(
        None, {"image": image.cpu().numpy(), "x_T": x_T.cpu().numpy()}
    )
    with torch.no_grad():
        ref = model.eval().inference([image[0]], opts=opts, x_T=x_T)[0]
    result = {"detections_onnx": float(len(scores)), "detections_torch": float(len(ref["scores"]))}
    if len(scores) == len(ref["scores"]):
        result["max_box_diff_px"] = float(
            np.abs(boxes - ref["boxes_xyxy"].cpu().numpy()).max(initial=0)
        )
        result["max_score_diff"] = float(
            np.abs(scores - ref["scores"].cpu().numpy()).max(initial=0)
        )
        result["label_mismatches"] = float((labels != ref["labels"].cpu().numpy()).sum())
    return result
