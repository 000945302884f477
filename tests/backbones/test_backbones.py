"""Backbone contract over every BACKBONES entry, FPN semantics, FrozenBN, freezing and weight loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from backbones import (
    BACKBONES,
    FPN,
    FPN_IN_FEATURES,
    FrozenBatchNorm2d,
    build_backbone,
    build_fpn_backbone,
)
from backbones.pretrained import PretrainedWeightsError
from backbones.resnet import build_resnet

TINY_SWIN = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))


def _build(name: str) -> nn.Module:
    kwargs = dict(TINY_SWIN) if name == "swin_b" else {}
    return build_backbone(name, pretrained=False, **kwargs)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_contract(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name).eval()
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        out = model(x)
    assert [s.name for s in model.feature_specs] == list(out)
    assert [s.name for s in model.feature_specs] == list(FPN_IN_FEATURES[name])
    for spec in model.feature_specs:
        assert out[spec.name].shape == (2, spec.channels, 96 // spec.stride, 160 // spec.stride), (
            spec
        )
        assert torch.isfinite(out[spec.name]).all()


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_fpn_over_every_backbone(name: str) -> None:
    kwargs = dict(TINY_SWIN) if name == "swin_b" else {}
    model = build_fpn_backbone(name, pretrained=False, fpn_channels=32, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 64))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for spec in model.feature_specs:
        assert out[spec.name].shape == (1, 32, 128 // spec.stride, 64 // spec.stride)


def test_fpn_matches_detectron2_computation() -> None:
    """lateral 1x1 -> nearest x2 top-down sum -> 3x3 output; p6 = max_pool(k=1, s=2) of p5."""
    torch.manual_seed(0)
    fpn = build_fpn_backbone("resnet18", pretrained=False, fpn_channels=16).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = fpn(x)
        bottom = fpn.bottom_up(x)
        names = FPN_IN_FEATURES["resnet18"]
        inner, layer = fpn.fpn.inner_blocks, fpn.fpn.layer_blocks
        prev = inner[3](bottom[names[3]])
        expected = [layer[3](prev)]
        for i in (2, 1, 0):
            prev = inner[i](bottom[names[i]]) + F.interpolate(
                prev, scale_factor=2.0, mode="nearest"
            )
            expected.insert(0, layer[i](prev))
        expected.append(F.max_pool2d(expected[-1], kernel_size=1, stride=2, padding=0))
    for got, want in zip(out.values(), expected):
        torch.testing.assert_close(got, want)


def test_frozen_bn_matches_eval_batchnorm_and_has_no_params() -> None:
    bn = nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm2d.convert(nn.Sequential(bn))[0]
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 1e-5
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    state = bn.state_dict()  # has num_batches_tracked, which must be ignored
    fresh = FrozenBatchNorm2d(8)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), bn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
def test_freeze_at_two_freezes_stem_and_res2(norm: str) -> None:
    model = build_backbone("resnet18", pretrained=False, norm=norm, freeze_at=2)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())
    if norm == "bn":
        assert isinstance(model.res2[0].conv1.norm, FrozenBatchNorm2d)
        assert isinstance(model.res3[0].conv1.norm, nn.BatchNorm2d)
    trainable = build_backbone("resnet18", pretrained=False, norm=norm, freeze_at=0)
    assert all(p.requires_grad for p in trainable.parameters())


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_weights_reproduce_torchvision_features(depth: int, tmp_path) -> None:
    """Loading a torchvision state dict gives the same res5 as torchvision (stride in the 3x3 conv)."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours = build_resnet(depth, weights=str(path), norm="frozen_bn", freeze_at=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        h = tv.layer4(tv.layer3(tv.layer2(tv.layer1(h))))
        torch.testing.assert_close(ours(x)["res5"], h, rtol=1e-3, atol=1e-3 * float(h.abs().max()))


def test_offline_pretrained_gives_clear_error(monkeypatch) -> None:
    import timm

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError, match="model.backbone.weights"):
        build_backbone("resnet18", pretrained=True)


def test_missing_or_wrong_weights_file_raise(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    path = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="right file"):
        build_backbone("resnet18", weights=str(path))


def test_fpn_rejects_unknown_feature() -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        FPN(build_backbone("resnet18"), in_features=("res2", "res9"))


@pytest.mark.slow
def test_full_swin_b_shapes() -> None:
    model = build_backbone("swin_b", pretrained=False).eval()
    assert [s.channels for s in model.feature_specs] == [128, 256, 512, 1024]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 132))  # not a multiple of the window: padded inside
    assert out["swin3"].shape == (1, 1024, 4, 5)


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_width_scales_every_stage(depth: int) -> None:
    standard = build_resnet(depth, norm="bn", freeze_at=0)
    slim = build_resnet(depth, norm="bn", freeze_at=0, width=32)
    assert [s.channels for s in slim.feature_specs] == [
        c // 2 for c in (s.channels for s in standard.feature_specs)
    ]
    assert [s.stride for s in slim.feature_specs] == [4, 8, 16, 32]
    out = slim(torch.randn(2, 3, 64, 96))
    for spec in slim.feature_specs:
        assert out[spec.name].shape == (2, spec.channels, 64 // spec.stride, 96 // spec.stride)
    n_std = sum(p.numel() for p in standard.parameters())
    n_slim = sum(p.numel() for p in slim.parameters())
    assert 0.2 < n_slim / n_std < 0.3  # conv weights scale with width**2


def test_resnet_width_refuses_imagenet_weights(tmp_path) -> None:
    with pytest.raises(ValueError, match="width 64 only"):
        build_resnet(18, width=32, pretrained=True)
    with pytest.raises(ValueError, match="width 64 only"):
        build_resnet(18, width=32, pretrained=False, weights=str(tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match="width must be >= 8"):
        build_resnet(18, width=4)
