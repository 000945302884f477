"""User-facing detection API.

Example::

    from tasks.detect import DiffusionDetector

    detector = DiffusionDetector.from_config("configs/detect/diffdet_coco_r50.yaml",
                                             weights="model_final.pt", device="cuda")
    out = detector.predict(["street.jpg"], steps=4)[0]
    out["boxes"], out["scores"], out["labels"]   # xyxy in the input image's pixels
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tasks.detect.model import DiffusionDet, build_detector
from tasks.detect.sampler import Generator

logger = logging.getLogger(__name__)

ImageInput = str | Path | np.ndarray | Tensor


def resized_hw(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge`` target size: short side ``short``, long side <= ``max_size``."""
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def load_image(image: ImageInput) -> Tensor:
    """Returns a (3, H, W) float RGB 0..255 tensor from a path, an HWC uint8 RGB array or a CHW tensor."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be HWC RGB, got shape {image.shape}")
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float()
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor images must be (3, H, W), got shape {tuple(image.shape)}")
        return image.float()
    raise ValueError(f"unsupported image type {type(image).__name__}; give a path, HWC array or CHW tensor")


def resize_image(image: Tensor, hw: tuple[int, int]) -> Tensor:
    """Resizes a (3, H, W) 0..255 tensor to ``hw``; integer-valued images go through PIL bilinear
    like detectron2's uint8 path, other images through ``F.interpolate`` (bilinear)."""
    if tuple(image.shape[1:]) == hw:
        return image
    if torch.equal(image, image.round()) and image.min() >= 0 and image.max() <= 255:
        arr = image.byte().permute(1, 2, 0).cpu().numpy()
        resized = Image.fromarray(arr).resize((hw[1], hw[0]), Image.BILINEAR)
        return torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()
    return F.interpolate(image[None], size=hw, mode="bilinear", align_corners=False)[0]


def _state_dict_from(obj: Any, path: str) -> dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict):
        return obj["ema"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"]
    if isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"weights file {path!r}: expected a state dict or a checkpoint with 'model'/'ema'")


class DiffusionDetector:
    """A trained DiffusionDet plus its test-time resize, on one device.

    Args:
        model: the detector (put in eval mode).
        min_size, max_size: test resize (short side, max long side).
        device: where the model runs.
    """

    def __init__(self, model: DiffusionDet, *, min_size: int = 800, max_size: int = 1333,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.min_size, self.max_size = min_size, max_size

    @classmethod
    def from_config(
        cls, config_path: str | Path, weights: str | Path | None = None,
        device: str | torch.device = "cpu", overrides: Sequence[str] = (),
    ) -> DiffusionDetector:
        """Builds the detector of a ``configs/detect/*.yaml`` file and loads ``weights`` (a state dict
        or a training checkpoint; the EMA weights are used when present)."""
        from tasks.common.config import load_config
        from tasks.detect.config import DetectConfig

        cfg = load_config(DetectConfig, config_path, overrides)
        if weights is not None:
            cfg.model.backbone.pretrained = False  # the checkpoint holds the backbone too
            cfg.model.backbone.weights = None
        model = build_detector(cfg)
        if weights is not None:
            obj = torch.load(str(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(_state_dict_from(obj, str(weights)))
        else:
            logger.warning("DiffusionDetector built without weights: the head is untrained")
        return cls(model, min_size=cfg.data.min_size_test, max_size=cfg.data.max_size_test,
                   device=device)

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        steps: int | None = None,
        num_boxes: int | None = None,
        x_T: Tensor | None = None,
        generator: Generator = None,
        score_threshold: float = 0.0,
        **sampler_options: Any,
    ) -> list[dict[str, Tensor]]:
        """Detects objects in one image or a list of images.

        Args:
            images: file paths, HWC uint8 RGB arrays or (3, H, W) tensors (0..255), at their own size.
            steps, num_boxes, x_T, generator: sampler settings (see ``DiffusionDet.inference``);
                further options (``eta``, ``box_renewal`` ...) pass through ``sampler_options``.
            score_threshold: drop detections below this score.

        Returns:
            Per image ``{"boxes": (D, 4) xyxy in input pixels, "scores": (D,), "labels": (D,)}`` on CPU.
        """
        single = isinstance(images, (str, Path, np.ndarray, Tensor)) and not (
            isinstance(images, Tensor) and images.dim() == 4)
        items = [images] if single else list(images)
        originals = [load_image(im) for im in items]
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in originals]
        resized = [resize_image(im, resized_hw(*hw, self.min_size, self.max_size)).to(self.device)
                   for im, hw in zip(originals, sizes)]
        dets = self.model.inference(resized, steps=steps, num_boxes=num_boxes, x_T=x_T,
                                    generator=generator, output_sizes=sizes, **sampler_options)
        out = []
        for d in dets:
            keep = d["scores"] >= score_threshold
            out.append({"boxes": d["boxes_xyxy"][keep].cpu(), "scores": d["scores"][keep].cpu(),
                        "labels": d["labels"][keep].cpu()})
        return out
