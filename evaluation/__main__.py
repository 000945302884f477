"""Command line: ``python -m evaluation coco|lvis|cityscapes ...`` prints the familiar tables.

Examples::

    python -m evaluation coco --gt instances_val2017.json --dt results.json --iou-type bbox --json out.json
    python -m evaluation coco --gt instances_val2017.json --dt results.json --class-agnostic
    python -m evaluation lvis --gt lvis_v1_val.json --dt results.json
    python -m evaluation cityscapes --gt gtFine/val --pred preds/ --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any


def _coco(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.coco import STAT_NAMES, evaluate, format_stats

    out = evaluate(args.gt, args.dt, iou_type=args.iou_type, device=args.device,
                   use_cats=not args.class_agnostic)
    print(format_stats(out["stats"], args.iou_type))
    return {
        "iou_type": args.iou_type,
        "class_agnostic": args.class_agnostic,
        "stats": dict(zip(STAT_NAMES, out["stats"])),
        "per_category": out["per_category"],
    }


def _lvis(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.lvis import evaluate, format_results

    out = evaluate(args.gt, args.dt, iou_type=args.iou_type, device=args.device)
    print(format_results(out["results"], args.iou_type))
    return {"iou_type": args.iou_type, "results": out["results"]}


def _cityscapes(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.cityscapes import ID2LABEL, evaluate_dirs

    out = evaluate_dirs(
        args.gt, args.pred, pred_ids=args.pred_ids, workers=args.workers, device=args.device
    )
    print("classes          IoU      nIoU\n--------------------------------")
    for _i, lb in sorted(ID2LABEL.items()):
        if not lb.ignore_in_eval:
            print(
                f"{lb.name:<14}: {out['classScores'][lb.name]:>5.3f}    {out['classInstScores'][lb.name]:>5.3f}"
            )
    print(
        f"--------------------------------\nScore Average : {out['averageScoreClasses']:5.3f}    "
        f"{out['averageScoreInstClasses']:5.3f}\n"
    )
    print("categories       IoU      nIoU\n--------------------------------")
    for c, v in out["categoryScores"].items():
        if c != "void":
            print(f"{c:<14}: {v:>5.3f}    {out['categoryInstScores'][c]:>5.3f}")
    print(
        f"--------------------------------\nScore Average : {out['averageScoreCategories']:5.3f}    "
        f"{out['averageScoreInstCategories']:5.3f}"
    )
    return out


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
        "--class-agnostic", action="store_true",
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
        out = {"coco": _coco, "lvis": _lvis, "cityscapes": _cityscapes}[args.task](args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
