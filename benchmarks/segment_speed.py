"""Denoising-pretraining and fine-tuning throughput (images/s) and peak memory of the segmentation U-Net.

For each image size and precision, our step functions (``tasks.segment.steps.pretrain_step`` /
``finetune_step``: kernel autocast, ``optimizer_step`` with its non-finite check and rank reduction, EMA with
warm-up) run side by side, interleaved in one process, with a plain loop on an identical copy of the network
(forward, loss, zero_grad, backward, step; the plain pretraining loop does its own EMA update). The ratio
``ours / plain`` of images/s shows the cost of the machinery. Data loading is excluded (one fixed batch).

Peak memory: CUDA ``max_memory_allocated`` per phase (in the timing process); on the CPU the peak resident set
size (``ru_maxrss``) of a separate child process that runs only one step of that configuration, so neither
implementation inherits the other's freed memory (the figure includes the process baseline: Python, torch, timm and
smp, about 1.2 GiB; a 64x64 batch peaks at 1260 MiB).

    python benchmarks/segment_speed.py --sizes 360x480 512x1024 --amp off bf16 --batch 1 --steps 2
    python benchmarks/segment_speed.py --device cuda --batch 8 --steps 20 --encoder resnet50
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffusion_core.corruption import scaled_corruption
from tasks.common.ema import ModelEMA
from tasks.common.training import autocast
from tasks.segment.config import ModelConfig, NoiseConfig
from tasks.segment.steps import build_model, finetune_step, pretrain_step, step_generator


def _child_peak_rss_mib(stage: str, hw: tuple[int, int], amp: str, impl: str, args) -> float:
    """Peak RSS (MiB) of a fresh process running one warm-up + one step of this configuration (CPU)."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        f"{stage},{hw[0]},{hw[1]},{amp},{impl}",
        "--encoder",
        args.encoder,
        "--batch",
        str(args.batch),
        "--steps",
        "1",
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _plain_pretrain(model, opt, ema_model, images, amp, device, it) -> None:
    gen = step_generator(0, it, 0, device)
    c = scaled_corruption(images, 0.22, generator=gen)
    with autocast(device, amp):
        pred = model(c.noisy, task="denoise")
    loss = F.mse_loss(pred.float(), c.noise.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        d = min(0.999, (1 + it) / (10 + it))
        for e, p in zip(ema_model.state_dict().values(), model.state_dict().values()):
            e.mul_(d).add_(p, alpha=1 - d) if e.dtype.is_floating_point else e.copy_(p)


def _plain_finetune(model, opt, images, labels, amp, device) -> None:
    with autocast(device, amp):
        logits = model(images, task="segment")
    loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _time(fn: Callable[[int], None], steps: int, device: torch.device) -> float:
    fn(-1)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def make_step(
    stage: str, impl: str, base, images, labels, amp: str, device
) -> Callable[[int], None]:
    """One training step of ``impl`` ("ours" | "plain") on a fresh copy of ``base`` and its optimiser."""
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = ModelEMA(model, decay=0.999) if stage == "pretrain" else None

    def ours(i: int) -> None:
        if stage == "pretrain":
            pretrain_step(
                model,
                model,
                opt,
                images,
                noise=NoiseConfig(),
                schedule=None,
                generator=step_generator(0, max(i, 0), 0, device),
                iteration=max(i, 0),
                lr=1e-4,
                amp=amp,
                ema=ema,
            )
        else:
            finetune_step(
                model, opt, images, labels, ignore_index=255, iteration=max(i, 0), lr=1e-4, amp=amp
            )

    def plain(i: int) -> None:
        if stage == "pretrain":
            _plain_pretrain(model, opt, ema.module, images, amp, device, max(i, 0))
        else:
            _plain_finetune(model, opt, images, labels, amp, device)

    return ours if impl == "ours" else plain


def _inputs(stage: str, hw: tuple[int, int], args, device):
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, *hw, device=device) * 2 - 1
    labels = torch.randint(0, 19, (args.batch, *hw), device=device)
    base = build_model(
        ModelConfig(encoder=args.encoder), num_classes=0 if stage == "pretrain" else 19
    )
    return base.to(device).train(), images, labels


def bench(stage: str, hw: tuple[int, int], amp: str, args, device) -> str:
    """One table row: images/s of ours and plain (best of ``repeats`` interleaved runs), ratio, peak memory."""
    base, images, labels = _inputs(stage, hw, args, device)
    ips: dict[str, float] = {"ours": 0.0, "plain": 0.0}
    mem: dict[str, float] = {}
    for impl in ("ours", "plain") * args.repeats:
        step = make_step(stage, impl, base, images, labels, amp, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        ips[impl] = max(ips[impl], args.batch / _time(step, args.steps, device))
        if device.type == "cuda":
            mem[impl] = torch.cuda.max_memory_allocated(device) / 2**20
    if device.type != "cuda":
        mem = {impl: _child_peak_rss_mib(stage, hw, amp, impl, args) for impl in ("ours", "plain")}
    return (
        f"| {stage} | {hw[0]}x{hw[1]} | {amp} | {ips['ours']:.3f} | {ips['plain']:.3f} | "
        f"{ips['ours'] / ips['plain']:.2f} | {mem['ours']:.0f} | {mem['plain']:.0f} |"
    )


def _child(spec: str, args) -> None:
    stage, h, w, amp, impl = spec.split(",")
    device = torch.device(args.device)
    base, images, labels = _inputs(stage, (int(h), int(w)), args, device)
    step = make_step(stage, impl, base, images, labels, amp, device)
    step(0)  # the first step allocates everything (activations, gradients, optimiser state)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["360x480", "512x1024"],
        help="HxW (CamVid 360x480 is padded to 384x480 for the network)",
    )
    parser.add_argument("--amp", nargs="+", default=["off", "bf16"])
    parser.add_argument("--stages", nargs="+", default=["pretrain", "finetune"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternations of ours/plain (best is kept)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return _child(args.child, args)
    device = torch.device(args.device)
    print(
        f"# {args.encoder} U-Net, batch {args.batch}, {args.steps} timed steps, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "| stage | size | amp | ours img/s | plain img/s | ours/plain | ours peak MiB | plain peak MiB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        hw = (h + (-h % 32), w + (-w % 32))
        for amp in args.amp:
            for stage in args.stages:
                print(bench(stage, hw, amp, args, device), flush=True)


if __name__ == "__main__":
    main()
