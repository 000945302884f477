"""Evaluate a trained DiffusionDet on the configured validation set.

    python tasks/detect/evaluate.py --config configs/detect/diffdet_coco_r50.yaml --weights model_final.pt
    python tasks/detect/evaluate.py --weights outputs/detect_synthetic/model_final.pt test.eval_steps=[1,4,8] --vis 8
    torchrun --nproc_per_node 8 tasks/detect/evaluate.py --config ... --weights ...

Sampler options are ordinary overrides (``model.diffusion.eta=0.0``, ``model.diffusion.box_renewal=false``,
``test.num_proposals=300``, ...). For every entry of ``test.eval_steps`` it prints the COCO (or LVIS) table and
writes ``detections_steps<S>.json`` (COCO results format, original-image pixels) and ``eval_metrics.json`` into
``output_dir``; ``--vis N`` draws the detections of the first N validation images into ``output_dir/vis``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from tasks.common.config import add_config_args, load_config
from tasks.common.dist import all_gather_object, cleanup, init_distributed, is_main
from tasks.common.log import setup_logging
from tasks.detect import data as D
from tasks.detect.config import DetectConfig
from tasks.detect.engine import (
    describe_result,
    evaluate_each_steps,
    result_summary,
    to_evaluator_output,
)
from tasks.detect.predictor import DiffusionDetector
from tasks.detect.train import DEFAULT_CONFIG, LOGGER_NAME, build_evaluator, build_val_loader


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(parser)
    parser.add_argument(
        "--weights", required=True, help="model_final.pt, a training checkpoint, or a state dict"
    )
    parser.add_argument(
        "--vis", type=int, default=0, metavar="N", help="draw detections on the first N val images"
    )
    parser.add_argument(
        "--vis-threshold", type=float, default=0.5, help="score threshold for --vis drawings"
    )
    return parser.parse_args(argv)


def draw_examples(
    cfg: DetectConfig,
    model,
    loader,
    names: Sequence[str],
    count: int,
    threshold: float,
    device: torch.device,
    out: Path,
) -> None:
    """Save ``count`` validation images with their detections (score >= threshold) drawn on them."""
    from PIL import Image

    from tasks.detect.visualize import draw_detections

    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    done = 0
    for batch in loader:
        for item in batch:
            if done >= count:
                return
            image = item["image"].to(device).float()
            with torch.no_grad():
                pred = model.inference(
                    [image],
                    steps=cfg.test.eval_steps[-1],
                    num_boxes=cfg.test.num_proposals,
                    generator=generator,
                    output_sizes=[item["orig_size"]],
                )[0]
            det = to_evaluator_output(pred)
            original = Image.open(item["file_name"]).convert("RGB")
            drawn = draw_detections(
                original,
                det["boxes"],
                det["scores"],
                det["labels"],
                names,
                score_threshold=threshold,
            )
            drawn.save(out / f"{item['image_id']}.png")
            done += 1


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = load_config(DetectConfig, args.config or DEFAULT_CONFIG, args.overrides)
    info = init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    logger = setup_logging(out, LOGGER_NAME)
    paths = D.resolve_paths(cfg.data)
    if paths["val_json"] is None or paths["val_images"] is None:
        raise ValueError("data.val_json and data.val_images must be set to evaluate")
    label_map = D.load_detection_json(
        paths["val_json"], paths["val_images"], fmt=cfg.data.format
    ).label_to_category_id
    loader, gt = build_val_loader(cfg, paths, label_map, info)

    config_path = args.config or DEFAULT_CONFIG
    model = DiffusionDetector.from_config(
        config_path, args.weights, info.device, args.overrides
    ).model
    evaluator = build_evaluator(cfg, gt, label_map, info.device)
    metrics: dict[str, Any] = {}
    for steps, result in evaluate_each_steps(
        model, loader, evaluator, cfg, device=info.device, steps_list=cfg.test.eval_steps
    ):
        detections = [r for part in all_gather_object(evaluator.results()) for r in part]
        if is_main():
            (out / f"detections_steps{steps}.json").write_text(json.dumps(detections))
            metrics[f"steps_{steps}"] = result_summary(result)
            logger.info("%d sampling step(s):%s", steps, describe_result(result, cfg.data.format))
    if is_main():
        (out / "eval_metrics.json").write_text(json.dumps(metrics, indent=2))
        if args.vis > 0:
            names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
            draw_examples(
                cfg, model, loader, names, args.vis, args.vis_threshold, info.device, out / "vis"
            )
            logger.info("drew %d images into %s", args.vis, out / "vis")
    cleanup()
    return metrics


if __name__ == "__main__":
    main()
