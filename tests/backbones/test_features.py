from __future__ import annotations

import pytest
import torch

from backbones.adm_unet import ADMUNet
from backbones.features import (
    FeatureCache,
    collect,
    extract_features,
    extract_per_image,
    feature_specs_for,
    module_fingerprint,
    sample_pixels,
    shared_noise,
)
from diffusion_core import NoiseSchedule, q_sample

FLAGS = dict(
    image_size=32,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2,2",
    attention_resolutions="16,8",
    num_heads=2,
    use_scale_shift_norm=True,
    resblock_updown=True,
)


@pytest.fixture(scope="module")
def unet() -> ADMUNet:
    torch.manual_seed(0)
    model = ADMUNet.from_flags(**FLAGS).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("linear", 1000)


def _images(n: int, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_every_block_has_the_tabulated_shape(unet, schedule):
    blocks = list(range(len(unet.decoder_blocks)))
    images = _images(2, 16, 24)  # non-square
    feats = extract_features(unet, schedule, images, timesteps=(10, 500), blocks=blocks)
    assert list(feats) == [(t, b) for t in (10, 500) for b in blocks]
    for (_, b), f in feats.items():
        info = unet.decoder_blocks[b]
        assert f.shape == (2, info.channels, 16 // info.stride, 24 // info.stride)
        assert torch.isfinite(f).all()
    specs = feature_specs_for(unet, blocks, (10, 500))
    assert [s.name for s in specs][:2] == ["t10_b0", "t10_b1"]
    assert collect(feats, (16, 24)).shape == (2, sum(s.channels for s in specs), 16, 24)


def test_features_equal_the_unet_decoder_on_q_sample(unet, schedule):
    images = _images(3)
    noise = torch.randn(1, 3, 16, 24, generator=torch.Generator().manual_seed(7))
    feats = extract_features(
        unet, schedule, images, timesteps=(50, 250), blocks=(1, 4), noise=noise
    )
    x_t = q_sample(schedule, images, 250, noise.expand_as(images))
    with torch.no_grad():
        direct = unet.decoder_features(x_t, torch.full((3,), 250), [1, 4])
    torch.testing.assert_close(feats[(250, 4)], direct[4])
    torch.testing.assert_close(feats[(250, 1)], direct[1])


def test_shared_noise_is_shared_and_deterministic(unet, schedule):
    one = _images(1)
    images = torch.cat([one, one])  # the same image twice in a batch
    a = extract_features(
        unet, schedule, images, generator=torch.Generator().manual_seed(3), blocks=(2,)
    )
    b = extract_features(
        unet, schedule, one, generator=torch.Generator().manual_seed(3), blocks=(2,)
    )
    c = extract_features(
        unet, schedule, one, generator=torch.Generator().manual_seed(4), blocks=(2,)
    )
    for key in a:
        torch.testing.assert_close(a[key][0], a[key][1])  # one noise for both images
        torch.testing.assert_close(
            a[key][:1], b[key], rtol=1e-5, atol=1e-5
        )  # seed -> same features
        assert not torch.allclose(b[key], c[key])  # another seed differs
    torch.testing.assert_close(shared_noise((3, 4, 4), 5), shared_noise((3, 4, 4), 5))


def test_sample_pixels_equals_collect(unet, schedule):
    feats = extract_features(unet, schedule, _images(1), timesteps=(50,), blocks=(0, 2, 5))
    full = collect(feats, (16, 24))[0]  # (C, H, W)
    ys = torch.tensor([0, 15, 7, 3, 15])
    xs = torch.tensor([0, 23, 11, 20, 0])
    got = sample_pixels([f[0] for f in feats.values()], ys, xs, (16, 24))
    torch.testing.assert_close(got, full[:, ys, xs].T, rtol=1e-5, atol=1e-5)


def test_bad_arguments(unet, schedule):
    with pytest.raises(ValueError, match="out of range"):
        feature_specs_for(unet, blocks=(99,))
    with pytest.raises(ValueError, match="noise shape"):
        extract_features(unet, schedule, _images(2), noise=torch.zeros(1, 3, 8, 8))


def test_cache_round_trip(unet, schedule, tmp_path, monkeypatch):
    images = list(_images(3))
    setting = dict(
        checkpoint=module_fingerprint(unet),
        blocks=(1, 4),
        timesteps=(50, 150),
        noise_seed=0,
        noise_device="cpu",
    )
    cache = FeatureCache(tmp_path, **setting)
    first = extract_per_image(
        unet, schedule, images, timesteps=(50, 150), blocks=(1, 4), cache=cache, batch_size=2
    )
    assert len(list(cache.dir.glob("*.pt"))) == 3
    assert first[0][(150, 4)].dtype == torch.float16

    def boom(*_a, **_k):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(unet, "decoder_features", boom)
    second = extract_per_image(
        unet, schedule, images, timesteps=(50, 150), blocks=(1, 4), cache=cache
    )
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k])
    monkeypatch.undo()
    other = FeatureCache(tmp_path, **{**setting, "noise_seed": 1})
    assert other.dir != cache.dir and other.load(images[0]) is None
    assert cache.load(images[0] + 0.01) is None  # another image misses


def test_per_image_features_use_the_noise_of_noise_device(unet, schedule):
    images = list(_images(2))
    per_image = extract_per_image(
        unet,
        schedule,
        images,
        timesteps=(50,),
        blocks=(2,),
        noise_seed=3,
        noise_device="cpu",
        batch_size=1,
    )
    noise = shared_noise((3, 16, 24), seed=3, device="cpu")
    expected = extract_features(unet, schedule, torch.stack(images), (50,), (2,), noise=noise)[
        (50, 2)
    ]
    for i, feats in enumerate(per_image):
        torch.testing.assert_close(feats[(50, 2)].float(), expected[i], rtol=1e-2, atol=1e-2)
    other = extract_per_image(
        unet, schedule, images[:1], timesteps=(50,), blocks=(2,), noise_seed=4, noise_device="cpu"
    )
    assert not torch.equal(other[0][(50, 2)], per_image[0][(50, 2)])


@pytest.mark.gpu
def test_fp16_on_gpu_close_to_fp32(unet, schedule):
    model = ADMUNet.from_flags(**FLAGS).eval().cuda()
    model.load_state_dict(unet.state_dict())
    images = _images(2).cuda()
    noise = shared_noise((3, 16, 24), 0, "cuda")
    half = extract_features(model, schedule, images, noise=noise, blocks=(2,))
    full = extract_features(model, schedule, images, noise=noise, blocks=(2,), fp16=False)
    for k in half:
        torch.testing.assert_close(half[k], full[k], rtol=0.05, atol=0.05)
