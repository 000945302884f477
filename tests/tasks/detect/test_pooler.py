"""RoI pooling: the gather-based ROIAlign equals torchvision's kernel, values and feature gradients."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from tasks.detect.pooler import RoIPooler, roi_align_gather


def _rois(generator: torch.Generator, count: int, batch: int, size: float) -> torch.Tensor:
    """Boxes of every kind: inside, overlapping the border, far outside, tiny, zero-size, flipped."""
    xy = torch.rand(count, 2, generator=generator) * size * 1.4 - 0.2 * size
    wh = torch.rand(count, 2, generator=generator) * size * 0.6
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # zero size
    boxes[1] = torch.tensor([30.0, 20.0, 10.0, 4.0])  # x2 < x1, y2 < y1 (allowed with aligned=True)
    boxes[2] = torch.tensor([-50.0, -40.0, -20.0, -10.0])  # fully outside: zeros
    boxes[3] = torch.tensor([0.0, 0.0, size, size])  # the whole map, edge rows sampled
    batch_index = torch.randint(0, batch, (count, 1), generator=generator).float()
    return torch.cat([batch_index, boxes], 1)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_gather_matches_torchvision_forward_and_backward(sampling_ratio, aligned, scale):
    gen = torch.Generator().manual_seed(sampling_ratio * 10 + int(aligned) + int(scale * 4))
    feats = torch.randn(3, 5, 13, 17, generator=gen, dtype=torch.float64)
    rois = _rois(gen, 40, 3, 17 / scale).double()
    args = dict(output_size=7, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    a = feats.clone().requires_grad_(True)
    b = feats.clone().requires_grad_(True)
    ref = roi_align(a, rois, **args)
    ours = roi_align_gather(b, rois, **args)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    upstream = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (ref * upstream).sum().backward()
    (ours * upstream).sum().backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-12)


def test_pooler_auto_uses_gathers_only_for_cpu_training():
    pooler = RoIPooler(output_size=7, strides=(4, 8), sampling_ratio=2)
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]
    boxes = torch.tensor(
        [
            [[2.0, 3.0, 20.0, 30.0], [0.0, 0.0, 63.0, 63.0]],
            [[10.0, 10.0, 12.0, 11.0], [5.0, 40.0, 50.0, 60.0]],
        ]
    )
    plain = pooler(feats, boxes)  # no grad needed: torchvision
    assert pooler._kernel(feats[0]) is roi_align
    trainable = [f.clone().requires_grad_(True) for f in feats]
    assert pooler._kernel(trainable[0]) is roi_align_gather
    torch.testing.assert_close(pooler(trainable, boxes), plain, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="impl"):
        RoIPooler(output_size=7, strides=(4,), impl="fast")
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_gather(
            feats[0], torch.zeros(1, 5), output_size=7, spatial_scale=1.0, sampling_ratio=0
        )
