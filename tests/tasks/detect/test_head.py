"""DynamicHead: shapes, official parameter names/count, time conditioning, RoI pooling levels."""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

from tasks.detect.head import DynamicHead, RCNNHead
from tasks.detect.pooler import RoIPooler, assign_levels

OFFICIAL_STAGE_KEYS = [
    "self_attn.in_proj_weight",
    "self_attn.out_proj.weight",
    "inst_interact.dynamic_layer.weight",
    "inst_interact.norm1.weight",
    "inst_interact.out_layer.weight",
    "inst_interact.norm3.bias",
    "linear1.weight",
    "linear2.bias",
    "norm1.weight",
    "norm3.bias",
    "block_time_mlp.1.weight",
    "cls_module.0.weight",
    "cls_module.1.weight",
    "reg_module.6.weight",
    "reg_module.7.bias",
    "class_logits.bias",
    "bboxes_delta.weight",
]


def _small_head(**kwargs) -> DynamicHead:
    base = dict(
        num_classes=5,
        feature_strides=(4, 8, 16, 32),
        num_stages=2,
        hidden_dim=32,
        num_attn_heads=4,
        dim_feedforward=64,
        dim_dynamic=8,
    )
    return DynamicHead(**{**base, **kwargs})


def _features(b: int, c: int = 32, h: int = 64, w: int = 96) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, c, h // s, w // s, generator=g) for s in (4, 8, 16, 32)]


def test_full_size_stage_parameter_count_and_names() -> None:
    stage = RCNNHead(
        num_classes=80,
        hidden_dim=256,
        num_attn_heads=8,
        dim_feedforward=2048,
        dim_dynamic=64,
        num_dynamic=2,
        num_cls_layers=1,
        num_reg_layers=3,
        pooler_resolution=7,
    )
    # derived from the official layer shapes: ~13.76 M per stage
    assert sum(p.numel() for p in stage.parameters()) == 13_760_212
    keys = set(stage.state_dict())
    assert all(k in keys for k in OFFICIAL_STAGE_KEYS)
    head = DynamicHead(num_classes=80, feature_strides=(4, 8, 16, 32))
    assert {"time_mlp.1.weight", "time_mlp.3.bias", "head_series.5.class_logits.weight"} <= set(
        head.state_dict()
    )


def test_head_shapes_and_prior_bias() -> None:
    head = _small_head()
    boxes = torch.tensor([[5.0, 5, 40, 30], [0, 0, 96, 64], [30, 20, 31, 21]]).expand(2, 3, 4)
    logits, out_boxes = head(_features(2), boxes, torch.tensor([0, 999]))
    assert logits.shape == (2, 2, 3, 5) and out_boxes.shape == (2, 2, 3, 4)
    assert logits.dtype == torch.float32
    bias = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(head.head_series[0].class_logits.bias, torch.full((5,), bias))


def test_k_equal_hidden_dim_does_not_overwrite_weights() -> None:
    head = _small_head(num_classes=32)  # K == hidden_dim: the official init would clobber weights
    w = head.head_series[0].linear2.weight  # shape (32, 64): not touched
    assert w.std() > 0 and not torch.allclose(
        head.head_series[0].cls_module[0].weight, torch.tensor(-4.595)
    )


def test_time_conditioning_changes_only_through_modulation() -> None:
    head = _small_head()
    boxes = torch.tensor([[5.0, 5, 40, 30], [10, 10, 50, 50]]).expand(1, 2, 4)
    a = head(_features(1), boxes, torch.tensor([10]))
    b = head(_features(1), boxes, torch.tensor([900]))
    assert not torch.allclose(a[0], b[0])
    # "only through modulation": the features handed to the next stage ignore t ...
    stage, roi = head.head_series[0], head.box_pooler(_features(1), boxes)
    feats_a = stage(roi, boxes, None, head.time_mlp(torch.tensor([10])))[2]
    feats_b = stage(roi, boxes, None, head.time_mlp(torch.tensor([900])))[2]
    assert torch.equal(feats_a, feats_b)
    # ... and with every stage's scale/shift MLP zeroed, t changes nothing at all
    with torch.no_grad():
        for st in head.head_series:
            st.block_time_mlp[1].weight.zero_()
            st.block_time_mlp[1].bias.zero_()
    c = head(_features(1), boxes, torch.tensor([10]))
    d = head(_features(1), boxes, torch.tensor([900]))
    assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])


def test_head_is_permutation_equivariant_over_proposals() -> None:
    """Justifies renewal by masked replacement: proposal order does not change any proposal's output."""
    head = _small_head()
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(1, 7, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(1, 7, 2, generator=g) * 40], -1)
    perm = torch.randperm(7, generator=g)
    logits, out = head(_features(1), boxes, torch.tensor([500]))
    logits_p, out_p = head(_features(1), boxes[:, perm], torch.tensor([500]))
    torch.testing.assert_close(
        logits_p, logits[:, :, perm], atol=1e-4, rtol=1e-4
    )  # float reorderings
    torch.testing.assert_close(out_p, out[:, :, perm], atol=1e-3, rtol=1e-4)


def test_level_assignment_matches_formula() -> None:
    sides = torch.tensor([1.0, 50, 111, 112, 224, 447, 448, 900, 5000])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1)
    expected = [
        min(max(math.floor(4 + math.log2(s / 224 + 1e-8)), 2), 5) - 2 for s in sides.tolist()
    ]
    assert assign_levels(boxes, 2, 5).tolist() == expected
    # with in_features p3..p5 the clamp range follows the configured levels
    expected35 = [
        min(max(math.floor(4 + math.log2(s / 224 + 1e-8)), 3), 5) - 3 for s in sides.tolist()
    ]
    assert assign_levels(boxes, 3, 5).tolist() == expected35
    assert RoIPooler(output_size=7, strides=(8, 16, 32)).min_level == 3


def test_pooler_uses_roi_align_v2_on_the_assigned_level() -> None:
    feats = _features(2)
    boxes = torch.tensor([[[0.0, 0, 20, 20], [0, 0, 90, 60]], [[3, 4, 50, 40], [10, 10, 12, 12]]])
    pooler = RoIPooler(output_size=7, strides=(4, 8, 16, 32), sampling_ratio=2)
    out = pooler(feats, boxes)
    levels = assign_levels(boxes.reshape(-1, 4), 2, 5)
    for r, (b, lvl) in enumerate(zip([0, 0, 1, 1], levels.tolist())):
        roi = torch.cat([torch.tensor([[float(b)]]), boxes.reshape(-1, 4)[r : r + 1]], 1)
        want = roi_align(
            feats[lvl], roi, 7, spatial_scale=1 / 4 / 2**lvl, sampling_ratio=2, aligned=True
        )
        torch.testing.assert_close(out[r : r + 1], want)
