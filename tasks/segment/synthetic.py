"""The embedded default segmentation set: generated shapes whose pixels are their labels.

Four classes: background, disc, box, triangle. A shape's class is its geometry, never its colour: every shape
and every background gets random colours, backgrounds carry gradients, stripes and speckle, shapes overlap and
may leave the frame, and unlabelled clutter strokes are drawn over the background. Written in the ``folder``
layout (``root/<split>/images/*.png`` + ``root/<split>/masks/*.png``) with a stamp file; generation is
deterministic (seeded) and takes a few seconds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "ensure_synthetic_segmentation", "render"]

logger = logging.getLogger("diffvision.segment.synthetic")
GENERATOR_VERSION = 1
CLASS_NAMES: tuple[str, ...] = ("background", "disc", "box", "triangle")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1.5) / 3.0
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    if rng.random() < 0.5:  # stripes
        period = rng.uniform(4, 12)
        img += (
            25
            * np.sign(np.sin((xx * np.cos(angle + 1) + yy * np.sin(angle + 1)) * size / period))[
                ..., None
            ]
        )
    img += rng.normal(0, rng.uniform(2, 12), img.shape)
    return img


def _shape_polygon(rng: np.random.Generator, cls: int, size: int) -> list[tuple[float, float]]:
    r = rng.uniform(0.08, 0.25) * size
    cx, cy = rng.uniform(-0.05, 1.05, 2) * size
    rot = rng.uniform(0, 2 * math.pi)
    if cls == 1:  # disc (ellipse, mild aspect)
        ax, ay = r, r * rng.uniform(0.7, 1.0)
        pts = [
            (ax * math.cos(a), ay * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 32, endpoint=False)
        ]
    elif cls == 2:  # box
        ax, ay = r, r * rng.uniform(0.5, 1.0)
        pts = [(-ax, -ay), (ax, -ay), (ax, ay), (-ax, ay)]
    else:  # triangle
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) uint8 class mask."""
    image = Image.fromarray(_background(rng, size).clip(0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    draw_img, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(3, 7))):  # clutter strokes: not labelled
        xy = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        draw_img.line(
            xy, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 3))
        )
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        poly = _shape_polygon(rng, cls, size)
        draw_img.polygon(poly, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw_mask.polygon(poly, fill=cls)
    arr = np.asarray(image).astype(np.float32) + rng.normal(0, 4, (size, size, 3))
    return arr.clip(0, 255).astype(np.uint8), np.asarray(mask)


def ensure_synthetic_segmentation(
    root: str | os.PathLike, *, num_train: int, num_val: int, size: int, seed: int
) -> Path:
    """Generate the set under ``root`` unless the same one is there; returns ``root``."""
    root = Path(root)
    stamp = {
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "size": size,
        "seed": seed,
    }
    done = root / "DONE.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return root
    logger.info("generating the synthetic segmentation set in %s", root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        (tmp / split / "images").mkdir(parents=True)
        (tmp / split / "masks").mkdir(parents=True)
        for i in range(count):
            image, mask = render(rng, size)
            Image.fromarray(image).save(tmp / split / "images" / f"{i:05d}.png", compress_level=1)
            Image.fromarray(mask).save(tmp / split / "masks" / f"{i:05d}.png", compress_level=1)
    (tmp / "DONE.json").write_text(json.dumps(stamp))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root
