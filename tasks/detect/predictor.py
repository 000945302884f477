"""User-facing detection API.

Example::

    from tasks.detect import DiffusionDetector

    detector = DiffusionDetector.from_config("configs/detect/diffdet_coco_r50.yaml",
                                             weights="diffdet_coco_res50.pth", device="cuda")
    out = detector.predict(["street.jpg"], opts=detector.options(steps=4))[0]
    out["boxes"], out["scores"], out["labels"]   # xyxy in the input image's pixels

Weights are checked when the detector is built (NaN/Inf tensors raise ``FloatingPointError`` naming them; the
loader refuses such files too). Inputs are checked up front; each bad input raises :class:`ImageInputError` (a ``ValueError``) naming the image:
an empty image (0 px on a side), a non-finite pixel, a floating-point image whose values lie in [0, 1] (the
detector expects 0..255: multiply by 255 or pass uint8), values outside [0, 255], a wrong layout. Extremely thin
images (e.g. 600x2) are resized like any other (the short side to ``min_size``, the long side capped at
``max_size``, never below 1 px) and padded to the backbone's stride, so they run and return what they find.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from diffusion_core import Generators
from tasks.detect.box_denoising import SamplerOptions
from tasks.detect.model import DiffusionDet, build_detector
from tasks.detect.transforms import resized_shape

logger = logging.getLogger(__name__)

ImageInput = str | Path | np.ndarray | Tensor


class ImageInputError(ValueError):
    """An input image the detector cannot use; the message names the image and the problem."""


def _check_pixels(image: Tensor, name: str, floating: bool) -> None:
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ImageInputError(f"{name} is empty ({image.shape[1]}x{image.shape[2]} px)")
    if floating and not bool(torch.isfinite(image).all()):
        raise ImageInputError(f"{name} holds NaN or Inf pixel values")
    low, high = (float(v) for v in torch.aminmax(image.float()))
    if low < 0 or high > 255:
        raise ImageInputError(
            f"{name} has values in [{low:g}, {high:g}]; the detector expects RGB in 0..255"
        )
    if floating and 0 < high <= 1.0:
        raise ImageInputError(
            f"{name} is floating point with values in [{low:g}, {high:g}]: it looks like a [0, 1] image, but the "
            "detector expects 0..255 (multiply by 255, or pass a uint8 array)"
        )


def load_image(image: ImageInput, *, name: str = "image") -> Tensor:
    """Returns a (3, H, W) float RGB 0..255 tensor from a path (EXIF orientation applied), an HWC RGB array
    (uint8, or float in 0..255) or a (3, H, W) tensor (0..255).

    Raises:
        ImageInputError: on an unreadable file or a bad image (see the module docstring), naming ``name``.
    """
    if isinstance(image, (str, Path)):
        name = f"{name} ({str(image)!r})"
        try:
            with Image.open(image) as im:
                image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except OSError as exc:
            raise ImageInputError(f"{name} cannot be read: {exc}") from exc
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageInputError(f"{name}: numpy images must be HWC RGB, got shape {image.shape}")
        if not (
            np.issubdtype(image.dtype, np.number)
            and not np.issubdtype(image.dtype, np.complexfloating)
        ):
            raise ImageInputError(f"{name}: unsupported array dtype {image.dtype}")
        floating = bool(np.issubdtype(image.dtype, np.floating))
        tensor = torch.from_numpy(np.array(image, dtype=np.float32, copy=True)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ImageInputError(
                f"{name}: tensor images must be (3, H, W), got shape {tuple(image.shape)}"
            )
        floating, tensor = image.is_floating_point(), image
    else:
        raise ImageInputError(
            f"{name}: unsupported type {type(image).__name__}; give a path, HWC array or CHW tensor"
        )
    _check_pixels(tensor, name, floating)
    return tensor.float()


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


def _check_finite_weights(model: torch.nn.Module) -> None:
    """NaN/Inf weights give zero detections silently (NaN never beats a threshold): refuse them by name."""
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        shown = ", ".join(bad[:10]) + (f" ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        raise FloatingPointError(
            f"the detector's weights hold NaN/Inf in {len(bad)} tensors: {shown}"
        )


class DiffusionDetector:
    """A trained DiffusionDet plus its test-time resize, on one device.

    Args:
        model: the detector (put in eval mode).
        min_size, max_size: test resize (short side, max long side).
        device: where the model runs.
        class_names: optional names of the contiguous labels (from the checkpoint's label map).
    """

    def __init__(
        self,
        model: DiffusionDet,
        *,
        min_size: int = 800,
        max_size: int = 1333,
        device: str | torch.device = "cpu",
        class_names: Sequence[str] | None = None,
    ) -> None:
        _check_finite_weights(model)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.min_size, self.max_size = min_size, max_size
        self.class_names = list(class_names) if class_names is not None else None

    @classmethod
    def from_config(
        cls,
        config_path: str | Path,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        overrides: Sequence[str] = (),
        *,
        allow_class_change: bool = False,
    ) -> DiffusionDetector:
        """Builds the detector of a ``configs/detect/*.yaml`` file and loads ``weights`` with
        :func:`tasks.detect.weights.load_detector_weights`: an official DiffusionDet model-zoo file as it is
        (``.pth``, or a detectron2 ``.pkl``), our training checkpoint (EMA weights when present) or a state dict."""
        from tasks.common.config import load_config
        from tasks.detect.config import DetectConfig
        from tasks.detect.weights import load_detector_weights

        cfg = load_config(DetectConfig, config_path, overrides)
        if weights is not None:
            cfg.model.backbone.pretrained = False  # the checkpoint holds the backbone too
            cfg.model.backbone.weights = None
        model = build_detector(cfg)
        names = None
        if weights is not None:
            loaded = load_detector_weights(model, weights, allow_class_change=allow_class_change)
            names = loaded.class_names
        else:
            logger.warning("DiffusionDetector built without weights: the head is untrained")
        return cls(
            model,
            min_size=cfg.data.min_size_test,
            max_size=cfg.data.max_size_test,
            device=device,
            class_names=names,
        )

    def options(self, **changes: Any) -> SamplerOptions:
        """The model's configured sampler options with ``changes``, e.g. ``detector.options(steps=4)``."""
        return dataclasses.replace(self.model.sampler_options, **changes)

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        opts: SamplerOptions | None = None,
        num_boxes: int | None = None,
        x_T: Tensor | None = None,
        generator: Generators = None,
        score_threshold: float = 0.0,
    ) -> list[dict[str, Tensor]]:
        """Detects objects in one image or a list of images (run as one batch).

        Args:
            images: file paths, HWC RGB arrays (uint8, or float in 0..255) or (3, H, W) tensors (0..255), at
                their own size.
            opts, num_boxes, x_T, generator: sampler settings (see ``DiffusionDet.inference``); pass one generator
                per image to make each image's result independent of the batch. Images run in batches of equal
                padded size (a result never depends on the other images' sizes).
            score_threshold: drop detections below this score.

        Returns:
            Per image ``{"boxes": (D, 4) xyxy in input pixels, "scores": (D,), "labels": (D,)}`` on CPU.

        Raises:
            ImageInputError: a bad image (named by its index, and path when given).
        """
        single = isinstance(images, (str, Path, np.ndarray, Tensor)) and not (
            isinstance(images, Tensor) and images.dim() == 4
        )
        items = [images] if single else list(images)
        if not items:
            raise ImageInputError("predict() got an empty list of images")
        originals = [load_image(im, name=f"image {i}") for i, im in enumerate(items)]
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in originals]
        resized = [
            resize_image(im, resized_shape(*hw, self.min_size, self.max_size)).to(self.device)
            for im, hw in zip(originals, sizes)
        ]
        dets = self._infer_by_padded_size(resized, sizes, opts, num_boxes, x_T, generator)
        out = []
        for d in dets:
            keep = d["scores"] >= score_threshold
            out.append(
                {
                    "boxes": d["boxes_xyxy"][keep].cpu(),
                    "scores": d["scores"][keep].cpu(),
                    "labels": d["labels"][keep].cpu(),
                }
            )
        return out

    def _infer_by_padded_size(
        self,
        images: list[Tensor],
        sizes: list[tuple[int, int]],
        opts: SamplerOptions | None,
        num_boxes: int | None,
        x_T: Tensor | None,
        generator: Generators,
    ) -> list[dict[str, Tensor]]:
        """Runs ``model.inference`` once per group of images with the same padded size, in input order.

        Zero padding to a larger batch size changes the backbone features near the image border, so an image is
        batched only with images of its own padded size: a result never depends on the other images of the call.
        """
        if x_T is not None and (x_T.dim() != 3 or x_T.shape[0] != len(images)):
            raise ValueError(f"x_T must have shape ({len(images)}, N, 4), got {tuple(x_T.shape)}")
        per_image = isinstance(generator, (list, tuple))
        if per_image and len(generator) != len(images):
            raise ValueError(f"got {len(generator)} generators for {len(images)} images")
        div = max(self.model.size_divisibility, 1)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault((-(-im.shape[1] // div), -(-im.shape[2] // div)), []).append(i)
        dets: list[dict[str, Tensor] | None] = [None] * len(images)
        for idx in groups.values():
            out = self.model.inference(
                [images[i] for i in idx],
                opts=opts,
                num_boxes=num_boxes,
                x_T=None if x_T is None else x_T[idx],
                output_sizes=[sizes[i] for i in idx],
                generator=[generator[i] for i in idx] if per_image else generator,
            )
            for i, d in zip(idx, out):
                dets[i] = d
        return dets
