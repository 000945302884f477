"""The few-shot CamVid experiment of docs/results.md, in one time-boxed process.

1. ``--prepare``: downscale CamVid (``../shared/data/camvid``) into one ``.npz`` (uint8 images,
   labels) small enough to travel to a GPU machine.
2. run: train an ADM-U-Net DDPM on the 367 unlabelled train frames for ``--train-seconds``,
   write a DDIM sample grid, then for seeds x k labelled frames train the 10-MLP ensemble on
   three pixel representations (diffusion features, the same U-Net randomly initialised, raw
   RGB + position) and score the 101 val frames (mIoU standard and DDPM-Seg mode, majority and
   soft vote). Results are appended to ``results.json`` after every run.

    PYTHONPATH=. python3 tasks/fewshot/camvid_experiment.py --prepare .devcarry/camvid
    PYTHONPATH=. python3 tasks/fewshot/camvid_experiment.py --data .devcarry/camvid/camvid_96x128.npz --out OUT
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
from PIL import Image

from backbones.adm_unet import ADMUNet
from backbones.features import extract_per_image
from diffusion_core import NoiseSchedule
from tasks.common.ema import ModelEMA
from tasks.fewshot.data import (
    CAMVID_IGNORE,
    CAMVID_PALETTE,
    camvid_pairs,
    colorize,
    load_split,
    overlay,
)
from tasks.fewshot.metrics import miou_both
from tasks.fewshot.pixel_classifier import PixelBank, predict_image, train_ensemble
from tasks.fewshot.train_diffusion import sample_images, save_grid, train_step

logger = logging.getLogger("fewshot.camvid")

UNET_FLAGS = dict(
    image_size=128, num_channels=64, num_res_blocks=2, channel_mult="1,2,2,4",
    attention_resolutions="16", num_head_channels=32, use_scale_shift_norm=True,
    resblock_updown=True, dropout=0.1,
)
BLOCKS = (2, 4, 5, 7, 8)
TIMESTEPS = (50, 150, 250)
NUM_CLASSES = 11


def prepare(out_dir: Path, shared: Path, size: tuple[int, int]) -> Path:
    """Write ``camvid_<H>x<W>.npz`` with uint8 images (N, H, W, 3) and labels (N, H, W)."""
    arrays = {}
    for split in ("train", "val"):
        images, labels = load_split(camvid_pairs(shared, split), size)
        arrays[f"{split}_images"] = np.stack([((im.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8) for im in images])
        arrays[f"{split}_labels"] = np.stack([lab.numpy().astype(np.uint8) for lab in labels])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"camvid_{size[0]}x{size[1]}.npz"
    np.savez_compressed(path, **arrays)
    return path


def _to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def train_diffusion(images: torch.Tensor, seconds: float, device: torch.device, batch: int, log: dict) -> ADMUNet:
    """Train until ``seconds`` pass; returns the EMA model (eval)."""
    torch.manual_seed(0)
    model = ADMUNet.from_flags(**UNET_FLAGS).to(device)
    ema = ModelEMA(model, decay=0.999)
    schedule = NoiseSchedule.from_name("linear", 1000).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    amp = torch.bfloat16 if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling
    data = images.to(device)
    gen = torch.Generator().manual_seed(0)
    start, it, losses = time.time(), 0, []
    while time.time() - start < seconds:
        idx = torch.randint(len(data), (batch,), generator=gen).to(device)
        x0 = data[idx]
        flip = (torch.rand(batch, generator=gen) < 0.5).to(device)
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        loss = train_step(model, ema, opt, scaler, schedule, x0, step=it, amp=amp)
        it += 1
        if it % 100 == 0:
            losses.append((it, round(loss.item(), 5)))
            logger.info("diffusion it %d loss %.4f (%.0fs)", it, loss.item(), time.time() - start)
    log.update(diffusion_iterations=it, diffusion_seconds=round(time.time() - start, 1), diffusion_loss_curve=losses,
               params_millions=round(sum(p.numel() for p in model.parameters()) / 1e6, 2))
    return ema.module.eval()


def save_shards(state: dict, out: Path, max_bytes: int = 15 << 20) -> list[str]:
    """Save a float16 state_dict in shards of at most ``max_bytes`` (file-size limits)."""
    shards, current, size = [], {}, 0
    for key, value in state.items():
        value = value.detach().to("cpu", torch.float16 if value.is_floating_point() else value.dtype)
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = value
        size += nbytes
    shards.append(current)
    names = []
    for i, shard in enumerate(shards):
        name = f"unet_ema_fp16_{i}of{len(shards)}.pt"
        torch.save(shard, out / name)
        names.append(name)
    return names


def rgb_pos_features(images: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Baseline pixel features: RGB in [-1, 1] plus normalised (y, x)."""
    out = []
    for im in images:
        _, h, w = im.shape
        ys = torch.linspace(-1, 1, h)[:, None].expand(h, w)
        xs = torch.linspace(-1, 1, w)[None, :].expand(h, w)
        out.append([torch.cat([im, ys[None], xs[None]])])
    return out


def unet_features(unet: ADMUNet, images: list[torch.Tensor], device: torch.device) -> list[list[torch.Tensor]]:
    schedule = NoiseSchedule.from_name("linear", 1000)
    feats = extract_per_image(unet, schedule, images, timesteps=TIMESTEPS, blocks=BLOCKS, noise_seed=0,
                              device=device, batch_size=32)
    return [[f.to(device) for f in d.values()] for d in feats]


