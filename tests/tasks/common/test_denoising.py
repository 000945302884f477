"""The generic denoising trainer: loss target, one step through the kernel, EMA warm-up, sampling,
PNG grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diffusion_core import NoiseSchedule, q_sample
from tasks.common.denoising import (
    denoising_train_step,
    diffusion_loss,
    sample_images,
    save_image_grid,
)
from tasks.common.ema import ModelEMA
from tasks.common.training import NonFiniteLossError

SCHEDULE = NoiseSchedule.from_name("linear", 1000)


class Conv(nn.Module):
    """model(x_t, t) -> (B, out, H, W); ignores t."""

    def __init__(self, out: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def test_loss_is_mse_to_the_noise_and_ignores_extra_channels():
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (4,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    x_t = q_sample(SCHEDULE, x0, t, noise)

    class Oracle(nn.Module):  # returns the true eps in channels 0..2 and garbage in 3..5
        def forward(self, x, tt):
            assert torch.equal(tt, t) and torch.allclose(x, x_t)
            return torch.cat([noise, torch.full_like(noise, 1e3)], dim=1)

    assert (
        float(diffusion_loss(Oracle(), SCHEDULE, x0, generator=torch.Generator().manual_seed(0)))
        == 0.0
    )

    class Zero(nn.Module):
        def forward(self, x, tt):
            return torch.zeros_like(x)

    mse = diffusion_loss(Zero(), SCHEDULE, x0, generator=torch.Generator().manual_seed(0))
    l1 = diffusion_loss(Zero(), SCHEDULE, x0, generator=torch.Generator().manual_seed(0), loss="l1")
    assert float(mse) == pytest.approx(float(noise.pow(2).mean()), rel=1e-6)
    assert float(l1) == pytest.approx(float(noise.abs().mean()), rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        diffusion_loss(Zero(), SCHEDULE, x0, loss="huber")
    with pytest.raises(ValueError, match="does not fit images"):
        diffusion_loss(Conv(out=2), SCHEDULE, x0)


def test_train_step_learns_updates_ema_with_warmup_and_stops_on_nan():
    torch.manual_seed(0)
    model = Conv()
    ema = ModelEMA(model, decay=0.999)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    losses = []
    for it in range(30):
        logs = denoising_train_step(
            model,
            opt,
            SCHEDULE,
            x0,
            iteration=it,
            ema=ema,
            generator=torch.Generator().manual_seed(it),
            clip_grad_norm=1.0,
        )
        losses.append(logs["diffusion_loss"])
        assert set(logs) == {"diffusion_loss", "total_loss", "grad_norm"}
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # warm-up: at step 0 the decay is 1/10, so the EMA is mostly the trained weights, not the init
    gap_ema = (ema.module.conv.weight - model.conv.weight).abs().max()
    assert gap_ema < 0.2 * (model.conv.weight.abs().max())
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="iteration 30.*diffusion_loss=nan"):
        denoising_train_step(model, opt, SCHEDULE, x0, iteration=30, ema=ema)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_sample_images_shape_range_and_seed(sampler):
    model = Conv(out=6).eval()
    a = sample_images(model, SCHEDULE, 3, (8, 12), steps=4, sampler=sampler, seed=1)
    b = sample_images(model, SCHEDULE, 3, (8, 12), steps=4, sampler=sampler, seed=1)
    assert a.shape == (3, 3, 8, 12) and a.abs().max() <= 1 and torch.equal(a, b)
    with pytest.raises(ValueError, match="sampler must be one of"):
        sample_images(model, SCHEDULE, 1, (8, 8), sampler="euler")


def test_save_image_grid_writes_png_atomically(tmp_path):
    images = torch.linspace(-1, 1, 5 * 3 * 4 * 6).reshape(5, 3, 4, 6)
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", ncol=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 4, 2 * 6, 3)
    assert grid[0, 0, 0] == 0 and grid[4:8, 6:12].max() > 0
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]
