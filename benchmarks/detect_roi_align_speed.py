"""CPU training step of the embedded detection default with torchvision's RoIAlign vs ours (gathers).

    python -m benchmarks.detect_roi_align_speed --threads 2 --iters 10    # from the repository root

Both pooler implementations run in one process on the same model, inputs and weights, alternating
step by step (AdamW updates included), so machine noise hits both alike; prints the median ms per
training step of each and the ratio. Random 128 px images with 3 boxes each, batch 4, unless overridden.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.detect_head_speed import synthetic_batch
from tasks.common.config import load_config
from tasks.detect.config import DetectConfig
from tasks.detect.model import build_detector

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/detect/default_synthetic.yaml"))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(DetectConfig, args.config, args.overrides)
    model = build_detector(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images, targets = synthetic_batch(
        args.batch, args.size, cfg.model.head.num_classes, torch.device("cpu"), boxes_per_image=3
    )

    def step() -> float:
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"torchvision": [], "gather": []}
    for i in range(args.iters + 2):
        for impl in times:
            model.head.box_pooler.impl = impl
            elapsed = step()
            if i >= 2:  # warm-up
                times[impl].append(elapsed)
    tv, ours = (statistics.median(times[k]) * 1000 for k in ("torchvision", "gather"))
    print(
        f"training step, {args.batch} x {args.size} px, {args.threads} threads, "
        f"{cfg.model.head.num_proposals} proposals, {cfg.model.head.num_stages} stages"
    )
    print(f"  torchvision roi_align : {tv:7.1f} ms")
    print(f"  roi_align_gather      : {ours:7.1f} ms   (ratio {ours / tv:.2f})")


if __name__ == "__main__":
    main()
