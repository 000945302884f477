"""Drawing detections on images (PIL): ``evaluate.py --vis``, ``demo.py`` (detections, denoising strips)
and ``draw.py`` (ground truth and a COCO results file in two colours). Every PNG is written atomically."""

from __future__ import annotations

import colorsys
import glob
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch import Tensor


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour for a class index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: Image.Image | np.ndarray,
    boxes: Tensor | np.ndarray,
    scores: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    score_threshold: float = 0.0,
    line_width: int = 2,
) -> Image.Image:
    """Returns a copy of ``image`` with boxes (xyxy, image pixels) and ``name score`` captions drawn.

    Args:
        image: PIL image or HWC uint8 RGB array.
        boxes: (D, 4) ``boxes_xyxy``. scores: (D,). labels: (D,) contiguous class indices.
        class_names: names indexed by label (default: the label number).
        score_threshold: skip detections scoring below this.
    """
    canvas = (
        (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("RGB").copy()
    )
    draw = ImageDraw.Draw(canvas)
    boxes, scores, labels = (
        np.asarray(x.cpu() if isinstance(x, Tensor) else x) for x in (boxes, scores, labels)
    )
    for box, score, label in sorted(zip(boxes, scores, labels), key=lambda x: float(x[1])):
        if score < score_threshold:
            continue
        color = class_color(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line_width)
        name = class_names[int(label)] if class_names is not None else str(int(label))
        text = f"{name} {float(score):.2f}"
        tx, ty = x1, max(0.0, y1 - 11)
        tw = draw.textlength(text)
        draw.rectangle([tx, ty, tx + tw + 4, ty + 11], fill=color)
        draw.text((tx + 2, ty), text, fill=(0, 0, 0))
    return canvas


GT_COLOR = (40, 220, 60)  # ground truth: green
DT_COLOR = (255, 60, 40)  # detections: red
NOISE_COLOR = (150, 150, 150)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def open_rgb(path: str | Path, *, exif: bool = True) -> Image.Image:
    """An image file as RGB, with its EXIF orientation applied (what a photo viewer shows) when ``exif``.
    Annotation files are in the frame the data loader reads (``exif=False``, as ``data.py``)."""
    with Image.open(path) as im:
        return (ImageOps.exif_transpose(im) if exif else im).convert("RGB")


def expand_inputs(specs: Sequence[str]) -> list[Path]:
    """Image files from paths, folders (their image files, sorted) and glob patterns; ValueError when a
    spec matches nothing."""
    files: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not found:
            raise ValueError(f"--input {spec!r}: no image files found")
        files += found
    return files


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Writes ``image`` as PNG atomically."""
    from tasks.common.checkpoint import atomic_write_png

    return atomic_write_png(path, image)


def _caption(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, color: tuple) -> None:
    ty = max(0.0, y - 11)
    draw.rectangle([x, ty, x + draw.textlength(text) + 4, ty + 11], fill=color)
    draw.text((x + 2, ty), text, fill=(0, 0, 0))


def draw_gt_and_detections(
    image: Image.Image,
    gt_boxes_xyxy: np.ndarray,
    gt_labels: Sequence[str],
    dt_boxes_xyxy: np.ndarray,
    dt_scores: np.ndarray,
    dt_labels: Sequence[str],
    *,
    line_width: int = 2,
) -> Image.Image:
    """Ground truth (green, class name) and detections (red, ``name score``) on a copy of ``image``.
    Boxes are (M, 4) / (D, 4) ``boxes_xyxy`` in the image's pixels."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for box in np.asarray(gt_boxes_xyxy).reshape(-1, 4):
        draw.rectangle([float(v) for v in box], outline=GT_COLOR, width=line_width)
    for box, score, name in sorted(
        zip(np.asarray(dt_boxes_xyxy).reshape(-1, 4), dt_scores, dt_labels),
        key=lambda d: float(d[1]),
    ):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=DT_COLOR, width=line_width)
        _caption(draw, x1, y1, f"{name} {float(score):.2f}", DT_COLOR)
    for box, name in zip(np.asarray(gt_boxes_xyxy).reshape(-1, 4), gt_labels):
        _caption(draw, float(box[0]), float(box[3]) + 11, str(name), GT_COLOR)
    return canvas


