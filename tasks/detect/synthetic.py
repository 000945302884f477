"""The embedded default detection dataset: procedurally generated shapes written in COCO format.

``python tasks/detect/train.py`` with no arguments trains on this dataset, so it must be fast to generate
(a few seconds), deterministic (fixed seed), and learnable yet honest: six shape categories with random
colours, textures (solid, stripes, checker, speckle), rotations and aspect ratios, on textured backgrounds
with unlabelled clutter lines; small, medium and large objects (COCO area ranges), truncation at the image
border, mutual occlusion, and a few empty images.

Boxes are the tight box of each object's **visible** pixels (as COCO boxes are), ``area`` is the visible
pixel count. A new object is only placed if every earlier object keeps at least ``spec.min_visible`` of its
pixels, so every visible shape is labelled. Difficulty is set by :class:`SyntheticSpec` (size buckets,
objects per image, occlusion, colour contrast); the embedded default's values live in
``configs/detect/default_synthetic.yaml`` (``data.synthetic_spec``).

Layout written under ``root``::

    root/train/000000.png ...      root/val/000000.png ...
    root/annotations/instances_train.json, instances_val.json
    root/DONE.json                 (generator version + parameters; a mismatch triggers regeneration)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: difficulty knobs in SyntheticSpec (min_contrast, size_probs, ...)
CATEGORIES: tuple[str, ...] = ("circle", "rectangle", "triangle", "star", "cross", "ring")
MIN_PIXELS = 12  # smallest labelled visible area (pixels)


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated dataset (all sizes in pixels)."""

    num_train: int = 2000
    num_val: int = 250
    min_image_size: int = 112
    max_image_size: int = 160
    max_objects: int = 10
    empty_fraction: float = 0.03
    seed: int = 20261122
    size_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)  # small / medium / large buckets
    small_min: float = 10.0  # smallest object diameter (pixels)
    large_max_factor: float = 1.5  # largest diameter = factor * min(image height, width)
    min_visible: float = 0.45  # fraction of an object that must stay visible under later ones
    min_contrast: float = 0.0  # least RGB distance between an object's colour and the background


def ensure_synthetic_dataset(
    root: str | os.PathLike, spec: SyntheticSpec | None = None
) -> dict[str, str]:
    """Generate the dataset under ``root`` unless an identical one is already there.

    Args:
        root: output folder.
        spec: generation parameters (default :class:`SyntheticSpec`).

    Returns:
        dict with ``train_json``, ``train_images``, ``val_json``, ``val_images`` paths.
    """
    spec = spec or SyntheticSpec()
    root = Path(root)
    paths = {
        "train_json": str(root / "annotations" / "instances_train.json"),
        "train_images": str(root / "train"),
        "val_json": str(root / "annotations" / "instances_val.json"),
        "val_images": str(root / "val"),
    }
    stamp = json.loads(
        json.dumps({"version": GENERATOR_VERSION, **asdict(spec)})
    )  # tuples -> lists
    done = root / "DONE.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return paths
    logger.info(
        "Generating the synthetic shapes dataset in %s (%d train + %d val images)",
        root,
        spec.num_train,
        spec.num_val,
    )
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(spec.seed)
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        coco = _generate_split(tmp / split, count, spec, rng)
        (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    (tmp / "DONE.json").write_text(json.dumps(stamp))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return paths


def _generate_split(
    folder: Path, count: int, spec: SyntheticSpec, rng: np.random.Generator
) -> dict:
    folder.mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        width, height = (
            int(v) for v in rng.integers(spec.min_image_size, spec.max_image_size + 1, size=2)
        )
        num = (
            0 if rng.random() < spec.empty_fraction else int(rng.integers(1, spec.max_objects + 1))
        )
        image, objects = render_image(rng, height, width, num, spec)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(image).save(folder / file_name, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category, box, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category + 1,
                    "bbox": box,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = [
        {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def render_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_objects: int,
    spec: SyntheticSpec | None = None,
) -> tuple[np.ndarray, list[tuple[int, list[float], float]]]:
    """Render one image (object sizes, occlusion and contrast from ``spec``).

    Returns:
        image (H, W, 3) uint8 RGB and a list of (category index, bbox ``[x, y, w, h]`` of the visible
        pixels in absolute pixels, visible area).
    """
    spec = spec or SyntheticSpec()
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int32)  # index of the object owning each pixel
    full_area: list[int] = []
    categories: list[int] = []
    buckets = sorted(
        rng.choice(3, size=num_objects, p=spec.size_probs), reverse=True
    )  # large first
    for bucket in buckets:
        for _attempt in range(10):
            category = int(rng.integers(len(CATEGORIES)))
            mask = _shape_mask(rng, category, height, width, int(bucket), spec)
            if mask.sum() < MIN_PIXELS * 2:
                continue
            trial = np.where(mask, len(full_area), owner)
            counts = np.bincount(trial[trial >= 0].ravel(), minlength=len(full_area) + 1)
            if all(counts[i] >= spec.min_visible * a for i, a in enumerate(full_area)):
                break
        else:
            continue
        _paint(rng, image, mask, spec.min_contrast)
        owner = trial
        full_area.append(int(mask.sum()))
        categories.append(category)
    _clutter(rng, image, owner)
    objects = []
    for i, category in enumerate(categories):
        ys, xs = np.nonzero(owner == i)
        if len(xs) < MIN_PIXELS:
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append(
            (category, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], float(len(xs)))
        )
    return image, objects


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def contrasting_colour(
    rng: np.random.Generator, under: np.ndarray, min_contrast: float, tries: int = 50
) -> np.ndarray:
    """A random RGB colour at least ``min_contrast`` (Euclidean, 0..255) from ``under``; redrawn at most
    ``tries`` times, then the farthest candidate is kept. ``min_contrast=0`` draws exactly one colour."""
    best = _random_colour(rng)
    for _ in range(tries):
        if np.linalg.norm(best - under) >= min_contrast:
            return best
        colour = _random_colour(rng)
        if np.linalg.norm(colour - under) > np.linalg.norm(best - under):
            best = colour
    return best


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    c0, c1 = _random_colour(rng) * 0.8, _random_colour(rng) * 0.8
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = c0 + (c1 - c0) * ramp[..., None]
    image += rng.normal(0, rng.uniform(3, 18), size=(height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def _size(
    rng: np.random.Generator, height: int, width: int, bucket: int, spec: SyntheticSpec
) -> float:
    """Object scale (circumscribed diameter) for bucket 0/1/2 aiming at COCO small / medium / large areas."""
    large_max = max(spec.large_max_factor * min(height, width), 120.0)
    low, high = ((spec.small_min, 36.0), (36.0, 100.0), (110.0, large_max))[bucket]
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _polygon(category: int, rng: np.random.Generator, radius: float) -> list[np.ndarray]:
    """Outline(s) of a shape centred at 0 as (P, 2) arrays, before rotation and anisotropic scaling."""
    if category in (0, 5):  # circle / ring
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], 1) * radius
        return [outer, outer * rng.uniform(0.45, 0.65)] if category == 5 else [outer]
    if category == 1:  # rectangle
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * radius * 0.8]
    if category == 2:  # triangle
        t = np.array([-0.5 * math.pi, math.pi / 6, 5 * math.pi / 6])
        return [np.stack([np.cos(t), np.sin(t)], 1) * radius]
    if category == 3:  # five-pointed star
        t = np.linspace(-0.5 * math.pi, 1.5 * math.pi, 10, endpoint=False)
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5)) * radius
        return [np.stack([np.cos(t) * r, np.sin(t) * r], 1)]
    arm = rng.uniform(0.28, 0.4)  # cross / plus sign
    pts = [
        (-arm, -1),
        (arm, -1),
        (arm, -arm),
        (1, -arm),
        (1, arm),
        (arm, arm),
        (arm, 1),
        (-arm, 1),
        (-arm, arm),
        (-1, arm),
        (-1, -arm),
        (-arm, -arm),
    ]
    return [np.array(pts, dtype=np.float64) * radius]


