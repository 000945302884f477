"""DiffusionDet speed: ours vs the official computation, side by side in one process, same weights.

    python benchmarks/detect_speed.py                      # the CPU goal setting + a reduced matrix
    python benchmarks/detect_speed.py --device cuda --full

The official implementation needs detectron2, which is not installable from the package registry, so the
official side is ``OfficialHead``: an in-process re-implementation of the official ``DynamicHead`` /
``RCNNHead`` / ``DynamicConv`` forward as the official code computes it (sequence-first attention on
(N, B, d) tensors, the per-level detectron2 ``ROIPooler`` loop over ``torchvision.ops.roi_align``,
``permute`` / ``clone`` / ``repeat_interleave`` in the same places, per-image top-k + NMS after the loop),
using *our* modules' weights, so both sides compute the same numbers (checked: max |diff| printed). The
backbone + FPN (R50-FPN, the same computation as detectron2's) runs once per image on both sides.

Rows: latency and throughput at batch 1 and 8, 300 / 500 boxes, 1 / 4 / 8 steps (``--full``: every
combination; default: a reduced set that finishes on a 2-core CPU), and training iterations/s. Every row
times ours and the official computation alternately (``--reps`` each, median) and prints the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, roi_align

from tasks.detect.box_codec import apply_deltas, diffusion_to_xyxy
from tasks.detect.config import DetectConfig
from tasks.detect.model import build_detector
from tasks.detect.pooler import assign_levels


class OfficialHead(nn.Module):
    """The official head loop's computation, on the weights of our ``DynamicHead`` (``ours``)."""

    def __init__(self, ours: nn.Module, strides: tuple[int, ...], sampling_ratio: int) -> None:
        super().__init__()
        self.ours, self.scales = ours, [1.0 / s for s in strides]
        self.sampling_ratio, self.min_level = sampling_ratio, int(torch.tensor(strides[0]).log2())

    def pool(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """detectron2 ``ROIPooler``: cat the per-image boxes with their batch index, assign levels,
        roi_align each non-empty level, scatter into the output."""
        rois = torch.cat(
            [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
        )
        levels = assign_levels(rois[:, 1:], self.min_level, self.min_level + len(features) - 1)
        out = features[0].new_zeros((len(rois), features[0].shape[1], 7, 7))
        for lvl, (feat, scale) in enumerate(zip(features, self.scales)):
            inds = torch.nonzero(levels == lvl, as_tuple=True)[0]
            out[inds] = roi_align(
                feat, rois[inds], (7, 7), scale, self.sampling_ratio, aligned=True
            )
        return out

    def stage(self, s: nn.Module, features, bboxes: Tensor, pro: Tensor | None, time_emb: Tensor):
        n_img, nr = bboxes.shape[:2]
        d = s.hidden_dim
        roi = self.pool(features, list(bboxes))
        if pro is None:
            pro = roi.view(n_img, nr, d, -1).mean(-1)
        roi = roi.view(n_img * nr, d, -1).permute(2, 0, 1)  # (49, N*nr, d)
        pro = pro.view(n_img, nr, d).permute(1, 0, 2)  # sequence-first (nr, N, d)
        attn = _seq_first_attention(s.self_attn, pro)
        pro = s.norm1(pro + s.dropout1(attn))
        pro = pro.view(nr, n_img, d).permute(1, 0, 2).reshape(1, n_img * nr, d)
        dc = s.inst_interact
        feats = roi.permute(1, 0, 2)
        params = dc.dynamic_layer(pro).permute(1, 0, 2)
        p1 = params[:, :, : dc.num_params].view(-1, dc.hidden_dim, dc.dim_dynamic)
        p2 = params[:, :, dc.num_params :].view(-1, dc.dim_dynamic, dc.hidden_dim)
        x = torch.relu(dc.norm1(torch.bmm(feats, p1)))
        x = torch.relu(dc.norm2(torch.bmm(x, p2)))
        pro2 = torch.relu(dc.norm3(dc.out_layer(x.flatten(1))))
        obj = s.norm2(pro + s.dropout2(pro2))
        obj = s.norm3(obj + s.dropout3(s.linear2(s.dropout(torch.relu(s.linear1(obj))))))
        fc = obj.transpose(0, 1).reshape(n_img * nr, -1)
        scale, shift = torch.repeat_interleave(s.block_time_mlp(time_emb), nr, dim=0).chunk(
            2, dim=1
        )
        fc = fc * (scale + 1) + shift
        cls, reg = fc.clone(), fc.clone()
        for layer in s.cls_module:
            cls = layer(cls)
        for layer in s.reg_module:
            reg = layer(reg)
        boxes = apply_deltas(s.bboxes_delta(reg), bboxes.view(-1, 4))
        return s.class_logits(cls).view(n_img, nr, -1), boxes.view(n_img, nr, -1), obj

    def forward(self, features: list[Tensor], bboxes: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        time_emb = self.ours.time_mlp(t)
        pro, logits = None, None
        for s in self.ours.head_series:
            logits, boxes, pro = self.stage(s, features, bboxes, pro, time_emb)
            bboxes = boxes.detach()
        return logits, bboxes


def _seq_first_attention(mha: nn.MultiheadAttention, x: Tensor) -> Tensor:
    """The official ``nn.MultiheadAttention(d, heads)`` call on (nr, N, d) with our batch-first module."""
    return mha(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False)[
        0
    ].transpose(0, 1)


def official_inference(
    model, official: OfficialHead, images: list[Tensor], x_T: Tensor, steps: int
):
    """The official ``ddim_sample`` + ``inference`` at eta 0 without renewal (the noise-free part of the
    loop; renewal and DDIM noise are elementwise and cheap), then per-image top-k + class-wise NMS."""
    from diffusion_core import sample_loop, sampling_pairs
    from tasks.detect.box_codec import xyxy_to_diffusion

    batch, whwh = model.preprocess(images)
    features = model.extract_features(batch)
    per_step = []

    def denoise(x: Tensor, t: Tensor):
        logits, boxes = official(features, diffusion_to_xyxy(x, whwh, model.scale), t)
        return xyxy_to_diffusion(boxes, whwh, model.scale), (logits, boxes)

    sample_loop(denoise, model.schedule, x_T.float(), sampling_pairs(1000, steps, "linspace"), eta=0.0,
                prediction_type="sample", callback=lambda st: per_step.append(st.aux))  # fmt: skip
    used = (
        per_step[:-1] if steps > 1 else per_step
    )  # the official ensemble leaves the last step out
    out = []
    for i, img in enumerate(images):  # per image, as the official inference()
        parts = []
        for lg, bx in used:
            scores, idx = lg[i].sigmoid().flatten().topk(x_T.shape[1], sorted=False)
            parts.append((bx[i][idx // lg.shape[-1]], scores, idx % lg.shape[-1]))
        box, scores, labels = (torch.cat([p[k] for p in parts]) for k in range(3))
        keep = batched_nms(box, scores, labels, 0.5)
        box, scores, labels = box[keep], scores[keep], labels[keep]
        h, w = img.shape[1:]  # detector_postprocess: clip, drop empty boxes
        box = torch.stack(
            [
                box[:, 0].clamp(0, w),
                box[:, 1].clamp(0, h),
                box[:, 2].clamp(0, w),
                box[:, 3].clamp(0, h),
            ],
            1,
        )
        ok = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
        out.append((box[ok], scores[ok], labels[ok]))
    return out


def head_difference(model, official: OfficialHead, images: list[Tensor], x_T: Tensor) -> float:
    """Largest difference of the two heads' last-stage outputs at t = 999: |logits| absolute, boxes
    relative to max(1 px, |box|) (random weights give boxes of any size)."""
    batch, whwh = model.preprocess(images)
    features = model.extract_features(batch)
    boxes = diffusion_to_xyxy(x_T, whwh, model.scale)
    t = torch.full((len(images),), 999, dtype=torch.long, device=x_T.device)
    logits_a, boxes_a = model.head(features, boxes, t)
    logits_b, boxes_b = official(features, boxes, t)
    rel = ((boxes_a[-1] - boxes_b).abs() / boxes_a[-1].abs().clamp(min=1.0)).max()
    return max(float((logits_a[-1] - logits_b).abs().max()), float(rel))


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def side_by_side(
    ours: Callable, official: Callable, reps: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of each, run alternately after one warm-up call each."""
    ours(), official()
    a, b = [], []
    for _ in range(reps):
        a.append(timed(ours, device))
        b.append(timed(official, device))
    return statistics.median(a), statistics.median(b)


def build(args: argparse.Namespace, device: torch.device):
    cfg = DetectConfig()
    cfg.model.backbone.pretrained = False  # random weights: timing does not depend on the values
    torch.manual_seed(0)
    model = build_detector(cfg).to(device).eval()
    head = model.head
    official = OfficialHead(head, (4, 8, 16, 32), cfg.model.head.pooler_sampling_ratio)
    return cfg, model, official


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1224)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--full", action="store_true", help="every batch x boxes x steps row")
    parser.add_argument(
        "--rows",
        nargs="*",
        default=None,
        metavar="B,N,S",
        help="only these batch,boxes,steps rows (e.g. 1,500,1)",
    )
    parser.add_argument("--train-size", type=int, default=512, help="square training image side")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, model, official = build(args, device)
    g = torch.Generator().manual_seed(0)
    pool = [
        (torch.rand(3, args.height, args.width, generator=g) * 255).to(device) for _ in range(8)
    ]
    print(
        f"device {device}, threads {torch.get_num_threads()}, R50-FPN DiffusionDet (official widths), "
        f"{args.height}x{args.width}, torch {torch.__version__}; times are medians of {args.reps} (batch 8: of max(1, reps // 2) unless --full)"
    )
    if args.rows:
        rows = [tuple(int(v) for v in r.split(",")) for r in args.rows]
    elif args.full:
        rows = [(b, n, s) for b in (1, 8) for n in (300, 500) for s in (1, 4, 8)]
    else:
        rows = [(1, 500, 1), (1, 300, 1), (1, 500, 4), (8, 500, 1)]
    print(
        f"{'batch':>5} {'boxes':>5} {'steps':>5} | {'ours s/img':>10} {'official s/img':>14} "
        f"{'ours img/s':>10} {'official img/s':>14} {'speed-up':>8} | {'head max|d|':>12}"
    )
    opts = dataclasses.replace(
        model.sampler_options, eta=0.0, box_renewal=False, ensemble_last_step=False
    )  # the official selection
    with torch.no_grad():
        for batch, boxes, steps in rows:
            images = pool[:batch]
            x_T = torch.randn((batch, boxes, 4), generator=g).to(device)
            run_opts = dataclasses.replace(opts, steps=steps)
            diff = head_difference(model, official, images[:1], x_T[:1])  # image 0
            reps = args.reps if batch == 1 or args.full else max(1, args.reps // 2)
            t_ours, t_off = side_by_side(
                lambda ims=images, o=run_opts, x=x_T: model.inference(ims, opts=o, x_T=x),
                lambda ims=images, x=x_T, s=steps: official_inference(model, official, ims, x, s),
                reps,
                device,
            )
            print(
                f"{batch:>5} {boxes:>5} {steps:>5} | {t_ours / batch:>10.3f} {t_off / batch:>14.3f} "
                f"{batch / t_ours:>10.2f} {batch / t_off:>14.2f} {t_off / t_ours:>7.2f}x | {diff:>12.2e}",
                flush=True,
            )
    train_speed(model, args, device, size=args.train_size)


def train_speed(
    model, args: argparse.Namespace, device: torch.device, batch: int = 2, size: int = 512
):
    """Training iterations/s (forward + backward + AdamW step), batch ``batch`` at ``size`` x ``size``."""
    g = torch.Generator().manual_seed(1)
    images = [(torch.rand(3, size, size, generator=g) * 255).to(device) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * size * 0.6
        wh = torch.rand(6, 2, generator=g) * size * 0.3 + 8
        targets.append(
            {
                "boxes_xyxy": torch.cat([xy, xy + wh], 1).to(device),
                "labels": torch.randint(0, 80, (6,), generator=g).to(device),
            }
        )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        losses = model(images, targets)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    times = [timed(step, device) for _ in range(args.reps)]
    s = statistics.median(times)
    print(
        f"training (ours), batch {batch} at {size}x{size}, 500 proposals: {s:.2f} s/it, {1 / s:.3f} it/s "
        f"(the official training step is not re-implemented: its loss/matcher are ours)"
    )


if __name__ == "__main__":
    main()
