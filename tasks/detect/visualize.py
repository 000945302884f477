"""Drawing detections on images (PIL), for users and ``evaluate.py --vis``."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
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
    canvas = (Image.fromarray(image) if isinstance(image, np.ndarray) else image).convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    boxes, scores, labels = (np.asarray(x.cpu() if isinstance(x, Tensor) else x) for x in (boxes, scores, labels))
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
