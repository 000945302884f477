"""Draw DiffusionDet detections on your images.

    python tasks/detect/demo.py --config configs/detect/bccd.yaml --weights outputs/detect_bccd/model_final.pt \
        --input photos/ --output demo_out [--threshold 0.5] [--steps 4] [--num-boxes 300] [--batch-size 4]
    python tasks/detect/demo.py ... --input 'data/**/*.jpg' --output demo_out --show-denoising

``--input`` takes image files, folders and glob patterns (several allowed). Each image is read with its EXIF
orientation applied and written as ``OUT_DIR/<name>.png`` with boxes, class names and scores; ``--threshold``
applies to every output (drawings, ``detections.json`` and the denoising strips). Images run in batches of
``--batch-size``; each image's noise comes from its own generator (``--seed`` + its index), so results do not
depend on the batch size. ``--show-denoising`` also writes ``OUT_DIR/<name>_denoising.png``: the initial
noise boxes, then the boxes after every sampling step. Class names come from the checkpoint's label map
(``model_final.pt``), else the label numbers. Any config field can be overridden (``model.diffusion.eta=0``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.common.checkpoint import atomic_write_text
from tasks.detect.predictor import DiffusionDetector
from tasks.detect.visualize import (
    denoising_states,
    draw_denoising_strip,
    draw_detections,
    expand_inputs,
    open_rgb,
    resize_for,
    save_png,
)

logger = logging.getLogger("diffvision.detect.demo")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the model's configs/detect/*.yaml")
    parser.add_argument(
        "--weights", default=None, help="model_final.pt / checkpoint (omit: untrained)"
    )
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    parser.add_argument("--output", required=True, help="folder for the drawn PNGs")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score (default 0.5)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: config)")
    parser.add_argument(
        "--num-boxes", type=int, default=None, help="noise boxes N (default: config)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--show-denoising", action="store_true", help="also save per-step strips")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (image i uses seed + i)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--batch-size and --steps must be >= 1")
    return args


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    files = expand_inputs(args.input)
    detector = DiffusionDetector.from_config(args.config, args.weights, args.device, args.overrides)
    names = detector.class_names
    opts = detector.options(**({} if args.steps is None else {"steps": args.steps}))
    num_boxes = args.num_boxes or detector.model.num_proposals
    out = Path(args.output)
    results = []
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        images = [open_rgb(f) for f in chunk]  # EXIF orientation applied
        arrays = [np.asarray(im, dtype=np.uint8) for im in images]
        gens = [torch.Generator().manual_seed(args.seed + start + i) for i in range(len(chunk))]
        dets = detector.predict(
            arrays, opts=opts, num_boxes=num_boxes, generator=gens, score_threshold=args.threshold
        )
        for i, (path, image, det) in enumerate(zip(chunk, images, dets)):
            boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
            save_png(draw_detections(image, boxes, scores, labels, names), out / f"{path.stem}.png")
            results.append(
                {
                    "file": str(path),
                    "boxes_xyxy": boxes.tolist(),
                    "scores": scores.tolist(),
                    "labels": labels.tolist(),
                    "names": [names[j] if names else str(j) for j in labels.tolist()],
                }
            )
            if args.show_denoising:
                gen = torch.Generator().manual_seed(args.seed + start + i)
                states = denoising_states(
                    detector.model,
                    resize_for(detector, arrays[i]),
                    opts,
                    num_boxes,
                    gen,
                    (image.height, image.width),
                )
                strip = draw_denoising_strip(image, *states, names, threshold=args.threshold)
                save_png(strip, out / f"{path.stem}_denoising.png")
        logger.info("%d/%d images done", min(start + args.batch_size, len(files)), len(files))
    atomic_write_text(out / "detections.json", json.dumps(results))
    return results


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    results = run(args)
    logger.info(
        "wrote %d drawings to %s (threshold %.2f)", len(results), args.output, args.threshold
    )
    return results


if __name__ == "__main__":
    main()
