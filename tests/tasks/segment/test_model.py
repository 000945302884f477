"""The U-Net: heads, the DDeP frozen-encoder guarantee (weights AND BatchNorm buffers), pretrained loading."""

from __future__ import annotations

import pytest
import torch

from tasks.segment.config import ModelConfig, NoiseConfig
from tasks.segment.model import load_pretrained
from tasks.segment.steps import build_model, pretrain_step, step_generator

SMALL = ModelConfig(decoder_channels=(16, 16, 8, 8, 8))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_heads_and_shapes() -> None:
    pre = build_model(SMALL)
    x = torch.randn(2, 3, 64, 96)
    assert pre(x, task="denoise").shape == (2, 3, 64, 96)
    with pytest.raises(ValueError, match="no segmentation head"):
        pre(x, task="segment")
    seg = build_model(SMALL, num_classes=5)
    assert seg(x).shape == (2, 5, 64, 96)
    assert seg.denoise_head is None
    with pytest.raises(ValueError, match="multiples of 32"):
        seg(torch.randn(1, 3, 40, 64))


def test_noise_conditioning_adds_an_input_channel() -> None:
    m = build_model(ModelConfig(decoder_channels=(16, 16, 8, 8, 8), noise_conditioning=True))
    x = torch.randn(2, 3, 32, 32)
    a = m(x, task="denoise", noise_level=torch.tensor([0.0, 0.0]))
    b = m(x, task="denoise", noise_level=torch.tensor([0.5, 0.5]))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kind", ["scaled", "diffusion"])
def test_ddep_freezes_encoder_weights_and_bn_statistics(kind: str) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL, freeze_encoder=True)
    model.train()  # the encoder must stay in eval mode anyway
    assert not model.encoder.training and model.decoder.training
    assert all(not m.training for m in model.encoder.modules())
    enc0, dec0 = _snapshot(model.encoder), _snapshot(model.decoder)
    assert any("running_mean" in k for k in enc0)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in model.encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    noise = NoiseConfig(kind=kind, t_range=(0, 500))
    from tasks.segment.steps import make_schedule

    for it in range(3):
        images = torch.rand(4, 3, 32, 32) * 2 - 1
        pretrain_step(
            model,
            model,
            opt,
            images,
            noise=noise,
            schedule=make_schedule(noise),
            generator=step_generator(0, it, 0, torch.device("cpu")),
            iteration=it,
            lr=1e-2,
            amp="off",
            ema=None,
        )
    for k, v in _snapshot(model.encoder).items():
        assert torch.equal(v, enc0[k]), f"encoder {k} changed under DDeP"
    changed = [k for k, v in _snapshot(model.decoder).items() if not torch.equal(v, dec0[k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("weight") for k in changed)


def test_dep_trains_the_encoder_too() -> None:
    torch.manual_seed(0)
    model = build_model(SMALL).train()
    enc0 = _snapshot(model.encoder)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    pretrain_step(
        model,
        model,
        opt,
        torch.rand(4, 3, 32, 32),
        noise=NoiseConfig(),
        schedule=None,
        generator=step_generator(0, 0, 0, torch.device("cpu")),
        iteration=0,
        lr=1e-2,
        amp="off",
        ema=None,
    )
    assert not torch.equal(model.encoder.state_dict()["conv1.weight"], enc0["conv1.weight"])
    assert not torch.equal(model.encoder.state_dict()["bn1.running_mean"], enc0["bn1.running_mean"])


def test_load_pretrained_copies_encoder_decoder_and_checks_shapes() -> None:
    pre = build_model(SMALL)
    seg = build_model(SMALL, num_classes=3)
    keys = load_pretrained(seg, pre.state_dict(), source="pre.pt")
    assert keys and all(k.split(".")[0] in ("encoder", "decoder") for k in keys)
    for k in keys:
        assert torch.equal(seg.state_dict()[k], pre.state_dict()[k])
    other = build_model(ModelConfig(decoder_channels=(32, 16, 8, 8, 8)))
    with pytest.raises(ValueError, match="pre2.pt.*shape"):
        load_pretrained(seg, other.state_dict(), source="pre2.pt")


def test_encoder_init_from_local_file(tmp_path) -> None:
    src = build_model(SMALL)
    path = tmp_path / "encoder.pth"
    torch.save(src.encoder.state_dict(), path)
    m = build_model(
        ModelConfig(decoder_channels=(16, 16, 8, 8, 8), encoder_init=str(path)), freeze_encoder=True
    )
    assert torch.equal(
        m.encoder.state_dict()["conv1.weight"], src.encoder.state_dict()["conv1.weight"]
    )
    with pytest.raises(FileNotFoundError, match="encoder weights file not found"):
        build_model(ModelConfig(encoder_init=str(tmp_path / "missing.pth")))


def test_ddep_encoder_from_a_dep_checkpoint(tmp_path) -> None:
    """DDeP may start from a DeP run's encoder: its EMA weights when the checkpoint holds them."""
    dep = build_model(SMALL)
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in dep.state_dict().items()}
    path = tmp_path / "dep_final.pt"
    torch.save({"model": dep.state_dict(), "ema": ema, "config": {}}, path)
    m = build_model(
        ModelConfig(decoder_channels=(16, 16, 8, 8, 8), encoder_init=str(path)), freeze_encoder=True
    )
    assert torch.equal(m.encoder.state_dict()["conv1.weight"], ema["encoder.conv1.weight"])
