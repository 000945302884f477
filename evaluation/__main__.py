"""Command line: ``python -m evaluation <task> ...`` prints the familiar tables.

Tasks: coco, lvis, cityscapes, keypoints, panoptic, cityscapes-instance.

Examples::

    python -m evaluation coco --gt instances_val2017.json --dt results.json --iou-type bbox --json out.json
    python -m evaluation coco --gt instances_val2017.json --dt results.json --class-agnostic
    python -m evaluation lvis --gt lvis_v1_val.json --dt results.json
    python -m evaluation cityscapes --gt gtFine/val --pred preds/ --json out.json
    python -m evaluation coco --gt instances_val2017.json --dt results.json --plots plots/ --errors
    python -m evaluation keypoints --gt person_keypoints_val2017.json --dt kp_results.json
    python -m evaluation panoptic --gt panoptic_val2017.json --pred panoptic_results.json
    python -m evaluation cityscapes-instance --gt gtFine/val --pred results/ --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from evaluation.cli_tools import HANDLERS, add_parsers, coco_analysis


def _coco(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.coco import STAT_NAMES, evaluate, format_table

    out = evaluate(
        args.gt,
        args.dt,
        iou_type=args.iou_type,
        device=args.device,
        use_cats=not args.class_agnostic,
    )
    print(format_table(out))
    result = {
        "iou_type": args.iou_type,
        "class_agnostic": args.class_agnostic,
        **{k: out[k] for k in (*STAT_NAMES, "per_class")},
    }
    coco_analysis(args, out, result)  # --plots DIR / --errors
    return result


def _lvis(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.lvis import RESULT_KEYS, evaluate, format_table

    out = evaluate(args.gt, args.dt, iou_type=args.iou_type, device=args.device)
    print(format_table(out))
    return {"iou_type": args.iou_type, **{k: out[k] for k in (*RESULT_KEYS, "per_class")}}


def _cityscapes(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.cityscapes import evaluate_dirs, format_table, to_result

    result = to_result(
        evaluate_dirs(
            args.gt, args.pred, pred_ids=args.pred_ids, workers=args.workers, device=args.device
        )
    )
    print(format_table(result))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="task", required=True)
    for name in ("coco", "lvis"):
        p = sub.add_parser(name, help=f"{name.upper()} bbox / segm evaluation of a results json")
        p.add_argument("--gt", required=True, help="annotation json")
        p.add_argument("--dt", required=True, help="results json (list of detections)")
        p.add_argument("--iou-type", default="bbox", choices=("bbox", "segm"))
    sub.choices["coco"].add_argument(
        "--class-agnostic",
        action="store_true",
        help="ignore categories when matching (pycocotools params.useCats = 0)",
    )
    p = sub.add_parser(
        "cityscapes", help="pixel-level semantic labeling (IoU, iIoU) from PNG folders"
    )
    p.add_argument(
        "--gt", required=True, help="gtFine/val folder (*_gtFine_labelIds.png, *_instanceIds.png)"
    )
    p.add_argument(
        "--pred", required=True, help="folder of prediction PNGs named with city_seq_frame"
    )
    p.add_argument(
        "--pred-ids",
        default="label",
        choices=("label", "train"),
        help="labelIds (official) or trainIds",
    )
    p.add_argument("--workers", type=int, default=8, help="PNG decoding threads")
    add_parsers(sub)  # keypoints, panoptic, cityscapes-instance; coco --plots / --errors
    for p in sub.choices.values():
        p.add_argument(
            "--device", default=None, help="torch device (default: cuda if available, else cpu)"
        )
        p.add_argument("--json", default=None, help="write all numbers to this json file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        handlers = {"coco": _coco, "lvis": _lvis, "cityscapes": _cityscapes, **HANDLERS}
        out = handlers[args.task](args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:  # atomic: a kill mid-write never leaves a truncated file under the final name
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
