"""Segment images with a saved few-shot ensemble: label PNGs, colour overlays, uncertainty maps.

    python tasks/fewshot/predict.py --ensemble RUN/diffusion_k10_seed0/ensemble.pt \\
        --input IMAGE_OR_FOLDER --output OUT_DIR [--checkpoint UNET.pt] [--batch-size 8]

The U-Net comes from ``--checkpoint`` or the path recorded in the ensemble; it must be the one the
ensemble was trained with (its weights' SHA-1 and every feature setting are compared, and any
difference is refused by name). Writes ``<stem>_label.png``, ``<stem>_overlay.png``,
``<stem>_uncertainty.png`` per image (input size) and ``predictions.json`` (per-image uncertainty
score and class pixel counts).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tasks.common.checkpoint import atomic_write_json
from tasks.common.dist import resolve_device
from tasks.common.log import setup_logging
from tasks.common.progress import progress
from tasks.fewshot.diffusion import read_unet_state
from tasks.fewshot.ensemble import check_feature_spec, load_ensemble
from tasks.fewshot.pixel_features import features_for_spec
from tasks.fewshot.predictor import batches, input_images, predict_pil, write_prediction

logger = logging.getLogger("fewshot.predict")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ensemble", required=True, help="ensemble.pt written by train.py")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the PNGs and predictions.json")
    parser.add_argument(
        "--checkpoint", default=None, help="U-Net weights (default: the path in the ensemble)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="images held in memory at a time")
    args = parser.parse_args(argv)
    out = Path(args.output)
    setup_logging(out, "fewshot")
    device = resolve_device(args.device)
    ensemble = load_ensemble(args.ensemble, device=device)
    spec = ensemble.feature_spec
    unet_state = None
    if spec["method"] == "diffusion":
        checkpoint = args.checkpoint or ensemble.checkpoint_path
        if not checkpoint:
            parser.error("the ensemble records no U-Net checkpoint path: pass --checkpoint")
        unet_state = read_unet_state(checkpoint)
    features = features_for_spec(
        spec, unet_state=unet_state, device=device, batch_size=args.batch_size
    )
    check_feature_spec(spec, features.spec, where=str(args.ensemble))
    files = input_images(args.input)
    stems = [p.stem for p in files]
    if len(set(stems)) < len(stems):
        stems = [p.name.replace(".", "_") for p in files]
    summary: dict = {"ensemble": str(args.ensemble), "classes": ensemble.class_names, "images": {}}
    bar = progress(total=len(files), desc="predict")
    done = 0
    for batch in batches(files, args.batch_size):
        preds = predict_pil(ensemble, features, [image for _, image in batch])
        for (path, image), pred in zip(batch, preds):
            summary["images"][str(path)] = write_prediction(out, stems[done], image, pred, ensemble)
            done += 1
        bar.update(len(batch))
    bar.close()
    atomic_write_json(out / "predictions.json", summary)
    logger.info("wrote label, overlay and uncertainty PNGs for %d images to %s", len(files), out)
    return summary


if __name__ == "__main__":
    main()
