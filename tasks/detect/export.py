"""Export a trained DiffusionDet to ONNX for a fixed number of sampling steps and boxes, and check it.

    python tasks/detect/export.py --config configs/detect/bccd.yaml --weights outputs/detect_bccd/model_final.pt \
        --output outputs/detect_bccd/diffdet_s1_n500.onnx --steps 1 --num-boxes 500 \
        --verify ../shared/data/bccd/BCCD/JPEGImages/BloodImage_00001.jpg

The graph takes ``image`` (1, 3, H, W) float RGB 0..255 at the exported size and ``x_T`` (1, N, 4) standard
normal noise, and returns ``boxes_xyxy`` (D, 4) in that image's pixels, ``scores`` and ``labels``. The size is
``--height``/``--width``, or the config's test resize of ``--verify``'s image. ``--deterministic`` bakes eta 0
and no box renewal (then S > 1 matches PyTorch exactly; otherwise the graph draws its own step noise).
``--verify IMG`` runs onnxruntime and PyTorch on that image with the same ``x_T`` and prints the differences
(needs ``pip install onnx onnxruntime``). Details and limits: ``tasks/detect/exportable.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

import torch

from tasks.detect.exportable import compare_with_pytorch, export_onnx, onnx_ops, prepare_image
from tasks.detect.predictor import DiffusionDetector
from tasks.detect.transforms import resized_shape

logger = logging.getLogger("diffvision.detect.export")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", default=None, help="model_final.pt (omit: untrained weights)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--num-boxes", type=int, default=500)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--deterministic", action="store_true", help="eta 0, no box renewal")
    parser.add_argument("--verify", default=None, metavar="IMG", help="compare with PyTorch on IMG")
    parser.add_argument("--seed", type=int, default=0, help="x_T seed for --verify")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    if (args.height is None) != (args.width is None) or (args.height is None and not args.verify):
        parser.error("give --height and --width, or --verify IMG to take the size from that image")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    detector = DiffusionDetector.from_config(args.config, args.weights, "cpu", args.overrides)
    height, width = args.height, args.width
    if height is None:
        from PIL import Image, ImageOps

        with Image.open(args.verify) as im:
            w0, h0 = ImageOps.exif_transpose(im).size
        height, width = resized_shape(h0, w0, detector.min_size, detector.max_size)
    opts = export_onnx(
        detector.model,
        args.output,
        height=height,
        width=width,
        steps=args.steps,
        num_boxes=args.num_boxes,
        deterministic=args.deterministic,
    )
    report: dict = {
        "onnx": args.output,
        "input_hw": [height, width],
        "steps": args.steps,
        "num_boxes": args.num_boxes,
        "sampler": opts.__dict__,
        "ops": onnx_ops(args.output),
    }
    if args.verify:
        image, _ = prepare_image(args.verify, height=height, width=width)
        x_T = torch.randn(
            (1, args.num_boxes, 4), generator=torch.Generator().manual_seed(args.seed)
        )
        report["verify"] = compare_with_pytorch(detector.model, args.output, opts, image, x_T)
    logger.info("%s", json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
