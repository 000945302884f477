"""Augmentation and evaluation resizing for segmentation: numpy HWC uint8 in, torch tensors out.

Images become float (3, H, W) in [-1, 1]; labels stay int64 (H, W). Resizing is bilinear (antialiased when
shrinking) for images and nearest for labels; padding is 0 (mid grey) for images and ``ignore_index`` for labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["augment", "eval_transform"]


def _to_tensor(image: np.ndarray) -> Tensor:
    return (
        torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    )


def _resize(img: Tensor, label: Tensor | None, hw: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    if tuple(img.shape[-2:]) == hw:
        return img, label
    down = hw[0] < img.shape[-2]
    img = F.interpolate(img[None], size=hw, mode="bilinear", align_corners=False, antialias=down)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=hw, mode="nearest")[0, 0].long()
    return img, label


def augment(
    image: np.ndarray,
    label: np.ndarray | None,
    *,
    rng: np.random.Generator,
    resize: float,
    scale_range: tuple[float, float],
    crop_hw: tuple[int, int],
    flip: bool,
    ignore_index: int,
) -> tuple[Tensor, Tensor | None]:
    """Random scale (``resize`` x U(scale_range)), random crop ``crop_hw`` (padding: image 0, label ignore),
    random horizontal flip. Returns image (3, h, w) in [-1, 1] and label (h, w) int64 (or None)."""
    img = _to_tensor(image)
    lab = torch.from_numpy(label) if label is not None else None
    s = resize * float(rng.uniform(*scale_range))
    h, w = max(1, round(img.shape[1] * s)), max(1, round(img.shape[2] * s))
    img, lab = _resize(img, lab, (h, w))
    ch, cw = crop_hw
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
        if lab is not None:
            lab = F.pad(lab, (0, pw, 0, ph), value=ignore_index)
    y = int(rng.integers(0, img.shape[1] - ch + 1))
    x = int(rng.integers(0, img.shape[2] - cw + 1))
    img = img[:, y : y + ch, x : x + cw]
    lab = lab[y : y + ch, x : x + cw] if lab is not None else None
    if flip and rng.random() < 0.5:
        img = img.flip(-1)
        lab = lab.flip(-1) if lab is not None else None
    return img.contiguous(), (lab.contiguous() if lab is not None else None)


def eval_transform(image: np.ndarray, *, resize: float) -> tuple[Tensor, tuple[int, int]]:
    """Scale by ``resize`` and pad bottom/right to multiples of 32: image (3, H32, W32), valid (h, w)."""
    img = _to_tensor(image)
    h, w = max(1, round(img.shape[1] * resize)), max(1, round(img.shape[2] * resize))
    img, _ = _resize(img, None, (h, w))
    ph, pw = -h % 32, -w % 32
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
    return img.contiguous(), (h, w)
