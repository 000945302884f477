"""Peak RAM of few-shot pixel-classifier training at DDPM-Seg's largest setting.

50 training images at 256x256 with 8448-dim pixels (blocks 5,6,7,8,12 x t 50,150,250 of the
256px ADM U-Net), held at native resolution in float16 and streamed in pixel chunks. The
reference materialises [50*256*256, 8448] float32 and peaks at ~210 GB (its README).

    python benchmarks/fewshot_memory.py [--images 50] [--iterations 200]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from tasks.fewshot.pixel_classifier import PixelBank, predict_image, train_ensemble

# (channels, side) of DDPM-Seg's blocks 5, 6, 7, 8, 12 at 256px (computed by ADMUNet.decoder_blocks)
BLOCKS = [(1024, 32), (512, 32), (512, 32), (512, 64), (256, 128)]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--chunk-pixels", type=int, default=1 << 16)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    tic = time.time()
    feats = [
        [torch.randn(c, s, s, dtype=torch.float16) for _ in range(3) for c, s in BLOCKS]
        for _ in range(args.images)
    ]
    labels = [torch.randint(0, 30, (256, 256)) for _ in range(args.images)]
    bank = PixelBank(feats, labels, ignore_index=255)
    print(
        f"features held: {sum(f.numel() * 2 for fs in feats for f in fs) / 1e9:.2f} GB fp16, "
        f"dim {bank.dim}, "
        f"{len(bank)} pixels; RSS peak so far {peak_rss_gb():.2f} GB"
    )
    model, _ = train_ensemble(
        bank, 30, max_iterations=args.iterations, chunk_pixels=args.chunk_pixels
    )
    predict_image(model, feats[0], (256, 256))
    reference = args.images * 256 * 256 * bank.dim * 4 * 2 / 1e9
    print(
        f"peak RSS {peak_rss_gb():.2f} GB (goal <= 8 GB) vs reference ~{reference:.0f} GB "
        f"(2x the fp32 [N*H*W, D] matrix); {time.time() - tic:.0f}s, {args.iterations} iterations"
    )


if __name__ == "__main__":
    main()
