"""Predict label maps with a fine-tuned network: label PNGs and colour overlays.

    python tasks/segment/predict.py --weights outputs/segment/finetune/model_final.pt --input IMG_OR_DIR --output DIR

For every input image ``<stem>``: ``DIR/<stem>.png`` (single channel; Cityscapes: labelIds, the official
server's format; other datasets: class ids 0..K-1) and ``DIR/<stem>_overlay.png`` (the image blended with the
class colours). Images are scaled by the run's ``data.resize`` for the network and the prediction is
upsampled back to the input size. Unreadable files are skipped with one counted warning naming them.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from tasks.common.checkpoint import atomic_write_png, load_checkpoint
from tasks.common.config import config_from_dict
from tasks.common.dist import resolve_device
from tasks.segment.config import SegmentConfig
from tasks.segment.data import eval_transform, image_files, load_image, readable_images
from tasks.segment.steps import build_model, predict_labels

logger = logging.getLogger("diffvision.segment.predict")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", required=True, help="model_final.pt of a fine-tuning run")
    parser.add_argument(
        "--input", required=True, help="an image file or a folder (searched recursively)"
    )
    parser.add_argument(
        "--output", required=True, help="folder for <stem>.png and <stem>_overlay.png"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity of the class colours"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    ckpt = load_checkpoint(args.weights)
    extra = ckpt.get("extra") or {}
    if "class_names" not in extra:
        raise ValueError(
            f"{args.weights} is not a fine-tuned model (no class names); use a train.py model_final.pt"
        )
    cfg = config_from_dict(SegmentConfig, ckpt["config"], where=str(args.weights))
    model = build_model(cfg.model, num_classes=len(extra["class_names"]), init_encoder=False)
    model.load_state_dict(ckpt["model"])
    device = resolve_device(args.device)
    model.to(device).eval()
    export = np.array(
        extra["export_ids"] if extra.get("export_ids") else range(len(extra["class_names"]))
    )
    palette = np.array(extra["palette"], dtype=np.float32)
    src = Path(args.input)
    paths = [src] if src.is_file() else image_files(src)
    paths = readable_images(paths, what=f"images in {src}")
    out = Path(args.output)
    for path in paths:
        image = load_image(path)
        tensor, valid = eval_transform(image, resize=cfg.data.resize)
        pred = (
            predict_labels(model, tensor[None].to(device), valid, image.shape[:2], "off")
            .cpu()
            .numpy()
        )
        atomic_write_png(out / f"{path.stem}.png", export[pred].astype(np.uint8))
        blend = (1 - args.alpha) * image.astype(np.float32) + args.alpha * palette[pred]
        atomic_write_png(out / f"{path.stem}_overlay.png", blend.clip(0, 255).astype(np.uint8))
    print(f"wrote {len(paths)} label maps and overlays to {out}")


if __name__ == "__main__":
    main()
