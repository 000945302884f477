"""Per-iteration DiffusionDet training time (forward + backward) for several head/backbone widths.

Runs every configuration in one process on the same synthetic batch and prints seconds per iteration
and the ratio to the first (official-width) configuration, plus an inference time at 1 step.

    python benchmarks/detect_head_speed.py --size 256 --batch 4 --threads 2
    python benchmarks/detect_head_speed.py --device cuda --size 800 --batch 2 --only official_r50
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from tasks.detect.config import DetectConfig
from tasks.detect.model import build_detector

# name -> (backbone, fpn/hidden, ffn, dim_dynamic, stages, proposals, in_features)
CONFIGS = {
    "official_r50": ("resnet50", 256, 2048, 64, 6, 500, ("p2", "p3", "p4", "p5")),
    "official_r18_n100": ("resnet18", 256, 2048, 64, 6, 100, ("p2", "p3", "p4", "p5")),
    "r18_d128_s4_n100": ("resnet18", 128, 512, 32, 4, 100, ("p2", "p3", "p4", "p5")),
    "r18_d64_s3_n50": ("resnet18", 64, 256, 16, 3, 50, ("p2", "p3", "p4")),
    "r18_d64_s3_n100": ("resnet18", 64, 256, 16, 3, 100, ("p2", "p3", "p4")),
    "r18_d32_s2_n50": ("resnet18", 32, 128, 8, 2, 50, ("p2", "p3", "p4")),
}


def make_model(name: str, num_classes: int, device: torch.device):
    backbone, d, ff, dd, stages, n, feats = CONFIGS[name]
    cfg = DetectConfig()
    m = cfg.model
    m.backbone.name, m.backbone.pretrained = backbone, False
    if backbone == "resnet18":
        m.backbone.norm, m.backbone.freeze_at = "bn", 0
    m.backbone.fpn_channels = m.head.hidden_dim = d
    m.head.dim_feedforward, m.head.dim_dynamic, m.head.num_stages = ff, dd, stages
    m.head.num_proposals, m.head.in_features, m.head.num_classes = n, feats, num_classes
    m.head.num_attn_heads = 8 if d >= 128 else 4
    return build_detector(cfg).to(device)


def synthetic_batch(
    batch: int, size: int, num_classes: int, device: torch.device, boxes_per_image: int = 6
):
    """Seeded random (3, size, size) 0..255 images with ``boxes_per_image`` random boxes each."""
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(3, size, size, generator=g) * 255).to(device) for _ in range(batch)]
    targets = []
    k = boxes_per_image
    for _ in range(batch):
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = torch.rand(k, 2, generator=g) * size * 0.3 + 8
        targets.append(
            {
                "boxes_xyxy": torch.cat([xy, xy + wh], 1).to(device),
                "labels": torch.randint(0, num_classes, (k,), generator=g).to(device),
            }
        )
    return images, targets


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_config(name: str, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    torch.manual_seed(0)
    model = make_model(name, args.num_classes, device)
    images, targets = synthetic_batch(args.batch, args.size, args.num_classes, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    train_times = []
    for i in range(args.warmup + args.iters):
        model.train()
        sync(device)
        t0 = time.perf_counter()
        losses = model(images, targets)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            train_times.append(time.perf_counter() - t0)
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    model.inference(images, opts=dataclasses.replace(model.sampler_options, steps=1))
    sync(device)
    return sum(train_times) / len(train_times), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help=f"subset of {list(CONFIGS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = args.only or list(CONFIGS)
    print(
        f"batch {args.batch}, {args.size}x{args.size} px, device {device}, threads {args.threads}"
    )
    print(f"{'config':<22}{'params(M)':>10}{'train s/it':>12}{'ratio':>8}{'infer 1-step s':>16}")
    base = None
    for name in names:
        params = sum(
            p.numel() for p in make_model(name, args.num_classes, torch.device("cpu")).parameters()
        )
        train_s, infer_s = time_config(name, args, device)
        base = base or train_s
        print(
            f"{name:<22}{params / 1e6:>10.1f}{train_s:>12.3f}{train_s / base:>8.3f}{infer_s:>16.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