def _shape_mask(
    rng: np.random.Generator,
    category: int,
    height: int,
    width: int,
    bucket: int,
    spec: SyntheticSpec,
) -> np.ndarray:
    size = _size(rng, height, width, bucket, spec)
    aspect = (
        math.exp(rng.uniform(-0.4, 0.4))
        if category in (0, 1, 5)
        else math.exp(rng.uniform(-0.15, 0.15))
    )
    angle = rng.uniform(0, 2 * math.pi) if category != 0 else 0.0
    margin = 0.25 if bucket == 2 else 0.0  # keep large objects mostly inside the image
    centre = np.array(
        [rng.uniform(margin, 1 - margin) * width, rng.uniform(margin, 1 - margin) * height]
    )
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for i, outline in enumerate(_polygon(category, rng, size / 2)):
        pts = (outline * scale) @ rot.T + centre
        draw.polygon([tuple(p) for p in pts], fill=0 if i else 1)
    return np.asarray(canvas, dtype=bool)


def _paint(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, min_contrast: float = 0.0
) -> None:
    ys, xs = np.nonzero(mask)
    under = image[ys, xs].reshape(-1, 3).astype(np.float32).mean(0)  # what the object covers
    colour = contrasting_colour(rng, under, min_contrast)
    second = _random_colour(rng)
    kind = rng.choice(4, p=(0.4, 0.25, 0.15, 0.2))
    if kind == 0:  # solid
        pixels = np.broadcast_to(colour, (len(xs), 3)).copy()
    elif kind in (1, 2):  # stripes / checker
        period = rng.uniform(3, 9)
        angle = rng.uniform(0, math.pi)
        u = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        on = np.floor(u) % 2 == 0
        if kind == 2:
            v = (-xs * math.sin(angle) + ys * math.cos(angle)) / period
            on = on ^ (np.floor(v) % 2 == 0)
        pixels = np.where(on[:, None], colour, second)
    else:  # speckle
        pixels = colour + rng.normal(0, 30, size=(len(xs), 3))
    shade = rng.uniform(-25, 25)  # soft shading across the object
    pixels = pixels + shade * (xs - xs.mean())[:, None] / max(float(np.ptp(xs)), 1.0)
    image[ys, xs] = np.clip(pixels, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, image: np.ndarray, owner: np.ndarray) -> None:
    """Unlabelled thin lines on the background only (distractors)."""
    height, width = owner.shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 4))):
        pts = rng.uniform(0, 1, size=(2, 2)) * (width, height)
        draw.line([tuple(pts[0]), tuple(pts[1])], fill=1, width=int(rng.integers(1, 3)))
    lines = np.asarray(canvas, dtype=bool) & (owner < 0)
    image[lines] = _random_colour(rng).astype(np.uint8)