def draw_denoising_strip(
    image: Image.Image,
    steps_boxes_xyxy: Sequence[np.ndarray],
    steps_scores: Sequence[np.ndarray],
    steps_labels: Sequence[np.ndarray],
    class_names: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    max_noise_boxes: int = 100,
    panel_height: int = 320,
) -> Image.Image:
    """One panel per sampling state, side by side: panel 0 the initial noise boxes ``x_T`` (grey, at most
    ``max_noise_boxes``), then the predicted boxes after each step: those scoring >= ``threshold`` in
    their class colour with ``name score``, the rest in thin grey (at most ``max_noise_boxes``).

    Args:
        steps_boxes_xyxy: per state (N, 4) ``boxes_xyxy`` in the image's pixels (state 0 = x_T).
        steps_scores / steps_labels: per state (N,) max class score and its label (ignored for state 0).
    """
    scale = panel_height / image.height
    size = (max(1, round(image.width * scale)), panel_height)
    panels = []
    for i, (boxes, scores, labels) in enumerate(zip(steps_boxes_xyxy, steps_scores, steps_labels)):
        panel = image.convert("RGB").resize(size, Image.BILINEAR)
        draw = ImageDraw.Draw(panel)
        boxes = np.asarray(boxes, dtype=np.float64) * scale
        scores = np.asarray(scores)
        strong = scores >= threshold if i > 0 else np.zeros(len(boxes), dtype=bool)
        for box in boxes[~strong][np.argsort(-scores[~strong])][:max_noise_boxes]:
            draw.rectangle([float(v) for v in box], outline=NOISE_COLOR, width=1)
        for box, score, label in zip(boxes[strong], scores[strong], np.asarray(labels)[strong]):
            color = class_color(int(label))
            draw.rectangle([float(v) for v in box], outline=color, width=2)
            name = class_names[int(label)] if class_names is not None else str(int(label))
            _caption(draw, float(box[0]), float(box[1]), f"{name} {float(score):.2f}", color)
        title = "x_T (noise)" if i == 0 else f"after step {i}"
        draw.rectangle([0, 0, draw.textlength(title) + 6, 12], fill=(0, 0, 0))
        draw.text((3, 0), title, fill=(255, 255, 255))
        panels.append(panel)
    strip = Image.new(
        "RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panel_height), (255, 255, 255)
    )
    x = 0
    for panel in panels:
        strip.paste(panel, (x, 0))
        x += panel.width + 4
    return strip


def image_grid(images: Sequence[Image.Image], *, columns: int = 2, width: int = 480) -> Image.Image:
    """Images scaled to ``width`` px wide, laid out row by row in ``columns`` columns (white gaps)."""
    scaled = [
        im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR)
        for im in images
    ]
    rows = [scaled[i : i + columns] for i in range(0, len(scaled), columns)]
    heights = [max(im.height for im in row) for row in rows]
    grid = Image.new(
        "RGB",
        (columns * width + 4 * (columns - 1), sum(heights) + 4 * (len(rows) - 1)),
        (255, 255, 255),
    )
    y = 0
    for row, h in zip(rows, heights):
        for j, im in enumerate(row):
            grid.paste(im, (j * (width + 4), y))
        y += h + 4
    return grid


def resize_for(detector: Any, image: np.ndarray) -> torch.Tensor:
    """HWC uint8 RGB array -> (3, h, w) float 0..255 tensor at a ``DiffusionDetector``'s test size, as
    its ``predict`` resizes."""
    from tasks.detect.predictor import load_image, resize_image
    from tasks.detect.transforms import resized_shape

    tensor = load_image(image)
    hw = resized_shape(image.shape[0], image.shape[1], detector.min_size, detector.max_size)
    return resize_image(tensor, hw).to(detector.device)


@torch.no_grad()
def denoising_states(
    model: Any,
    image: torch.Tensor,
    opts: Any,
    num_boxes: int,
    generator: torch.Generator,
    out_hw: tuple[int, int],
) -> tuple[list, list, list]:
    """Per sampling state (x_T, then every step) the (N, 4) boxes in ``out_hw`` pixels, max scores and
    labels, from the model's sampler (the same noise as a plain detection run with this generator)."""
    from tasks.detect.box_codec import diffusion_to_xyxy

    batch, whwh = model.preprocess([image])
    features = model.extract_features(batch)
    x_T = torch.randn((1, num_boxes, 4), generator=generator).to(batch.device)
    steps = model.sample(features, whwh, x_T, opts, [generator])
    factor = torch.tensor([out_hw[1] / image.shape[2], out_hw[0] / image.shape[1]] * 2)
    boxes = [diffusion_to_xyxy(x_T, whwh, model.scale)[0].cpu() * factor]
    scores, labels = [torch.zeros(num_boxes)], [torch.zeros(num_boxes, dtype=torch.long)]
    for step in steps:
        best, label = step.logits[0].sigmoid().max(-1)
        boxes.append(step.boxes_xyxy[0].cpu() * factor)
        scores.append(best.cpu())
        labels.append(label.cpu())
    return [b.numpy() for b in boxes], [s.numpy() for s in scores], [lab.numpy() for lab in labels]
