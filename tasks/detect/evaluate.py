"""Evaluate a trained DiffusionDet on the configured validation set.

    python tasks/detect/evaluate.py --config configs/detect/diffdet_coco_r50.yaml --weights model_final.pt
    python -m tasks.detect.evaluate --weights outputs/detect_synthetic/model_final.pt test.eval_steps=[1,4,8] --vis 8
    torchrun --nproc_per_node 8 tasks/detect/evaluate.py --config ... --weights ...

Sampler options are ordinary overrides (``model.diffusion.eta=0.0``, ``model.diffusion.box_renewal=false``,
``test.num_proposals=300``, ...). For every entry of ``test.eval_steps`` it prints the COCO (or LVIS) table and
writes ``detections_steps<S>.json`` (COCO results format, original-image pixels) and ``eval_metrics.json`` into
``output_dir``; ``--vis N`` draws the detections of the first N validation images into ``output_dir/vis``.

Labels: the model's label ``i`` is the category of entry ``i`` of the label map stored in the weights file
(``model_final.pt`` / checkpoints written by ``train.py``). A val JSON listing the same categories under other ids
is re-mapped by name; one with other categories is refused with both lists in the message. Weights files without a
label map (official files, older runs, plain state dicts) take it from the config's ``data.train_json`` (or, without
one, the val JSON's categories in ascending id order), with a warning.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from tasks.common.checkpoint import atomic_write_json
from tasks.common.config import add_config_args, load_config
from tasks.common.dist import DistInfo, all_gather_object, cleanup, init_distributed, is_main
from tasks.common.log import setup_logging
from tasks.detect import data as D
from tasks.detect.build import (
    DEFAULT_CONFIG,
    LOGGER_NAME,
    LabelMap,
    ValData,
    build_evaluator,
    build_val_data,
    label_map_of,
    resolve_data_paths,
    without_backbone_weights,
)
from tasks.detect.config import DetectConfig
from tasks.detect.loops import (
    describe_result,
    evaluate_each_steps,
    result_summary,
    sampler_options,
    to_evaluator_output,
)
from tasks.detect.weights import load_detector_weights

logger = logging.getLogger(LOGGER_NAME)


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


def load_trained_detector(cfg: DetectConfig, weights: str | Path, device: torch.device):
    """(detector in eval mode on ``device``, the label map stored with the weights or None).

    ``weights``: ``model_final.pt``, a training checkpoint (its EMA weights when it has them), a state dict, or an
    official DiffusionDet file (:func:`tasks.detect.weights.load_detector_weights`, strict).
    """
    from tasks.detect.model import build_detector

    model = build_detector(without_backbone_weights(cfg.model))  # the file holds the backbone too
    loaded = load_detector_weights(model, weights)
    label_map = loaded.label_map
    if label_map is not None and not (
        isinstance(label_map, Mapping) and {"category_ids", "names"} <= set(label_map)
    ):
        logger.warning(
            "%s: label map %r is not {'category_ids', 'names'}; ignored", weights, label_map
        )
        label_map = None
    return model.to(device).eval(), label_map


def fallback_label_map(
    cfg: DetectConfig, paths: Mapping[str, str | None], weights: str | Path
) -> LabelMap:
    """For weights files that store no label map (official files, older runs): the training JSON's categories
    when the config names one, else the val JSON's (sorted ids, the training order of COCO-style data)."""
    use_train = paths["train_json"] is not None and paths["train_images"] is not None
    json_path, images = (
        (paths["train_json"], paths["train_images"])
        if use_train
        else (paths["val_json"], paths["val_images"])
    )
    logger.warning(
        "%s stores no label map; assuming the model's labels are the categories of %s in "
        "ascending id order",
        weights,
        json_path,
    )
    return label_map_of(D.load_detection_json(json_path, images, fmt=cfg.data.format))


def draw_examples(
    model,
    val: ValData,
    *,
    steps: int,
    num_boxes: int | None,
    seed: int,
    count: int,
    threshold: float,
    device: torch.device,
    out: Path,
) -> None:
    """Save ``count`` validation images with their detections (score >= threshold) drawn on them."""
    from PIL import Image

    from tasks.detect.visualize import draw_detections

    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    opts = sampler_options(model, steps)
    done = 0
    for batch in val.loader:
        for item in batch:
            if done >= count:
                return
            with torch.no_grad():
                pred = model.inference(
                    [item["image"].to(device).float()],
                    opts=opts,
                    num_boxes=num_boxes,
                    generator=generator,
                    output_sizes=[item["orig_size"]],
                )[0]
            det = to_evaluator_output(pred)
            with Image.open(item["file_name"]) as im:
                original = im.convert("RGB")
            drawn = draw_detections(
                original,
                det["boxes"],
                det["scores"],
                det["labels"],
                val.names,
                score_threshold=threshold,
            )
            drawn.save(out / f"{item['image_id']}.png")
            done += 1


def evaluate_weights(
    cfg: DetectConfig, weights: str | Path, info: DistInfo
) -> tuple[Any, ValData, dict]:
    """Evaluate ``weights`` with every ``test.eval_steps`` setting; returns (model, val data, metrics)."""
    out = Path(cfg.output_dir)
    paths = resolve_data_paths(cfg)
    if paths["val_json"] is None or paths["val_images"] is None:
        raise ValueError("data.val_json and data.val_images must be set to evaluate")
    model, label_map = load_trained_detector(cfg, weights, info.device)
    if label_map is None:
        label_map = fallback_label_map(cfg, paths, weights)
    if len(label_map["category_ids"]) != cfg.model.head.num_classes:
        raise ValueError(
            f"{weights}: label map has {len(label_map['category_ids'])} categories but "
            f"model.head.num_classes={cfg.model.head.num_classes}"
        )
    val = build_val_data(cfg, paths, label_map, info)
    evaluator = build_evaluator(cfg.data.format, val.gt, val.category_ids, info.device)
    metrics: dict[str, Any] = {}
    for steps, result in evaluate_each_steps(
        model,
        val.loader,
        evaluator,
        device=info.device,
        steps_list=cfg.test.eval_steps,
        num_boxes=cfg.test.num_proposals,
        seed=cfg.seed,
        amp=cfg.solver.amp,
    ):
        detections = [r for part in all_gather_object(evaluator.results()) for r in part]
        if is_main():
            atomic_write_json(out / f"detections_steps{steps}.json", detections, indent=None)
            metrics[f"steps_{steps}"] = result_summary(result)
            logger.info("%d sampling step(s):%s", steps, describe_result(result, evaluator))
    return model, val, metrics


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate, write the detections and ``eval_metrics.json`` (and drawings); returns the metrics."""
    args = parse_args(argv)
    cfg = load_config(DetectConfig, args.config or DEFAULT_CONFIG, args.overrides)
    info = init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(out, "diffvision")
    model, val, metrics = evaluate_weights(cfg, args.weights, info)
    if is_main():
        atomic_write_json(out / "eval_metrics.json", metrics)
        if args.vis > 0:
            draw_examples(
                model,
                val,
                steps=cfg.test.eval_steps[-1],
                num_boxes=cfg.test.num_proposals,
                seed=cfg.seed,
                count=args.vis,
                threshold=args.vis_threshold,
                device=info.device,
                out=out / "vis",
            )
            logger.info("drew %d images into %s", args.vis, out / "vis")
    cleanup()
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (returns None: a console script exits with ``main()``'s return value)."""
    run(argv)


if __name__ == "__main__":
    main()
