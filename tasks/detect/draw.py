"""Draw a COCO results file over its images: ground truth in green, detections in red (``name score``).

    python -m tasks.detect.draw --gt val.json --dt outputs/eval/detections_steps4.json --images IMG_DIR \
        --output vis/ [--threshold 0.3] [--max-images 20] [--image-ids 3 7]

``--gt`` is the COCO (or VOC-converted) annotation file the detections refer to; image paths come from its
``file_name`` entries, relative to ``--images`` (paths leaving that folder are refused). ``--dt`` is a COCO
results list (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``), e.g. ``evaluate.py``'s
``detections_steps<S>.json``. Crowd ground truth is not drawn. Writes ``OUTPUT/<image file stem>.png``
(and with ``--grid PNG`` all of them as one picture).
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.detect.data_checks import read_json_object, safe_join
from tasks.detect.visualize import draw_gt_and_detections, image_grid, open_rgb, save_png

logger = logging.getLogger("diffvision.detect.draw")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gt", required=True, help="COCO annotation JSON")
    parser.add_argument("--dt", required=True, help="COCO results JSON (a list of detections)")
    parser.add_argument("--images", required=True, help="folder the GT file_name entries are in")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--threshold", type=float, default=0.3, help="minimum detection score")
    parser.add_argument("--max-images", type=int, default=None, help="draw at most this many")
    parser.add_argument("--image-ids", type=int, nargs="*", default=None, help="only these ids")
    parser.add_argument(
        "--grid", default=None, metavar="PNG", help="also write all drawings as one grid"
    )
    parser.add_argument("--grid-columns", type=int, default=2)
    return parser.parse_args(argv)


def _xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def load_results(path: str) -> list[dict]:
    """A COCO results list; ValueError naming the file and entry when it is not one."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a COCO results file: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of detections, got {type(data).__name__}")
    for i, det in enumerate(data):
        if not (
            isinstance(det, dict)
            and {"image_id", "category_id", "bbox", "score"} <= set(det)
            and isinstance(det["bbox"], list)
            and len(det["bbox"]) == 4
        ):
            raise ValueError(
                f"{path}: entry {i} is not a detection with image_id, category_id, "
                f"bbox [x, y, w, h] and score: {str(det)[:120]}"
            )
    return data


def draw_files(
    gt_path: str,
    dt_path: str,
    images: str,
    output: str,
    *,
    threshold: float = 0.3,
    max_images: int | None = None,
    image_ids: Sequence[int] | None = None,
) -> list[Path]:
    """Draws every selected GT image with its ground truth and detections; returns the written PNGs."""
    gt = read_json_object(gt_path)
    names = {c["id"]: str(c.get("name", c["id"])) for c in gt.get("categories", [])}
    gt_by_image, dt_by_image = defaultdict(list), defaultdict(list)
    for ann in gt.get("annotations", []):
        if not ann.get("iscrowd", 0):
            gt_by_image[ann["image_id"]].append(ann)
    for det in load_results(dt_path):
        if det["score"] >= threshold:
            dt_by_image[det["image_id"]].append(det)
    unknown = set(dt_by_image) - {im["id"] for im in gt["images"]}
    if unknown:
        raise ValueError(
            f"{dt_path}: detections for image ids not in {gt_path}: {sorted(unknown)[:10]}"
        )
    entries = [im for im in gt["images"] if image_ids is None or im["id"] in set(image_ids)]
    written = []
    for i, entry in enumerate(entries[:max_images]):
        path = safe_join(images, entry["file_name"], f"{gt_path}: images[{i}] (id={entry['id']})")
        gts, dts = gt_by_image[entry["id"]], dt_by_image[entry["id"]]
        drawn = draw_gt_and_detections(
            open_rgb(path, exif=False),  # annotation frame, as the data loader reads it
            np.array([_xyxy(a["bbox"]) for a in gts]).reshape(-1, 4),
            [names.get(a["category_id"], str(a["category_id"])) for a in gts],
            np.array([_xyxy(d["bbox"]) for d in dts]).reshape(-1, 4),
            np.array([d["score"] for d in dts]),
            [names.get(d["category_id"], str(d["category_id"])) for d in dts],
        )
        written.append(save_png(drawn, Path(output) / f"{Path(entry['file_name']).stem}.png"))
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    written = draw_files(
        args.gt,
        args.dt,
        args.images,
        args.output,
        threshold=args.threshold,
        max_images=args.max_images,
        image_ids=args.image_ids,
    )
    logger.info(
        "drew %d images into %s (GT green, detections red, score >= %.2f)",
        len(written),
        args.output,
        args.threshold,
    )
    if args.grid and written:
        save_png(
            image_grid([open_rgb(p, exif=False) for p in written], columns=args.grid_columns),
            args.grid,
        )
        logger.info("grid of %d drawings: %s", len(written), args.grid)
    return written


if __name__ == "__main__":
    main()
