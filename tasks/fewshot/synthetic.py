"""The embedded default few-shot dataset: generated scenes whose every pixel's class is known.

``python tasks/fewshot/train.py`` with no arguments runs on this data, so it is generated in memory
in well under a second, deterministically (fixed seed), with no files. Each image holds 1-3
flat-coloured shapes (disc, square, triangle) on a textured background (a colour gradient plus
per-pixel noise). Colours are drawn at random for every object and background, so colour alone says
little about the class: what separates the classes is texture (flat objects on a noisy background)
and shape, the local context that diffusion features carry and raw RGB does not. Later shapes cover
earlier ones; labels are the visible owner of each pixel.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "square", "triangle")
SYNTHETIC_PALETTE: tuple[tuple[int, int, int], ...] = (
    (40, 40, 40),
    (230, 80, 60),
    (60, 170, 230),
    (240, 210, 60),
)


def _shape_mask(rng: np.random.Generator, kind: int, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of one disc (1), square (2) or triangle (3) of random size, angle and
    place."""
    radius = rng.uniform(0.16, 0.3) * min(height, width)
    cx, cy = (
        rng.uniform(radius * 0.5, width - radius * 0.5),
        rng.uniform(radius * 0.5, height - radius * 0.5),
    )
    angle = rng.uniform(0, 2 * math.pi)
    if kind == 1:
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    elif kind == 2:
        t = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
    else:
        t = np.array([-0.5, 1 / 6, 5 / 6]) * math.pi
    pts = [(cx + radius * math.cos(a + angle), cy + radius * math.sin(a + angle)) for a in t]
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(pts, fill=1)
    return np.asarray(canvas, dtype=bool)


def render_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (H, W, 3) uint8 RGB and labels (H, W) int64 in 0..3 (index into
    SYNTHETIC_CLASSES)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = c0 + (c1 - c0) * ramp[..., None] + rng.normal(0, 28, size=(height, width, 3))
    labels = np.zeros((height, width), dtype=np.int64)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, 4))
        mask = _shape_mask(rng, kind, height, width)
        colour = rng.uniform(0, 255, 3)
        shade = rng.uniform(-20, 20) * (xx[mask] / width - 0.5)
        image[mask] = colour + shade[:, None]
        labels[mask] = kind
    return np.clip(image, 0, 255).round().astype(np.uint8), labels


def synthetic_split(n: int, *, size: tuple[int, int], seed: int) -> tuple[Tensor, Tensor]:
    """``n`` scenes of ``size`` = (H, W): images (n, 3, H, W) uint8 and labels (n, H, W) int64."""
    if n <= 0:
        raise ValueError(f"synthetic split size must be positive, got {n}")
    rng = np.random.default_rng(seed)
    scenes = [render_scene(rng, *size) for _ in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.stack([s[1] for s in scenes]))
