"""Few-shot segmentation data: DDPM-Seg's folder layout and CamVid (SegNet 11-class version).

Images are returned as float (3, H, W) in [-1, 1] (DDPM-Seg's ``ToTensor`` then ``2x - 1``),
labels as int64 (H, W). Resizing: bilinear for images, nearest for labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from tasks.common.camvid import read_pair_list

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class Pair:
    """One labelled image on disk."""

    image: Path
    label: Path


def camvid_pairs(root: str | Path, split: str) -> list[Pair]:
    """Pairs listed in ``<root>/<split>.txt`` (lines ``image label``, paths relative to root)."""
    return [Pair(image, label) for _, image, label in read_pair_list(root, split)]


def ddpmseg_pairs(root: str | Path, limit: int | None = None) -> list[Pair]:
    """DDPM-Seg layout: image files with a same-stem ``.npy`` mask, sorted by name; first
    ``limit``."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: dataset folder not found")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = []
    for image in images:
        mask = image.with_suffix(".npy")
        if not mask.exists():
            raise ValueError(f"{image}: no mask {mask.name} next to it")
        pairs.append(Pair(image, mask))
    if not pairs:
        raise ValueError(f"{root}: no images with .npy masks")
    return pairs[:limit] if limit else pairs


def open_rgb(path: Path) -> Image.Image:
    """The image file as a loaded RGB PIL image; an unreadable or truncated file is a ValueError
    naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot read image: {err}") from None


def read_label(path: Path) -> np.ndarray:
    """(H, W) integer label map from a ``.npy`` or single-channel image file."""
    try:
        array = np.load(path) if path.suffix == ".npy" else np.asarray(Image.open(path))
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot read label map: {err}") from None
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError(
            f"{path}: label map holds fractional values (float labels must be whole numbers)"
        )
    if array.dtype.kind not in "iuf" and array.dtype != bool:
        raise ValueError(f"{path}: label map has dtype {array.dtype}, expected integers")
    if array.ndim != 2:
        raise ValueError(f"{path}: label map must be 2-D, got shape {array.shape}")
    return array.astype(np.int64)


def load_pair(pair: Pair, size: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
    """Image (3, H, W) in [-1, 1] and label (H, W) int64, resized to ``size`` = (H, W) if given."""
    image = open_rgb(pair.image)
    label = read_label(pair.label)
    if label.shape != (image.height, image.width):
        raise ValueError(
            f"{pair.label}: label {label.shape} does not match image {(image.height, image.width)}"
        )
    if size is not None and size != (image.height, image.width):
        label = np.asarray(
            Image.fromarray(label.astype(np.int32)).resize((size[1], size[0]), Image.NEAREST)
        )
    return pil_to_unit(image, size), torch.from_numpy(np.asarray(label, dtype=np.int64))


def pil_to_unit(image: Image.Image, size: tuple[int, int] | None = None) -> Tensor:
    """An RGB PIL image as (3, H, W) float in [-1, 1], resized (bilinear) to ``size`` = (H, W) if
    given."""
    if size is not None and size != (image.height, image.width):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    return pixels.contiguous()


def load_split(
    pairs: list[Pair], size: tuple[int, int] | None
) -> tuple[list[Tensor], list[Tensor]]:
    """All images and labels of ``pairs``."""
    images, labels = [], []
    for pair in pairs:
        image, label = load_pair(pair, size)
        images.append(image)
        labels.append(label)
    return images, labels


def image_folder(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted): unlabelled data for diffusion training."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_images(files: list[Path], size: tuple[int, int]) -> Tensor:
    """(N, 3, H, W) uint8 images resized (bilinear) to ``size`` = (H, W)."""
    out = torch.empty(len(files), 3, *size, dtype=torch.uint8)
    for i, path in enumerate(files):
        image = open_rgb(path).resize((size[1], size[0]), Image.BILINEAR)
        out[i] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return out


def colorize(
    label: Tensor, palette: tuple[tuple[int, int, int], ...], ignore_index: int
) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colours; ignored / unknown labels are black."""
    table = np.zeros((max(len(palette), ignore_index + 1, int(label.max()) + 1), 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if 0 <= ignore_index < len(table):
        table[ignore_index] = 0
    return table[label.clamp(min=0).numpy()]


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """A fixed, well-spread palette for datasets without their own colours."""
    rng = np.random.default_rng(12345)
    return tuple(tuple(int(v) for v in rng.integers(32, 256, 3)) for _ in range(num_classes))


def overlay(image: Tensor, label_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [-1, 1] image (3, H, W) with a colour map (H, W, 3) -> uint8 (H, W, 3)."""
    rgb = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
    return (rgb * (1 - alpha) + label_rgb * alpha).astype(np.uint8)
