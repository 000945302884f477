"""ADM U-Net: state_dict layout and outputs against guided-diffusion's UNetModel.

Two oracles (the first is also used by tests/tasks/fewshot/test_benchmark_configs.py):
* ``expected_keys_and_shapes``: a key -> shape generator written from the facts of
  guided-diffusion's ``unet.py`` (``UNetModel.__init__``, ``ResBlock``, ``AttentionBlock``,
  ``script_util.create_model``), independent of ``backbones.adm_unet``;
* the ``guided-diffusion-sdk`` PyPI package (openai/guided-diffusion packaged as-is), used as a
  test-only reference for strict loading and numerical parity with copied weights.
"""

from __future__ import annotations

import pytest
import torch

from backbones.adm_unet import DDPMSEG_256_FLAGS, ADMUNet


@pytest.fixture(scope="module")
def gd_script_util():
    """guided-diffusion's script_util (test-only oracle); the source-derived table tests run without it."""
    return pytest.importorskip("guided_diffusion.script_util", reason="guided-diffusion-sdk")


def _resblock(prefix: str, cin: int, cout: int, emb: int, sss: bool) -> dict[str, tuple]:
    shapes = {
        "in_layers.0.weight": (cin,),
        "in_layers.0.bias": (cin,),
        "in_layers.2.weight": (cout, cin, 3, 3),
        "in_layers.2.bias": (cout,),
        "emb_layers.1.weight": ((2 if sss else 1) * cout, emb),
        "emb_layers.1.bias": ((2 if sss else 1) * cout,),
        "out_layers.0.weight": (cout,),
        "out_layers.0.bias": (cout,),
        "out_layers.3.weight": (cout, cout, 3, 3),
        "out_layers.3.bias": (cout,),
    }
    if cin != cout:  # 1x1 conv skip (UNetModel never sets use_conv)
        shapes.update(
            {"skip_connection.weight": (cout, cin, 1, 1), "skip_connection.bias": (cout,)}
        )
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def _attention(prefix: str, ch: int) -> dict[str, tuple]:
    shapes = {
        "norm.weight": (ch,),
        "norm.bias": (ch,),
        "qkv.weight": (3 * ch, ch, 1),
        "qkv.bias": (3 * ch,),
        "proj_out.weight": (ch, ch, 1),
        "proj_out.bias": (ch,),
    }
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def expected_keys_and_shapes(
    *,
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: tuple,
    attention_resolutions: tuple,
    learn_sigma: bool,
    sss: bool,
    updown: bool,
) -> dict[str, tuple]:
    """guided-diffusion UNetModel key -> shape table, derived from its source (unconditional)."""
    c, emb = num_channels, 4 * num_channels
    attn_ds = {image_size // r for r in attention_resolutions}
    table = {
        "time_embed.0.weight": (emb, c),
        "time_embed.0.bias": (emb,),
        "time_embed.2.weight": (emb, emb),
        "time_embed.2.bias": (emb,),
        "input_blocks.0.0.weight": (c * channel_mult[0], 3, 3, 3),
        "input_blocks.0.0.bias": (c * channel_mult[0],),
    }
    ch, ds, idx, skips = c * channel_mult[0], 1, 1, [c * channel_mult[0]]
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            table |= _resblock(f"input_blocks.{idx}.0", ch, c * mult, emb, sss)
            ch = c * mult
            if ds in attn_ds:
                table |= _attention(f"input_blocks.{idx}.1", ch)
            skips.append(ch)
            idx += 1
        if level != len(channel_mult) - 1:
            if updown:
                table |= _resblock(f"input_blocks.{idx}.0", ch, ch, emb, sss)
            else:
                table |= {
                    f"input_blocks.{idx}.0.op.weight": (ch, ch, 3, 3),
                    f"input_blocks.{idx}.0.op.bias": (ch,),
                }
            skips.append(ch)
            ds, idx = ds * 2, idx + 1
    table |= _resblock("middle_block.0", ch, ch, emb, sss)
    table |= _attention("middle_block.1", ch)
    table |= _resblock("middle_block.2", ch, ch, emb, sss)
    idx = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            table |= _resblock(f"output_blocks.{idx}.0", ch + skips.pop(), c * mult, emb, sss)
            ch, sub = c * mult, 1
            if ds in attn_ds:
                table |= _attention(f"output_blocks.{idx}.1", ch)
                sub = 2
            if level and i == num_res_blocks:
                if updown:
                    table |= _resblock(f"output_blocks.{idx}.{sub}", ch, ch, emb, sss)
                else:
                    table |= {
                        f"output_blocks.{idx}.{sub}.conv.weight": (ch, ch, 3, 3),
                        f"output_blocks.{idx}.{sub}.conv.bias": (ch,),
                    }
                ds //= 2
            idx += 1
    out = 6 if learn_sigma else 3
    table |= {
        "out.0.weight": (ch,),
        "out.0.bias": (ch,),
        "out.2.weight": (out, c * channel_mult[0], 3, 3),
        "out.2.bias": (out,),
    }
    return table


def _shapes(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_ddpmseg_256_state_dict_matches_source_derived_table():
    with torch.device("meta"):
        ours = ADMUNet.from_flags(**DDPMSEG_256_FLAGS)
    expected = expected_keys_and_shapes(
        image_size=256,
        num_channels=256,
        num_res_blocks=2,
        channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(32, 16, 8),
        learn_sigma=True,
        sss=True,
        updown=True,
    )
    assert _shapes(ours) == expected
    assert len(expected) == 566
    # 552.8M parameters (DreamTeacher's table rounds the DDPM-Seg U-Net to "554M").
    assert sum(v.numel() for v in ours.state_dict().values()) == 552_814_086


def test_ddpmseg_256_strict_load_of_guided_diffusion_state_dict(gd_script_util):
    flags = {k: v for k, v in DDPMSEG_256_FLAGS.items()}
    with torch.device("meta"):
        reference = gd_script_util.create_model(**flags)
        ours = ADMUNet.from_flags(**flags)
    assert _shapes(ours) == _shapes(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())  # same order too
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)


def test_decoder_table_is_the_ddpmseg_table():
    with torch.device("meta"):
        ours = ADMUNet.from_flags(**DDPMSEG_256_FLAGS)
    table = [(b.channels, b.resolution(256)) for b in ours.decoder_blocks]
    assert table[5] == (1024, 32) and table[6] == (512, 32) and table[8] == (512, 64)
    assert table[12] == (256, 128) and table[17] == (256, 256)
    assert sum(table[b][0] for b in (5, 6, 7, 8, 12)) == 2816  # x3 timesteps = 8448
    assert [b.attention for b in ours.decoder_blocks] == [True] * 9 + [False] * 9


SMALL_CONFIGS = {
    "updown_sss_legacy": dict(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,2,2",
        attention_resolutions="16,8",
        num_heads=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
        learn_sigma=True,
    ),
    "plain_new_order_classcond": dict(
        image_size=32,
        num_channels=32,
        num_res_blocks=2,
        channel_mult="1,2",
        attention_resolutions="32,16",
        num_head_channels=16,
        use_new_attention_order=True,
        class_cond=True,
    ),
    "heads_upsample_dropout": dict(
        image_size=16,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,1,2",
        attention_resolutions="8,4",
        num_heads=4,
        num_heads_upsample=2,
        dropout=0.3,
        use_scale_shift_norm=True,
    ),
}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # replaces the zero init so every path contributes
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_small_config_matches_guided_diffusion_numerically(name, gd_script_util):
    flags = SMALL_CONFIGS[name]
    torch.manual_seed(0)
    reference = gd_script_util.create_model(**flags).eval()
    _randomize(reference, 1)
    ours = ADMUNet.from_flags(**flags).eval()
    assert _shapes(ours) == _shapes(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    size = flags["image_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3, 640])
    y = torch.tensor([5, 999]) if flags.get("class_cond") else None
    with torch.no_grad():
        expected = reference(x, t, y=y)
        got = ours(x, t, y=y)
    assert got.shape == (2, 6 if flags.get("learn_sigma") else 3, size, size)
    assert expected.abs().mean() > 1e-2  # a non-trivial output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_decoder_features_equal_decoder_outputs_and_leave_no_hooks(gd_script_util):
    flags = SMALL_CONFIGS["updown_sss_legacy"]
    reference = gd_script_util.create_model(**flags).eval()
    _randomize(reference, 3)
    ours = ADMUNet.from_flags(**flags).eval()
    ours.load_state_dict(reference.state_dict())
    captured = {}
    handles = [
        block.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
        for k, block in enumerate(reference.output_blocks)
    ]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference(x, torch.tensor([50, 50, 50]))
        feats = ours.decoder_features(x, 50, blocks=[1, 3, 4])
    for h in handles:
        h.remove()
    assert sorted(feats) == [1, 3, 4]
    for k, f in feats.items():
        info = ours.decoder_blocks[k]
        assert f.shape == (3, info.channels, 32 // info.stride, 32 // info.stride)
        assert f.dtype == torch.float32
        torch.testing.assert_close(f, captured[k], rtol=1e-4, atol=1e-4)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in ours.modules())


def test_block_tables_follow_flags():
    ours = ADMUNet.from_flags(**SMALL_CONFIGS["heads_upsample_dropout"])
    # channel_mult (1,1,2), 1 res block: decoder levels of 2 blocks, strides 4,2(up) | 2,1(up) | 1,1
    assert [b.stride for b in ours.decoder_blocks] == [4, 2, 2, 1, 1, 1]
    assert [b.channels for b in ours.decoder_blocks] == [64, 64, 32, 32, 32, 32]
    assert [b.resample for b in ours.decoder_blocks].count("up") == 2
    assert [b.stride for b in ours.encoder_blocks] == [1, 1, 2, 2, 4, 4]


def test_fp16_converts_exactly_the_torso_convs(gd_script_util):
    flags = SMALL_CONFIGS["updown_sss_legacy"]
    reference = gd_script_util.create_model(**flags)
    reference.convert_to_fp16()
    ours = ADMUNet.from_flags(**flags, use_fp16=True)
    dtypes = {k: v.dtype for k, v in ours.state_dict().items()}
    assert dtypes == {k: v.dtype for k, v in reference.state_dict().items()}
    assert dtypes["input_blocks.1.0.in_layers.2.weight"] == torch.float16
    assert dtypes["input_blocks.1.0.emb_layers.1.weight"] == torch.float32
    assert dtypes["out.2.weight"] == torch.float32
    ours.convert_to_fp32()
    assert all(v.dtype == torch.float32 for v in ours.state_dict().values())


def test_fp16_forward_close_to_fp32():
    flags = SMALL_CONFIGS["updown_sss_legacy"]
    ours = ADMUNet.from_flags(**flags).eval()
    _randomize(ours, 5)
    half = ADMUNet.from_flags(**flags, use_fp16=True).eval()
    half.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        try:
            got = half(x, 100)
        except RuntimeError as err:  # pragma: no cover - CPU builds without half kernels
            pytest.skip(f"float16 kernels unavailable on CPU: {err}")
        expected = ours(x, 100)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)


def test_bad_inputs_raise_clear_errors():
    ours = ADMUNet.from_flags(**SMALL_CONFIGS["updown_sss_legacy"])
    with pytest.raises(ValueError, match="divisible by 4"):
        ours(torch.zeros(1, 3, 30, 32), 1)
    with pytest.raises(ValueError, match="out of range"):
        ours.decoder_features(torch.zeros(1, 3, 32, 32), 1, blocks=[99])
    with pytest.raises(ValueError, match="no default channel_mult"):
        ADMUNet.from_flags(image_size=48, num_channels=32, num_res_blocks=1)
    with pytest.raises(ValueError, match="class labels"):
        ours(torch.zeros(1, 3, 32, 32), 1, y=torch.tensor([0]))