def evaluate(model, feats: list[list[torch.Tensor]], labels: list[torch.Tensor]) -> tuple[dict, list]:
    preds = [predict_image(model, f, tuple(lab.shape)) for f, lab in zip(feats, labels)]
    result = {}
    for vote in ("majority", "soft"):
        scores = miou_both([getattr(p, vote) for p in preds], labels, NUM_CLASSES, CAMVID_IGNORE)
        result[vote] = {"miou": scores["miou"], "miou_ddpmseg": scores["miou_ddpmseg"], "iou": scores["iou"]}
    result["uncertainty_mean"] = float(np.mean([p.uncertainty for p in preds]))
    return result, preds


def write_overlays(path: Path, images, labels, preds, n: int = 6) -> None:
    rows = []
    for im, lab, pred in list(zip(images, labels, preds))[:n]:
        gt = overlay(im, colorize(lab, CAMVID_PALETTE, CAMVID_IGNORE), 0.6)
        pr = overlay(im, colorize(pred.majority, CAMVID_PALETTE, CAMVID_IGNORE), 0.6)
        raw = ((im.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        rows.append(np.concatenate([raw, gt, pr], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def run(args: argparse.Namespace) -> None:
    t0 = time.time()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = np.load(args.data)
    train_x = _to_unit(data["train_images"][: args.max_train])
    val_x = list(_to_unit(data["val_images"][: args.max_val]))
    val_y = [torch.from_numpy(v.astype(np.int64)) for v in data["val_labels"][: args.max_val]]
    train_y = [torch.from_numpy(v.astype(np.int64)) for v in data["train_labels"][: args.max_train]]
    log: dict = {
        "command": " ".join(sys.argv), "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "resolution_hw": list(train_x.shape[2:]), "unet_flags": UNET_FLAGS,
        "blocks": BLOCKS, "timesteps": TIMESTEPS, "runs": [],
    }
    results_path = out / "results.json"
    unet = train_diffusion(train_x, args.train_seconds, device, args.batch, log)
    log["checkpoint_shards"] = save_shards(unet.state_dict(), out)
    schedule = NoiseSchedule.from_name("linear", 1000).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        samples = sample_images(unet, schedule, args.num_samples, tuple(train_x.shape[2:]), steps=50, device=device)
    save_grid(samples, out / "samples_ddim50.png", ncol=4)
    torch.manual_seed(1234)
    random_unet = ADMUNet.from_flags(**UNET_FLAGS).to(device).eval()
    ks = [k for k in args.ks if k <= len(train_x)]
    orders = {s: torch.randperm(len(train_x), generator=torch.Generator().manual_seed(100 + s)).tolist() for s in args.seeds}
    used = sorted({i for s in args.seeds for i in orders[s][: max(ks)]})
    train_list = list(train_x)
    tf = time.time()
    cache = {
        "ddpm": (lambda idx: unet_features(unet, [train_list[i] for i in idx], device), unet_features(unet, val_x, device)),
        "random_unet": (lambda idx: unet_features(random_unet, [train_list[i] for i in idx], device), unet_features(random_unet, val_x, device)),
        "rgb_pos": (lambda idx: [[f.to(device) for f in fs] for fs in rgb_pos_features([train_list[i] for i in idx])],
                    [[f.to(device) for f in fs] for fs in rgb_pos_features(val_x)]),
    }
    train_feats = {m: dict(zip(used, fn(used))) for m, (fn, _) in cache.items()}
    log["feature_seconds"] = round(time.time() - tf, 1)
    log["feature_dims"] = {m: sum(f.shape[0] for f in next(iter(train_feats[m].values()))) for m in cache}
    for seed in args.seeds:
        for k in ks:
            chosen = orders[seed][:k]
            for method in args.methods:
                if time.time() - t0 > args.budget_seconds:
                    log["stopped_early"] = f"time budget {args.budget_seconds}s reached before seed {seed} k {k} {method}"
                    results_path.write_text(json.dumps(log, indent=1))
                    return
                tic = time.time()
                bank = PixelBank([train_feats[method][i] for i in chosen], [train_y[i] for i in chosen], ignore_index=CAMVID_IGNORE)
                model, stats = train_ensemble(bank, NUM_CLASSES, seed=seed, device=device,
                                              max_iterations=args.max_iterations or None)
                scores, preds = evaluate(model, cache[method][1], val_y)
                log["runs"].append({"method": method, "k": k, "seed": seed, "train_pixels": len(bank),
                                    "iterations": stats.iterations, "stop_epochs": stats.stop_epochs,
                                    "seconds": round(time.time() - tic, 1), **scores})
                logger.info("seed %d k %d %s: mIoU %.3f (ddpmseg %.3f) in %.0fs", seed, k, method,
                            scores["majority"]["miou"], scores["majority"]["miou_ddpmseg"], time.time() - tic)
                if seed == args.seeds[0] and k == max(ks) and method != "random_unet":
                    write_overlays(out / f"overlay_{method}_k{k}.png", val_x, val_y, preds)
                log["total_seconds"] = round(time.time() - t0, 1)
                results_path.write_text(json.dumps(log, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", default=None, help="write the downscaled npz into this folder and exit")
    parser.add_argument("--shared", default="../shared/data/camvid")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    parser.add_argument("--data", default=None, help="npz written by --prepare")
    parser.add_argument("--out", default="outputs/fewshot/camvid_experiment")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-seconds", type=float, default=240)
    parser.add_argument("--budget-seconds", type=float, default=560, help="stop starting new runs after this")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["ddpm", "random_unet", "rgb_pos"])
    parser.add_argument("--max-iterations", type=int, default=0, help="cap per ensemble (0 = early stop only)")
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-val", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if args.prepare:
        print(prepare(Path(args.prepare), Path(args.shared), tuple(args.size)))
        return
    run(args)


if __name__ == "__main__":
    main()
