"""Full-size DiffusionDet (R50-FPN, official head widths) speed on one device.

Prints training forward+backward time (fp32 and bf16 autocast) and inference images/s at 1 and 4
sampling steps for batch 1 and batch 8 at 800x1216 with 500 boxes (random weights: the timing does
not depend on them because N is fixed).

    python benchmarks/detect_inference_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.detect.config import DetectConfig  # noqa: E402
from tasks.detect.model import build_detector  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def time_train(model, images, targets, device, bf16: bool, iters: int) -> float:
    model.train()
    times = []
    for i in range(iters + 2):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, bf16):
            losses = model(images, targets)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


@torch.no_grad()
def time_infer(model, images, device, steps: int, bf16: bool, iters: int) -> float:
    model.eval()
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(iters + 2):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, bf16):
            model.inference(images, steps=steps, num_boxes=500, generator=gen)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = DetectConfig()
    cfg.model.backbone.pretrained = False
    model = build_detector(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"R50-FPN DiffusionDet, {n_params / 1e6:.1f} M params, {args.height}x{args.width}, 500 boxes")
    g = torch.Generator().manual_seed(0)

    def images(b: int):
        return [(torch.rand(3, args.height, args.width, generator=g) * 255).to(device) for _ in range(b)]

    targets = []
    for _ in range(args.train_batch):
        xy = torch.rand(10, 2, generator=g) * torch.tensor([args.width * 0.7, args.height * 0.7])
        wh = torch.rand(10, 2, generator=g) * 300 + 16
        targets.append({"boxes_xyxy": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, 80, (10,), generator=g).to(device)})
    train_images = images(args.train_batch)
    for bf16 in (False, True):
        s = time_train(model, train_images, targets, device, bf16, args.iters)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        print(f"train batch {args.train_batch} {'bf16' if bf16 else 'fp32'}: {s * 1000:.0f} ms/iter "
              f"(peak mem {mem:.1f} GiB)", flush=True)
    for batch in (1, 8):
        ims = images(batch)
        for steps in (1, 4):
            for bf16 in (False, True):
                s = time_infer(model, ims, device, steps, bf16, args.iters)
                print(f"inference batch {batch} steps {steps} {'bf16' if bf16 else 'fp32'}: "
                      f"{s * 1000 / batch:.1f} ms/img, {batch / s:.1f} FPS", flush=True)


if __name__ == "__main__":
    main()
