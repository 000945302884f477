"""Subcommands ``keypoints``, ``panoptic``, ``cityscapes-instance`` and the COCO analysis flags
(``--plots DIR``, ``--errors``) of ``python -m evaluation`` (wired in by :mod:`evaluation.__main__`)."""

from __future__ import annotations

import argparse
import math
from typing import Any


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands and the ``coco`` analysis flags to the ``python -m evaluation`` parser."""
    p = sub.add_parser("keypoints", help="COCO keypoint AP (OKS) of a keypoint results json")
    p.add_argument("--gt", required=True, help="person_keypoints annotation json")
    p.add_argument("--dt", required=True, help="keypoint results json")
    p = sub.add_parser(
        "panoptic", help="panoptic quality (PQ / SQ / RQ), COCO or Cityscapes panoptic"
    )
    p.add_argument("--gt", required=True, help="panoptic GT json (PNG folder: --gt-folder)")
    p.add_argument(
        "--pred", required=True, help="panoptic predictions json (PNG folder: --pred-folder)"
    )
    p.add_argument("--gt-folder", default=None, help="default: the GT json path without .json")
    p.add_argument(
        "--pred-folder", default=None, help="default: the predictions json path without .json"
    )
    p.add_argument(
        "--chunks",
        type=int,
        default=1,
        help="sum IoUs in this many image chunks like panopticapi's worker processes (last-bit parity)",
    )
    p = sub.add_parser(
        "cityscapes-instance", help="Cityscapes instance-level AP (masks + txt per frame)"
    )
    p.add_argument("--gt", required=True, help="gtFine/val folder (*_gtFine_instanceIds.png)")
    p.add_argument("--pred", required=True, help="folder of per-frame txt files and mask PNGs")
    coco = sub.choices["coco"]
    coco.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write precision-recall curve PNGs (per area range) into DIR",
    )
    coco.add_argument(
        "--errors", action="store_true", help="print a TIDE-style error breakdown (bbox)"
    )


def keypoints(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.keypoints import STAT_NAMES, evaluate, format_table

    out = evaluate(args.gt, args.dt, device=args.device)
    print(format_table(out))
    return {k: out[k] for k in (*STAT_NAMES, "per_class")}


def panoptic(args: argparse.Namespace) -> dict[str, Any]:
    import json
    from pathlib import Path

    from evaluation.panoptic import evaluate, format_table

    out = evaluate(
        args.gt,
        args.pred,
        gt_folder=args.gt_folder,
        pred_folder=args.pred_folder,
        device=args.device,
        chunks=args.chunks,
    )
    cats = {c["id"]: c for c in json.loads(Path(args.gt).read_text())["categories"]}
    print(format_table(out, cats))
    return {
        **out["summary"],
        "All": out["All"],
        "Things": out["Things"],
        "Stuff": out["Stuff"],
        "per_class_detail": {str(k): v for k, v in out["per_class"].items()},
    }


def cityscapes_instance(args: argparse.Namespace) -> dict[str, Any]:
    from evaluation.cityscapes_instance import evaluate_dirs, format_table

    out = evaluate_dirs(args.gt, args.pred, device=args.device)
    print(format_table(out))
    return out


def coco_analysis(args: argparse.Namespace, out: dict[str, Any], result: dict[str, Any]) -> None:
    """After ``coco``: per-class table and PR curves (``--plots``), error breakdown (``--errors``);
    adds them to ``result`` (the --json payload)."""
    if not (getattr(args, "plots", None) or getattr(args, "errors", False)):
        return
    from evaluation.analysis import error_breakdown, format_errors, per_class_table, plot_pr_curves

    names = list(out["per_class"].keys()) or ["all categories"]
    if args.plots:
        rows, table = per_class_table(out["precision"], names)
        print("\n" + table)
        paths = plot_pr_curves(out["precision"], args.plots, title=f"COCO {args.iou_type}")
        print(f"\nprecision-recall curves: {', '.join(str(p) for p in paths)}")
        result["per_class_table"] = {
            n: {k: (None if math.isnan(v) else v) for k, v in r.items()} for n, r in rows.items()
        }
        result["plots"] = [str(p) for p in paths]
    if args.errors:
        if args.iou_type != "bbox":
            raise ValueError("--errors supports --iou-type bbox only")
        err = error_breakdown(args.gt, args.dt)
        print("\n" + format_errors(err))
        result["errors"] = err


HANDLERS = {
    "keypoints": keypoints,
    "panoptic": panoptic,
    "cityscapes-instance": cityscapes_instance,
}
